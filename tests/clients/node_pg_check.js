// node-postgres named queries through sluice in transaction pooling,
// several clients interleaved over few servers.
// Usage: node node_pg_check.js URL. Prints "ok" and exits 0 when every result is right.
const { Client } = require('pg');

async function main(url) {
  const clients = [];
  for (let n = 0; n < 4; n++) {
    const c = new Client({ connectionString: url });
    await c.connect();
    clients.push(c);
  }
  for (let i = 0; i < 50; i++) {
    await Promise.all(clients.map(async (c, n) => {
      const r = await c.query({ name: 'add', text: 'SELECT $1::int + $2::int AS v', values: [i, n] });
      if (r.rows[0].v !== i + n) throw new Error(`add: got ${r.rows[0].v}, want ${i + n}`);
      const t = await c.query({ name: 'text', text: 'SELECT $1::text || $2::text AS s', values: ['a', String(n)] });
      if (t.rows[0].s !== `a${n}`) throw new Error(`text: got ${t.rows[0].s}`);
    }));
  }
  await Promise.all(clients.map((c) => c.end()));
  console.log('ok');
}

main(process.argv[2]).catch((e) => { console.error(e); process.exit(1); });

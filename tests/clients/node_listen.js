// node-postgres listeners through sluice in transaction pooling.
// Usage: node node_listen.js URL DIRECT_URL CHANNEL. As psycopg_listen.py:
// 50 listeners get each notification exactly once, in order, and a
// self-notification's processId is the sender's client.processID.
// Prints "ok" when every check passes.
const { Client } = require('pg');

const [url, direct, ch] = process.argv.slice(2);
const N = 50;

async function main() {
  const listeners = [];
  const got = [];
  for (let i = 0; i < N; i++) {
    const c = new Client({ connectionString: url });
    await c.connect();
    got.push([]);
    c.on('notification', (m) => got[i].push([m.processId, m.channel, m.payload]));
    await c.query(`LISTEN ${ch}`);
    listeners.push(c);
  }
  const d = new Client({ connectionString: direct });
  await d.connect();
  const used = {};
  for (const r of (await d.query(
    "SELECT application_name, count(*)::int AS n FROM pg_stat_activity " +
    "WHERE application_name IN ('sluice listener', 'drv pool') GROUP BY 1")).rows) {
    used[r.application_name] = r.n;
  }
  if (used['sluice listener'] !== 1 || (used['drv pool'] || 0) > 2) throw new Error(JSON.stringify(used));
  const sender = new Client({ connectionString: url });
  await sender.connect();
  await sender.query(`NOTIFY ${ch}, 'one'`);
  await sender.query('SELECT pg_notify($1, $2)', [ch, 'two']);
  await d.query(`NOTIFY ${ch}, 'three'`);
  await listeners[0].query(`NOTIFY ${ch}, 'self'`);
  for (let t = 0; t < 1000 && !got.every((g) => g.length >= 4); t++) {
    await new Promise((r) => setTimeout(r, 10));
  }
  for (const g of got) {
    const payloads = g.map((x) => x[2]).join(',');
    if (payloads !== 'one,two,three,self') throw new Error(`got ${payloads}`);
    if (g[0][0] !== sender.processID) throw new Error(`pid ${g[0][0]} != ${sender.processID}`);
    if (g[3][0] !== listeners[0].processID) throw new Error(`self pid ${g[3][0]} != ${listeners[0].processID}`);
  }
  for (const c of [...listeners, sender, d]) await c.end();
  console.log('ok');
}

main().catch((e) => { console.error(e); process.exit(1); });

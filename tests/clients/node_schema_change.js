// Prepared (named) queries through sluice survive schema changes
// (node-postgres). Usage: node_schema_change.js SLUICE_URL DIRECT_URL.
const { Client } = require('pg');
const [sluiceUrl, directUrl] = process.argv.slice(2);
const Q = { name: 'sc_q', text: 'SELECT * FROM scn_t WHERE id = $1', values: [1] };

async function connect(url) {
  const c = new Client({ connectionString: url });
  await c.connect();
  return c;
}

(async () => {
  const admin = await connect(directUrl);
  await admin.query('DROP TABLE IF EXISTS scn_t; DROP TYPE IF EXISTS scn_mood');
  await admin.query("CREATE TYPE scn_mood AS ENUM ('sad', 'ok')");
  await admin.query("CREATE TABLE scn_t (id int, v text, m scn_mood); INSERT INTO scn_t VALUES (1, 'a', 'ok')");
  const old = [];
  for (let i = 0; i < 4; i++) old.push(await connect(sluiceUrl));
  for (const c of old) await c.query(Q);
  const errors = [];
  async function everyoneSees(width, via) {
    const fresh = [];
    for (let i = 0; i < 3; i++) fresh.push(await connect(sluiceUrl));
    for (const c of old.concat(fresh)) {
      for (let k = 0; k < 3; k++) {
        try {
          const r = await c.query(Q);
          if (r.fields.length !== width) errors.push(`${via}: ${r.fields.length} columns`);
        } catch (e) {
          errors.push(`${via}: ${e.message}`);
        }
      }
    }
    for (const c of fresh) await c.end();
  }
  await admin.query('ALTER TABLE scn_t ADD COLUMN z int');
  await everyoneSees(4, 'ADD COLUMN directly');
  const via = await connect(sluiceUrl);
  await via.query('ALTER TABLE scn_t ALTER COLUMN v TYPE varchar(20)');
  await via.query('ALTER TABLE scn_t ADD COLUMN w int');
  await everyoneSees(5, 'ALTER COLUMN TYPE and ADD COLUMN through sluice');
  await admin.query('DROP TABLE scn_t; DROP TYPE scn_mood');
  await admin.query("CREATE TYPE scn_mood AS ENUM ('sad', 'ok')");
  await admin.query("CREATE TABLE scn_t (id int, v text, m scn_mood); INSERT INTO scn_t VALUES (1, 'a', 'ok')");
  await everyoneSees(3, 'type dropped and created again directly');
  for (const c of old.concat([via, admin])) await c.end();
  if (errors.length) {
    console.log(`${errors.length} errors:`, errors.slice(0, 3));
    process.exit(1);
  }
  console.log('ok');
})();

const { Client } = require('pg');
const url = process.argv[2];
let errors = 0;
(async () => {
  for (let i = 0; i < 100; i++) {
    const c = new Client({ connectionString: url });
    c.on('error', (e) => { errors++; console.log('error event', e.message); });
    c.connect().catch((e) => { errors++; console.log('connect rejected', e.message); });
    await c.end().catch((e) => { errors++; console.log('end rejected', e.message); });
  }
  console.log(errors === 0 ? 'ok' : `errors ${errors}`);
})();

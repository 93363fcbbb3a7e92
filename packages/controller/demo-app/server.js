// kiln's sample app: answers with its release version, the fleet's GREETING (from `kiln config set`)
// and a count of requests kept in its persistent data directory; /healthz for the health gate.
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');

// The release directory kiln runs it from is named after the version (releases/<version>).
const version = path.basename(process.env.KILN_RELEASE_DIR || __dirname);
const port = Number(process.env.PORT || 8080);
// `persist: ["data"]` in kiln.json: kept across releases, rollbacks and pruning.
const counter = process.env.KILN_DATA_DIR ? path.join(process.env.KILN_DATA_DIR, 'data', 'requests') : undefined;
let served = counter && fs.existsSync(counter) ? Number(fs.readFileSync(counter, 'utf8')) || 0 : 0;

const server = http
  .createServer((req, res) => {
    if (req.url === '/healthz') return res.end('ok\n');
    served++;
    if (counter) fs.writeFileSync(counter, String(served));
    const greeting = process.env.GREETING ? `, ${process.env.GREETING}` : '';
    res.end(`hello from kiln-demo ${version} (pid ${process.pid}${greeting}, request ${served} on this instance)\n`);
  })
  .listen(port, '127.0.0.1');
// A graceful stop: requests in flight are answered, idle connections closed, then exit.
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});

// kiln's sample app: answers with its release version; /healthz for the health gate.
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');

const version = fs.readFileSync(path.join(__dirname, 'VERSION'), 'utf8').trim();
const port = Number(process.env.PORT || 8080);

http
  .createServer((req, res) => {
    if (req.url === '/healthz') return res.end('ok\n');
    res.end(`hello from kiln-demo ${version} (pid ${process.pid})\n`);
  })
  .listen(port, '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));

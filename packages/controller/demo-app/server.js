// kiln's sample app: answers with its release version; /healthz for the health gate.
const http = require('node:http');
const path = require('node:path');

// The release directory kiln runs it from is named after the version (releases/<version>).
const version = path.basename(process.env.KILN_RELEASE_DIR || __dirname);
const port = Number(process.env.PORT || 8080);

const server = http
  .createServer((req, res) => {
    if (req.url === '/healthz') return res.end('ok\n');
    res.end(`hello from kiln-demo ${version} (pid ${process.pid})\n`);
  })
  .listen(port, '127.0.0.1');
// A graceful stop: requests in flight are answered, idle connections closed, then exit.
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});

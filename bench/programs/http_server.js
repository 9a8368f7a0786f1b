// The bench's Node.js HTTP service: answers every request with a short body. Run without
// flags, as in production; `wrk -H 'Connection: close'` makes each request a connection.
// Usage: node http_server.js PORT. Prints "ready" once listening.
'use strict';
const http = require('http');

const port = Number(process.argv[2]);
http
  .createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok\n');
  })
  .listen(port, '127.0.0.1', () => process.stdout.write('ready\n'));

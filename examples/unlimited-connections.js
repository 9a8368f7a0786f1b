// A service that opens a new upstream connection per request and never closes it: no pool, no
// limit. The connection count grows with traffic until the fd limit ends the process.
//
//   node examples/unlimited-connections.js
//   sudo sockleak trace --pid <service pid> --interval 5s      # the group is `growing`
'use strict';
const net = require('net');

// The upstream (a database, a cache...): accepts and keeps every connection.
const upstream = net.createServer((socket) => socket.on('error', () => {}));
upstream.listen(0, '127.0.0.1', () => {
  const { port } = upstream.address();
  const open = [];
  function queryUpstream() {
    // BUG: a fresh connection per request, kept forever.
    const conn = net.connect(port, '127.0.0.1');
    conn.on('error', () => {});
    open.push(conn);
  }
  setInterval(queryUpstream, Number(process.env.EVERY_MS || 200));
  console.log(`service pid ${process.pid}; upstream on 127.0.0.1:${port} (same process)`);
});

// A service that never destroys sockets its peers have left: CLOSE_WAIT piles up.
//
// With `allowHalfOpen: true`, Node hands the application the peer's FIN ('end') and waits for
// it to end its side. This handler forgets to, on one code path: every client that hangs up
// leaves a socket in CLOSE_WAIT, holding an fd, forever.
//
//   node examples/never-destroyed.js            # the service and a client that visits it
//   sudo sockleak trace --pid <service pid> --close-wait-after 10s
'use strict';
const net = require('net');
const { fork } = require('child_process');

if (process.argv[2] === 'client') {
  process.on('disconnect', () => process.exit(0)); // the service is gone
  // The peer: connects, says hello, hangs up (and closes its end for good). Twice a second.
  const port = Number(process.argv[3]);
  setInterval(() => {
    const c = net.connect(port, '127.0.0.1', () => c.write('hello\n', () => c.destroy()));
    c.on('error', () => {});
  }, Number(process.env.EVERY_MS || 500));
  return;
}

const sessions = new Set();
const server = net.createServer({ allowHalfOpen: true }, function handleSession(socket) {
  sessions.add(socket);
  socket.on('data', () => {});
  socket.on('end', () => {
    // BUG: the peer is gone but we never call socket.end() or socket.destroy().
  });
});
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const client = fork(__filename, ['client', String(port)]);
  console.log(`service pid ${process.pid} listening on 127.0.0.1:${port}; client pid ${client.pid}`);
});

// A service that accepts uploads and stops reading them: the receive queue fills and the
// clients block. (A paused stream that nobody resumes.)
//
//   node examples/unread.js
//   sudo sockleak trace --pid <service pid> --unread-after 10s
'use strict';
const net = require('net');
const { fork } = require('child_process');

if (process.argv[2] === 'client') {
  process.on('disconnect', () => process.exit(0)); // the service is gone
  const port = Number(process.argv[3]);
  const c = net.connect(port, '127.0.0.1');
  const chunk = Buffer.alloc(16 * 1024, 'u');
  const pump = () => { while (c.write(chunk)) {} };
  c.on('connect', pump);
  c.on('drain', pump);
  c.on('error', () => {});
  return;
}

const server = net.createServer(function acceptUpload(socket) {
  socket.once('data', () => {
    socket.pause(); // BUG: paused to "apply backpressure", never resumed.
  });
  socket.on('error', () => {});
});
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const client = fork(__filename, ['client', String(port)]);
  console.log(`service pid ${process.pid} listening on 127.0.0.1:${port}; client pid ${client.pid}`);
});

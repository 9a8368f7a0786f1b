// A service that ignores backpressure: it keeps writing to a client that stopped reading.
//
// socket.write() returns false once the kernel's send buffer is full; this service never
// checks and never waits for 'drain'. Data piles up in the kernel (the send queue, stuck)
// and then in Node's own buffers, and the process grows until it is killed.
//
//   node examples/backpressure-ignored.js
//   sudo sockleak trace --pid <service pid> --send-stuck-after 10s
'use strict';
const net = require('net');
const { fork } = require('child_process');

if (process.argv[2] === 'client') {
  process.on('disconnect', () => process.exit(0)); // the service is gone
  // The slow consumer: subscribes, then never reads another byte.
  const port = Number(process.argv[3]);
  for (let i = 0; i < 3; i++) {
    const c = net.connect(port, '127.0.0.1', () => c.write('subscribe\n'));
    c.pause();
  }
  setInterval(() => {}, 1 << 30);
  return;
}

const chunk = Buffer.alloc(64 * 1024, 'x');
const server = net.createServer(function streamUpdates(socket) {
  const timer = setInterval(() => {
    socket.write(chunk); // BUG: the return value says "stop"; nobody listens.
  }, Number(process.env.EVERY_MS || 50));
  socket.on('close', () => clearInterval(timer));
  socket.on('error', () => {});
});
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const client = fork(__filename, ['client', String(port)]);
  console.log(`service pid ${process.pid} listening on 127.0.0.1:${port}; client pid ${client.pid}`);
});

// The bench's Node.js client, run without perf-map flags: once a line comes on stdin, connects
// to PORT and closes, COUNT times one after another, from a few functions of its own (where a
// creation stack points). Prints {"connections": N, "seconds": S}.
'use strict';
const net = require('net');

const [port, count] = process.argv.slice(2, 4).map(Number);
let start;
let done = 0;

function openUpstream(onClosed) {
  const socket = net.connect(port, '127.0.0.1', () => socket.destroy());
  socket.on('close', onClosed);
  socket.on('error', () => {});
}

function handleRequest(onClosed) {
  openUpstream(onClosed);
}

function next() {
  if (done === count) {
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    process.stdout.write(JSON.stringify({ connections: done, seconds }) + '\n');
    process.exit(0);
  }
  done++;
  handleRequest(next);
}

process.stdin.once('data', () => {
  start = process.hrtime.bigint();
  next();
});

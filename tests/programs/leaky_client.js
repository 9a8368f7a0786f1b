// A Node.js client that opens connections with net.connect and never destroys them.
// Usage: node --perf-basic-prof --interpreted-frames-native-stack leaky_client.js PORT N
// Waits for a line on stdin, connects N times, prints "ok" once all are connected, then holds
// them until stdin closes.
'use strict';
const net = require('net');

const [port, count] = process.argv.slice(2).map(Number);
const kept = [];

function openAndForget(n, done) {
  let connected = 0;
  for (let i = 0; i < n; i++) {
    const socket = net.connect(port, '127.0.0.1', () => {
      if (++connected === n) done();
    });
    kept.push(socket); // never destroyed: the leak
  }
}

process.stdin.once('data', () => {
  openAndForget(count, () => process.stdout.write('ok\n'));
});
process.stdin.on('end', () => process.exit(0));

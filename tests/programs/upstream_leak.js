// A Node.js service whose request handler opens an upstream connection per request and keeps
// it: handleRequest() calls openUpstreamForRequest(), which calls net.connect() (or, with
// `http`, http.get() through a new http.Agent each time, a classic leak). Node opens the
// socket a tick later, from its own code; the stack that names these two functions is the one
// that made the connection's handle.
// Usage: node [FLAGS] upstream_leak.js PORT N [http]
// Reads commands, one a line, and answers each with "ok" and its results:
//   serve       listens on an ephemeral port and keeps what it accepts; answers the port
//   accepted K  answers once K connections have been accepted
//   go          handles N requests; answers once every upstream is connected, then holds
//               them until stdin closes
'use strict';
const net = require('net');
const http = require('http');
const readline = require('readline');

const [port, count] = process.argv.slice(2, 4).map(Number);
const viaHttp = process.argv[4] === 'http';
const upstreams = [];
const accepted = [];
let onAccepted = () => {};

function openUpstreamForRequest(onConnected) {
  if (viaHttp) {
    const request = http.get({ host: '127.0.0.1', port, agent: new http.Agent() }); // LEAK SITE
    request.on('error', () => {});
    request.on('socket', (socket) => socket.on('connect', onConnected));
    upstreams.push(request); // never answered, never aborted: the leak
    return;
  }
  const upstream = net.connect(port, '127.0.0.1', onConnected); // LEAK SITE
  upstreams.push(upstream); // kept for the request, never destroyed: the leak
}

function handleRequest(onConnected) {
  openUpstreamForRequest(onConnected);
}

const commands = {
  serve() {
    const server = net.createServer((socket) => {
      accepted.push(socket);
      onAccepted();
    });
    server.listen(0, '127.0.0.1', () => process.stdout.write(`ok ${server.address().port}\n`));
  },
  accepted(wanted) {
    onAccepted = () => {
      if (accepted.length >= Number(wanted)) {
        onAccepted = () => {};
        process.stdout.write('ok\n');
      }
    };
    onAccepted();
  },
  go() {
    let connected = 0;
    for (let i = 0; i < count; i++) {
      handleRequest(() => {
        if (++connected === count) process.stdout.write('ok\n');
      });
    }
  },
};

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [command, ...args] = line.trim().split(/\s+/);
  commands[command](...args);
});
process.stdin.on('end', () => process.exit(0));

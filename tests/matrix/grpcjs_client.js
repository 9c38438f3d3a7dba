// The concurrency matrix from @grpc/grpc-js: a seeded mix of the four call kinds (unary, client
// stream, server stream, bidi) with sizes 0 B - 8 MiB, cancellations and short deadlines, run
// concurrently on one channel or on several channels with their own connections. Every byte read
// back is compared with what was put.
//
// Usage: node grpcjs_client.js '{"protos": DIR, "address": "127.0.0.1:PORT", "client_id": ...,
//   "client_secret": ..., "bucket": NAME, "seed": N, "clients": N, "separate": BOOL,
//   "concurrency": N}'
// Prints one JSON line: {"calls", "kinds": {kind: n}, "outcomes": {outcome: n}, "failures": [...]}
// and exits 0 (the caller asserts on the summary); exits 1 only when the set-up itself failed.

'use strict';

const crypto = require('crypto');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const KiB = 1024;
const MiB = 1024 * 1024;
const SIZES = [0, 1, 1000, 64 * KiB, MiB + 3, 3 * MiB + 5, 8 * MiB];
const SIZE_WEIGHTS = [3, 3, 3, 3, 4, 2, 1];
const CALL_TIMEOUT_MS = 60000;
const SHORT_TIMEOUTS_MS = [1, 20, 100, 500];
// GetObjects cancelled after their first message (the info) or their first chunk, by size: the
// small ones race the server's end of the stream (the RST_STREAM may reach an ended stream).
const CANCEL_GETS = [[0, 1], [1000, 1], [1000, 2], [64 * KiB, 2], [MiB + 3, 2], [3 * MiB + 5, 2],
                     [8 * MiB, 2]];
const { CANCELLED, DEADLINE_EXCEEDED, NOT_FOUND } = grpc.status;

const args = JSON.parse(process.argv[2]);

// ------------------------------------------------------------------ seeded values

function prng(seed) {
  // mulberry32: a small seeded generator; returns floats in [0, 1)
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function content(seed, size) {
  // `size` bytes determined by `seed`
  const out = Buffer.allocUnsafe(size);
  let x = (seed * 2654435761 + 1) >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    for (let j = 0; j < 4 && i + j < size; j++) out[i + j] = (x >>> (8 * j)) & 0xff;
  }
  return out;
}

const sha256 = (data) => crypto.createHash('sha256').update(data).digest();
const seedKey = (size) => `seed-${size}`;
const seedContent = (size) => content(args.seed * 1000 + SIZES.indexOf(size), size);

function makePlan(seed) {
  const random = prng(seed);
  const pick = (items) => items[Math.floor(random() * items.length)];
  const size = () => {
    let roll = random() * SIZE_WEIGHTS.reduce((a, b) => a + b, 0);
    for (let i = 0; i < SIZES.length; i++) {
      roll -= SIZE_WEIGHTS[i];
      if (roll < 0) return SIZES[i];
    }
    return SIZES[SIZES.length - 1];
  };
  const ops = [];
  const add = (count, make) => { for (let i = 0; i < count; i++) ops.push(make(i)); };
  add(30, () => ({ kind: 'head', size: size() }));
  add(12, () => ({ kind: 'list' }));
  add(6, () => ({ kind: 'token' }));
  add(30, () => ({ kind: 'put', size: size() }));
  add(36, () => ({ kind: 'get', size: size() }));
  add(20, () => {
    const whole = pick(SIZES.filter((s) => s >= 1000));
    const start = Math.floor(random() * whole);
    const end = random() < 0.5 ? null : start + 1 + Math.floor(random() * (whole + 99 - start));
    return { kind: 'range', size: whole, start, end };
  });
  add(20, () => ({ kind: 'upload', size: size() }));
  add(14, (i) => ({ kind: 'cancel_get', size: CANCEL_GETS[i % CANCEL_GETS.length][0],
                     after: CANCEL_GETS[i % CANCEL_GETS.length][1] }));
  add(6, (i) => ({ kind: 'cancel_put', replace: i % 2 === 0 }));
  add(24, () => ({ kind: pick(['deadline_get', 'deadline_head', 'deadline_put']), size: size(),
                   timeout: pick(SHORT_TIMEOUTS_MS) }));
  for (let i = ops.length - 1; i > 0; i--) {  // a seeded shuffle
    const j = Math.floor(random() * (i + 1));
    [ops[i], ops[j]] = [ops[j], ops[i]];
  }
  ops.forEach((op, index) => { op.id = index; op.seed = seed * 100000 + index; });
  return ops;
}

// ------------------------------------------------------------------ clients

const definition = protoLoader.loadSync(
  ['anvil/v1/auth.proto', 'anvil/v1/bucket.proto', 'anvil/v1/object.proto',
   'anvil/v1/blob.proto', 'anvil/v1/upload.proto'].map((file) => path.join(args.protos, file)),
  { includeDirs: [args.protos], keepCase: true, longs: Number, enums: String, defaults: true,
    oneofs: true });
const anvil = grpc.loadPackageDefinition(definition).anvil.v1;

const channelOptions = {
  'grpc.max_receive_message_length': 64 * MiB,
  'grpc.max_send_message_length': 64 * MiB,
};
if (args.separate) channelOptions['grpc.use_local_subchannel_pool'] = 1;

function makeStubs(channel) {
  const opts = { channelOverride: channel };
  const creds = grpc.credentials.createInsecure();
  return {
    auth: new anvil.AuthService(args.address, creds, opts),
    buckets: new anvil.BucketService(args.address, creds, opts),
    objects: new anvil.ObjectService(args.address, creds, opts),
    blobs: new anvil.BlobService(args.address, creds, opts),
    uploads: new anvil.UploadService(args.address, creds, opts),
  };
}

const stats = { calls: 0, kinds: {}, outcomes: {}, failures: [] };
let metadata = null;

class Mismatch extends Error {}

function check(condition, what) {
  if (!condition) throw new Mismatch(what);
}

const deadlineIn = (ms) => ({ deadline: new Date(Date.now() + ms) });

function unary(client, method, request, timeoutMs = CALL_TIMEOUT_MS, withAuth = true) {
  stats.calls += 1;
  return new Promise((resolve, reject) => {
    const callback = (err, reply) => (err ? reject(err) : resolve(reply));
    if (withAuth) client[method](request, metadata, deadlineIn(timeoutMs), callback);
    else client[method](request, deadlineIn(timeoutMs), callback);
  });
}

function writeAll(call, messages) {
  // Write messages with backpressure, then half-close.
  return (async () => {
    for (const message of messages) {
      if (!call.write(message)) await new Promise((resolve) => call.once('drain', resolve));
    }
    call.end();
  })();
}

function* putMessages(bucket, key, data) {
  yield { metadata: { bucket_name: bucket, object_key: key, content_length: data.length } };
  for (let start = 0; start < data.length; start += MiB) {
    yield { chunk: data.subarray(start, start + MiB) };
  }
}

function putObject(stubs, key, data, timeoutMs = CALL_TIMEOUT_MS) {
  stats.calls += 1;
  let call;
  const done = new Promise((resolve, reject) => {
    call = stubs.objects.PutObject(metadata, deadlineIn(timeoutMs),
                                   (err, reply) => (err ? reject(err) : resolve(reply)));
  });
  writeAll(call, putMessages(args.bucket, key, data)).catch(() => {});
  return done;
}

function readStream(call, onMessage) {
  // Collect a server stream's messages; resolves with them, rejects with the status error.
  return new Promise((resolve, reject) => {
    const messages = [];
    call.on('data', (message) => {
      messages.push(message);
      if (onMessage) onMessage(message, messages);
    });
    call.on('error', reject);
    call.on('end', () => resolve(messages));
  });
}

async function readObject(stubs, key, timeoutMs = CALL_TIMEOUT_MS, range = null) {
  stats.calls += 1;
  const request = { bucket_name: args.bucket, object_key: key };
  if (range) request.range = range;
  const messages = await readStream(stubs.objects.GetObject(request, metadata,
                                                            deadlineIn(timeoutMs)));
  check(messages.length > 0 && messages[0].data === 'info', 'GetObject did not start with info');
  const chunks = messages.slice(1).map((m) => {
    check(m.data === 'chunk' && m.chunk.length > 0 && m.chunk.length <= MiB,
          `a ${m.data} message of ${m.chunk && m.chunk.length} bytes`);
    return m.chunk;
  });
  return { info: messages[0].info, data: Buffer.concat(chunks) };
}

async function checkObject(stubs, key, data, timeoutMs = CALL_TIMEOUT_MS) {
  const { info, data: got } = await readObject(stubs, key, timeoutMs);
  check(Number(info.size) === data.length && info.etag === sha256(data).toString('hex'),
        `info of ${key}: size ${info.size}`);
  check(got.equals(data), `bytes of ${key}: ${got.length} read, ${data.length} put`);
}

// Whether a call under a `timeoutMs` deadline ended as an expired one may: DEADLINE_EXCEEDED, or
// CANCELLED once the deadline has passed (a server whose own copy of the deadline fires while a
// response message is half sent resets the stream with RST_STREAM(CANCEL), which reaches a client
// whose timer is late -- a busy event loop -- as CANCELLED). CANCELLED before it is a failure.
const expired = (err, started, timeoutMs) => !(err instanceof Mismatch)
  && (err.code === DEADLINE_EXCEEDED
      || (err.code === CANCELLED && Date.now() - started >= timeoutMs));

const codeOf = async (promise) => {
  try { await promise; return grpc.status.OK; } catch (err) { return err.code; }
};

// ------------------------------------------------------------------ operations

const OPS = {
  async head(op, stubs) {
    const data = seedContent(op.size);
    const reply = await unary(stubs.objects, 'HeadObject',
                              { bucket_name: args.bucket, object_key: seedKey(op.size) });
    check(Number(reply.info.size) === data.length
          && reply.info.etag === sha256(data).toString('hex'), 'HeadObject info');
    return 'ok';
  },
  async list(op, stubs) {
    const reply = await unary(stubs.objects, 'ListObjects',
                              { bucket_name: args.bucket, prefix: 'seed-' });
    const keys = reply.objects.map((o) => o.object_key);
    const expected = SIZES.map(seedKey).sort(
      (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    check(JSON.stringify(keys) === JSON.stringify(expected), `ListObjects: ${keys}`);
    return 'ok';
  },
  async token(op, stubs) {
    const reply = await unary(stubs.auth, 'GetAccessToken',
                              { client_id: args.client_id, client_secret: args.client_secret },
                              CALL_TIMEOUT_MS, false);
    check(reply.token_type === 'Bearer' && reply.access_token, 'GetAccessToken');
    return 'ok';
  },
  async put(op, stubs) {
    const data = content(op.seed, op.size);
    const key = `put-${op.id}`;
    const reply = await putObject(stubs, key, data);
    check(reply.etag === sha256(data).toString('hex') && Number(reply.size) === data.length,
          'PutObject reply');
    await checkObject(stubs, key, data);
    return 'ok';
  },
  async get(op, stubs) {
    await checkObject(stubs, seedKey(op.size), seedContent(op.size));
    return 'ok';
  },
  async range(op, stubs) {
    const data = seedContent(op.size);
    const range = op.end === null ? { start: op.start } : { start: op.start, end: op.end };
    const { info, data: got } = await readObject(stubs, seedKey(op.size), CALL_TIMEOUT_MS, range);
    check(Number(info.size) === data.length, `ranged info.size ${info.size}`);
    const end = op.end === null ? data.length : Math.min(op.end, data.length);
    check(got.equals(data.subarray(op.start, end)), `ranged bytes ${JSON.stringify(op)}`);
    return 'ok';
  },
  async upload(op, stubs) {
    const data = content(op.seed, op.size);
    const digest = sha256(data);
    const messages = [{ start: { total_size: data.length } }];
    for (let start = 0; start < data.length; start += MiB) {
      messages.push({ chunk: { data: data.subarray(start, start + MiB), offset: start } });
    }
    messages.push({ complete: { expected_hash: digest } });
    stats.calls += 1;
    const call = stubs.uploads.Upload(metadata, deadlineIn(CALL_TIMEOUT_MS));
    const acks = readStream(call);
    writeAll(call, messages).catch(() => {});
    const received = await acks;
    const key = Buffer.from(`sha256:${digest.toString('hex')}`);
    check(received.length > 0 && received[0].upload_id !== '', 'Upload: no start ack');
    const last = received[received.length - 1];
    check(last.complete && Buffer.from(last.complete.key).equals(key)
          && Number(last.complete.size) === data.length, 'Upload: last ack');
    stats.calls += 1;
    const chunks = await readStream(stubs.blobs.GetBlob({ key }, metadata,
                                                        deadlineIn(CALL_TIMEOUT_MS)));
    let offset = 0;
    for (const chunk of chunks) {
      check(Number(chunk.offset) === offset, `GetBlob offset ${chunk.offset}, expected ${offset}`);
      offset += chunk.data.length;
    }
    check(Buffer.concat(chunks.map((c) => c.data)).equals(data), 'GetBlob bytes');
    return 'ok';
  },
  async cancel_get(op, stubs) {
    // GetObject cancelled once `op.after` messages arrived (the info, and the first chunk).
    const data = seedContent(op.size);
    stats.calls += 1;
    const call = stubs.objects.GetObject({ bucket_name: args.bucket, object_key: seedKey(op.size) },
                                         metadata, deadlineIn(CALL_TIMEOUT_MS));
    let cancelledAt = -1;
    try {
      const messages = await readStream(call, (message, all) => {
        if (all.length === op.after && cancelledAt < 0) {
          cancelledAt = op.after;
          call.cancel();
        }
      });
      // The status had arrived before the cancel: then every byte must be there and right.
      check(messages[0].data === 'info', 'GetObject did not start with info');
      check(Buffer.concat(messages.slice(1).map((m) => m.chunk)).equals(data),
            'GetObject bytes (the cancel came after the end)');
      return 'ok';
    } catch (err) {
      if (err instanceof Mismatch || err.code !== CANCELLED || cancelledAt < 0) throw err;
      return 'cancelled';
    }
  },
  async cancel_put(op, stubs) {
    // PutObject cancelled after 2 of its 3 MiB: the key stays absent, or unchanged.
    const key = `cancelled-${op.id}`;
    let before = null;
    if (op.replace) {
      before = content(op.seed, MiB + 3);
      await putObject(stubs, key, before);
    }
    const data = content(op.seed + 1, 3 * MiB);
    stats.calls += 1;
    let call;
    const done = new Promise((resolve, reject) => {
      call = stubs.objects.PutObject(metadata, deadlineIn(CALL_TIMEOUT_MS),
                                     (err, reply) => (err ? reject(err) : resolve(reply)));
    });
    const messages = [...putMessages(args.bucket, key, data)].slice(0, 3);
    await new Promise((resolve) => {
      // cancel once the metadata and two chunks were flushed (or at once if the call ended)
      let flushed = 0;
      done.catch(() => {}).finally(resolve);
      for (const message of messages) {
        call.write(message, () => { flushed += 1; if (flushed === messages.length) resolve(); });
      }
    });
    call.cancel();
    const code = await codeOf(done);
    check(code === CANCELLED, `a cancelled PutObject ended with code ${code}`);
    if (before === null) {
      const head = await codeOf(unary(stubs.objects, 'HeadObject',
                                      { bucket_name: args.bucket, object_key: key }));
      check(head === NOT_FOUND, `a cancelled put left ${key}: code ${head}`);
    } else {
      await checkObject(stubs, key, before);
    }
    return 'cancelled';
  },
  async deadline_get(op, stubs) {
    const started = Date.now();
    try {
      await checkObject(stubs, seedKey(op.size), seedContent(op.size), op.timeout);
    } catch (err) {
      if (!expired(err, started, op.timeout)) throw err;
      return 'expired';
    }
    return 'ok';
  },
  async deadline_head(op, stubs) {
    let reply;
    const started = Date.now();
    try {
      reply = await unary(stubs.objects, 'HeadObject',
                          { bucket_name: args.bucket, object_key: seedKey(op.size) }, op.timeout);
    } catch (err) {
      if (!expired(err, started, op.timeout)) throw err;
      return 'expired';
    }
    check(Number(reply.info.size) === op.size, 'HeadObject size');
    return 'ok';
  },
  async deadline_put(op, stubs) {
    // OK with the right bytes, or DEADLINE_EXCEEDED and the key absent or exactly what was put.
    const data = content(op.seed, op.size);
    const key = `deadline-${op.id}`;
    let reply;
    const started = Date.now();
    try {
      reply = await putObject(stubs, key, data, op.timeout);
    } catch (err) {
      if (!expired(err, started, op.timeout)) throw err;
      try {
        await checkObject(stubs, key, data);
      } catch (later) {
        if (later instanceof Mismatch || later.code !== NOT_FOUND) throw later;
      }
      return 'expired';
    }
    check(reply.etag === sha256(data).toString('hex'), 'PutObject reply');
    await checkObject(stubs, key, data);
    return 'ok';
  },
};

// ------------------------------------------------------------------ main

async function main() {
  const channels = [];
  for (let i = 0; i < args.clients; i++) {
    channels.push(new grpc.Channel(args.address, grpc.credentials.createInsecure(),
                                   channelOptions));
  }
  const stubs = channels.map(makeStubs);
  try {
    const token = await unary(stubs[0].auth, 'GetAccessToken',
                              { client_id: args.client_id, client_secret: args.client_secret },
                              CALL_TIMEOUT_MS, false);
    metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${token.access_token}`);
    await unary(stubs[0].buckets, 'CreateBucket', { bucket_name: args.bucket });
    for (const size of SIZES) {
      const data = seedContent(size);
      const reply = await putObject(stubs[0], seedKey(size), data);
      if (reply.etag !== sha256(data).toString('hex')) throw new Error(`seed put ${size}`);
    }
  } catch (err) {
    process.stderr.write(`set-up failed: ${err.stack || err}\n`);
    process.exit(1);
  }

  const plan = makePlan(args.seed);
  let next = 0;
  async function worker() {
    while (next < plan.length) {
      const op = plan[next++];
      stats.kinds[op.kind] = (stats.kinds[op.kind] || 0) + 1;
      try {
        const outcome = await OPS[op.kind](op, stubs[op.id % stubs.length]);
        stats.outcomes[outcome] = (stats.outcomes[outcome] || 0) + 1;
      } catch (err) {
        const what = err instanceof Mismatch ? `WRONG ${err.message}`
          : `FAILED code ${err.code} ${JSON.stringify(err.details || err.message)}`;
        stats.failures.push(`op ${JSON.stringify(op)}: ${what}`);
      }
    }
  }
  await Promise.all(Array.from({ length: args.concurrency }, worker));
  for (const channel of channels) channel.close();
  process.stdout.write(`${JSON.stringify(stats)}\n`);
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});

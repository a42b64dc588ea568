'use strict';
// Load-test peer: sends one push per subscription with npm `web-push` at its best. The library
// signs and encrypts (`generateRequestDetails`, which neither caches the VAPID token nor keeps
// connections); requests go out over one HTTP/2 session per origin, trusting --ca, with at most
// --concurrency in flight. Its own `sendNotification` would use one HTTPS/1.1 request per push
// through Node's agent, which is slower. Contract: loadtest/peers/README.md.

const crypto = require('crypto');
const fs = require('fs');
const http2 = require('http2');
const tls = require('tls');
const webpush = require('web-push');

const PEER = 'node-web-push';
const LIBRARY = 'web-push';
const VERSION = require('web-push/package.json').version;

const FLAGS = {
  subscriptions: { required: true },
  ca: { required: true },
  'vapid-private': { required: true },
  'vapid-public': { required: true },
  subject: { required: true },
  'payload-bytes': { required: true, integer: true, min: 0 },
  count: { required: true, integer: true, min: 0 },
  concurrency: { default: '100', integer: true, min: 1 },
  ttl: { default: '60', integer: true, min: 0 },
};

function fail(message) {
  process.stderr.write(`${PEER}: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const values = {};
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    if (!flag.startsWith('--')) fail(`unexpected argument ${JSON.stringify(flag)}`);
    let name = flag.slice(2);
    let value;
    const eq = name.indexOf('=');
    if (eq >= 0) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    } else {
      if (i + 1 >= argv.length) fail(`--${name} needs a value`);
      value = argv[i + 1];
      i += 1;
    }
    if (!(name in FLAGS)) fail(`unknown flag --${name}`);
    values[name] = value;
  }
  const args = {};
  for (const [name, spec] of Object.entries(FLAGS)) {
    let value = values[name];
    if (value === undefined) {
      if (spec.required) fail(`--${name} is required`);
      value = spec.default;
    }
    if (spec.integer) {
      if (!/^\d+$/.test(value) || Number(value) < spec.min) {
        fail(`--${name} must be an integer >= ${spec.min}, got ${JSON.stringify(value)}`);
      }
      value = Number(value);
    }
    args[name] = value;
  }
  return args;
}

function loadSubscriptions(path, count) {
  let text;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (e) {
    fail(`reading --subscriptions ${path}: ${e.message}`);
  }
  const subscriptions = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length && subscriptions.length < count; i += 1) {
    if (lines[i].trim() === '') continue;
    let sub;
    try {
      sub = JSON.parse(lines[i]);
    } catch (e) {
      fail(`${path} line ${i + 1}: not JSON: ${e.message}`);
    }
    if (!sub || typeof sub.endpoint !== 'string' || !sub.keys || !sub.keys.p256dh || !sub.keys.auth) {
      fail(`${path} line ${i + 1}: not a PushSubscription (endpoint, keys.p256dh, keys.auth)`);
    }
    let url;
    try {
      url = new URL(sub.endpoint);
    } catch (e) {
      fail(`${path} line ${i + 1}: endpoint is not a URL`);
    }
    subscriptions.push({ sub, origin: url.origin, path: url.pathname + url.search });
  }
  if (subscriptions.length < count) {
    fail(`--count ${count} but ${path} holds only ${subscriptions.length} subscriptions`);
  }
  return subscriptions;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const subscriptions = loadSubscriptions(args.subscriptions, args.count);
  let ca;
  try {
    ca = fs.readFileSync(args.ca, 'utf8');
  } catch (e) {
    fail(`reading --ca ${args.ca}: ${e.message}`);
  }
  if (!ca.includes('-----BEGIN CERTIFICATE-----')) fail(`--ca ${args.ca} holds no PEM certificate`);
  const vapidDetails = {
    subject: args.subject,
    publicKey: args['vapid-public'],
    privateKey: args['vapid-private'],
  };
  // Let the library reject bad keys or subject before anything is measured.
  try {
    webpush.setVapidDetails(vapidDetails.subject, vapidDetails.publicKey, vapidDetails.privateKey);
  } catch (e) {
    fail(`VAPID details rejected by web-push: ${e.message}`);
  }
  // web-push checks each key's length only; a mismatched pair would fail every push instead.
  const ecdh = crypto.createECDH('prime256v1');
  try {
    ecdh.setPrivateKey(Buffer.from(vapidDetails.privateKey, 'base64url'));
  } catch (e) {
    fail(`--vapid-private is not a P-256 private scalar: ${e.message}`);
  }
  if (!ecdh.getPublicKey().equals(Buffer.from(vapidDetails.publicKey, 'base64url'))) {
    fail('--vapid-public does not match --vapid-private');
  }
  const options = { vapidDetails, TTL: args.ttl, contentEncoding: 'aes128gcm' };
  const payload = Buffer.alloc(args['payload-bytes'], 'x');
  const caList = [...tls.rootCertificates, ca];

  const sessions = new Map();
  function session(origin) {
    let s = sessions.get(origin);
    if (!s || s.closed || s.destroyed) {
      s = http2.connect(origin, { ca: caList });
      // A session error fails its streams, which are counted there; nothing to add here.
      s.on('error', () => {});
      sessions.set(origin, s);
    }
    return s;
  }

  const statuses = {};
  const errors = {};
  let accepted = 0;
  const count = (map, key) => { map[key] = (map[key] || 0) + 1; };

  function send(item) {
    return new Promise((resolve) => {
      let details;
      try {
        // Empty payload means "no payload" to web-push, which is what 0 bytes asks for.
        details = webpush.generateRequestDetails(item.sub, payload.length ? payload : null, options);
      } catch (e) {
        count(errors, `web-push: ${e.message}`);
        resolve();
        return;
      }
      const headers = { ':method': 'POST', ':path': item.path };
      for (const [name, value] of Object.entries(details.headers)) headers[name.toLowerCase()] = value;
      let req;
      try {
        req = session(item.origin).request(headers);
      } catch (e) {
        count(errors, e.code || 'request');
        resolve();
        return;
      }
      let status = 0;
      req.on('response', (h) => { status = h[':status']; });
      req.on('data', () => {});
      req.on('end', () => {
        count(statuses, String(status));
        if (status >= 200 && status < 300) accepted += 1;
        resolve();
      });
      req.on('error', (e) => {
        // A failed session cancels its streams; the cause (e.g. ECONNREFUSED) says more.
        count(errors, (e.cause && e.cause.code) || e.code || 'stream');
        resolve();
      });
      req.end(details.body || undefined);
    });
  }

  let next = 0;
  async function worker() {
    while (next < subscriptions.length) {
      const item = subscriptions[next];
      next += 1;
      await send(item);
    }
  }

  const cpuStart = process.cpuUsage();
  const start = process.hrtime.bigint();
  const workers = [];
  for (let i = 0; i < Math.min(args.concurrency, subscriptions.length); i += 1) workers.push(worker());
  Promise.all(workers).then(() => {
    const wall = Number(process.hrtime.bigint() - start) / 1e9;
    const cpu = process.cpuUsage(cpuStart);
    const cpuSeconds = (cpu.user + cpu.system) / 1e6;
    for (const s of sessions.values()) s.close();
    const report = {
      peer: PEER,
      library: LIBRARY,
      version: VERSION,
      sent: subscriptions.length,
      accepted,
      statuses,
      errors,
      wall_seconds: wall,
      cpu_seconds: cpuSeconds,
      concurrency: args.concurrency,
      payload_bytes: args['payload-bytes'],
    };
    process.stderr.write(`${PEER}: ${report.sent} pushes in ${wall.toFixed(3)} s `
      + `(${Math.round(report.sent / wall)}/s), ${cpuSeconds.toFixed(3)} CPU-s `
      + `(${Math.round(report.sent / cpuSeconds)} per CPU-second)\n`);
    process.stdout.write(`${JSON.stringify(report)}\n`);
    process.exitCode = Object.keys(errors).length === 0 ? 0 : 1;
  });
}

main();

// Node side of crates/webpush/tests/crosscheck.rs: Web Push crypto done by npm's web-push and
// the http_ece it depends on (found through NODE_PATH, which the Rust test sets).
//
// Reads {"cases": [{"op": ..., ...}, ...]} on stdin and writes {"results": [...]} on stdout, one
// result per case in order. Bytes travel as unpadded base64url. A case that throws yields
// {"error": "..."} so that the Rust side can check refusals too.
'use strict';

const crypto = require('crypto');
const webpush = require('web-push');
// The copy web-push itself loads, not whichever http_ece happens to be first on the path.
const ece = require(require.resolve('http_ece', { paths: [require.resolve('web-push')] }));

const b64 = (buf) => Buffer.from(buf).toString('base64url');
const bytes = (text) => Buffer.from(text, 'base64url');

function ecdh(privateKey) {
  const key = crypto.createECDH('prime256v1');
  key.setPrivateKey(bytes(privateKey));
  return key;
}

const ops = {
  // http_ece as the user agent; aesgcm takes the salt and dh from c, aes128gcm from the body.
  decrypt: (c) => ({
    plaintext: b64(ece.decrypt(bytes(c.body), {
      version: c.version, privateKey: ecdh(c.private_key), authSecret: c.auth, salt: c.salt, dh: c.dh,
    })),
  }),

  // http_ece as the sender with a caller-chosen ephemeral key, salt and padding.
  encrypt_fixed: (c) => ({
    body: b64(ece.encrypt(bytes(c.plaintext), {
      version: c.version, privateKey: ecdh(c.sender_private_key), dh: c.p256dh, authSecret: c.auth,
      salt: c.salt, pad: c.pad, rs: c.rs,
    })),
  }),

  // web-push's request for a send (fresh key and salt), built but not sent.
  request_details: (c) => {
    const subscription = { endpoint: 'https://push.invalid/x', keys: { p256dh: c.p256dh, auth: c.auth } };
    const options = { contentEncoding: c.version };
    if (c.vapid) {
      const keys = webpush.generateVAPIDKeys();
      options.vapidDetails = { subject: 'mailto:ops@pushfan.invalid', ...keys };
    }
    const details = webpush.generateRequestDetails(subscription, bytes(c.plaintext), options);
    return { body: b64(details.body), headers: details.headers };
  },

  // A key pair as `web-push generate-vapid-keys` makes it.
  generate_vapid_keys: () => webpush.generateVAPIDKeys(),

  // web-push's VAPID headers for a given key (checked by its own key validation first).
  vapid_headers: (c) => webpush.getVapidHeaders(c.aud, c.sub, c.public_key, c.private_key, c.version, c.exp),
};

function run(c) {
  try {
    return ops[c.op](c);
  } catch (e) {
    return { error: String(e) };
  }
}

const chunks = [];
process.stdin.on('data', (chunk) => chunks.push(chunk));
process.stdin.on('end', () => {
  const { cases } = JSON.parse(Buffer.concat(chunks).toString());
  process.stdout.write(JSON.stringify({ results: cases.map(run) }));
});

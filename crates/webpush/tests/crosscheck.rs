//! Cross-implementation tests: pushfan-webpush against independent Web Push implementations.
//! Encryption, on every backend: PyPI's `http_ece` (by an RFC 8188 author) and `pywebpush`, npm's
//! `web-push` and the `http_ece` it depends on. VAPID: PyJWT, `py_vapid`, `cryptography`, `web-push`.
//!
//! The other sides are `tests/crosscheck/check.py` and `check.js`; `scripts/setup.d/10-crosscheck.sh`
//! installs their pinned dependencies and exports `PUSHFAN_CROSSCHECK_PYTHON` and
//! `PUSHFAN_CROSSCHECK_NODE_PATH`. Each test starts each interpreter at most once, with all of its
//! cases in one JSON document.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use pushfan_webpush::message::encrypt_with_keys;
use pushfan_webpush::vapid::{self, Subject, TokenCache, VapidKey, VapidSigner};
use pushfan_webpush::{
    b64, encrypt, AesgcmParams, Backend, ContentEncoding, EncryptedPush, Padding, UserAgentKeys,
};
use serde_json::{json, Value};

/// Payload sizes: empty, one byte, typical, and the largest one `aes128gcm` body holds.
/// The package's directory as the test runner gives it at run time. The compile-time value may
/// name another clone: clones share one target directory, and cargo reuses a test binary that
/// an identical clone elsewhere built.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

const SIZES: [usize; 4] = [0, 1, 100, 3993];
const ENCODINGS: [ContentEncoding; 2] = [ContentEncoding::Aes128gcm, ContentEncoding::Aesgcm];

#[derive(Debug, Clone, Copy)]
enum Peer {
    Python,
    Node,
}

impl Peer {
    const ALL: [Peer; 2] = [Peer::Python, Peer::Node];

    /// Runs every case in one process and returns one result per case.
    fn run(self, cases: &[Value]) -> Vec<Value> {
        let script = |name: &str| format!("{}/tests/crosscheck/{name}", manifest_dir());
        let mut command = match self {
            Peer::Python => {
                let mut c = Command::new(tool_env("PUSHFAN_CROSSCHECK_PYTHON"));
                c.arg(script("check.py"));
                c
            }
            Peer::Node => {
                let mut c = Command::new("node");
                c.arg(script("check.js")).env("NODE_PATH", tool_env("PUSHFAN_CROSSCHECK_NODE_PATH"));
                c
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{self:?} cannot start ({e}): run scripts/test (it installs the cross-check tools)")
            });
        // The scripts read all of stdin before they write, so this cannot deadlock. A write error
        // (the script died at start-up) is reported after its stderr, which says why.
        let input = serde_json::to_vec(&json!({ "cases": cases })).unwrap();
        let written = child.stdin.take().unwrap().write_all(&input);
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{self:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        written.unwrap();
        let reply: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!("{self:?} wrote no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout))
        });
        let results = reply["results"].as_array().expect("results").clone();
        assert_eq!(results.len(), cases.len(), "{self:?} answered a different number of cases");
        results
    }
}

fn tool_env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run scripts/test (it installs the cross-check tools)"))
}

/// A result's field as bytes; panics with the peer's error if the case failed.
fn field(result: &Value, name: &str, label: &str) -> Vec<u8> {
    if let Some(error) = result.get("error") {
        panic!("{label}: {error}");
    }
    let text = result[name].as_str().unwrap_or_else(|| panic!("{label}: no `{name}` in {result}"));
    b64::decode(text).unwrap_or_else(|e| panic!("{label}: `{name}` is not base64url: {e}"))
}

/// Bytes that vary with position and length, so that a misplaced record or offset shows.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + len) as u8).collect()
}

/// A case asking a peer to read `push` as the user agent `ua`.
fn decrypt_case(ua: &UserAgentKeys, push: &EncryptedPush, body: &[u8]) -> Value {
    let mut case = json!({
        "op": "decrypt",
        "version": push.encoding.as_str(),
        "body": b64::encode(body),
        "private_key": b64::encode(ua.private_key()),
        "auth": b64::encode(ua.subscription_keys().auth()),
    });
    if let Some(params) = &push.aesgcm {
        case["salt"] = b64::encode(&params.salt).into();
        case["dh"] = b64::encode(&params.dh).into();
    }
    case
}

/// Subscriber keys in the form browsers hand out.
fn subscription_fields(ua: &UserAgentKeys) -> (String, String) {
    let keys = ua.subscription_keys();
    (b64::encode(keys.p256dh()), b64::encode(keys.auth()))
}

/// The value of `name=` among `;`/`,`-separated header parameters (`dh=…;p256ecdsa=…`).
fn header_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value.split([';', ',']).find_map(|p| p.trim().strip_prefix(name)?.strip_prefix('='))
}

/// `base` with the fields of `extra` added.
fn merged(base: &Value, extra: Value) -> Value {
    let mut case = base.clone();
    case.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    case
}

fn aesgcm_params(salt: &[u8], dh: &[u8], label: &str) -> AesgcmParams {
    AesgcmParams {
        salt: salt.try_into().unwrap_or_else(|_| panic!("{label}: salt is {} bytes", salt.len())),
        dh: dh.try_into().unwrap_or_else(|_| panic!("{label}: dh is {} bytes", dh.len())),
    }
}

fn ours_to_theirs(encoding: ContentEncoding) {
    let mut cases = Vec::new();
    let mut expected = Vec::new();
    for backend in Backend::ALL {
        let ua = UserAgentKeys::generate(backend).unwrap();
        for padding in [Padding::None, Padding::standard_buckets()] {
            for len in SIZES {
                let plaintext = payload(len);
                let push = encrypt(backend, ua.subscription_keys(), encoding, &plaintext, &padding).unwrap();
                cases.push(decrypt_case(&ua, &push, &push.body));
                expected.push((format!("{backend:?} {encoding} {padding:?} {len} bytes"), plaintext));
            }
        }
    }
    for peer in Peer::ALL {
        for (result, (label, plaintext)) in peer.run(&cases).iter().zip(&expected) {
            let label = format!("{peer:?} decrypting {label}");
            assert_eq!(field(result, "plaintext", &label), *plaintext, "{label}");
        }
    }
}

#[test]
fn python_and_node_decrypt_our_aes128gcm() {
    ours_to_theirs(ContentEncoding::Aes128gcm);
}

#[test]
fn python_and_node_decrypt_our_aesgcm() {
    ours_to_theirs(ContentEncoding::Aesgcm);
}

/// A message a peer encrypted for one of our user agents, as we expect to read it.
struct Sent {
    label: String,
    backend: Backend,
    plaintext: Vec<u8>,
}

fn theirs_to_ours(encoding: ContentEncoding) {
    let uas = Backend::ALL.map(|backend| (backend, UserAgentKeys::generate(backend).unwrap()));
    let mut python = (Vec::new(), Vec::new());
    let mut node = (Vec::new(), Vec::new());
    for (backend, ua) in &uas {
        let (p256dh, auth) = subscription_fields(ua);
        for len in SIZES {
            let plaintext = payload(len);
            let base = json!({
                "version": encoding.as_str(), "p256dh": p256dh, "auth": auth,
                "plaintext": b64::encode(&plaintext),
            });
            // pywebpush refuses an empty payload (`NoData`) rather than encrypting it.
            if len > 0 {
                python.0.push(merged(&base, json!({ "op": "pywebpush_encode" })));
                let label = format!("pywebpush {encoding} {len} bytes for {backend:?}");
                python.1.push(Sent { label, backend: *backend, plaintext: plaintext.clone() });
            }
            // With VAPID, web-push appends `;p256ecdsa=…` to the aesgcm `Crypto-Key` header.
            for vapid in [false, true] {
                node.0.push(merged(&base, json!({ "op": "request_details", "vapid": vapid })));
                let label = format!("web-push {encoding} {len} bytes (vapid {vapid}) for {backend:?}");
                node.1.push(Sent { label, backend: *backend, plaintext: plaintext.clone() });
            }
        }
        if encoding == ContentEncoding::Aes128gcm {
            // RFC 8188 allows many records per body: 100-byte records carry 1000 bytes in 13.
            let sender = UserAgentKeys::generate(*backend).unwrap();
            let plaintext = payload(1000);
            python.0.push(json!({
                "op": "encrypt_fixed", "version": "aes128gcm", "rs": 100, "p256dh": p256dh, "auth": auth,
                "sender_private_key": b64::encode(sender.private_key()), "salt": b64::encode(&[7; 16]),
                "plaintext": b64::encode(&plaintext),
            }));
            let label = format!("http_ece aes128gcm in 100-byte records for {backend:?}");
            python.1.push(Sent { label, backend: *backend, plaintext });
        }
    }
    let ua_for = |backend: Backend| &uas.iter().find(|(b, _)| *b == backend).unwrap().1;

    for (result, sent) in Peer::Python.run(&python.0).iter().zip(&python.1) {
        let body = field(result, "body", &sent.label);
        let params = (encoding == ContentEncoding::Aesgcm).then(|| {
            aesgcm_params(&field(result, "salt", &sent.label), &field(result, "dh", &sent.label), &sent.label)
        });
        let read = ua_for(sent.backend).decrypt(sent.backend, encoding, &body, params.as_ref());
        assert_eq!(read.as_deref(), Ok(&sent.plaintext[..]), "{}", sent.label);
    }

    for (result, sent) in Peer::Node.run(&node.0).iter().zip(&node.1) {
        let body = field(result, "body", &sent.label);
        let headers = &result["headers"];
        assert_eq!(headers["Content-Encoding"], encoding.as_str(), "{}", sent.label);
        let params = (encoding == ContentEncoding::Aesgcm).then(|| {
            let header = |name: &str, param: &str| {
                let value =
                    headers[name].as_str().unwrap_or_else(|| panic!("{}: no {name} header", sent.label));
                let text = header_param(value, param)
                    .unwrap_or_else(|| panic!("{}: no {param} in {value}", sent.label));
                b64::decode(text).unwrap()
            };
            aesgcm_params(&header("Encryption", "salt"), &header("Crypto-Key", "dh"), &sent.label)
        });
        let read = ua_for(sent.backend).decrypt(sent.backend, encoding, &body, params.as_ref());
        assert_eq!(read.as_deref(), Ok(&sent.plaintext[..]), "{}", sent.label);
    }
}

#[test]
fn we_decrypt_pywebpush_and_web_push_aes128gcm() {
    theirs_to_ours(ContentEncoding::Aes128gcm);
}

#[test]
fn we_decrypt_pywebpush_and_web_push_aesgcm() {
    theirs_to_ours(ContentEncoding::Aesgcm);
}

#[test]
fn fixed_key_and_salt_give_the_same_bytes_as_http_ece() {
    // Any fixed valid scalar and salt will do: both sides get the same ones.
    let sender = [0x5a; 32];
    let salt = [0xc3; 16];
    let mut python = (Vec::new(), Vec::new());
    let mut node = (Vec::new(), Vec::new());
    for backend in Backend::ALL {
        let ua = UserAgentKeys::generate(backend).unwrap();
        let (p256dh, auth) = subscription_fields(&ua);
        for encoding in ENCODINGS {
            for len in SIZES {
                let plaintext = payload(len);
                let keys = ua.subscription_keys();
                let ours = |pad| {
                    encrypt_with_keys(backend, keys, encoding, &plaintext, pad, &sender, salt).unwrap().body
                };
                let base = json!({
                    "op": "encrypt_fixed", "version": encoding.as_str(), "p256dh": p256dh, "auth": auth,
                    "sender_private_key": b64::encode(&sender), "salt": b64::encode(&salt),
                    "plaintext": b64::encode(&plaintext),
                });
                // Python's http_ece cannot pad, and for an empty aes128gcm payload it writes a header
                // with no record at all (RFC 8188 wants a last record holding the delimiter).
                if !(len == 0 && encoding == ContentEncoding::Aes128gcm) {
                    python.0.push(base.clone());
                    python.1.push((format!("http_ece.py {backend:?} {encoding} {len} bytes"), ours(0)));
                }
                for pad in [0, 27.min(encoding.max_plaintext_len() - len)] {
                    node.0.push(merged(&base, json!({ "pad": pad })));
                    let label = format!("http_ece.js {backend:?} {encoding} {len} bytes pad {pad}");
                    node.1.push((label, ours(pad)));
                }
            }
        }
    }
    for (peer, (cases, expected)) in [(Peer::Python, python), (Peer::Node, node)] {
        for (result, (label, ours)) in peer.run(&cases).iter().zip(&expected) {
            assert!(field(result, "body", label) == ours[..], "{label}: bodies differ");
        }
    }
}

#[test]
fn http_ece_refuses_a_body_with_one_flipped_byte() {
    let mut cases = Vec::new();
    let mut expected = Vec::new();
    for backend in Backend::ALL {
        let ua = UserAgentKeys::generate(backend).unwrap();
        for encoding in ENCODINGS {
            let push =
                encrypt(backend, ua.subscription_keys(), encoding, &payload(100), &Padding::None).unwrap();
            // The untouched body first, so that a refusal below is the flip's doing.
            cases.push(decrypt_case(&ua, &push, &push.body));
            expected.push((format!("{backend:?} {encoding} untouched"), true));
            let len = push.body.len();
            let positions = match encoding {
                // Salt, key id length, sender key, data, tag. (Not the record size: it is not
                // authenticated, and a one-record body reads the same under any size it fits.)
                ContentEncoding::Aes128gcm => vec![0, 20, 30, 100, len - 1],
                ContentEncoding::Aesgcm => vec![0, 1, 50, len - 1],
            };
            for at in positions {
                let mut body = push.body.to_vec();
                body[at] ^= 0x01;
                cases.push(decrypt_case(&ua, &push, &body));
                expected.push((format!("{backend:?} {encoding} byte {at} of {len} flipped"), false));
            }
        }
    }
    for peer in Peer::ALL {
        for (result, (label, readable)) in peer.run(&cases).iter().zip(&expected) {
            if *readable {
                assert_eq!(field(result, "plaintext", label), payload(100), "{peer:?} {label}");
            } else {
                assert!(result.get("error").is_some(), "{peer:?} read {label}: {result}");
            }
        }
    }
}

/// PyJWT and py_vapid check the real clock, so these tokens are signed against it too.
fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn pyjwt_and_py_vapid_verify_our_vapid_tokens() {
    let now = now_unix();
    let mut cases = Vec::new();
    let mut expected = Vec::new();
    for (subject, audience) in [
        ("mailto:ops@pushfan.example", "https://fcm.googleapis.com"),
        ("https://pushfan.example/contact", "https://push.example.net:8443"),
    ] {
        let signer = VapidSigner::new(VapidKey::generate(), Subject::parse(subject).unwrap());
        let token = TokenCache::new(signer).token(audience, now);
        let claims = json!({ "aud": audience, "exp": token.expires_at, "sub": subject });
        let key = &token.public_key_base64;
        let case = |authorization: &str, aud: &str| {
            json!({ "op": "verify_vapid", "authorization": authorization, "aud": aud,
                    "crypto_key": format!("p256ecdsa={key}") })
        };
        cases.push(case(&token.authorization, audience));
        expected.push((format!("{audience} vapid"), Ok(("vapid", claims.clone()))));
        cases.push(case(&token.legacy_authorization(), audience));
        expected.push((format!("{audience} legacy WebPush"), Ok(("WebPush", claims))));

        // One base64url character in the middle of the signature, changed.
        let mut forged = token.jwt.clone().into_bytes();
        let at = forged.len() - 20;
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        cases.push(case(&format!("vapid t={forged}, k={key}"), audience));
        expected.push((format!("{audience} forged signature"), Err("InvalidSignatureError")));
        cases.push(case(&token.authorization, "https://other.example"));
        expected.push((format!("{audience} other audience"), Err("InvalidAudienceError")));
    }
    for (result, (label, expected)) in Peer::Python.run(&cases).iter().zip(&expected) {
        match expected {
            Ok((scheme, claims)) => {
                assert!(result.get("error").is_none(), "{label}: {result}");
                assert_eq!(result["scheme"], *scheme, "{label}");
                assert_eq!(result["jwt_header"], json!({ "typ": "JWT", "alg": "ES256" }), "{label}");
                assert_eq!(result["pyjwt_claims"], *claims, "{label}: PyJWT");
                assert_eq!(result["py_vapid_claims"], *claims, "{label}: py_vapid");
                assert_eq!(result["py_vapid_token_ok"], true, "{label}: py_vapid");
            }
            Err(error) => {
                let got = result["error"].as_str().unwrap_or_else(|| panic!("{label} verified: {result}"));
                assert!(got.starts_with(error), "{label}: expected {error}, got {got}");
            }
        }
    }
}

#[test]
fn we_verify_py_vapid_and_web_push_tokens() {
    let now = now_unix();
    let exp = now + 3600;
    let (aud, sub) = ("https://push.example.net:8443", "mailto:ops@pushfan.example");
    let python = Peer::Python.run(&[json!({ "op": "sign_vapid", "aud": aud, "sub": sub, "exp": exp })]);
    let authorization =
        python[0]["authorization"].as_str().unwrap_or_else(|| panic!("py_vapid: {}", python[0]));
    let verified = vapid::verify(authorization, aud, now).unwrap_or_else(|e| panic!("py_vapid token: {e}"));
    assert_eq!(b64::encode(&verified.public_key), python[0]["public"], "py_vapid key");
    assert_eq!((verified.subject.as_str(), verified.expires_at), (sub, exp), "py_vapid claims");

    // web-push signs with keys we exported, which its own validation accepts first.
    let ours = VapidKey::generate();
    let node = Peer::Node.run(&[json!({
        "op": "vapid_headers", "aud": aud, "sub": sub, "exp": exp, "version": "aes128gcm",
        "public_key": ours.public_base64(), "private_key": ours.private_base64(),
    })]);
    let authorization = node[0]["Authorization"].as_str().unwrap_or_else(|| panic!("web-push: {}", node[0]));
    let verified = vapid::verify(authorization, aud, now).unwrap_or_else(|e| panic!("web-push token: {e}"));
    assert_eq!(&verified.public_key, ours.public_key(), "web-push key");
    assert_eq!((verified.subject.as_str(), verified.expires_at), (sub, exp), "web-push claims");
}

#[test]
fn vapid_keys_move_between_us_python_and_node() {
    let ours: Vec<VapidKey> = (0..3).map(|_| VapidKey::generate()).collect();
    let mut cases: Vec<Value> = ours
        .iter()
        .map(|key| json!({ "op": "import_key", "pem": key.to_pkcs8_pem(), "raw": key.private_base64() }))
        .collect();
    cases.extend((0..3).map(|_| json!({ "op": "generate_key" })));
    let results = Peer::Python.run(&cases);
    let (imported, generated) = results.split_at(ours.len());
    for (key, result) in ours.iter().zip(imported) {
        for how in ["cryptography_pem", "py_vapid_pem", "py_vapid_raw"] {
            assert_eq!(result[how], key.public_base64(), "{how} import of our {key:?}: {result}");
        }
    }
    for result in generated {
        let public = result["public"].as_str().unwrap_or_else(|| panic!("py_vapid: {result}"));
        for (how, key) in [
            ("PKCS#8 PEM", VapidKey::from_pem(result["pkcs8_pem"].as_str().unwrap())),
            ("SEC1 PEM", VapidKey::from_pem(result["sec1_pem"].as_str().unwrap())),
            ("raw base64url", VapidKey::from_base64(result["raw"].as_str().unwrap())),
        ] {
            let key = key.unwrap_or_else(|e| panic!("py_vapid key as {how}: {e}"));
            assert_eq!(key.public_base64(), public, "py_vapid key as {how}");
        }
    }

    // Many keys, so that across runs the rare scalar with a leading zero byte (1 in 256), which
    // web-push once emitted unpadded, comes by too.
    let generated = Peer::Node.run(&vec![json!({ "op": "generate_vapid_keys" }); 32]);
    for result in &generated {
        let private = result["privateKey"].as_str().unwrap_or_else(|| panic!("web-push: {result}"));
        let key = VapidKey::from_base64(private).unwrap_or_else(|e| panic!("web-push key {result}: {e}"));
        assert_eq!(key.public_base64(), result["publicKey"], "web-push key");
    }
}

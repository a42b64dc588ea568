"""Python side of crates/webpush/tests/crosscheck.rs: Web Push crypto done by PyPI libraries.

Reads {"cases": [{"op": ..., ...}, ...]} on stdin and writes {"results": [...]} on stdout, one
result per case in order. Bytes travel as unpadded base64url. A case that raises yields
{"error": "..."} so that the Rust side can check refusals too.
"""

import base64
import json
import sys

import http_ece
from cryptography.hazmat.primitives.asymmetric import ec
from pywebpush import WebPusher


def b64d(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def private_key(raw_b64):
    return ec.derive_private_key(int.from_bytes(b64d(raw_b64), "big"), ec.SECP256R1())


def decrypt(c):
    """http_ece as the user agent: aes128gcm reads salt and dh from the body, aesgcm from c."""
    extra = {"salt": b64d(c["salt"]), "dh": b64d(c["dh"])} if c["version"] == "aesgcm" else {}
    plaintext = http_ece.decrypt(
        b64d(c["body"]),
        private_key=private_key(c["private_key"]),
        auth_secret=b64d(c["auth"]),
        version=c["version"],
        **extra,
    )
    return {"plaintext": b64e(plaintext)}


def encrypt_fixed(c):
    """http_ece as the sender, with a caller-chosen ephemeral key and salt (and record size)."""
    body = http_ece.encrypt(
        b64d(c["plaintext"]),
        salt=b64d(c["salt"]),
        private_key=private_key(c["sender_private_key"]),
        dh=b64d(c["p256dh"]),
        auth_secret=b64d(c["auth"]),
        rs=c.get("rs", 4096),
        version=c["version"],
    )
    return {"body": b64e(body)}


def pywebpush_encode(c):
    """pywebpush's own encryption step (fresh key and salt), without sending anything."""
    pusher = WebPusher({"endpoint": "https://push.invalid/x", "keys": {"p256dh": c["p256dh"], "auth": c["auth"]}})
    reply = pusher.encode(b64d(c["plaintext"]), c["version"])
    result = {"body": b64e(reply["body"])}
    if c["version"] == "aesgcm":
        result.update(salt=reply["salt"].decode(), dh=reply["crypto_key"].decode())
    return result


OPS = {f.__name__: f for f in (decrypt, encrypt_fixed, pywebpush_encode)}


def run(case):
    try:
        return OPS[case["op"]](case)
    except Exception as e:  # noqa: BLE001 - every failure is a result the Rust side judges
        return {"error": f"{type(e).__name__}: {e}"}


if __name__ == "__main__":
    json.dump({"results": [run(c) for c in json.load(sys.stdin)["cases"]]}, sys.stdout)

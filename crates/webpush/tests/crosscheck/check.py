"""Python side of crates/webpush/tests/crosscheck.rs: Web Push crypto done by PyPI libraries.

Reads {"cases": [{"op": ..., ...}, ...]} on stdin and writes {"results": [...]} on stdout, one
result per case in order. Bytes travel as unpadded base64url. A case that raises yields
{"error": "..."} so that the Rust side can check refusals too.
"""

import base64
import json
import sys

import http_ece
import jwt
import py_vapid
import py_vapid.jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pywebpush import WebPusher

RAW_POINT = (serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def b64d(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def private_key(raw_b64):
    return ec.derive_private_key(int.from_bytes(b64d(raw_b64), "big"), ec.SECP256R1())


def raw_public(key):
    return b64e(key.public_bytes(*RAW_POINT))


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


def verify_vapid(c):
    """Reads a VAPID Authorization header as a push service would, with PyJWT and with py_vapid.

    `vapid t=..., k=...` (RFC 8292) or legacy `WebPush <jwt>` with the key in c["crypto_key"].
    py_vapid's own header parser (Vapid02.verify) splits at the last space and so cannot read the
    `, k=` form that pushfan and npm web-push send; its token check and JWT decoder are used instead.
    """
    scheme, params = c["authorization"].split(" ", 1)
    if scheme == "vapid":
        fields = dict(p.strip().split("=", 1) for p in params.split(","))
        token, key = fields["t"], fields["k"]
    else:
        token, key = params, c["crypto_key"].removeprefix("p256ecdsa=")
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(key))
    claims = jwt.decode(token, public, algorithms=["ES256"], audience=c["aud"], options={"require": ["aud", "exp", "sub"]})
    signed, signature = token.rsplit(".", 1)
    return {
        "scheme": scheme,
        "key": key,
        "jwt_header": jwt.get_unverified_header(token),
        "pyjwt_claims": claims,
        "py_vapid_claims": py_vapid.jwt.decode(token, key),
        "py_vapid_token_ok": py_vapid.Vapid02.from_raw_public(key.encode()).verify_token(signed.encode(), signature),
    }


def import_key(c):
    """Imports a private key as PKCS#8 PEM (cryptography, py_vapid) and as a raw scalar (py_vapid)."""
    return {
        "cryptography_pem": raw_public(serialization.load_pem_private_key(c["pem"].encode(), None).public_key()),
        "py_vapid_pem": raw_public(py_vapid.Vapid02.from_pem(c["pem"].encode()).public_key),
        "py_vapid_raw": raw_public(py_vapid.Vapid02.from_raw(c["raw"].encode()).public_key),
    }


def generate_key(c):
    """A py_vapid key as PKCS#8 PEM, as SEC1 PEM (cryptography) and as the raw private scalar."""
    vapid = py_vapid.Vapid02()
    vapid.generate_keys()
    key = vapid.private_key
    sec1 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    return {
        "pkcs8_pem": vapid.private_pem().decode(),
        "sec1_pem": sec1.decode(),
        "raw": b64e(key.private_numbers().private_value.to_bytes(32, "big")),
        "public": raw_public(key.public_key()),
    }


def sign_vapid(c):
    """A py_vapid Authorization header from a fresh key, for the Rust side to verify."""
    vapid = py_vapid.Vapid02()
    vapid.generate_keys()
    header = vapid.sign({"aud": c["aud"], "sub": c["sub"], "exp": c["exp"]})
    return {"authorization": header["Authorization"], "public": raw_public(vapid.public_key)}


OPS = {
    f.__name__: f
    for f in (decrypt, encrypt_fixed, pywebpush_encode, verify_vapid, import_key, generate_key, sign_vapid)
}


def run(case):
    try:
        return OPS[case["op"]](case)
    except Exception as e:  # noqa: BLE001 - every failure is a result the Rust side judges
        return {"error": f"{type(e).__name__}: {e}"}


if __name__ == "__main__":
    json.dump({"results": [run(c) for c in json.load(sys.stdin)["cases"]]}, sys.stdout)

"""Load-test peer: sends one push per subscription with pywebpush 2.x at its best.

`webpush_async` signs (no token cache: that is how the library is used) and encrypts each push
and posts it on one shared aiohttp session (keep-alive, at most --concurrency connections,
HTTP/1.1: aiohttp has no HTTP/2). The VAPID key is parsed once into a `Vapid` object. Contract:
loadtest/peers/README.md.
"""

import argparse
import asyncio
import base64
import json
import resource
import ssl
import sys
import time
from importlib.metadata import version
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid
from pywebpush import WebPushException, webpush_async

PEER = "pywebpush"
LIBRARY = "pywebpush"


def fail(message):
    print(f"{PEER}: {message}", file=sys.stderr)
    sys.exit(2)


def non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subscriptions", required=True, help="JSON lines of PushSubscription.toJSON()")
    p.add_argument("--ca", required=True, help="PEM CA that signed the push service's certificate")
    p.add_argument("--vapid-private", required=True, help="raw 32-byte P-256 scalar, base64url")
    p.add_argument("--vapid-public", required=True, help="raw 65-byte public key, base64url")
    p.add_argument("--subject", required=True, help="VAPID sub claim")
    p.add_argument("--payload-bytes", required=True, type=non_negative)
    p.add_argument("--count", required=True, type=non_negative)
    p.add_argument("--concurrency", type=positive, default=100)
    p.add_argument("--ttl", type=non_negative, default=60)
    return p.parse_args()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_subscriptions(path, count):
    subscriptions = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if len(subscriptions) == count:
                    break
                if not line.strip():
                    continue
                try:
                    sub = json.loads(line)
                    endpoint = sub["endpoint"]
                    sub["keys"]["p256dh"], sub["keys"]["auth"]
                except (ValueError, KeyError, TypeError):
                    fail(f"{path} line {number}: not a PushSubscription (endpoint, keys.p256dh, keys.auth)")
                parts = urlsplit(endpoint)
                if parts.scheme not in ("https", "http") or not parts.hostname:
                    fail(f"{path} line {number}: endpoint is not an http(s) URL")
                subscriptions.append(sub)
    except OSError as e:
        fail(f"reading --subscriptions {path}: {e.strerror}")
    if len(subscriptions) < count:
        fail(f"--count {count} but {path} holds only {len(subscriptions)} subscriptions")
    return subscriptions


def load_vapid(private_b64, public_b64):
    try:
        vapid = Vapid.from_string(private_key=private_b64)
        public = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    except Exception as e:  # py_vapid raises several kinds for a bad key
        fail(f"--vapid-private is not a base64url P-256 private scalar: {e}")
    try:
        expected = b64url_decode(public_b64)
    except ValueError:
        fail("--vapid-public is not base64url")
    if public != expected:
        fail("--vapid-public does not match --vapid-private")
    return vapid


def ssl_context(ca):
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        fail(f"--ca {ca}: {e}")
    return ctx


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(args, subscriptions, vapid):
    payload = "x" * args.payload_bytes
    statuses, errors = {}, {}
    accepted = 0

    # trust_env=False: REQUESTS_CA_BUNDLE and proxy variables in the environment must not
    # decide which CA or route the peer uses; the explicit SSL context does.
    connector = aiohttp.TCPConnector(limit=args.concurrency, ssl=ssl_context(args.ca))
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:

        async def send(sub):
            nonlocal accepted
            try:
                # A fresh claims dict per push: webpush_async fills `aud` from the endpoint and
                # `exp` into the dict it is given, so a shared one would carry the first origin.
                response = await webpush_async(
                    subscription_info=sub,
                    data=payload or None,
                    vapid_private_key=vapid,
                    vapid_claims={"sub": args.subject},
                    ttl=args.ttl,
                    aiohttp_session=session,
                )
                status = response.status
            except WebPushException as e:
                if e.response is None:
                    errors[f"webpush: {e.message}"] = errors.get(f"webpush: {e.message}", 0) + 1
                    return
                status = e.response.status
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                kind = type(e).__name__
                errors[kind] = errors.get(kind, 0) + 1
                return
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if 200 <= status < 300:
                accepted += 1

        pending = iter(subscriptions)

        async def worker():
            for sub in pending:
                await send(sub)

        cpu_start = cpu_seconds()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(args.concurrency, len(subscriptions)))))
        wall = time.perf_counter() - start
        cpu = cpu_seconds() - cpu_start
    return accepted, statuses, errors, wall, cpu


def main():
    args = parse_args()
    subscriptions = load_subscriptions(args.subscriptions, args.count)
    vapid = load_vapid(args.vapid_private, args.vapid_public)
    accepted, statuses, errors, wall, cpu = asyncio.run(run(args, subscriptions, vapid))
    report = {
        "peer": PEER,
        "library": LIBRARY,
        "version": version("pywebpush"),
        "sent": len(subscriptions),
        "accepted": accepted,
        "statuses": statuses,
        "errors": errors,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "concurrency": args.concurrency,
        "payload_bytes": args.payload_bytes,
    }
    rate = len(subscriptions) / wall if wall else 0.0
    per_cpu = len(subscriptions) / cpu if cpu else 0.0
    print(
        f"{PEER}: {len(subscriptions)} pushes in {wall:.3f} s ({rate:.0f}/s), "
        f"{cpu:.3f} CPU-s ({per_cpu:.0f} per CPU-second)",
        file=sys.stderr,
    )
    print(json.dumps(report), flush=True)
    sys.exit(0 if not errors else 1)


if __name__ == "__main__":
    main()

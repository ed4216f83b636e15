#!/usr/bin/env python3
"""Verifies a patterns-connector request signature (see the README).

    verify_signature.py SECRET TIMESTAMP SIGNATURE [TOLERANCE_SECONDS] < body.json

Exits 0 when the signature matches and the timestamp is within the tolerance
(default 300 s; 0 disables the check), 1 otherwise. The body is the JSON the
connector sent, decompressed if it was gzipped. In a web framework, use
`verify(secret, headers, raw_body)`.
"""
import hashlib
import hmac
import sys
import time


def verify(secret: bytes, timestamp: str, signature: str, body: bytes, tolerance: int = 300) -> bool:
    if tolerance and abs(time.time() - int(timestamp)) > tolerance:
        return False  # too old (or from the future): a replay
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("v1=" + expected, signature)


if __name__ == "__main__":
    secret, timestamp, signature = sys.argv[1], sys.argv[2], sys.argv[3]
    tolerance = int(sys.argv[4]) if len(sys.argv) > 4 else 300
    ok = verify(secret.encode(), timestamp, signature, sys.stdin.buffer.read(), tolerance)
    print("valid" if ok else "INVALID")
    sys.exit(0 if ok else 1)

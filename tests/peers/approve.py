#!/usr/bin/env python3
"""The demo approver: mint a human approval (a JWT) for one request Tessera asked approval for.

A request denied only by `@approval("required")` policies gets `approval_required` with an
approval request: `digest` (SHA-256, base64url, of the RFC 8785 (JCS) canonical JSON of principal, action,
resource, route and MCP arguments or HTTP path) and `request` (what was asked, for the approver to
read). The approver signs an approval naming that digest; the client retries the same request with
the approval in the `x-tessera-approval` header; Tessera accepts it once.

Signed with joserfc and the TEST/DEMO-ONLY approver key tests/keys/approver-ed25519.pem (kid
`demo-approver`, public in tests/keys/approver-jwks.json). Never trust it in production.

CLI (prints one approval):
    python tests/peers/approve.py <digest> [--approver alice@example.com] [--ttl 120]
    curl … | python tests/peers/approve.py -        # read a denial (HTTP body or JSON-RPC error)

Library:
    from approve import approve, digest_of
    approval = approve(reply["approval"]["digest"], approver="alice@example.com")
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import jcs
from joserfc import jwt
from joserfc.jwk import OKPKey

KEYS_DIR = Path(__file__).resolve().parents[1] / "keys"

APPROVALS = "https://approvals.demo.tessera.dev"
APPROVAL_AUDIENCE = "tessera-approvals"
APPROVER_KID = "demo-approver"
HEADER = "x-tessera-approval"


def approver_jwks() -> dict:
    """The approval issuer's public JWKS (for `approval.jwks` in the filter's configuration)."""
    return json.loads((KEYS_DIR / "approver-jwks.json").read_text())


def approval_config(**overrides: Any) -> dict:
    """The filter's `approval` configuration section for the demo approver."""
    return {"issuer": APPROVALS, "audiences": [APPROVAL_AUDIENCE], "jwks": approver_jwks(),
            "max_ttl_s": 300, **overrides}


def canonical(value: Any) -> str:
    """RFC 8785 (JCS) canonical JSON, by the `jcs` package: what the filter hashes."""
    return jcs.canonicalize(value).decode()


def digest_of(request: dict) -> str:
    """The digest of an approval request's `request` object, computed independently of the filter."""
    d = hashlib.sha256(jcs.canonicalize(request)).digest()
    return base64.urlsafe_b64encode(d).rstrip(b"=").decode()


def approve(digest: str, approver: str = "alice@example.com", ttl: int = 120, jti: str | None = None,
            **claims: Any) -> str:
    """An approval of the request whose digest is `digest`: short-lived, single-use (a fresh jti)."""
    now = int(time.time())
    payload = {"iss": APPROVALS, "aud": APPROVAL_AUDIENCE, "sub": approver, "iat": now, "exp": now + ttl,
               "jti": jti or str(uuid.uuid4()), "approval_digest": digest, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    key = OKPKey.import_key((KEYS_DIR / "approver-ed25519.pem").read_bytes())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*EdDSA is deprecated.*")
        return jwt.encode({"alg": "EdDSA", "typ": "approval+jwt", "kid": APPROVER_KID}, payload, key,
                          algorithms=["EdDSA"])


def approval_request(reply: dict) -> dict:
    """The approval request in a denial: an HTTP 403 body, or a JSON-RPC error response."""
    if "approval" in reply:
        return reply["approval"]
    error = reply.get("error") if isinstance(reply.get("error"), dict) else reply
    data = error.get("data") or {}
    if "approval" not in data:
        raise ValueError("no approval request in this reply")
    return data["approval"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Mint a TEST/DEMO-ONLY approval for a request digest.")
    ap.add_argument("digest", help="the digest from approval_required, or - to read the denial on stdin")
    ap.add_argument("--approver", default="alice@example.com")
    ap.add_argument("--ttl", type=int, default=120, help="exp - iat in seconds (default 120)")
    ap.add_argument("--jti", help="default: a fresh UUID")
    args = ap.parse_args(argv)
    digest = args.digest
    if digest == "-":
        request = approval_request(json.load(sys.stdin))
        print(f"approving: {canonical(request['request'])}", file=sys.stderr)
        digest = request["digest"]
    print(approve(digest, approver=args.approver, ttl=args.ttl, jti=args.jti))
    return 0


if __name__ == "__main__":
    sys.exit(main())

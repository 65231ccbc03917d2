#!/usr/bin/env python3
"""Mint JWTs for Tessera's tests and demo with joserfc, using the TEST/DEMO-ONLY keys in tests/keys/.

joserfc is independent of the filter's JOSE library (Rust jwt-simple), so a token that round-trips
here and is accepted by the filter shows interoperability, not one library agreeing with itself.

Library use:
    from mint import mint, unsigned, tampered, key_confusion, embedded_jwk, act_chain
    token = mint("ES256", {"sub": "agent-7", "iss": AGENTS, "aud": "orders-api", "scope": "orders:read"})

CLI (prints one token):
    python tests/peers/mint.py --alg ES256 --sub agent-7 --iss https://agents.demo.tessera.dev \
        --aud orders-api --scope "orders:read"
    python tests/peers/mint.py --alg EdDSA --scope orders:read --claim single_use=true --count 50000
        # 50,000 tokens, one a line, each with its own jti (the load run's single-use tokens)
    python tests/peers/mint.py --attack none --sub agent-7      # unsigned alg:none token
    python tests/peers/mint.py --iss https://idp.demo.tessera.dev --sub alice --groups finance \
        --act planner,executor --claim 'authorization_details=[{"type":"mcp_tool","identifier":"read_file"}]'

Attack helpers craft tokens by hand (no joserfc) where joserfc rightly refuses to produce them.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

KEYS_DIR = Path(__file__).resolve().parents[1] / "keys"

IDP = "https://idp.demo.tessera.dev"
AGENTS = "https://agents.demo.tessera.dev"
LEGACY = "https://legacy.demo.tessera.dev"
AUDIENCE = "orders-api"

ALGS = ["EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "HS256"]

# alg -> (key file stem, default kid)
_DEFAULTS: dict[str, tuple[str, str | None]] = {
    "EdDSA": ("ed25519", "demo-ed25519"),
    "ES256": ("p256", "demo-p256"),
    "ES384": ("p384", "demo-p384"),
    **{a: ("rsa2048", f"demo-{a.lower()}") for a in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]},
    "HS256": ("hmac", None),
}

_KEY_CLASSES = {"EdDSA": OKPKey, "ES256": ECKey, "ES384": ECKey}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64u_json(obj: dict) -> str:
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


def hmac_secret() -> bytes:
    """The legacy issuer's HS256 secret: tests/keys/hmac.b64 decoded (base64url)."""
    return b64u_decode((KEYS_DIR / "hmac.b64").read_text().strip())


def pem(stem: str) -> bytes:
    """PEM bytes of tests/keys/<stem>.pem (e.g. "p256", "attacker-ed25519", "rsa2048.pub")."""
    return (KEYS_DIR / f"{stem}.pem").read_bytes()


def _joserfc_key(alg: str, key: Any):
    """Turn `key` (None → default demo key; PEM bytes/str; a path; a joserfc key; raw HMAC bytes) into a joserfc key."""
    if key is None:
        stem = _DEFAULTS[alg][0]
        key = hmac_secret() if stem == "hmac" else pem(stem)
    if isinstance(key, Path):
        key = key.read_bytes()
    if isinstance(key, (OKPKey, ECKey, RSAKey, OctKey)):
        return key
    if alg.startswith("HS"):
        return OctKey.import_key(key if isinstance(key, bytes) else key.encode())
    cls = _KEY_CLASSES.get(alg, RSAKey)
    return cls.import_key(key)


def default_claims(claims: dict) -> dict:
    """Copy `claims`, adding iat=now and exp=now+300 unless given; a claim set to None is removed."""
    now = int(time.time())
    out = {"iat": now, "exp": now + 300, **claims}
    return {k: v for k, v in out.items() if v is not None}


def _header(alg: str, kid: Any, headers_extra: dict | None) -> dict:
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is None:
        kid = _DEFAULTS.get(alg, (None, None))[1]
    if kid:  # kid=False or "" → no kid
        header["kid"] = kid
    header.update(headers_extra or {})
    return header


def mint(alg: str, claims: dict, kid: str | None = None, headers_extra: dict | None = None, key: Any = None) -> str:
    """Sign a JWT with joserfc.

    alg: EdDSA, ES256, ES384, RS256/384/512, PS256/384/512 or HS256.
    claims: payload; iat=now and exp=now+300 are added unless present (set one to None to omit it).
    kid: None → the demo kid for `alg` (HS256: none); False/"" → no kid header.
    headers_extra: merged into the protected header.
    key: None → the demo key for `alg`; else PEM (bytes/str/Path) or a joserfc key; HS256: raw secret bytes.
    """
    if alg not in _DEFAULTS:
        raise ValueError(f"unsupported alg {alg!r}; one of {ALGS}")
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" as deprecated by RFC 9864 (in favour of "Ed25519"); it is what
        # the filter's JWKS names, so keep it and keep the output quiet.
        warnings.filterwarnings("ignore", message=".*EdDSA is deprecated.*")
        return jwt.encode(_header(alg, kid, headers_extra), default_claims(claims), _joserfc_key(alg, key),
                          algorithms=[alg])


def act_chain(actors: list[str]) -> dict | None:
    """RFC 8693 §4.1 `act` claim for `actors` listed in the order they acted (earliest first): the
    last one is the current actor (outermost), each earlier one nested inside the next."""
    act = None
    for a in actors:
        act = {"sub": a, **({"act": act} if act else {})}
    return act


# ---------------------------------------------------------------------------------------------
# Attack tokens, crafted by hand.

def _raw_sign(alg: str, signing_input: bytes, key: Any) -> bytes:
    if alg.startswith("HS"):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        return hmac.new(key, signing_input, digest).digest()
    priv = serialization.load_pem_private_key(key, password=None)
    if alg == "EdDSA" and isinstance(priv, ed25519.Ed25519PrivateKey):
        return priv.sign(signing_input)
    if alg == "RS256" and isinstance(priv, rsa.RSAPrivateKey):
        return priv.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    raise ValueError(f"raw signing supports HS*, EdDSA (Ed25519 key), RS256 (RSA key); got {alg}")


def _compact(header: dict, claims: dict, sign_alg: str | None = None, key: Any = None) -> str:
    signing_input = f"{b64u_json(header)}.{b64u_json(claims)}"
    sig = b"" if sign_alg is None else _raw_sign(sign_alg, signing_input.encode(), key)
    return f"{signing_input}.{b64u(sig)}"


def unsigned(claims: dict, alg: str = "none", kid: str | None = None) -> str:
    """An unsigned token: header alg "none" (or a case variant such as "None"), empty signature."""
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid:
        header["kid"] = kid
    return _compact(header, default_claims(claims))


def tampered(token: str, changes: dict) -> str:
    """The same header and signature, with the payload's claims updated by `changes` (None removes)."""
    h, p, s = token.split(".")
    claims = {**json.loads(b64u_decode(p)), **changes}
    claims = {k: v for k, v in claims.items() if v is not None}
    return f"{h}.{b64u_json(claims)}.{s}"


def key_confusion(claims: dict, kid: str = "demo-rs256") -> str:
    """HS256 signed with the RSA *public* key PEM as the HMAC secret, naming an RSA kid (CVE-2016-10555 style)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    return _compact(header, default_claims(claims), "HS256", pem("rsa2048.pub"))


def embedded_jwk(claims: dict, kid: str | None = "demo-ed25519", attacker: str = "ed25519") -> str:
    """Signed by an attacker key whose public JWK is embedded in the header (`jwk`), claiming a real kid."""
    from genkeys import public_jwk  # same directory

    priv_pem = pem(f"attacker-{'ed25519' if attacker == 'ed25519' else 'rsa2048'}")
    alg = "EdDSA" if attacker == "ed25519" else "RS256"
    pub = serialization.load_pem_private_key(priv_pem, password=None).public_key()
    header: dict[str, Any] = {"alg": alg, "typ": "JWT", "jwk": public_jwk(pub)}
    if kid:
        header["kid"] = kid
    return _compact(header, default_claims(claims), alg, priv_pem)


def forged(claims: dict, alg: str = "EdDSA", kid: str = "demo-ed25519") -> str:
    """Signed by an attacker key (not in the JWKS) while naming a real kid."""
    stem = "attacker-ed25519" if alg == "EdDSA" else "attacker-rsa2048"
    return _compact({"alg": alg, "typ": "JWT", "kid": kid}, default_claims(claims), alg, pem(stem))


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Mint a TEST/DEMO-ONLY JWT and print it.")
    ap.add_argument("--alg", default="ES256", choices=ALGS)
    ap.add_argument("--sub", default="agent-7")
    ap.add_argument("--iss", help=f"default {AGENTS} ({LEGACY} for HS256)")
    ap.add_argument("--aud", default=AUDIENCE)
    ap.add_argument("--scope", help='space-separated scopes, e.g. "orders:read orders:write"')
    ap.add_argument("--groups", help="comma-separated groups claim, e.g. admins,staff")
    ap.add_argument("--email")
    ap.add_argument("--kid", help="override the kid header ('' for none)")
    ap.add_argument("--ttl", type=int, default=300, help="exp - iat in seconds (default 300)")
    ap.add_argument("--act", metavar="A,B,…",
                    help="RFC 8693 act chain, actors in the order they acted (the last is the current actor)")
    ap.add_argument("--claim", action="append", default=[], metavar="NAME=JSON",
                    help="extra claim, value parsed as JSON if possible (repeatable)")
    ap.add_argument("--attack", choices=["none", "tamper", "key-confusion", "embedded-jwk", "forged"],
                    help="craft an attack token instead of a valid one")
    ap.add_argument("--count", type=int, metavar="N",
                    help="print N tokens, one a line, each with its own jti (a UUID4)")
    args = ap.parse_args(argv)
    if args.count is not None and (args.count < 1 or args.attack):
        ap.error("--count needs N >= 1 and no --attack")

    now = int(time.time())
    claims: dict[str, Any] = {"iss": args.iss or (LEGACY if args.alg == "HS256" else AGENTS),
                              "sub": args.sub, "aud": args.aud, "iat": now, "exp": now + args.ttl}
    if args.scope is not None:
        claims["scope"] = args.scope
    if args.groups is not None:
        claims["groups"] = [g for g in args.groups.split(",") if g]
    if args.email is not None:
        claims["email"] = args.email
    if args.act:
        claims["act"] = act_chain([a for a in args.act.split(",") if a])
    for item in args.claim:
        name, _, raw = item.partition("=")
        try:
            claims[name] = json.loads(raw)
        except json.JSONDecodeError:
            claims[name] = raw

    if args.attack == "none":
        token = unsigned(claims)
    elif args.attack == "tamper":
        token = tampered(mint(args.alg, claims, kid=args.kid), {"sub": "admin"})
    elif args.attack == "key-confusion":
        token = key_confusion(claims)
    elif args.attack == "embedded-jwk":
        token = embedded_jwk(claims)
    elif args.attack == "forged":
        token = forged(claims)
    elif args.count is not None:
        if "jti" in claims:
            ap.error("--count gives every token its own jti; do not pass one")
        # The key is parsed once, not once a token: 50,000 tokens take seconds, not minutes.
        key = _joserfc_key(args.alg, None)
        out = sys.stdout
        for _ in range(args.count):
            out.write(mint(args.alg, {**claims, "jti": str(uuid.uuid4())}, kid=args.kid, key=key))
            out.write("\n")
        out.flush()
        return 0
    else:
        token = mint(args.alg, claims, kid=args.kid)
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())

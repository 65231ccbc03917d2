#!/usr/bin/env python3
"""DPoP proofs (RFC 9449) minted with joserfc, independent of the filter's Rust JOSE code.

    from dpop import generate_key, jkt, proof, ath
    key = generate_key("ES256")
    token = mint(..., {"cnf": {"jkt": jkt(key)}, ...})                  # tests/peers/mint.py
    headers = {"authorization": f"DPoP {token}",
               "dpop": proof(key, "GET", "https://api.example.com/orders/1", token)}

    python tests/peers/dpop.py         # self-test: thumbprints against RFC 7638 by hand, proof shape

A proof is a compact JWS: header {typ: "dpop+jwt", alg, jwk: the public key}, claims {jti, htm,
htu, iat, ath when an access token is given, nonce when given} (RFC 9449 §4.2). The keyword
arguments of `proof()` make deliberately wrong ones: another typ, alg "none" (empty signature),
alg "HS256" (an HMAC, by default keyed with the signer's public key PEM: key confusion), a `jwk`
of another key than the signer (`extra_header={"jwk": public_jwk(other)}`), a private `jwk`
(`include_private=True`), any iat, jti or extra claim (None removes a claim or header member).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import sys
import time
import warnings
from typing import Any

from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

ALGS = ["ES256", "ES384", "EdDSA", "RS256", "PS256"]
_CURVE_ALG = {"P-256": "ES256", "P-384": "ES384", "Ed25519": "EdDSA"}
_HMAC = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}

Key = ECKey | OKPKey | RSAKey


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64u_json(obj: dict) -> str:
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


def generate_key(alg: str = "ES256") -> Key:
    """A fresh key pair for `alg` (ES256: P-256, ES384: P-384, EdDSA: Ed25519, RS256/PS256: RSA 2048)."""
    if alg == "ES256":
        return ECKey.generate_key("P-256")
    if alg == "ES384":
        return ECKey.generate_key("P-384")
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519")
    if alg in ("RS256", "PS256"):
        return RSAKey.generate_key(2048)
    raise ValueError(f"no key type for {alg!r}; one of {ALGS}")


def natural_alg(key: Key) -> str:
    """The algorithm a proof signed by `key` names by default (RSA: RS256)."""
    if isinstance(key, RSAKey):
        return "RS256"
    return _CURVE_ALG[key.as_dict()["crv"]]


def public_jwk(key: Key) -> dict:
    """The public JWK of `key` (no private members, no kid)."""
    return dict(key.as_dict(private=False))


def jkt(key: Key | dict) -> str:
    """RFC 7638 SHA-256 JWK thumbprint (base64url), the value of `cnf.jkt` (RFC 9449 §6.1)."""
    if isinstance(key, dict):
        key = {"EC": ECKey, "OKP": OKPKey, "RSA": RSAKey}[key["kty"]].import_key(key)
    return key.thumbprint()


# RFC 7638 §3.2: the required members of each key type, nothing else.
_REQUIRED = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def jkt_by_hand(jwk: dict) -> str:
    """RFC 7638 §3 computed without joserfc: the required members, sorted, no whitespace, SHA-256."""
    members = {k: jwk[k] for k in _REQUIRED[jwk["kty"]]}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return b64u(hashlib.sha256(canonical.encode()).digest())


def ath(access_token: str) -> str:
    """RFC 9449 §4.2 `ath`: base64url(SHA-256(ASCII of the access token))."""
    return b64u(hashlib.sha256(access_token.encode("ascii")).digest())


def _public_pem(key: Key) -> bytes:
    """The public key as SubjectPublicKeyInfo PEM: what a confused verifier would take as an HMAC key."""
    return key.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _merge(base: dict, changes: dict | None) -> dict:
    out = {**base, **(changes or {})}
    return {k: v for k, v in out.items() if v is not None}


def proof(key: Key, htm: str, htu: str, access_token: str | None = None, *,
          iat: int | None = None, jti: str | None = None, nonce: str | None = None,
          typ: str | None = "dpop+jwt", alg: str | None = None, extra_header: dict | None = None,
          include_private: bool = False, extra_claims: dict | None = None,
          hmac_secret: bytes | None = None) -> str:
    """A DPoP proof for one request, signed by `key` (compact JWS).

    htm, htu: the request's method and URI; access_token: adds `ath`; iat: default now; jti:
    default 128 random bits; nonce: adds `nonce`; typ: None omits it; alg: default the key's own
    ("none": empty signature; "HS256"/"HS384"/"HS512": an HMAC keyed with `hmac_secret`, by default
    the signer's public key PEM); extra_header / extra_claims: merged last (None removes a member);
    include_private: the `jwk` header carries the private members too.
    """
    alg = alg or natural_alg(key)
    header = _merge({"typ": typ, "alg": alg, "jwk": dict(key.as_dict(private=include_private))}, extra_header)
    claims = _merge({
        "jti": jti if jti is not None else secrets.token_urlsafe(16),
        "htm": htm,
        "htu": htu,
        "iat": int(time.time()) if iat is None else iat,
        "ath": ath(access_token) if access_token is not None else None,
        "nonce": nonce,
    }, extra_claims)
    if alg == "none":
        return f"{_b64u_json(header)}.{_b64u_json(claims)}."
    if alg in _HMAC:
        signing_input = f"{_b64u_json(header)}.{_b64u_json(claims)}"
        secret = hmac_secret if hmac_secret is not None else _public_pem(key)
        return f"{signing_input}.{b64u(hmac.new(secret, signing_input.encode(), _HMAC[alg]).digest())}"
    payload = json.dumps(claims, separators=(",", ":")).encode()
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" as deprecated by RFC 9864 (in favour of "Ed25519"); RFC 9449
        # deployments and the filter's `dpop.algs` name it EdDSA.
        warnings.filterwarnings("ignore", message=".*EdDSA is deprecated.*")
        # A registry of our own: joserfc's default one refuses headers it does not know (extra_header).
        registry = JWSRegistry(algorithms=[alg], strict_check_header=False)
        return jws.serialize_compact(header, payload, key, registry=registry)


def decode(compact: str) -> tuple[dict, dict]:
    """(header, claims) of a compact JWS, unverified (for tests that look inside a proof)."""
    h, p, _ = compact.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(h))), json.loads(base64.urlsafe_b64decode(pad(p)))


def headers(access_token: str, dpop_proof: str | None, scheme: str = "DPoP") -> dict[str, str]:
    """Authorization (`scheme` token) and DPoP request headers."""
    out = {"authorization": f"{scheme} {access_token}"}
    if dpop_proof is not None:
        out["dpop"] = dpop_proof
    return out


def self_test() -> None:
    """joserfc's thumbprint equals RFC 7638 by hand (and RFC 7638 §3.1's example); proofs verify."""
    # RFC 7638 §3.1: the example RSA key and its thumbprint.
    rfc_key = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29", "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRX"
        "jBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaS"
        "qzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksIN"
        "HaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")}
    expected = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert jkt_by_hand(rfc_key) == expected, jkt_by_hand(rfc_key)
    assert jkt(rfc_key) == expected, jkt(rfc_key)
    for alg in ("ES256", "ES384", "EdDSA", "RS256"):
        key = generate_key(alg)
        pub = public_jwk(key)
        assert jkt(key) == jkt_by_hand(pub) == jkt(pub) == jkt({**pub, "kid": "ignored", "use": "sig"}), alg
        token = "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"
        p = proof(key, "GET", "https://api.example.com/orders/1", token, nonce="n-1")
        h, c = decode(p)
        assert h == {"typ": "dpop+jwt", "alg": alg, "jwk": pub}, h
        assert set(c) == {"jti", "htm", "htu", "iat", "ath", "nonce"} and len(c["jti"]) >= 16, c
        assert c["ath"] == b64u(hashlib.sha256(token.encode()).digest())
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*EdDSA is deprecated.*")
            registry = JWSRegistry(algorithms=[alg])
            registry.max_header_length = 4096  # an RSA jwk makes the header larger than joserfc's default
            verified = jws.deserialize_compact(p, type(key).import_key(pub), registry=registry)
        assert json.loads(verified.payload) == c
        assert "d" in decode(proof(key, "GET", "https://x/", include_private=True))[0]["jwk"]
    key, other = generate_key("ES256"), generate_key("ES256")
    h, _ = decode(proof(key, "GET", "https://x/", extra_header={"jwk": public_jwk(other)}))
    assert jkt(h["jwk"]) == jkt(other) != jkt(key)
    assert proof(key, "GET", "https://x/", alg="none").endswith(".")
    assert decode(proof(key, "GET", "https://x/", alg="HS256", typ="JWT"))[0]["typ"] == "JWT"
    assert "ath" not in decode(proof(key, "GET", "https://x/"))[1]


def main(argv: list[str]) -> int:
    """`dpop.py` alone: the self-test. `dpop.py --key-pem F --jkt`: the key's thumbprint (for a
    token's `cnf.jkt`). `dpop.py --key-pem F --count N HTM HTU TOKEN`: N proofs, one a line, each
    with its own jti and iat now (cargo xtask load sends each once)."""
    import argparse
    if not argv:
        self_test()
        print("dpop.py self-test: ok")
        return 0
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--key-pem", required=True, help="the holder's private key (PKCS#8 PEM)")
    ap.add_argument("--jkt", action="store_true", help="print the key's RFC 7638 thumbprint")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("request", nargs="*", metavar="HTM HTU TOKEN")
    args = ap.parse_args(argv)
    with open(args.key_pem, "rb") as f:
        pem = f.read()
    try:
        key = ECKey.import_key(pem)
    except Exception:  # not an EC key: Ed25519
        key = OKPKey.import_key(pem)
    if args.jkt:
        print(jkt(key))
        return 0
    if len(args.request) != 3 or args.count < 1:
        ap.error("give HTM HTU TOKEN and --count N >= 1")
    htm, htu, token = args.request
    out = sys.stdout
    for _ in range(args.count):
        out.write(proof(key, htm, htu, token) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

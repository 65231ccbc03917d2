#!/usr/bin/env python3
"""Generate the TEST/DEMO-ONLY key material in tests/keys/ (run once; the output is committed).

These keys are public. Never use them for anything but Tessera's tests and demos.

    python tests/peers/genkeys.py            # refuses to overwrite existing keys
    python tests/peers/genkeys.py --force    # regenerate everything (tokens minted before break)
"""
from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

KEYS_DIR = Path(__file__).resolve().parents[1] / "keys"

# (file stem, generator)
PRIVATE_KEYS = {
    "ed25519": lambda: ed25519.Ed25519PrivateKey.generate(),
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    # Not in the JWKS: used to forge tokens.
    "attacker-ed25519": lambda: ed25519.Ed25519PrivateKey.generate(),
    "attacker-rsa2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    # The demo approver (human approval, tests/peers/approve.py): its own JWKS, approver-jwks.json.
    "approver-ed25519": lambda: ed25519.Ed25519PrivateKey.generate(),
    # An agent's own key (not in any JWKS): DPoP proofs of the harness tests (tests/src/dpop.rs);
    # tokens are bound to it with `cnf.jkt`.
    "holder-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
}

APPROVER_KID = "demo-approver"

RSA_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint_b64u(n: int, length: int | None = None) -> str:
    length = length or (n.bit_length() + 7) // 8
    return b64u(n.to_bytes(length, "big"))


def public_jwk(pub) -> dict:
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}
    if isinstance(pub, ec.EllipticCurvePublicKey):
        crv, size = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48)}[pub.curve.name]
        nums = pub.public_numbers()
        return {"kty": "EC", "crv": crv, "x": uint_b64u(nums.x, size), "y": uint_b64u(nums.y, size)}
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        return {"kty": "RSA", "n": uint_b64u(nums.n), "e": uint_b64u(nums.e)}
    raise TypeError(type(pub))


def load_private(stem: str):
    return serialization.load_pem_private_key((KEYS_DIR / f"{stem}.pem").read_bytes(), password=None)


def build_jwks() -> dict:
    keys = []
    for stem, kid, alg in [("ed25519", "demo-ed25519", "EdDSA"), ("p256", "demo-p256", "ES256"),
                           ("p384", "demo-p384", "ES384")]:
        keys.append({**public_jwk(load_private(stem).public_key()), "kid": kid, "alg": alg, "use": "sig"})
    rsa_pub = public_jwk(load_private("rsa2048").public_key())
    for alg in RSA_ALGS:
        keys.append({**rsa_pub, "kid": f"demo-{alg.lower()}", "alg": alg, "use": "sig"})
    return {"keys": keys}


def build_approver_jwks() -> dict:
    pub = public_jwk(load_private("approver-ed25519").public_key())
    return {"keys": [{**pub, "kid": APPROVER_KID, "alg": "EdDSA", "use": "sig"}]}


def write_key(stem: str, gen) -> None:
    key = gen()
    (KEYS_DIR / f"{stem}.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (KEYS_DIR / f"{stem}.pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="overwrite existing keys")
    args = ap.parse_args()
    KEYS_DIR.mkdir(parents=True, exist_ok=True)
    existing = [p for p in KEYS_DIR.glob("*.pem")]
    if existing and not args.force:
        # Keys added to the list later are generated without touching the existing ones.
        missing = {s: g for s, g in PRIVATE_KEYS.items() if not (KEYS_DIR / f"{s}.pem").exists()}
        if not missing:
            print(f"{KEYS_DIR} already has keys; pass --force to regenerate", file=sys.stderr)
            return 1
        for stem, gen in missing.items():
            write_key(stem, gen)
        (KEYS_DIR / "approver-jwks.json").write_text(json.dumps(build_approver_jwks(), indent=2) + "\n")
        print(f"added {', '.join(missing)} to {KEYS_DIR}")
        return 0
    for stem, gen in PRIVATE_KEYS.items():
        write_key(stem, gen)
    (KEYS_DIR / "jwks.json").write_text(json.dumps(build_jwks(), indent=2) + "\n")
    (KEYS_DIR / "approver-jwks.json").write_text(json.dumps(build_approver_jwks(), indent=2) + "\n")
    (KEYS_DIR / "hmac.b64").write_text(b64u(secrets.token_bytes(32)) + "\n")
    print(f"wrote test/demo keys to {KEYS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

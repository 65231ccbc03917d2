#!/usr/bin/env python3
"""JOSE kit for the tests of remote keys and revocation: keys made at run time, their public JWKS,
access tokens, Status List Tokens (draft-ietf-oauth-status-list) and Security Event Tokens
(RFC 8417), and deliberately bad ones — signed with joserfc through mint.py, independently of the
filter's JOSE library.

    from jose_kit import SigningKey, jwks, status_list_token, security_event_token, jwt_id, revoked
    k1 = SigningKey.generate("ES256", "k1")          # or "EdDSA" (Ed25519), "RS256" (RSA 2048)
    jwks(k1)                                         # {"keys": [public JWK of k1 with kid, alg, use]}
    k1.sign({"iss": ISS, "sub": "agent-7", "aud": "orders-api"})           # an access token
    status_list_token(k1, "https://status.example", "https://status.example/lists/1", [0, 1, 2, 0], bits=2, ttl=60)
    security_event_token(k1, "https://ssf.example", "https://tessera.example/events",
                         revoked(jwt_id("https://agents.example", "jti-1")))

Bad ones: `typ=` another typ, `iss=`/`aud=`/`sub=` other values, `jti=None`/`iat=None`/`events=None`
to leave a claim out, `k1.impostor()` (another key under the same kid: the signature does not
verify), `mint.tampered(token, {...})` (payload changed after signing).
"""
from __future__ import annotations

import time
import uuid
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

import mint as minting
from genkeys import public_jwk

_GENERATORS = {
    "ES256": lambda: ECKey.generate_key("P-256"),
    "EdDSA": lambda: OKPKey.generate_key("Ed25519"),
    "RS256": lambda: RSAKey.generate_key(2048),
}

STATUS_LIST_TYP = "statuslist+jwt"
SECEVENT_TYP = "secevent+jwt"

# Status values (draft-ietf-oauth-status-list §7.1).
VALID, INVALID, SUSPENDED = 0, 1, 2

# Event types Tessera acts on.
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
CREDENTIAL_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
TESSERA_REVOKED = "urn:tessera:secevent:revoked"


@dataclass(frozen=True)
class SigningKey:
    """A private key, its JWS algorithm and its kid."""

    alg: str
    kid: str
    key: Any  # a joserfc private key

    @classmethod
    def generate(cls, alg: str = "ES256", kid: str | None = None) -> SigningKey:
        if alg not in _GENERATORS:
            raise ValueError(f"alg {alg!r}: one of {sorted(_GENERATORS)}")
        return cls(alg, kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}", _GENERATORS[alg]())

    def impostor(self) -> SigningKey:
        """Another key of the same kind under the same kid: its signatures do not verify."""
        return SigningKey(self.alg, self.kid, _GENERATORS[self.alg]())

    def public_jwk(self, **members: Any) -> dict:
        """The public JWK with kid, alg and use "sig"; `members` override (None removes one)."""
        jwk = {**public_jwk(self.key.public_key), "kid": self.kid, "alg": self.alg, "use": "sig", **members}
        return {k: v for k, v in jwk.items() if v is not None}

    def sign(self, claims: dict, typ: str = "JWT", kid: str | None = None,
             headers_extra: dict | None = None) -> str:
        """A compact JWS of `claims` (mint.py semantics: iat/exp added unless given, None removes)
        with header typ `typ` and kid `kid` (default this key's; "" for none)."""
        return minting.mint(self.alg, claims, kid=self.kid if kid is None else kid,
                            headers_extra={"typ": typ, **(headers_extra or {})}, key=self.key)


def jwks(*keys: SigningKey) -> dict:
    """A JWKS document publishing the public half of `keys`."""
    return {"keys": [k.public_jwk() for k in keys]}


def rsa_1024_jwk(kid: str) -> dict:
    """A public RS256 JWK of only 1024 bits (joserfc will not make one; Tessera must skip it)."""
    pub = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    return {**public_jwk(pub), "kid": kid, "alg": "RS256", "use": "sig"}


def verify(token: str, keys: dict | SigningKey, alg: str | None = None):
    """Verify `token` with joserfc against a JWKS (or one key); the decoded joserfc Token."""
    doc = jwks(keys) if isinstance(keys, SigningKey) else keys
    algs = [alg] if alg else sorted({k["alg"] for k in doc["keys"]})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*EdDSA is deprecated.*")
        return jwt.decode(token, KeySet.import_key_set(doc), algorithms=algs)


# ---------------------------------------------------------------------------------------------
# Status lists

def pack_statuses(statuses: Sequence[int], bits: int) -> bytes:
    """The status list bytes: status i in byte i*bits//8, at bit offset (i*bits)%8 from the LSB."""
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits {bits}: one of 1, 2, 4, 8")
    out = bytearray((len(statuses) * bits + 7) // 8)
    for i, s in enumerate(statuses):
        if not 0 <= s < (1 << bits):
            raise ValueError(f"status {s} at {i} does not fit in {bits} bits")
        out[i * bits // 8] |= s << ((i * bits) % 8)
    return bytes(out)


def unpack_statuses(data: bytes, bits: int) -> list[int]:
    """Every status of a status list's bytes (the inverse of pack_statuses, up to byte padding)."""
    mask = (1 << bits) - 1
    return [(data[i * bits // 8] >> ((i * bits) % 8)) & mask for i in range(len(data) * 8 // bits)]


def encode_lst(statuses: Sequence[int], bits: int) -> str:
    """`status_list.lst`: base64url (no padding) of the zlib-compressed bytes."""
    return minting.b64u(zlib.compress(pack_statuses(statuses, bits)))


def decode_lst(lst: str, bits: int) -> list[int]:
    return unpack_statuses(zlib.decompress(minting.b64u_decode(lst)), bits)


def status_list_token(key: SigningKey, iss: str, uri: str, statuses: Sequence[int], bits: int = 1, *,
                      typ: str = STATUS_LIST_TYP, lst: str | None = None, **claims: Any) -> str:
    """A Status List Token for `uri` (its `sub`): iat now, no exp unless given; `ttl=`, `exp=`,
    `sub=`, `iss`… as keyword claims (None removes one); `lst` replaces the encoded list."""
    payload = {"iss": iss, "sub": uri, "iat": int(time.time()), "exp": None,
               "status_list": {"bits": bits, "lst": lst if lst is not None else encode_lst(statuses, bits)},
               **claims}
    return key.sign(payload, typ=typ)


def status_claim(uri: str, idx: int) -> dict:
    """The `status` claim of a token whose status is entry `idx` of the list at `uri`."""
    return {"status_list": {"idx": idx, "uri": uri}}


# ---------------------------------------------------------------------------------------------
# Security Event Tokens

def security_event_token(key: SigningKey, iss: str, aud: str | list[str], events: dict | None, *,
                         typ: str = SECEVENT_TYP, **claims: Any) -> str:
    """A SET: iat now, a fresh jti, no exp; `sub_id=`, `jti=`, `iat=`… as keyword claims (None
    removes one, e.g. jti=None or events=None for a deliberately incomplete SET)."""
    payload = {"iss": iss, "aud": aud, "iat": int(time.time()), "jti": f"set-{uuid.uuid4()}", "exp": None,
               "events": events, **claims}
    return key.sign(payload, typ=typ)


def event(event_type: str, subject: dict | None = None, event_timestamp: int | None = None,
          **members: Any) -> dict:
    """The `events` member with one event of `event_type` (subject and event_timestamp when given)."""
    body = {"subject": subject, "event_timestamp": event_timestamp, **members}
    return {event_type: {k: v for k, v in body.items() if v is not None}}


def revoked(subject: dict, event_timestamp: int | None = None) -> dict:
    """`urn:tessera:secevent:revoked` about `subject`."""
    return event(TESSERA_REVOKED, subject, event_timestamp)


def _subject(fmt: str, **members: Any) -> dict:
    return {"format": fmt, **{k: v for k, v in members.items() if v is not None}}


def jwt_id(iss: str, jti: str) -> dict:
    return _subject("jwt_id", iss=iss, jti=jti)


def iss_sub(iss: str, sub: str) -> dict:
    return _subject("iss_sub", iss=iss, sub=sub)


def tessera_actor(sub: str, iss: str | None = None) -> dict:
    return _subject("tessera_actor", sub=sub, iss=iss)


def tessera_client(client_id: str, iss: str | None = None) -> dict:
    return _subject("tessera_client", client_id=client_id, iss=iss)


def tessera_task(task_id: str, iss: str | None = None) -> dict:
    return _subject("tessera_task", task_id=task_id, iss=iss)


def complex_subject(user: dict, **others: dict) -> dict:
    """An SSF complex subject whose `user` member is `user` (session, device… as keywords)."""
    return {"format": "complex", "user": user, **others}


# ---------------------------------------------------------------------------------------------
# Command line (used by `cargo xtask load`)


def _main(argv: list[str]) -> int:
    """`status-list --uri U --iss I [--size N] [--ttl S]`: prints {"token", "jwks"}: a Status List
    Token of N valid entries (1 bit each) signed by a key made now, and that key's public JWKS."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="jose_kit.py")
    sub = p.add_subparsers(dest="command", required=True)
    sl = sub.add_parser("status-list")
    sl.add_argument("--uri", required=True)
    sl.add_argument("--iss", required=True)
    sl.add_argument("--size", type=int, default=1024)
    sl.add_argument("--ttl", type=int, default=3600)
    args = p.parse_args(argv)
    key = SigningKey.generate("ES256", kid="status-load")
    token = status_list_token(key, args.iss, args.uri, [0] * args.size, ttl=args.ttl,
                              exp=int(time.time()) + 2 * args.ttl)
    print(json.dumps({"token": token, "jwks": jwks(key)}))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))

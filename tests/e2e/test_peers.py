"""The test peers themselves: keys, minted tokens (checked with joserfc), attack tokens, echo upstream,
the JOSE kit's status lists and SETs (jose_kit.py), the programmable identity provider (idp.py).
These need neither Envoy nor the plugin."""
from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
import warnings

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey

import jose_kit
import mint as minting
from conftest import ARTIFACTS, REPO_ROOT, Idp

KEYS = REPO_ROOT / "tests" / "keys"
JWKS = json.loads((KEYS / "jwks.json").read_text())

EXPECTED_KIDS = {"demo-ed25519": "EdDSA", "demo-p256": "ES256", "demo-p384": "ES384",
                 **{f"demo-{a.lower()}": a for a in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]}}


def decode(token: str, alg: str):
    key = OctKey.import_key(minting.hmac_secret()) if alg == "HS256" else KeySet.import_key_set(JWKS)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*EdDSA is deprecated.*")
        return jwt.decode(token, key, algorithms=[alg])


def test_jwks_has_every_demo_kid_with_its_alg_and_no_private_parts():
    assert {k["kid"]: k["alg"] for k in JWKS["keys"]} == EXPECTED_KIDS
    for k in JWKS["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & k.keys(), f"private member in {k['kid']}"


def test_private_keys_are_pkcs8_pem_and_match_their_public_pem():
    for priv in sorted(KEYS.glob("*.pem")):
        if priv.name.endswith(".pub.pem"):
            continue
        text = priv.read_text()
        assert text.startswith("-----BEGIN PRIVATE KEY-----"), f"{priv.name} is not PKCS#8"
        key = serialization.load_pem_private_key(text.encode(), password=None)
        pub = (KEYS / priv.name.replace(".pem", ".pub.pem")).read_bytes()
        assert key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo) == pub


def test_attacker_keys_are_not_in_the_jwks():
    from genkeys import public_jwk
    published = {json.dumps({k: v for k, v in j.items() if k not in ("kid", "alg", "use")}, sort_keys=True)
                 for j in JWKS["keys"]}
    for stem in ("attacker-ed25519", "attacker-rsa2048"):
        key = serialization.load_pem_private_key(minting.pem(stem), password=None)
        assert json.dumps(public_jwk(key.public_key()), sort_keys=True) not in published


def test_hmac_secret_is_base64url_of_32_bytes():
    text = (KEYS / "hmac.b64").read_text().strip()
    assert "=" not in text and "+" not in text and "/" not in text
    assert len(minting.hmac_secret()) == 32


@pytest.mark.parametrize("alg", minting.ALGS)
def test_minted_token_verifies_with_joserfc_against_the_published_keys(alg):
    t = minting.mint(alg, {"sub": "agent-7", "aud": "orders-api"})
    tok = decode(t, alg)
    assert tok.header["alg"] == alg
    assert tok.header.get("kid") == ({v: k for k, v in EXPECTED_KIDS.items()}.get(alg))
    assert tok.claims["sub"] == "agent-7"
    assert tok.claims["exp"] - tok.claims["iat"] == 300
    assert abs(tok.claims["iat"] - time.time()) < 5


def test_mint_claim_set_to_none_is_omitted():
    tok = decode(minting.mint("ES256", {"sub": "x", "exp": None}), "ES256")
    assert "exp" not in tok.claims


def test_unsigned_token_has_alg_none_and_empty_signature():
    h, p, s = minting.unsigned({"sub": "x"}).split(".")
    assert json.loads(minting.b64u_decode(h))["alg"] == "none" and s == ""


def test_tampered_token_keeps_header_and_signature_but_fails_verification():
    good = minting.mint("ES256", {"sub": "agent-7"})
    bad = minting.tampered(good, {"sub": "admin"})
    assert good.split(".")[0] == bad.split(".")[0] and good.split(".")[2] == bad.split(".")[2]
    assert json.loads(minting.b64u_decode(bad.split(".")[1]))["sub"] == "admin"
    with pytest.raises(Exception):
        decode(bad, "ES256")


def test_key_confusion_token_is_hs256_keyed_with_the_rsa_public_pem():
    t = minting.key_confusion({"sub": "x"})
    header = json.loads(minting.b64u_decode(t.split(".")[0]))
    assert header == {"alg": "HS256", "typ": "JWT", "kid": "demo-rs256"}
    # joserfc (rightly) refuses a PEM as an HMAC key, so check the MAC by hand.
    signing_input, _, sig = t.rpartition(".")
    mac = hmac.new(minting.pem("rsa2048.pub"), signing_input.encode(), hashlib.sha256).digest()
    assert minting.b64u(mac) == sig


def test_embedded_jwk_token_verifies_only_with_its_own_embedded_key():
    t = minting.embedded_jwk({"sub": "x"})
    header = json.loads(minting.b64u_decode(t.split(".")[0]))
    assert header["kid"] == "demo-ed25519" and header["jwk"]["kty"] == "OKP"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*EdDSA is deprecated.*")
        from joserfc.jwk import OKPKey
        assert jwt.decode(t, OKPKey.import_key(header["jwk"]), algorithms=["EdDSA"]).claims["sub"] == "x"
    with pytest.raises(Exception):
        decode(t, "EdDSA")


def test_mint_cli_prints_a_verifiable_token():
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests/peers/mint.py"), "--alg", "ES256", "--sub", "agent-7",
         "--iss", minting.AGENTS, "--aud", "orders-api", "--scope", "orders:read"],
        capture_output=True, text=True, check=True).stdout.strip()
    claims = decode(out, "ES256").claims
    assert claims["iss"] == minting.AGENTS and claims["scope"] == "orders:read" and claims["aud"] == "orders-api"


def test_echo_upstream_echoes_method_path_and_lowercased_headers(echo):
    before = echo.count()
    r = httpx.request("PATCH", f"http://127.0.0.1:{echo.port}/orders/1?x=1", headers={"X-Mixed-Case": "v"},
                      content=b"abc")
    body = r.json()
    assert r.status_code == 200
    assert (body["method"], body["path"], body["headers"]["x-mixed-case"]) == ("PATCH", "/orders/1?x=1", "v")
    assert echo.count() == before + 1


# ---------------------------------------------------------------------------------------------
# jose_kit.py: status lists and SETs, checked with joserfc

def test_status_list_bits_follow_the_drafts_examples():
    # draft-ietf-oauth-status-list: the 1-bit and 2-bit examples
    assert jose_kit.pack_statuses([1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1], 1) == bytes([0xB9, 0xA3])
    assert jose_kit.pack_statuses([1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3], 2) == bytes([0xC9, 0x44, 0xF9])


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_status_list_token_round_trips_through_joserfc(bits):
    k = jose_kit.SigningKey.generate("ES256", "status-1")
    statuses = [i % (1 << bits) for i in range(64)]
    t = jose_kit.status_list_token(k, "https://status.example", "https://status.example/lists/1", statuses,
                                   bits, ttl=60)
    tok = jose_kit.verify(t, jose_kit.jwks(k))
    assert tok.header == {"typ": "statuslist+jwt", "alg": "ES256", "kid": "status-1"}
    assert tok.claims["sub"] == "https://status.example/lists/1" and tok.claims["ttl"] == 60
    assert "exp" not in tok.claims
    assert jose_kit.decode_lst(tok.claims["status_list"]["lst"], bits) == statuses
    with pytest.raises(Exception):
        jose_kit.verify(jose_kit.status_list_token(k.impostor(), "i", "u", [0]), k)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
def test_security_event_token_verifies_with_joserfc_and_leaves_out_what_it_is_told(alg):
    k = jose_kit.SigningKey.generate(alg, "ssf-1")
    events = jose_kit.revoked(jose_kit.jwt_id("https://agents.example", "j-1"))
    tok = jose_kit.verify(jose_kit.security_event_token(k, "https://ssf.example", "aud-1", events), k)
    assert tok.header["typ"] == "secevent+jwt" and tok.header["kid"] == "ssf-1"
    assert tok.claims["events"] == {"urn:tessera:secevent:revoked": {
        "subject": {"format": "jwt_id", "iss": "https://agents.example", "jti": "j-1"}}}
    assert {"iss", "aud", "iat", "jti"} <= tok.claims.keys() and "exp" not in tok.claims
    bare = jose_kit.verify(jose_kit.security_event_token(k, "s", "a", None, jti=None, iat=None), k)
    assert not {"jti", "iat", "events"} & bare.claims.keys()


def test_public_jwks_have_no_private_members():
    for alg in ("ES256", "EdDSA", "RS256"):
        jwk = jose_kit.jwks(jose_kit.SigningKey.generate(alg, "k"))["keys"][0]
        assert jwk["kid"] == "k" and jwk["alg"] == alg and jwk["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & jwk.keys()


# ---------------------------------------------------------------------------------------------
# idp.py

@pytest.fixture(scope="module")
def idp():
    peer = Idp(ARTIFACTS / "idp-peers.log")
    yield peer
    peer.stop()


def test_idp_serves_documents_counts_hits_and_goes_down(idp):
    base = f"http://127.0.0.1:{idp.port}"
    idp.put_doc("/peers/jwks", {"keys": []})
    idp.put_doc("/peers/keys?v=2", "v2", content_type="text/plain")
    assert httpx.get(f"{base}/peers/missing").status_code == 404
    r = httpx.get(f"{base}/peers/jwks", headers={"accept": "application/json", "host": "idp.example.com"})
    assert (r.status_code, r.json(), r.headers["content-type"]) == (200, {"keys": []}, "application/json")
    assert httpx.get(f"{base}/peers/keys?v=2").text == "v2"
    assert httpx.get(f"{base}/peers/jwks?other=1").json() == {"keys": []}   # no exact match: the path alone
    assert idp.hits("/peers/jwks") == 1 and idp.hits("/peers/keys?v=2") == 1
    assert idp.requests("/peers/jwks")[-1]["host"] == "idp.example.com"
    idp.fault("/peers/", down=True)
    assert httpx.get(f"{base}/peers/jwks").status_code == 503
    idp.fault("/peers/", down=False)
    assert httpx.get(f"{base}/peers/jwks").status_code == 200
    idp.fault("/peers/slow", delay_s=1.0)
    with pytest.raises(httpx.TimeoutException):
        httpx.get(f"{base}/peers/slow/x", timeout=0.3)
    idp.fault("/peers/slow", delay_s=0)


def test_idp_poll_honours_max_events_and_records_acks_and_set_errs(idp):
    base = f"http://127.0.0.1:{idp.port}"
    for jti in ("s1", "s2", "s3"):
        idp.enqueue(jti, f"set-{jti}")
    first = httpx.post(f"{base}/poll", json={"maxEvents": 2, "returnImmediately": True}).json()
    assert first == {"sets": {"s1": "set-s1", "s2": "set-s2"}, "moreAvailable": True}
    second = httpx.post(f"{base}/poll", json={"ack": ["s1"], "setErrs": {"s2": {"err": "invalid_key",
                                                                                "description": "x"}},
                                              "maxEvents": 2, "returnImmediately": True}).json()
    assert second == {"sets": {"s3": "set-s3"}, "moreAvailable": False}
    state = idp.acks()
    assert state["acks"] == ["s1"] and state["setErrs"] == {"s2": {"err": "invalid_key", "description": "x"}}
    assert state["pending"] == ["s3"] and len(state["polls"]) == 2


# ---------------------------------------------------------------------------------------------
# dpop.py (RFC 9449 proofs) and pki.py (mutual TLS certificates)

def test_dpop_thumbprints_match_rfc7638_by_hand_and_proofs_verify_with_joserfc():
    import dpop
    dpop.self_test()


def test_pki_certificates_chain_to_the_ca_with_the_sans_and_thumbprints_rfc8705_names():
    import base64
    import ssl

    from cryptography import x509

    import pki as pkimod

    p = pkimod.generate(ARTIFACTS / "pki-peers")
    ca = x509.load_pem_x509_certificate(p.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(p.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert set(p.clients) == set(pkimod.CLIENTS)
    for name, client in p.clients.items():
        cert = x509.load_pem_x509_certificate(client.cert.read_bytes())
        if client.from_ca:
            cert.verify_directly_issued_by(ca)
        else:
            with pytest.raises(Exception):
                cert.verify_directly_issued_by(ca)
            cert.verify_directly_issued_by(cert)  # self-signed
        try:
            uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
                .get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        assert uris == ([client.uri] if client.uri else []), name
        der = ssl.PEM_cert_to_DER_cert(client.cert.read_text())  # not the code under test
        expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
        assert client.x5t_s256 == expected == p.thumbprints()[name] and "=" not in expected, name
    assert p.clients["evil"].uri.startswith("spiffe://evil.example/")
    assert p.clients["selfsigned"].uri == pkimod.PLANNER and not p.clients["selfsigned"].from_ca
    assert len(set(p.thumbprints().values())) == len(p.clients)

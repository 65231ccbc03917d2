"""Token verification as a client sees it through Envoy (README.md, "What happens to a request")."""
from __future__ import annotations

import time

import pytest

import mint as minting
from helpers import agent, assert_invalid_token, token, upstream_saw, user

JWKS_ALGS = ["EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
SPOOFED = {"x-tessera-principal": 'User::"root"', "x-tessera-issuer": "https://evil.example",
           "x-tessera-subject": "root"}


def test_health_route_without_token_is_200(api, echo):
    before = echo.count()
    r = api.get("/healthz")
    assert r.status_code == 200, r.text
    assert echo.count() == before + 1


def test_health_route_strips_client_sent_identity_headers(api):
    saw = upstream_saw(api.get("/healthz", headers=SPOOFED))
    for name in SPOOFED:
        assert name not in saw["headers"], f"client-sent {name} reached the upstream: {saw['headers']}"


@pytest.mark.parametrize("alg", JWKS_ALGS)
def test_agent_token_signed_with_each_algorithm_is_allowed_with_identity_headers(api, alg):
    saw = upstream_saw(api.get("/orders/42", agent("orders:read", alg=alg), headers=SPOOFED))
    h = saw["headers"]
    assert h.get("x-tessera-principal") == 'Agent::"agents|agent-7"', h
    assert h.get("x-tessera-issuer") == minting.AGENTS, h
    assert h.get("x-tessera-subject") == "agent-7", h
    assert saw["path"] == "/orders/42" and saw["method"] == "GET"


def test_hs256_token_from_legacy_issuer_is_allowed_with_identity_headers(api):
    t = token(minting.LEGACY, "legacy-bot", "HS256", scope="orders:read")
    saw = upstream_saw(api.get("/orders/42", t, headers=SPOOFED))
    h = saw["headers"]
    assert h.get("x-tessera-principal") == 'Agent::"legacy|legacy-bot"', h
    assert h.get("x-tessera-issuer") == minting.LEGACY, h
    assert h.get("x-tessera-subject") == "legacy-bot", h


def test_user_token_yields_user_principal_upstream(api):
    saw = upstream_saw(api.get("/orders/42", user("alice", ["staff"]), headers=SPOOFED))
    assert saw["headers"].get("x-tessera-principal") == 'User::"corp|alice"', saw["headers"]
    assert saw["headers"].get("x-tessera-issuer") == minting.IDP


def test_authorization_header_is_forwarded_when_drop_authorization_is_false(api):
    t = agent("orders:read")
    assert upstream_saw(api.get("/orders", t))["headers"].get("authorization") == f"Bearer {t}"


def test_token_with_audience_list_containing_orders_api_is_allowed(api):
    t = token(minting.AGENTS, scope="orders:read", aud=["billing-api", "orders-api"])
    upstream_saw(api.get("/orders/1", t))


def test_no_token_gets_401_bearer_challenge(api, echo):
    before = echo.count()
    r = api.get("/orders/1")
    assert r.status_code == 401, r.text
    assert r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers
    assert echo.count() == before


def _now() -> int:
    return int(time.time())


def _oversize() -> str:
    t = agent("orders:read", padding="x" * 9000)
    assert len(t) > 8192
    return t


# name → (token factory, reason words the README lists)
INVALID = {
    "expired": (lambda: agent(iat=_now() - 1000, exp=_now() - 400), ["expired"]),
    "nbf_in_future": (lambda: agent(nbf=_now() + 600, exp=_now() + 900), ["not yet valid", "future"]),
    "iat_in_future": (lambda: agent(iat=_now() + 600, exp=_now() + 900), ["not yet valid", "future"]),
    "wrong_audience": (lambda: token(minting.AGENTS, scope="orders:read", aud="billing-api"), ["audience"]),
    "unknown_issuer": (lambda: token("https://unknown.example.com", scope="orders:read"), ["issuer"]),
    "tampered_signature": (lambda: minting.tampered(agent("orders:read"), {"sub": "agent-admin"}), ["signature"]),
    "forged_with_attacker_key": (lambda: minting.forged({"iss": minting.AGENTS, "sub": "agent-7",
                                                         "aud": "orders-api", "scope": "orders:read"}),
                                 ["signature"]),
    "alg_none": (lambda: minting.unsigned({"iss": minting.AGENTS, "sub": "agent-7", "aud": "orders-api",
                                           "scope": "orders:read"}), ["none"]),
    "key_confusion_hs256_with_rsa_kid": (lambda: minting.key_confusion(
        {"iss": minting.AGENTS, "sub": "agent-7", "aud": "orders-api", "scope": "orders:read"}), ["algorithm"]),
    "ps256_header_on_rs256_kid": (lambda: agent("orders:read", alg="PS256", kid="demo-rs256"), ["algorithm"]),
    "unknown_kid": (lambda: agent("orders:read", kid="demo-unknown"), ["kid"]),
    "embedded_jwk_header": (lambda: minting.embedded_jwk(
        {"iss": minting.AGENTS, "sub": "agent-7", "aud": "orders-api", "scope": "orders:read"}), ["header"]),
    "jku_header": (lambda: agent("orders:read", alg="EdDSA",
                                 headers_extra={"jku": "https://attacker.example/jwks.json"}), ["header"]),
    "oversize_token": (_oversize, ["too large"]),
    "lifetime_over_max_ttl": (lambda: agent("orders:read", iat=_now(), exp=_now() + 7200), ["lifetime"]),
    "missing_exp": (lambda: agent("orders:read", exp=None), ["exp"]),
    "malformed_not_a_jwt": (lambda: "not-a-jwt", ["malformed"]),
    "malformed_json": (lambda: "bm90IGpzb24.bm90IGpzb24.c2ln", ["malformed"]),
    "legacy_hs256_with_wrong_secret": (lambda: minting.mint(
        "HS256", {"iss": minting.LEGACY, "sub": "legacy-bot", "aud": "orders-api"}, key=b"k" * 32), ["signature"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_bad_token_gets_401_invalid_token_with_reason(api, echo, case):
    make, words = INVALID[case]
    before = echo.count()
    assert_invalid_token(api.get("/orders/1", make()), *words)
    assert echo.count() == before, "a request with a bad token reached the upstream"


# Same checks, under the names a reader looks for.
def test_expired_token_gets_401_invalid_token(api):
    assert_invalid_token(api.get("/orders/1", INVALID["expired"][0]()), "expired")


def test_alg_none_token_gets_401_invalid_token(api):
    assert_invalid_token(api.get("/orders/1", INVALID["alg_none"][0]()), "none")


def test_key_confusion_token_gets_401_invalid_token(api):
    assert_invalid_token(api.get("/orders/1", INVALID["key_confusion_hs256_with_rsa_kid"][0]()), "algorithm")


def test_bad_token_is_rejected_even_on_a_route_the_token_would_not_need(api):
    """A token problem is a 401 on a protected route, whatever the method and path."""
    assert_invalid_token(api.request("DELETE", "/admin/x", INVALID["expired"][0]()), "expired")


def test_token_expired_within_clock_skew_is_still_accepted(api):
    upstream_saw(api.get("/orders/1", agent("orders:read", iat=_now() - 200, exp=_now() - 20)))

"""Issuer keys fetched from an identity provider (`issuers[].remote_jwks`, OIDC discovery) through a
real Envoy with two worker threads: 503 until the first keys arrive, rotation (a new kid is fetched
when a token names it, a removed key is refused after a refresh), the last good keys serving while
the provider is down until `max_stale_s`, bounded refetches under a flood of unknown kids, and
documents that must not be used.

One Envoy for the module: envoy-examples/envoy-http.yaml with its policies and routes, plus one
issuer per scenario (`https://<name>.idp.example`, principal `Agent`, so that a token with scope
orders:read may GET /orders/…), each fetching its own JWKS path from tests/peers/idp.py through
the STATIC cluster `idp`. Keys are made at run time and tokens signed by tests/peers/jose_kit.py.
"""
from __future__ import annotations

import copy
import secrets

import pytest

from conftest import ARTIFACTS, Idp, envoy_with_plugin_config, measured, tail
from helpers import all_, assert_invalid_token, eventually, minting, on_fresh_connections, statuses, token
from jose_kit import SigningKey, jwks, rsa_1024_jwk

CONCURRENCY = 2
AUTHORITY = "idp.example.com"
K1 = SigningKey.generate("ES256", "k1")
K2 = SigningKey.generate("EdDSA", "k2")
K3 = SigningKey.generate("RS256", "k3")

# Every scenario's `remote_jwks` starts from this (short timings: refresh every second).
REMOTE_DEFAULTS = {"cluster": "idp", "authority": AUTHORITY, "refresh_s": 1, "timeout_ms": 1000,
                   "max_stale_s": 3, "refetch_interval_s": 1}

DISCOVERY = "/.well-known/openid-configuration"
OIDC_JWKS = "/oidc/keys?v=1"


def issuer(name: str) -> str:
    return f"https://{name}.idp.example"


def jwks_path(name: str) -> str:
    return f"/{name}/jwks"


def signed_by(k: SigningKey, name: str, kid: str | None = None, **claims) -> str:
    """An access token of issuer `name` signed by `k` (kid: `k`'s unless given), allowed on GET /orders/…"""
    return token(issuer(name), alg=k.alg, kid=kid or k.kid, key=k.key, scope="orders:read", **claims)


# Documents that must not be used as a JWKS: name → what the provider answers (put_doc arguments).
BAD_JWKS = {
    "over_64_kib": lambda: {"body": {**jwks(K1), "padding": "x" * 70_000}},
    "over_32_keys": lambda: {"body": jwks(K1, *(SigningKey.generate("ES256", f"extra-{i}") for i in range(32)))},
    "only_an_oct_key": lambda: {"body": {"keys": [{"kty": "oct", "k": minting.b64u(secrets.token_bytes(32)),
                                                   "kid": K1.kid, "alg": "HS256"}]}},
    "only_rsa_1024": lambda: {"body": {"keys": [rsa_1024_jwk(K1.kid)]}},
    "only_use_enc": lambda: {"body": {"keys": [K1.public_jwk(use="enc")]}},
    "not_json": lambda: {"body": '{"keys": [', "content_type": "application/json"},
    "http_500": lambda: {"body": jwks(K1), "status": 500},
}

# name → its `remote_jwks` (over REMOTE_DEFAULTS), and the documents served before Envoy starts.
ISSUERS = {
    "first": {"path": jwks_path("first")},                               # nothing served at start
    "stale": {"path": jwks_path("stale"), "max_stale_s": 3},
    "refetch": {"path": jwks_path("refetch"), "refresh_s": 300, "refetch_interval_s": 1},
    "rotate": {"path": jwks_path("rotate")},
    "flood": {"path": jwks_path("flood"), "refresh_s": 300, "refetch_interval_s": 30},
    "oidc": {"discovery": True},                                         # default path: DISCOVERY
    "oidc-other-issuer": {"discovery": True, "path": f"/oidc-other-issuer{DISCOVERY}"},
    "slow": {"path": jwks_path("slow"), "timeout_ms": 300},
    "mixed": {"path": jwks_path("mixed")},
    **{f"bad-{kind}": {"path": jwks_path(f"bad-{kind}"), "max_stale_s": 60} for kind in BAD_JWKS},
}


def remote_issuer(name: str) -> dict:
    return {"issuer": issuer(name), "audiences": [minting.AUDIENCE], "clock_skew_s": 60, "max_ttl_s": 3600,
            "required_claims": ["sub"], "identity_namespace": name,
            "principal": {"type": "Agent", "claim": "sub"},
            "remote_jwks": {**REMOTE_DEFAULTS, **ISSUERS[name]}}


def serve_initial_documents(idp: Idp) -> None:
    idp.put_doc(jwks_path("stale"), jwks(K1))
    idp.put_doc(jwks_path("refetch"), jwks(K1))
    idp.put_doc(jwks_path("rotate"), jwks(K1, K2))
    idp.put_doc(jwks_path("flood"), jwks(K1))
    idp.put_doc(DISCOVERY, {"issuer": issuer("oidc"), "jwks_uri": f"https://{AUTHORITY}{OIDC_JWKS}"})
    idp.put_doc(OIDC_JWKS, jwks(K3))
    idp.put_doc(f"/oidc-other-issuer{DISCOVERY}",
                {"issuer": "https://someone-else.idp.example",
                 "jwks_uri": f"https://{AUTHORITY}/oidc-other-issuer/keys"})
    idp.put_doc("/oidc-other-issuer/keys", jwks(K1))
    idp.put_doc(jwks_path("slow"), jwks(K1))
    idp.fault("/slow/", delay_s=2)
    idp.put_doc(jwks_path("mixed"), {"keys": [
        {"kty": "oct", "k": minting.b64u(secrets.token_bytes(32)), "kid": "oct-1", "alg": "HS256"},
        rsa_1024_jwk("rsa-1024"), K2.public_jwk(use="enc", kid="enc-1"),
        {"kty": "XYZ", "kid": "unknown-kty"}, K1.public_jwk()]})
    for kind, doc in BAD_JWKS.items():
        idp.put_doc(jwks_path(f"bad-{kind}"), **doc())


@pytest.fixture(scope="module")
def idp():
    peer = Idp(ARTIFACTS / "idp-remote-keys.log")
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def gateway(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo, idp):
    serve_initial_documents(idp)
    cfg = copy.deepcopy(plugin_config)
    cfg["issuers"] += [remote_issuer(name) for name in ISSUERS]
    e = envoy_with_plugin_config(envoy_bin, wasm_path, example_bootstrap, echo, cfg, "envoy-remote-keys",
                                 concurrency=CONCURRENCY, clusters={"idp": idp.port})
    try:
        if not e.wait_ready():
            pytest.fail(f"Envoy exited (code {e.proc.returncode}):\n{tail(e.log)}", pytrace=False)
        yield e
    finally:
        e.stop()


def accepted_soon(gateway, t: str, what: str, timeout_s: float = 15) -> None:
    eventually(lambda: statuses(gateway.url, t), all_(200), timeout_s, what)


# ---------------------------------------------------------------------------------------------

def test_tokens_get_503_until_the_first_keys_arrive_and_other_issuers_are_unaffected(gateway, idp, echo):
    t = signed_by(K1, "first")
    eventually(lambda: idp.hits(jwks_path("first")), lambda n: n >= 1, 15, "a first JWKS fetch attempt")
    before = echo.count()
    assert statuses(gateway.url, t) == [503] * 6
    assert echo.count() == before, "a token of an issuer without keys reached the upstream"
    assert statuses(gateway.url, token(minting.AGENTS, scope="orders:read"), 2) == [200, 200], \
        "an issuer with inline keys is affected by another issuer's missing keys"

    idp.put_doc(jwks_path("first"), jwks(K1))
    accepted_soon(gateway, t, "tokens accepted once the JWKS is served")
    fetch = idp.requests(jwks_path("first"))[-1]
    assert (fetch["method"], fetch["accept"], fetch["host"]) == ("GET", "application/json", AUTHORITY), fetch


def test_a_key_added_at_the_provider_is_fetched_when_a_token_names_its_kid(gateway, idp):
    # refresh_s is 300: only the unknown-kid refetch can bring k2 in.
    accepted_soon(gateway, signed_by(K1, "refetch"), "k1 tokens accepted")
    t2 = signed_by(K2, "refetch")
    assert_invalid_token(on_fresh_connections(gateway.url, t2, 1)[0], "kid")
    idp.put_doc(jwks_path("refetch"), jwks(K1, K2))
    accepted_soon(gateway, t2, "a token signed with the new key k2 accepted without a restart", timeout_s=10)


def test_a_key_removed_at_the_provider_is_refused_after_a_refresh_even_for_tokens_verified_before(gateway, idp):
    t1, t2 = signed_by(K1, "rotate"), signed_by(K2, "rotate")
    accepted_soon(gateway, t1, "k1 tokens accepted (and now verified before)")
    idp.put_doc(jwks_path("rotate"), jwks(K2))
    eventually(lambda: statuses(gateway.url, t1), all_(401), 15, "the k1 token refused after k1 left the JWKS")
    assert_invalid_token(on_fresh_connections(gateway.url, t1, 1)[0], "kid", "key")
    assert statuses(gateway.url, t2) == [200] * 6, "k2 tokens refused after k1 was removed"


def test_while_the_provider_is_down_the_last_good_keys_serve_until_max_stale_then_503_then_recover(gateway, idp, echo):
    t = signed_by(K1, "stale")
    accepted_soon(gateway, t, "tokens accepted with the provider up")
    idp.fault("/stale/", down=True)
    try:
        # Keys fetched at T serve until T + refresh_s (1) + max_stale_s (3): a moment after the
        # provider went down they still do.
        assert statuses(gateway.url, t, 2) == [200, 200], "the last good keys were dropped at once"
        eventually(lambda: statuses(gateway.url, t), all_(503), 20, "503 once the keys are past max_stale_s")
        before = echo.count()
        assert statuses(gateway.url, t, 2) == [503, 503]
        assert echo.count() == before
    finally:
        idp.fault("/stale/", down=False)
    accepted_soon(gateway, t, "tokens accepted again once the provider is back")


def test_a_flood_of_unknown_kids_triggers_at_most_one_refetch_per_worker(gateway, idp):
    accepted_soon(gateway, signed_by(K1, "flood"), "k1 tokens accepted")
    before = idp.hits(jwks_path("flood"))
    n = 40
    answers = [on_fresh_connections(gateway.url, signed_by(K1, "flood", kid=f"made-up-{i}"), 1)[0]
               for i in range(n)]
    fetches = idp.hits(jwks_path("flood")) - before
    measured(f"remote JWKS: {n} tokens with unknown kids caused {fetches} JWKS fetch(es) "
             f"(refetch_interval_s 30, --concurrency {CONCURRENCY})")
    for r in answers:
        assert_invalid_token(r, "kid")
    assert fetches <= CONCURRENCY, f"{fetches} JWKS fetches for {n} unknown kids (at most one per worker)"


def test_openid_discovery_leads_to_the_jwks_uri(gateway, idp):
    accepted_soon(gateway, signed_by(K3, "oidc"), "tokens of the discovered JWKS accepted")
    discovery = idp.requests(DISCOVERY)[0]
    assert (discovery["method"], discovery["host"]) == ("GET", AUTHORITY), discovery
    keys = idp.requests(OIDC_JWKS)[0]
    assert (keys["method"], keys["accept"]) == ("GET", "application/json"), keys


def test_a_discovery_document_naming_another_issuer_is_not_used(gateway, idp, echo):
    eventually(lambda: idp.hits(f"/oidc-other-issuer{DISCOVERY}"), lambda n: n >= 2, 15,
               "the discovery document fetched (and refused) twice")
    before = echo.count()
    assert statuses(gateway.url, signed_by(K1, "oidc-other-issuer")) == [503] * 6
    assert echo.count() == before
    assert idp.hits("/oidc-other-issuer/keys") == 0, "the jwks_uri of a refused discovery document was fetched"


def test_a_jwks_fetch_that_times_out_has_failed(gateway, idp):
    t = signed_by(K1, "slow")
    eventually(lambda: idp.hits(jwks_path("slow")), lambda n: n >= 1, 15, "a JWKS fetch attempt")
    assert statuses(gateway.url, t) == [503] * 6, "keys from a fetch slower than timeout_ms were used"
    idp.fault("/slow/", delay_s=0)
    accepted_soon(gateway, t, "tokens accepted once the provider answers in time")


def test_unusable_keys_beside_a_good_one_are_skipped(gateway):
    accepted_soon(gateway, signed_by(K1, "mixed"), "the one usable key of a mixed JWKS used")


@pytest.mark.parametrize("kind", list(BAD_JWKS))
def test_a_jwks_that_cannot_be_used_is_refused_before_and_after_good_keys(gateway, idp, kind):
    name, path = f"bad-{kind}", jwks_path(f"bad-{kind}")
    t = signed_by(K1, name)
    eventually(lambda: idp.hits(path), lambda n: n >= 2, 15, "the document fetched twice")
    assert statuses(gateway.url, t) == [503] * 6, f"keys taken from a JWKS that is {kind}"

    idp.put_doc(path, jwks(K1))
    accepted_soon(gateway, t, "tokens accepted once a good JWKS is served")

    idp.put_doc(path, **BAD_JWKS[kind]())
    seen = idp.hits(path)
    eventually(lambda: idp.hits(path), lambda n: n >= seen + 2 * CONCURRENCY, 15,
               "the bad document fetched again by the workers")
    assert statuses(gateway.url, t) == [200] * 6, f"the last good keys were dropped for a JWKS that is {kind}"

"""Proof of possession through a real Envoy (issue 15): DPoP (RFC 9449) and certificate-bound
tokens (RFC 8705), `proof_of_possession: required` per issuer and per route, and what Cedar sees of
it (`context.pop`) and of the connection (`context.request.tls`, `.headers`, `.source_ip`).

Proofs are minted by tests/peers/dpop.py and tokens (with a `cnf` claim) by tests/peers/mint.py,
both with joserfc; certificates come from tests/peers/pki.py (`cryptography`). Gateways, each the
example plugin configuration plus what its tests need (policies in an extra `pop.cedar` document):

  dpop_gw        plain HTTP, `dpop: {}` (defaults), two workers (replays are looked for on both)
  nonce_gw       plain HTTP, `dpop` with `nonce` and `origins: ["https://api.example.com"]`
  mtls_example   envoy-examples/envoy-mtls.yaml as shipped (TLS requiring a client certificate from
                 the CA, its issuer requiring proof of possession, `dpop`, SPIFFE trust domain)
  mtls_gw        TLS requiring a client certificate from the test CA, `connection.client_certificates:
                 "verified"`, SPIFFE trust domain example.org, `request_headers: ["x-tenant"]`, `dpop: {}`
  unverified_gw  TLS asking for any client certificate (ACCEPT_UNTRUSTED), `client_certificates`
                 left "unverified"
  envoy          the session's example configuration, without `dpop`

RFC 9449 §4.3, checking DPoP proofs                       test
  1 one DPoP header field                                 test_two_dpop_headers_are_a_bad_request
  2 a single well-formed JWT                              INVALID_PROOFS: not_a_jwt
  3 required claims (jti, htm, htu, iat; ath §7)          INVALID_PROOFS: missing_jti, missing_ath
  4 typ dpop+jwt                                          INVALID_PROOFS: typ_jwt, typ_missing
  5 alg asymmetric, not none, supported, allowed          INVALID_PROOFS: alg_hs256_keyed_with_the_public_key,
                                                            alg_none, alg_rs256_not_in_algs;
                                                            test_valid_proof_is_forwarded (ES256, ES384, EdDSA)
  6 signature verifies with the jwk header                INVALID_PROOFS: signed_by_another_key_than_its_jwk
  7 jwk has no private key                                INVALID_PROOFS: private_jwk
  8 htm matches the method                                INVALID_PROOFS: htm_post_for_get, htm_lower_case
  9 htu matches, query and fragment ignored,              INVALID_PROOFS: htu_*; test_htu_naming_the_same_uri_matches
    syntax- and scheme-based normalisation                  (query, fragment, case, default port, %-encoding, dot segments)
 10 nonce the server provided                             test_without_a_nonce_the_answer_is_use_dpop_nonce_and_its_nonce_works,
                                                            test_a_forged_nonce_is_refused_with_a_fresh_one,
                                                            test_a_nonce_serves_several_proofs
 11 iat within the window (§11.1)                         INVALID_PROOFS: iat_too_old, iat_in_the_future;
                                                            test_iat_within_the_window_is_accepted
 12 ath == hash of the token; jwk thumbprint == cnf.jkt   INVALID_PROOFS: ath_of_another_token, jwk_of_another_key_than_cnf_jkt
 §11.1 jti not seen before (every worker)                 test_a_replayed_proof_is_refused_on_every_worker
 §7.1 DPoP-bound token with the DPoP scheme and a proof;  test_bound_token_without_a_proof_is_refused,
      401 challenges: DPoP error=…, algs                    assert_dpop_refusal (every refusal)
 §7.2 bound token never accepted as a bearer token        test_a_stolen_bound_token_sent_as_bearer_is_refused
 §7.1 DPoP scheme with an unbound token                   test_an_unbound_token_with_the_dpop_scheme_is_refused
 §9 resource server nonces: 401 use_dpop_nonce + DPoP-Nonce   (the nonce tests above)
 origins (htu behind a TLS-terminating proxy)             test_htu_at_a_configured_origin_matches_and_the_own_origin_no_longer_does
 without `dpop`, cnf.jkt cannot be proven                 test_without_dpop_configured_a_jkt_bound_token_is_refused

RFC 8705 §3, certificate-bound tokens                     test
  the token's x5t#S256 matches the TLS client certificate test_certificate_bound_token_with_its_certificate_is_forwarded
  otherwise 401 invalid_token                             test_certificate_bound_token_with_another_certificate_is_refused,
                                                            test_certificate_bound_token_without_tls_is_refused
  binding to a self-signed certificate (§2.2, no chain    test_a_token_bound_to_a_self_signed_certificate_works_over_an_unverifying_listener
  validation by the resource server)
  the listener (not the filter) validates chains          test_a_client_certificate_not_from_the_ca_fails_the_handshake
the shipped example (envoy-mtls.yaml)                     test_the_mtls_example_*
both bound (jkt and x5t#S256)                             test_token_bound_to_key_and_certificate_needs_both
proof_of_possession: required (route, issuer)             test_route_requiring_pop_*, test_issuer_requiring_pop_*
context.pop in Cedar                                      test_a_write_needs_a_proven_token_by_policy, test_policy_sees_the_*
context.request.tls (spiffe_id, verified), .headers,      test_spiffe_id_*, test_unverified_certificates_never_yield_a_spiffe_id,
  .source_ip/.source_port                                   test_policy_reads_a_listed_request_header,
                                                            test_a_forwarded_for_header_does_not_move_the_source_address
"""
from __future__ import annotations

import base64
import contextlib
import copy
import re
import secrets
import time
from typing import Callable, Iterator

import httpx
import pytest

import mint as minting
import pki as pkimod
import envoy_config
from conftest import Echo, Envoy, envoy_with_plugin_config, ready_or_fail
from dpop import generate_key, jkt, proof, public_jwk
from helpers import agent, challenges, json_body, token, upstream_saw

ALGS = "ES256 ES384 EdDSA"  # the default `dpop.algs`, as the challenge lists them
BOUND_ISSUER = "https://bound.demo.tessera.dev"  # the agents' keys, proof_of_possession: required
API_ORIGIN = "https://api.example.com"  # nonce_gw's configured public origin
NONCE_KEY = base64.b64encode(secrets.token_bytes(32)).decode()

HOLDER = generate_key("ES256")  # the key DPoP-bound tokens of the policies' tests are bound to


# ---------------------------------------------------------------------------------------------
# Configuration

def declare_request_headers(schema: str, names: list[str]) -> str:
    """The schema with `headers?: { "<name>"?: String, … }` as HttpRequest's `headers` attribute
    (replacing the one it declares, if any): a listed header must be declared to reach Cedar."""
    start = schema.index("{", schema.index("type HttpRequest"))
    end = _matching_brace(schema, start)
    body = schema[start + 1:end]
    m = re.search(r'\bheaders\??\s*:\s*', body)
    if m:
        rest = m.end()
        rest = _matching_brace(body, rest) + 1 if body[rest] == "{" else re.match(r"[\w:]+", body[rest:]).end() + rest
        rest += len(re.match(r"\s*,?", body[rest:]).group())
        body = body[:m.start()] + body[rest:]
    attrs = ", ".join(f'"{n}"?: String' for n in names)
    return f"{schema[:start + 1]}\n  headers?: {{ {attrs} }},{body}{schema[end:]}"


def _matching_brace(text: str, at: int) -> int:
    depth = 0
    for i in range(at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"no brace closes the one at {at}")


def configured(plugin_config: dict, *, policies: str = "", routes: tuple[dict, ...] = (),
               request_headers: list[str] | None = None, **top) -> dict:
    """The example plugin configuration with `policies` as an extra document `pop.cedar`,
    `routes` before the example's, `request_headers` declared in the schema and listed in
    `connection`, and top-level members (`dpop`, `connection`, …) set."""
    cfg = copy.deepcopy(plugin_config)
    cfg["routes"][:0] = list(routes)
    if policies:
        cfg["policies"]["pop.cedar"] = policies
    cfg.update(copy.deepcopy(top))
    if request_headers:
        cfg.setdefault("connection", {})["request_headers"] = request_headers
        cfg["schema"] = declare_request_headers(cfg["schema"], request_headers)
    return cfg


def started(e: Envoy) -> Envoy:
    return ready_or_fail(e, "a proof-of-possession config")


@contextlib.contextmanager
def gateway(envoy_bin, wasm_path, example_bootstrap, echo, cfg: dict, name: str, **kw) -> Iterator[Envoy]:
    e = started(envoy_with_plugin_config(envoy_bin, wasm_path, example_bootstrap, echo, cfg, name, **kw))
    try:
        yield e
    finally:
        e.stop()


class Client:
    """Requests to one gateway; over TLS with the client certificate named per request."""

    def __init__(self, url: str, pki: pkimod.Pki | None = None):
        self.url, self.pki = url, pki
        self._clients: dict[str | None, httpx.Client] = {}

    def htu(self, path: str) -> str:
        return f"{self.url}{path}"

    def http(self, cert: str | None = "planner", fresh: bool = False) -> httpx.Client:
        make = lambda: httpx.Client(base_url=self.url, timeout=10,  # noqa: E731
                                    verify=self.pki.context(cert) if self.pki else True)
        if fresh:
            return make()
        if cert not in self._clients:
            self._clients[cert] = make()
        return self._clients[cert]

    def send(self, method: str, path: str, t: str | None = None, p: str | None = None, *, scheme: str = "DPoP",
             headers: dict | list | None = None, cert: str | None = "planner", fresh: bool = False) -> httpx.Response:
        """`method path` with `Authorization: <scheme> t` and `DPoP: p` (each only if given)."""
        h = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if t is not None:
            h.append(("authorization", f"{scheme} {t}"))
        if p is not None:
            h.append(("dpop", p))
        if fresh:
            with self.http(cert, fresh=True) as c:
                return c.request(method, path, headers=h)
        return self.http(cert).request(method, path, headers=h)

    def dpop(self, method: str, path: str, t: str, key=HOLDER, **kw) -> httpx.Response:
        """A request with a fresh, valid proof by `key` for exactly this request."""
        return self.send(method, path, t, proof(key, method, self.htu(path.split("?")[0]), t), **kw)


def bound(key=HOLDER, scope: str | None = "orders:read", **claims) -> str:
    """An agent token bound to `key` (`cnf.jkt`)."""
    return agent(scope, cnf={"jkt": jkt(key)}, **claims)


def cert_bound(x5t: str, scope: str | None = "orders:read", **claims) -> str:
    """An agent token bound to a certificate (`cnf.x5t#S256`)."""
    return agent(scope, cnf={"x5t#S256": x5t}, **claims)


# ---------------------------------------------------------------------------------------------
# Assertions

@contextlib.contextmanager
def nothing_forwarded(echo: Echo) -> Iterator[None]:
    before = echo.count()
    yield
    assert echo.count() == before, "a refused request reached the upstream"


def assert_challenge(resp: httpx.Response, scheme: str, error: str, *reason_words: str, status: int = 401) -> dict:
    """`status` and a `scheme` challenge with `error` whose error_description mentions one of
    `reason_words` (none given: not checked); the challenge's parameters are returned."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    found = challenges(resp)
    params = found.get(scheme.lower())
    assert params is not None and params.get("error") == error, (
        f"expected a {scheme} challenge with error={error!r}; www-authenticate: "
        f"{resp.headers.get_list('www-authenticate')}")
    if reason_words:
        description = params.get("error_description", "")
        assert any(w.lower() in description.lower() for w in reason_words), (
            f"error_description {description!r} should mention one of {reason_words}")
    return params


def assert_dpop_refusal(resp: httpx.Response, *reason_words: str) -> None:
    """401 `WWW-Authenticate: DPoP error="invalid_dpop_proof", error_description, algs` (RFC 9449 §7.1)."""
    params = assert_challenge(resp, "DPoP", "invalid_dpop_proof", *reason_words)
    assert params.get("algs") == ALGS, f"algs of the challenge: {params}"


def assert_invalid_token_in_some_challenge(resp: httpx.Response, *reason_words: str) -> None:
    """401 and `error="invalid_token"` in a challenge of either scheme (where the contract does not
    say which), its error_description mentioning one of `reason_words` (if given)."""
    assert resp.status_code == 401, f"expected 401, got {resp.status_code}: {resp.text}"
    found = [p for p in challenges(resp).values() if p.get("error") == "invalid_token"]
    assert found, f"no invalid_token challenge; www-authenticate: {resp.headers.get_list('www-authenticate')}"
    if reason_words:
        assert any(w.lower() in p.get("error_description", "").lower() for p in found for w in reason_words), found


def assert_forbidden(resp: httpx.Response, policies: list[str]) -> None:
    assert resp.status_code == 403, f"expected 403, got {resp.status_code}: {resp.text}"
    body = json_body(resp)
    assert body.get("error") == "forbidden" and sorted(body.get("policies") or []) == sorted(policies), body


def forwarded(resp: httpx.Response, method: str = "GET", path: str = "/orders/1") -> dict:
    """The echo of a request that reached the upstream: this method and path, by agent-7."""
    saw = upstream_saw(resp)
    assert (saw["method"], saw["path"]) == (method, path), saw
    assert saw["headers"].get("x-tessera-principal") == 'Agent::"agents|agent-7"', saw["headers"]
    return saw


# ---------------------------------------------------------------------------------------------
# Gateways

DPOP_POLICIES = f"""
// Writes need a token the caller proved it holds.
@id("writes-need-pop")
forbid (principal, action in [Action::"POST", Action::"PUT", Action::"PATCH", Action::"DELETE"],
        resource == Route::"orders")
unless {{ context.pop.proven }};

@id("bound-route-open")
permit (principal, action == Action::"GET", resource == Route::"bound");

@id("popinfo-dpop")
permit (principal, action == Action::"GET", resource == Route::"popinfo")
when {{
  context.pop.method == "dpop" && context.pop.proven &&
  context.pop has jkt && context.pop.jkt == "{jkt(HOLDER)}" && !(context.pop has x5t_s256)
}};
"""

POP_ROUTES = ({"name": "bound", "prefix": "/bound", "proof_of_possession": "required"},
              {"name": "popinfo", "prefix": "/popinfo"})


def bound_issuer(plugin_config: dict) -> dict:
    """The agents issuer under another name, requiring proof of possession."""
    agents = next(i for i in plugin_config["issuers"] if i["issuer"] == minting.AGENTS)
    return {**copy.deepcopy(agents), "issuer": BOUND_ISSUER, "identity_namespace": "bound",
            "proof_of_possession": "required"}


@pytest.fixture(scope="module")
def dpop_gw(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo) -> Client:
    cfg = configured(plugin_config, dpop={}, policies=DPOP_POLICIES, routes=POP_ROUTES)
    cfg["issuers"].append(bound_issuer(plugin_config))
    with gateway(envoy_bin, wasm_path, example_bootstrap, echo, cfg, "envoy-dpop", concurrency=2) as e:
        yield Client(e.url)


@pytest.fixture(scope="module")
def nonce_gw(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo) -> Client:
    cfg = configured(plugin_config, dpop={"origins": [API_ORIGIN], "nonce": {"keys": [NONCE_KEY], "ttl_s": 300}})
    with gateway(envoy_bin, wasm_path, example_bootstrap, echo, cfg, "envoy-dpop-nonce") as e:
        yield Client(e.url)


def mtls_policies(pki: pkimod.Pki) -> str:
    planner = pki.clients["planner"].x5t_s256
    return f"""
@id("bound-route-open")
permit (principal, action == Action::"GET", resource == Route::"bound");

@id("planner-svid-only")
permit (principal, action == Action::"GET", resource == Route::"svid")
when {{
  context.request has tls && context.request.tls.verified &&
  context.request.tls has spiffe_id && context.request.tls.spiffe_id == "{pkimod.PLANNER}" &&
  context.request.tls has trust_domain && context.request.tls.trust_domain == "{pkimod.TRUST_DOMAIN}"
}};

@id("acme-tenant-only")
permit (principal, action == Action::"GET", resource == Route::"tenants")
when {{
  context.request has headers && context.request.headers has "x-tenant" &&
  context.request.headers["x-tenant"] == "acme" &&
  context.request has source_ip && context.request.source_ip.isLoopback() &&
  context.request has source_port && context.request.source_port > 0
}};

@id("popinfo-mtls")
permit (principal, action == Action::"GET", resource == Route::"popinfo")
when {{
  context.pop.method == "mtls" && context.pop.proven && !(context.pop has jkt) &&
  context.pop has x5t_s256 && context.pop.x5t_s256 == "{planner}" &&
  context.request has tls && context.request.tls.certificate_sha256 == "{planner}"
}};

@id("popinfo-dpop-mtls")
permit (principal, action == Action::"GET", resource == Route::"popinfo")
when {{
  context.pop.method == "dpop+mtls" && context.pop.proven &&
  context.pop has jkt && context.pop.jkt == "{jkt(HOLDER)}" &&
  context.pop has x5t_s256 && context.pop.x5t_s256 == "{planner}"
}};
"""


@pytest.fixture(scope="module")
def mtls_example(envoy_bin, wasm_path, echo, pki) -> Client:
    """envoy-examples/envoy-mtls.yaml as shipped, but for ports, the module and the PKI's place."""
    bootstrap = envoy_config.with_pki(envoy_config.rendered("envoy-examples/envoy-mtls.yaml"), pki.dir)
    e = started(Envoy(envoy_bin, bootstrap, "envoy-mtls-example", wasm_path, echo.port))
    try:
        yield Client(e.url, pki)
    finally:
        e.stop()


@pytest.fixture(scope="module")
def mtls_gw(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo, pki) -> Client:
    cfg = configured(plugin_config, dpop={}, policies=mtls_policies(pki), request_headers=["x-tenant"],
                     routes=POP_ROUTES + ({"name": "svid", "prefix": "/svid"}, {"name": "tenants", "prefix": "/tenants"}),
                     connection={"client_certificates": "verified", "spiffe_trust_domains": [pkimod.TRUST_DOMAIN]})
    tls = {"cert": pki.server_cert, "key": pki.server_key, "trusted_ca": pki.ca_cert}
    with gateway(envoy_bin, wasm_path, example_bootstrap, echo, cfg, "envoy-mtls", tls=tls) as e:
        yield Client(e.url, pki)


def unverified_policies(pki: pkimod.Pki) -> str:
    return mtls_policies(pki) + f"""
@id("unverified-certificate-seen")
permit (principal, action == Action::"GET", resource == Route::"tlsinfo")
when {{
  context.request has tls && !context.request.tls.verified &&
  context.request.tls.certificate_sha256 == "{pki.clients["selfsigned"].x5t_s256}" &&
  !(context.request.tls has spiffe_id)
}};
"""


@pytest.fixture(scope="module")
def unverified_gw(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo, pki) -> Client:
    cfg = configured(plugin_config, policies=unverified_policies(pki), request_headers=["x-tenant"],
                     routes=POP_ROUTES + ({"name": "svid", "prefix": "/svid"}, {"name": "tenants", "prefix": "/tenants"},
                                          {"name": "tlsinfo", "prefix": "/tlsinfo"}),
                     connection={"client_certificates": "unverified"})
    tls = {"cert": pki.server_cert, "key": pki.server_key, "trusted_ca": pki.ca_cert, "accept_untrusted": True}
    with gateway(envoy_bin, wasm_path, example_bootstrap, echo, cfg, "envoy-mtls-unverified", tls=tls) as e:
        yield Client(e.url, pki)


# ---------------------------------------------------------------------------------------------
# DPoP: valid proofs

@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA"])
def test_valid_proof_is_forwarded(dpop_gw, alg):
    key = generate_key(alg)
    t = bound(key)
    saw = forwarded(dpop_gw.dpop("GET", "/orders/1", t, key))
    assert saw["headers"].get("authorization") == f"DPoP {t}", saw["headers"]


def test_iat_within_the_window_is_accepted(dpop_gw):
    t = bound()
    for iat in (int(time.time()) - 30, int(time.time()) + 2):  # max_age_s 60, clock_skew_s 5
        forwarded(dpop_gw.send("GET", "/orders/1", t, proof(HOLDER, "GET", dpop_gw.htu("/orders/1"), t, iat=iat)))


def test_a_replayed_proof_is_refused_on_every_worker(dpop_gw, echo):
    t = bound()
    p = proof(HOLDER, "GET", dpop_gw.htu("/orders/1"), t)
    forwarded(dpop_gw.send("GET", "/orders/1", t, p))
    with nothing_forwarded(echo):
        for _ in range(6):  # each on a connection of its own, so that either worker may get it
            assert_dpop_refusal(dpop_gw.send("GET", "/orders/1", t, p, fresh=True), "jti", "replay", "used", "seen")


# ---------------------------------------------------------------------------------------------
# DPoP: invalid proofs (RFC 9449 §4.3). Each case: (url of the gateway) → (token, proof), and the
# words one of which the error_description names. The request is always GET /orders/1.

Case = Callable[[Callable[[str], str]], tuple[str, str]]


def _other_origin(htu: Callable[[str], str], scheme: str | None = None, host: str | None = None,
                  port_delta: int = 0) -> str:
    base = httpx.URL(htu("/orders/1"))
    return str(base.copy_with(scheme=scheme or base.scheme, host=host or base.host, port=base.port + port_delta))


def _case(make_proof: Callable[..., str], new_key: Callable[[], object] | None = None) -> Case:
    """(t, make_proof(key, t, htu)), t a token bound to `key`: HOLDER, or new_key() if given."""
    def run(htu):
        k = new_key() if new_key else HOLDER
        t = bound(k)
        return t, make_proof(k, t, htu)
    return run


OTHER = generate_key("ES256")
NOW = lambda: int(time.time())  # noqa: E731
GET_ORDER = lambda htu: htu("/orders/1")  # noqa: E731

INVALID_PROOFS: dict[str, tuple[Case, tuple[str, ...]]] = {
    "not_a_jwt": (_case(lambda k, t, htu: "not-a-jwt"), ("malformed", "jwt", "jws", "compact", "parse", "decode")),
    "missing_jti": (_case(lambda k, t, htu: proof(k, "GET", GET_ORDER(htu), t, extra_claims={"jti": None})),
                    ("jti", "missing", "claim")),
    "missing_ath": (_case(lambda k, t, htu: proof(k, "GET", GET_ORDER(htu))), ("ath", "access token", "hash")),
    "typ_jwt": (_case(lambda k, t, htu: proof(k, "GET", GET_ORDER(htu), t, typ="JWT")), ("typ", "type")),
    "typ_missing": (_case(lambda k, t, htu: proof(k, "GET", GET_ORDER(htu), t, typ=None)), ("typ", "type")),
    "alg_hs256_keyed_with_the_public_key": (
        _case(lambda k, t, htu: proof(k, "GET", GET_ORDER(htu), t, alg="HS256")), ("alg",)),
    "alg_none": (_case(lambda k, t, htu: proof(k, "GET", GET_ORDER(htu), t, alg="none")), ("alg",)),
    "alg_rs256_not_in_algs": (_case(lambda k, t, htu: proof(k, "GET", GET_ORDER(htu), t),
                                    new_key=lambda: generate_key("RS256")), ("alg",)),
    "signed_by_another_key_than_its_jwk": (
        _case(lambda k, t, htu: proof(OTHER, "GET", GET_ORDER(htu), t, extra_header={"jwk": public_jwk(k)})),
        ("signature",)),
    "jwk_of_another_key_than_cnf_jkt": (_case(lambda k, t, htu: proof(OTHER, "GET", GET_ORDER(htu), t)),
                                        ("jkt", "thumbprint", "cnf", "bound", "key")),
    "private_jwk": (_case(lambda k, t, htu: proof(k, "GET", GET_ORDER(htu), t, include_private=True)),
                    ("private",)),
    "htm_post_for_get": (_case(lambda k, t, htu: proof(k, "POST", GET_ORDER(htu), t)), ("htm", "method")),
    "htm_lower_case": (_case(lambda k, t, htu: proof(k, "get", GET_ORDER(htu), t)), ("htm", "method")),
    "htu_other_path": (_case(lambda k, t, htu: proof(k, "GET", htu("/orders/2"), t)), ("htu", "uri", "url")),
    "htu_path_other_case": (_case(lambda k, t, htu: proof(k, "GET", htu("/ORDERS/1"), t)), ("htu", "uri", "url")),
    "htu_trailing_slash": (_case(lambda k, t, htu: proof(k, "GET", htu("/orders/1/"), t)), ("htu", "uri", "url")),
    "htu_other_host": (_case(lambda k, t, htu: proof(k, "GET", _other_origin(htu, host="evil.example"), t)),
                       ("htu", "uri", "url")),
    "htu_other_scheme": (_case(lambda k, t, htu: proof(k, "GET", _other_origin(htu, scheme="https"), t)),
                         ("htu", "uri", "url")),
    "htu_other_port": (_case(lambda k, t, htu: proof(k, "GET", _other_origin(htu, port_delta=1), t)),
                       ("htu", "uri", "url")),
    "ath_of_another_token": (_case(lambda k, t, htu: proof(k, "GET", GET_ORDER(htu), bound(k, scope="orders:write"))),
                             ("ath", "access token", "hash")),
    "iat_too_old": (_case(lambda k, t, htu: proof(k, "GET", GET_ORDER(htu), t, iat=NOW() - 300)),
                    ("iat", "old", "expired", "stale", "time")),
    "iat_in_the_future": (_case(lambda k, t, htu: proof(k, "GET", GET_ORDER(htu), t, iat=NOW() + 120)),
                          ("iat", "future", "time")),
}


@pytest.mark.parametrize("case", list(INVALID_PROOFS))
def test_invalid_proof_is_refused_with_invalid_dpop_proof(dpop_gw, echo, case):
    make, words = INVALID_PROOFS[case]
    t, p = make(dpop_gw.htu)
    with nothing_forwarded(echo):
        assert_dpop_refusal(dpop_gw.send("GET", "/orders/1", t, p), *words)


def test_bound_token_without_a_proof_is_refused(dpop_gw, echo):
    with nothing_forwarded(echo):
        assert_dpop_refusal(dpop_gw.send("GET", "/orders/1", bound()))


def test_two_dpop_headers_are_a_bad_request(dpop_gw, echo):
    t = bound()
    p1, p2 = (proof(HOLDER, "GET", dpop_gw.htu("/orders/1"), t) for _ in range(2))
    with nothing_forwarded(echo):
        r = dpop_gw.send("GET", "/orders/1", t, p1, headers=[("dpop", p2)])
        assert r.status_code == 400, f"expected 400, got {r.status_code}: {r.text}"


@pytest.mark.parametrize("with_proof", [False, True])
def test_a_stolen_bound_token_sent_as_bearer_is_refused(dpop_gw, echo, with_proof):
    t = bound()
    p = proof(HOLDER, "GET", dpop_gw.htu("/orders/1"), t) if with_proof else None
    with nothing_forwarded(echo):
        assert_challenge(dpop_gw.send("GET", "/orders/1", t, p, scheme="Bearer"), "DPoP", "invalid_token")


def test_an_unbound_token_with_the_dpop_scheme_is_refused(dpop_gw, echo):
    t = agent("orders:read")
    with nothing_forwarded(echo):
        assert_challenge(dpop_gw.dpop("GET", "/orders/1", t), "DPoP", "invalid_token")


# ---------------------------------------------------------------------------------------------
# htu: the same URI written differently matches (RFC 9449 §4.3 9: query and fragment ignored,
# RFC 3986 §6.2.2 syntax- and §6.2.3 scheme-based normalisation).

SAME_URI = {  # name → (request path, extra request headers, htu from the gateway's url)
    "query_on_the_request": ("/orders/1?x=1", {}, lambda u: f"{u}/orders/1"),
    "query_in_htu": ("/orders/1", {}, lambda u: f"{u}/orders/1?x=1"),
    "same_query_in_both": ("/orders/1?x=1&y=2", {}, lambda u: f"{u}/orders/1?x=1&y=2"),
    "fragment_in_htu": ("/orders/1", {}, lambda u: f"{u}/orders/1#top"),
    "scheme_in_upper_case": ("/orders/1", {}, lambda u: f"HTTP{u[4:]}/orders/1"),
    "host_in_another_case": ("/orders/1", {"host": "api.example.com"}, lambda u: "http://API.Example.COM/orders/1"),
    "default_port_written_out": ("/orders/1", {"host": "api.example.com"}, lambda u: "http://api.example.com:80/orders/1"),
    "percent_encoded_unreserved_character": ("/orders/1", {}, lambda u: f"{u}/%6Frders/1"),
    "dot_segment": ("/orders/1", {}, lambda u: f"{u}/orders/./1"),
}


@pytest.mark.parametrize("case", list(SAME_URI))
def test_htu_naming_the_same_uri_matches(dpop_gw, case):
    path, headers, htu = SAME_URI[case]
    t = bound()
    r = dpop_gw.send("GET", path, t, proof(HOLDER, "GET", htu(dpop_gw.url), t), headers=headers)
    forwarded(r, path=path)


# ---------------------------------------------------------------------------------------------
# proof_of_possession: required; what Cedar sees in context.pop

def test_route_requiring_pop_refuses_an_unbound_token_and_takes_a_bound_one(dpop_gw, echo):
    with nothing_forwarded(echo):
        assert_invalid_token_in_some_challenge(dpop_gw.send("GET", "/bound/x", agent("orders:read"), scheme="Bearer"),
                         "possession", "bound", "proof", "cnf")
    forwarded(dpop_gw.dpop("GET", "/bound/x", bound()), path="/bound/x")


def test_issuer_requiring_pop_refuses_its_unbound_tokens_and_takes_bound_ones(dpop_gw, echo):
    unbound = token(BOUND_ISSUER, scope="orders:read")
    with nothing_forwarded(echo):
        assert_invalid_token_in_some_challenge(dpop_gw.send("GET", "/orders/1", unbound, scheme="Bearer"),
                         "possession", "bound", "proof", "cnf")
    t = token(BOUND_ISSUER, scope="orders:read", cnf={"jkt": jkt(HOLDER)})
    saw = upstream_saw(dpop_gw.dpop("GET", "/orders/1", t))
    assert saw["headers"].get("x-tessera-issuer") == BOUND_ISSUER


def test_a_write_needs_a_proven_token_by_policy(dpop_gw, echo):
    with nothing_forwarded(echo):
        assert_forbidden(dpop_gw.send("POST", "/orders/1", agent("orders:write"), scheme="Bearer"), ["writes-need-pop"])
    upstream_saw(dpop_gw.send("GET", "/orders/1", agent("orders:read"), scheme="Bearer"))  # reads stay open
    forwarded(dpop_gw.dpop("POST", "/orders/1", bound(scope="orders:write")), method="POST")


def test_policy_sees_the_dpop_method_and_the_proven_key(dpop_gw, echo):
    forwarded(dpop_gw.dpop("GET", "/popinfo", bound()), path="/popinfo")
    with nothing_forwarded(echo):
        assert_forbidden(dpop_gw.send("GET", "/popinfo", agent("orders:read"), scheme="Bearer"), [])
        other = generate_key("ES256")  # proven too, but another key than the policy names
        assert_forbidden(dpop_gw.dpop("GET", "/popinfo", bound(other), other), [])


def test_certificate_bound_token_without_tls_is_refused(dpop_gw, echo, pki):
    t = cert_bound(pki.clients["planner"].x5t_s256)
    with nothing_forwarded(echo):
        assert_challenge(dpop_gw.send("GET", "/orders/1", t, scheme="Bearer"),
                         "Bearer", "invalid_token", "certificate")


def test_without_dpop_configured_a_jkt_bound_token_is_refused(envoy, echo):
    """The session's example configuration has no `dpop`: a cnf.jkt token cannot be proven."""
    c = Client(envoy.url)
    t = bound()
    with nothing_forwarded(echo):
        for r in (c.dpop("GET", "/orders/1", t), c.send("GET", "/orders/1", t, scheme="Bearer")):
            assert_invalid_token_in_some_challenge(r)


# ---------------------------------------------------------------------------------------------
# Nonces (RFC 9449 §9) and configured origins (nonce_gw: origins [API_ORIGIN])

def _nonce_challenge(resp: httpx.Response) -> str:
    """401 DPoP use_dpop_nonce with one DPoP-Nonce header; its value."""
    assert_challenge(resp, "DPoP", "use_dpop_nonce")
    nonces = resp.headers.get_list("dpop-nonce")
    assert len(nonces) == 1 and nonces[0], f"DPoP-Nonce headers: {nonces}"
    return nonces[0]


def _api_proof(t: str, nonce: str | None, path: str = "/orders/1", key=HOLDER) -> str:
    return proof(key, "GET", f"{API_ORIGIN}{path}", t, nonce=nonce)


def test_without_a_nonce_the_answer_is_use_dpop_nonce_and_its_nonce_works(nonce_gw, echo):
    t = bound()
    with nothing_forwarded(echo):
        nonce = _nonce_challenge(nonce_gw.send("GET", "/orders/1", t, _api_proof(t, None)))
    forwarded(nonce_gw.send("GET", "/orders/1", t, _api_proof(t, nonce)))


def test_a_forged_nonce_is_refused_with_a_fresh_one(nonce_gw, echo):
    t = bound()
    forged = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    with nothing_forwarded(echo):
        fresh = _nonce_challenge(nonce_gw.send("GET", "/orders/1", t, _api_proof(t, forged)))
    assert fresh != forged
    forwarded(nonce_gw.send("GET", "/orders/1", t, _api_proof(t, fresh)))


def test_a_nonce_serves_several_proofs(nonce_gw):
    t = bound()
    nonce = _nonce_challenge(nonce_gw.send("GET", "/orders/1", t, _api_proof(t, None)))
    for _ in range(3):  # each proof its own jti, all with the same nonce
        forwarded(nonce_gw.send("GET", "/orders/1", t, _api_proof(t, nonce)))


def test_htu_at_a_configured_origin_matches_and_the_own_origin_no_longer_does(nonce_gw, echo):
    t = bound()
    nonce = _nonce_challenge(nonce_gw.send("GET", "/orders/1", t, _api_proof(t, None)))
    with nothing_forwarded(echo):
        own = proof(HOLDER, "GET", nonce_gw.htu("/orders/1"), t, nonce=nonce)
        assert_dpop_refusal(nonce_gw.send("GET", "/orders/1", t, own), "htu", "uri", "url")
    forwarded(nonce_gw.send("GET", "/orders/1", t, _api_proof(t, nonce)))


# ---------------------------------------------------------------------------------------------
# Mutual TLS (RFC 8705) and the connection in Cedar (mtls_gw: client certificates verified)

def test_certificate_bound_token_with_its_certificate_is_forwarded(mtls_gw, pki):
    t = cert_bound(pki.clients["planner"].x5t_s256)
    saw = forwarded(mtls_gw.send("GET", "/orders/1", t, scheme="Bearer", cert="planner"))
    assert saw["headers"].get("authorization") == f"Bearer {t}"


@pytest.mark.parametrize("cert", ["executor", "evil", "nosan"])
def test_certificate_bound_token_with_another_certificate_is_refused(mtls_gw, echo, pki, cert):
    t = cert_bound(pki.clients["planner"].x5t_s256)
    with nothing_forwarded(echo):
        assert_challenge(mtls_gw.send("GET", "/orders/1", t, scheme="Bearer", cert=cert),
                         "Bearer", "invalid_token", "certificate")


def test_route_requiring_pop_over_mtls_refuses_an_unbound_token(mtls_gw, echo, pki):
    upstream_saw(mtls_gw.send("GET", "/orders/1", agent("orders:read"), scheme="Bearer"))  # not on this route
    with nothing_forwarded(echo):
        assert_invalid_token_in_some_challenge(mtls_gw.send("GET", "/bound/x", agent("orders:read"), scheme="Bearer"),
                         "possession", "bound", "proof", "cnf")
    forwarded(mtls_gw.send("GET", "/bound/x", cert_bound(pki.clients["planner"].x5t_s256), scheme="Bearer"),
             path="/bound/x")


def test_policy_sees_the_mtls_method_and_the_certificate(mtls_gw, echo, pki):
    forwarded(mtls_gw.send("GET", "/popinfo", cert_bound(pki.clients["planner"].x5t_s256), scheme="Bearer"),
             path="/popinfo")
    with nothing_forwarded(echo):
        assert_forbidden(mtls_gw.send("GET", "/popinfo", agent("orders:read"), scheme="Bearer"), [])


def test_token_bound_to_key_and_certificate_needs_both(mtls_gw, echo, pki):
    t = agent("orders:read", cnf={"jkt": jkt(HOLDER), "x5t#S256": pki.clients["planner"].x5t_s256})
    forwarded(mtls_gw.dpop("GET", "/popinfo", t, cert="planner"), path="/popinfo")  # method "dpop+mtls"
    with nothing_forwarded(echo):
        # The contract says Bearer for a certificate mismatch; the request used the DPoP scheme.
        assert_invalid_token_in_some_challenge(mtls_gw.dpop("GET", "/popinfo", t, cert="executor"), "certificate")
        assert_dpop_refusal(mtls_gw.send("GET", "/popinfo", t, cert="planner"))  # no proof


@pytest.mark.parametrize("cert, allowed", [("planner", True), ("executor", False), ("evil", False), ("nosan", False)])
def test_spiffe_id_of_a_verified_certificate_reaches_the_policy(mtls_gw, echo, cert, allowed):
    """Only the planner's SVID may; another SVID, one of an untrusted trust domain and a
    certificate without URI SAN may not."""
    if allowed:
        forwarded(mtls_gw.send("GET", "/svid", agent(None), scheme="Bearer", cert=cert), path="/svid")
    else:
        with nothing_forwarded(echo):
            assert_forbidden(mtls_gw.send("GET", "/svid", agent(None), scheme="Bearer", cert=cert), [])


@pytest.mark.parametrize("tenant, allowed", [("acme", True), ("globex", False), (None, False)])
def test_policy_reads_a_listed_request_header(mtls_gw, echo, tenant, allowed):
    headers = {"x-tenant": tenant} if tenant else {}
    if allowed:
        saw = forwarded(mtls_gw.send("GET", "/tenants", agent(None), scheme="Bearer", headers=headers), path="/tenants")
        assert saw["headers"].get("x-tenant") == tenant
    else:
        with nothing_forwarded(echo):
            assert_forbidden(mtls_gw.send("GET", "/tenants", agent(None), scheme="Bearer", headers=headers), [])


def test_a_forwarded_for_header_does_not_move_the_source_address(mtls_gw, echo):
    """The example's listener is the edge (`use_remote_address: true`): `context.request.source_ip`
    is the connection's peer, not the last X-Forwarded-For entry a client wrote (the policy
    acme-tenant-only wants a loopback peer)."""
    headers = [("x-tenant", "acme"), ("x-forwarded-for", "10.0.0.1")]
    forwarded(mtls_gw.send("GET", "/tenants", agent(None), scheme="Bearer", headers=headers), path="/tenants")


@pytest.mark.parametrize("cert", ["planner", "executor", "evil", "nosan"])
def test_the_mtls_example_serves_a_token_bound_to_the_presented_certificate(mtls_example, pki, cert):
    forwarded(mtls_example.send("GET", "/orders/1", cert_bound(pki.clients[cert].x5t_s256), scheme="Bearer",
                                cert=cert))


def test_the_mtls_example_refuses_a_token_bound_to_another_certificate(mtls_example, echo, pki):
    with nothing_forwarded(echo):
        assert_challenge(mtls_example.send("GET", "/orders/1", cert_bound(pki.clients["executor"].x5t_s256),
                                           scheme="Bearer", cert="planner"),
                         "Bearer", "invalid_token", "certificate")


def test_the_mtls_example_requires_bound_tokens(mtls_example, echo):
    """Its issuer says `proof_of_possession: required`: a bearer token is refused even over a
    verified connection."""
    with nothing_forwarded(echo):
        assert_invalid_token_in_some_challenge(
            mtls_example.send("GET", "/orders/1", agent("orders:read"), scheme="Bearer"), "possession", "bound")


def test_the_mtls_example_serves_a_dpop_bound_token_with_its_proof(mtls_example, echo):
    t = bound()
    forwarded(mtls_example.dpop("GET", "/orders/1", t))
    with nothing_forwarded(echo):
        params = assert_challenge(mtls_example.send("GET", "/orders/1", t, None), "DPoP", "invalid_dpop_proof")
    assert params["algs"] == "ES256 EdDSA"  # the example's `dpop.algs`


@pytest.mark.parametrize("cert", ["selfsigned", None])
def test_a_client_certificate_not_from_the_ca_fails_the_handshake(mtls_example, echo, cert):
    """Self-signed (claiming the planner's SPIFFE ID), or none at all: the example's listener
    refuses (mtls_gw's listener is the same: envoy_config.add_downstream_tls with the test CA)."""
    with nothing_forwarded(echo):
        with pytest.raises(httpx.TransportError):
            mtls_example.send("GET", "/orders/1", agent("orders:read"), scheme="Bearer", cert=cert, fresh=True)


# ---------------------------------------------------------------------------------------------
# unverified_gw: the listener asks for any certificate and lets it in unvalidated

def test_a_token_bound_to_a_self_signed_certificate_works_over_an_unverifying_listener(unverified_gw, echo, pki):
    t = cert_bound(pki.clients["selfsigned"].x5t_s256)
    forwarded(unverified_gw.send("GET", "/orders/1", t, scheme="Bearer", cert="selfsigned"))
    forwarded(unverified_gw.send("GET", "/tlsinfo", agent(None), scheme="Bearer", cert="selfsigned"),
             path="/tlsinfo")  # tls.verified false, its certificate_sha256, no spiffe_id
    with nothing_forwarded(echo):
        assert_challenge(unverified_gw.send("GET", "/orders/1", t, scheme="Bearer", cert="planner"),
                         "Bearer", "invalid_token", "certificate")


@pytest.mark.parametrize("cert", ["selfsigned", "planner"])
def test_unverified_certificates_never_yield_a_spiffe_id(unverified_gw, echo, cert):
    """`client_certificates` "unverified": not even the CA's planner certificate is taken for an
    SVID (the filter cannot know what the listener checked), let alone a self-signed impostor."""
    with nothing_forwarded(echo):
        assert_forbidden(unverified_gw.send("GET", "/svid", agent(None), scheme="Bearer", cert=cert), [])

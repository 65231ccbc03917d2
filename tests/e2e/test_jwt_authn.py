"""Tokens verified by Envoy's own `jwt_authn`, Tessera in front of nothing but its claims (issue 16,
`issuers[].jwt_authn_payload`).

Envoy runs `jwt_authn` before Tessera with a provider for the agents issuer whose
`payload_in_metadata` is the issuer (as Istio's `RequestAuthentication` writes it). The example's
agents issuer loses its keys and gets `jwt_authn_payload`: Tessera checks no signature of its
tokens and admits one only when `jwt_authn` put that payload in the request's dynamic metadata.
Tokens are minted by joserfc (tests/peers/mint.py).

  istio     requires_any [agents, allow_missing]   what Istio configures: a bad token is jwt_authn's 401
  lenient   allow_missing_or_failed                every token reaches Tessera: Tessera must refuse
                                                   what jwt_authn did not verify
"""
from __future__ import annotations

import base64
import copy
import json
import time
from typing import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import mint as minting
from conftest import Api, envoy_with_plugin_config, ready_or_fail
from helpers import agent, assert_invalid_token, upstream_saw, user

AGENT_PRINCIPAL = 'Agent::"agents|agent-7"'


def with_jwt_authn(bootstrap: dict, jwks: dict, requirement: dict) -> dict:
    """`bootstrap` with jwt_authn (a provider for the agents issuer, `requirement` on every path)
    placed just before the Wasm filter."""
    jwt_authn = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"agents": {
                "issuer": minting.AGENTS,
                "audiences": [minting.AUDIENCE],
                "forward": True,
                "payload_in_metadata": minting.AGENTS,
                "header_in_metadata": "agents-header",
                "local_jwks": {"inline_string": json.dumps(jwks)},
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": requirement}],
        },
    }
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                filters = f.get("typed_config", {}).get("http_filters")
                if filters is None:
                    continue
                at = next(i for i, h in enumerate(filters) if h["name"] == "envoy.filters.http.wasm")
                filters.insert(at, jwt_authn)
                return bootstrap
    raise AssertionError("no HTTP connection manager with the Wasm filter")


def gateway(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo, requirement: dict,
            name: str) -> Iterator[Api]:
    cfg = copy.deepcopy(plugin_config)
    agents = next(i for i in cfg["issuers"] if i["issuer"] == minting.AGENTS)
    jwks = agents.pop("jwks")
    agents["jwt_authn_payload"] = minting.AGENTS
    agents["jwt_authn_header"] = "agents-header"
    bootstrap = with_jwt_authn(copy.deepcopy(example_bootstrap), jwks, requirement)
    e = ready_or_fail(envoy_with_plugin_config(envoy_bin, wasm_path, bootstrap, echo, cfg, name),
                      name)
    try:
        yield Api(e.url)
    finally:
        e.stop()


@pytest.fixture(scope="module")
def istio(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo) -> Iterator[Api]:
    requirement = {"requires_any": {"requirements": [{"provider_name": "agents"}, {"allow_missing": {}}]}}
    yield from gateway(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo, requirement,
                       "envoy-jwt-authn-istio")


@pytest.fixture(scope="module")
def lenient(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo) -> Iterator[Api]:
    yield from gateway(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo,
                       {"allow_missing_or_failed": {}}, "envoy-jwt-authn-lenient")


def tampered(t: str) -> str:
    """`t` with its signature's first byte changed."""
    head, payload, sig = t.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[0] ^= 1
    return f"{head}.{payload}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def another_key() -> bytes:
    k = ec.generate_private_key(ec.SECP256R1())
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


@pytest.mark.parametrize("gw", ["istio", "lenient"])
def test_a_token_jwt_authn_verified_is_decided_by_tessera(gw, request):
    api: Api = request.getfixturevalue(gw)
    saw = upstream_saw(api.get("/orders/1", agent("orders:read")))
    assert saw["headers"].get("x-tessera-principal") == AGENT_PRINCIPAL, saw["headers"]
    # Verified by jwt_authn, denied by the policies: Tessera still decides.
    assert api.get("/orders/1", agent("profile:read")).status_code == 403


def test_istio_refuses_a_bad_signature_itself(istio):
    resp = istio.get("/orders/1", tampered(agent("orders:read")))
    assert resp.status_code == 401
    assert "jwt verification fails" in resp.text.lower(), resp.text


@pytest.mark.parametrize("forge", ["tampered", "another key"])
def test_what_jwt_authn_let_through_unverified_tessera_refuses(lenient, forge):
    t = tampered(agent("orders:read")) if forge == "tampered" else agent("orders:read", key=another_key())
    assert_invalid_token(lenient.get("/orders/1", t), "not verified by jwt_authn")


def test_a_token_beside_the_verified_one_must_have_its_header_and_payload(lenient):
    real = agent("orders:read")
    head, payload, sig = real.split(".")
    other_head = base64.urlsafe_b64encode(json.dumps({"alg": "ES256", "typ": "at+jwt"}).encode()).rstrip(b"=").decode()
    # jwt_authn reads the real token from ?access_token= (its default), Tessera the forged one.
    forged = f"{other_head}.{payload}.{sig}"
    resp = lenient.http.get(f"/orders/1?access_token={real}", headers={"authorization": f"Bearer {forged}"})
    assert_invalid_token(resp, "not verified by jwt_authn")
    # The same payload and header: what is left is the signature; Tessera admits it.
    resp = lenient.http.get(f"/orders/1?access_token={real}", headers={"authorization": f"Bearer {head}.{payload}.{tampered(real).split('.')[2]}"})
    assert resp.status_code == 200, resp.text


def test_a_token_admitted_once_is_not_admitted_unverified_later(lenient):
    t = agent("orders:read")
    assert lenient.get("/orders/1", t).status_code == 200
    # Same payload, no valid signature: jwt_authn verifies nothing, Tessera's cache does not help.
    assert_invalid_token(lenient.get("/orders/1", tampered(t)), "not verified by jwt_authn")


def test_tesseras_claim_rules_hold_for_tokens_jwt_authn_verified(lenient):
    now = int(time.time())
    # A lifetime over the issuer's max_ttl_s (3600): jwt_authn has no such rule and verifies it.
    assert_invalid_token(lenient.get("/orders/1", agent("orders:read", exp=now + 7200)), "lifetime")
    # A single-use token: jwt_authn verifies it every time, Tessera admits it once.
    once = agent("orders:read", single_use=True, jti=f"jwt-authn-{now}")
    assert lenient.get("/orders/1", once).status_code == 200
    assert_invalid_token(lenient.get("/orders/1", once), "already used")


def test_issuers_tessera_verifies_are_unchanged(lenient, istio):
    assert lenient.get("/orders/1", user()).status_code == 200
    assert_invalid_token(lenient.get("/orders/1", tampered(user())), "signature")
    # With `allow_missing`, jwt_authn refuses a token of an issuer it has no provider for (README:
    # such a gateway needs a provider per issuer, or allow_missing_or_failed).
    resp = istio.get("/orders/1", user())
    assert resp.status_code == 401 and "issuer is not configured" in resp.text.lower(), resp.text

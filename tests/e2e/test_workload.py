"""Workloads authenticated by their X.509-SVID through a real Envoy (issue 15, `auth: workload`).

The listener requires a client certificate from the test CA (tests/peers/pki.py, `cryptography`);
the configuration says client certificates are verified and trusts the trust domain example.org.
On the route `/inventory` (`auth: workload`) no token is read: the certificate's SPIFFE ID is the
principal, `Workload::"spiffe|<SPIFFE ID>"`. The schema is the example's with `token`,
`delegation` and `pop` optional in `HttpContext`, as README "Workloads" says to write it.

  planner    spiffe://example.org/ns/agents/sa/planner, from the CA      the permitted workload
  executor   spiffe://example.org/ns/agents/sa/executor, from the CA     a workload without permit
  evil       spiffe://evil.example/x, from the CA                        a trust domain not listed
  nosan      no URI SAN, from the CA                                     no SPIFFE ID

And a workload presenting a user's token (`issuers[].workload_actor` on the example's IdP issuer,
the example schema and policies, its trusted actors with the planner workload added): the
workload is the token's outermost actor in `context.delegation` and the principal.
"""
from __future__ import annotations

import copy
import re
from typing import Iterator

import pytest

import pki as pkimod
from conftest import envoy_with_plugin_config, ready_or_fail
import mint as minting
from helpers import agent, json_body, upstream_saw, user
from test_pop import Client

PLANNER = f'Workload::"spiffe|{pkimod.PLANNER}"'

POLICIES = f"""
@id("planner-reads-inventory")
permit (principal == {PLANNER}, action == Action::"GET", resource == Route::"inventory")
when {{ context.request has tls && context.request.tls.verified &&
        context.request.tls has spiffe_id && context.request.tls.spiffe_id == "{pkimod.PLANNER}" }};

@id("no-workload-deletes")
forbid (principal is Workload, action == Action::"DELETE", resource);

@id("workloads-delete-inventory")
permit (principal is Workload, action == Action::"DELETE", resource == Route::"inventory");

@id("tokens-read-orders")
permit (principal, action == Action::"GET", resource == Route::"orders")
when {{ context has token && context.token.scopes.contains("orders:read") }};
"""


def mesh_schema(schema: str) -> str:
    """`token`, `delegation` and `pop` optional in `HttpContext`."""
    start = schema.index("type HttpContext")
    end = schema.index("};", start)
    context = schema[start:end]
    for name in ("token", "delegation", "pop"):
        context = re.sub(rf"\n(\s*){name}:", rf"\n\1{name}?:", context, count=1)
    return schema[:start] + context + schema[end:]


def over_mtls(envoy_bin, wasm_path, example_bootstrap, echo, pki, cfg: dict, name: str) -> Iterator[Client]:
    """`cfg` on a listener requiring client certificates from the test CA, with client
    certificates verified and the trust domain example.org listed."""
    cfg["connection"] = {"client_certificates": "verified", "spiffe_trust_domains": [pkimod.TRUST_DOMAIN]}
    tls = {"cert": pki.server_cert, "key": pki.server_key, "trusted_ca": pki.ca_cert}
    e = ready_or_fail(envoy_with_plugin_config(envoy_bin, wasm_path, example_bootstrap, echo, cfg, name, tls=tls),
                      name)
    try:
        yield Client(e.url, pki)
    finally:
        e.stop()


@pytest.fixture(scope="module")
def mesh_gw(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo, pki) -> Client:
    cfg = copy.deepcopy(plugin_config)
    cfg["schema"] = mesh_schema(cfg["schema"])
    cfg["policies"] = {"mesh.cedar": POLICIES}
    cfg["routes"] = [{"name": "inventory", "prefix": "/inventory", "auth": "workload"},
                     {"name": "orders", "prefix": "/orders"}]
    yield from over_mtls(envoy_bin, wasm_path, example_bootstrap, echo, pki, cfg, "envoy-workload")


def refused(resp, *words: str, policies: list[str] | None = None) -> None:
    assert resp.status_code == 403, f"expected 403, got {resp.status_code}: {resp.text}"
    body = json_body(resp)
    text = resp.text
    assert body.get("error") == "forbidden", body
    for w in words:
        assert w in text, text
    if policies is not None:
        assert sorted(body.get("policies") or []) == sorted(policies), body


def test_the_svid_names_the_principal_and_a_client_cannot_name_another(mesh_gw, echo):
    resp = mesh_gw.send("GET", "/inventory/1", cert="planner",
                        headers={"x-tessera-principal": 'Workload::"spiffe|spiffe://example.org/ns/agents/sa/executor"'})
    saw = upstream_saw(resp)
    assert saw["path"] == "/inventory/1"
    assert saw["headers"].get("x-tessera-principal") == PLANNER, saw["headers"]


def test_another_workload_of_the_trust_domain_has_no_permit(mesh_gw, echo):
    before = echo.count()
    refused(mesh_gw.send("GET", "/inventory/1", cert="executor"), policies=[])
    assert echo.count() == before


@pytest.mark.parametrize("cert", ["evil", "nosan"])
def test_without_a_spiffe_id_of_a_listed_trust_domain_there_is_no_workload(mesh_gw, echo, cert):
    before = echo.count()
    refused(mesh_gw.send("GET", "/inventory/1", cert=cert), "no workload identity")
    # A token is no workload identity either.
    refused(mesh_gw.send("GET", "/inventory/1", agent("orders:read"), scheme="Bearer", cert=cert),
            "no workload identity")
    assert echo.count() == before


def test_a_forbid_on_workloads_holds(mesh_gw, echo):
    before = echo.count()
    refused(mesh_gw.send("DELETE", "/inventory/1", cert="planner"), policies=["no-workload-deletes"])
    assert echo.count() == before


def test_the_token_route_beside_it_still_wants_a_token(mesh_gw):
    assert mesh_gw.send("GET", "/orders/1", cert="planner").status_code == 401
    saw = upstream_saw(mesh_gw.send("GET", "/orders/1", agent("orders:read"), scheme="Bearer", cert="planner"))
    assert saw["headers"].get("x-tessera-principal") == 'Agent::"agents|agent-7"', saw["headers"]


# ---------------------------------------------------------------------------------------------
# A workload presenting a user's token: its outermost actor (relay_gw)

RELAY_POLICIES = f"""
@id("planner-relays-for-alice")
permit (principal == {PLANNER}, action == Action::"GET", resource == Route::"relay")
when {{ context.delegation.on_behalf_of == User::"corp|alice" && context.delegation.depth == 1 &&
        context.delegation.actor == "{pkimod.PLANNER}" &&
        context.delegation.chain == "alice>{pkimod.PLANNER}" }};
"""


@pytest.fixture(scope="module")
def relay_gw(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo, pki) -> Client:
    cfg = copy.deepcopy(plugin_config)
    idp = next(i for i in cfg["issuers"] if i["issuer"] == minting.IDP)
    idp["workload_actor"] = True
    cfg["routes"][:0] = [{"name": "relay", "prefix": "/relay"}]
    cfg["policies"]["relay.cedar"] = RELAY_POLICIES
    trusted = '"agent-7"].containsAll'
    assert trusted in cfg["policies"]["agents.cedar"]
    cfg["policies"]["agents.cedar"] = cfg["policies"]["agents.cedar"].replace(
        trusted, f'"agent-7", "{pkimod.PLANNER}"].containsAll')
    yield from over_mtls(envoy_bin, wasm_path, example_bootstrap, echo, pki, cfg, "envoy-workload-relay")


def test_a_workload_presenting_a_users_token_is_its_actor(relay_gw, echo):
    t = user("alice")
    saw = upstream_saw(relay_gw.send("GET", "/relay/1", t, scheme="Bearer", cert="planner"))
    assert saw["headers"].get("x-tessera-principal") == PLANNER, saw["headers"]
    # Another workload of the trust domain is another actor: not among the trusted ones.
    before = echo.count()
    refused(relay_gw.send("GET", "/relay/1", t, scheme="Bearer", cert="executor"),
            policies=["delegation-trusted-actors-only"])
    assert echo.count() == before


@pytest.mark.parametrize("cert", ["evil", "nosan"])
def test_without_a_workload_identity_the_user_acts_herself(relay_gw, cert):
    saw = upstream_saw(relay_gw.send("GET", "/relay/1", user("alice"), scheme="Bearer", cert=cert))
    assert saw["headers"].get("x-tessera-principal") == 'User::"corp|alice"', saw["headers"]

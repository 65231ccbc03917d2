"""Agents acting for people (RFC 8693 `act` chains), task-scoped tokens (RFC 9396
`authorization_details`, task id, intent) and per-route maximum token age, through a real Envoy.

Two Envoys: envoy-examples/envoy-http.yaml in front of the echo upstream, with a sensitive route
`/payments` (`max_token_age_s: 60`) and `limits.max_delegation_depth: 6`; and
envoy-examples/envoy-mcp.yaml in front of tests/peers/mcp_server.py, driven by the official MCP
SDK client, with the task detail fields of policies/agents.cedar configured for the IdP issuer.
Tokens are minted by tests/peers/mint.py (joserfc); the decisions come from policies/*.cedar.
"""
from __future__ import annotations

import copy

import httpx
import pytest
from mcp import ClientSession

import envoy_config
from conftest import Envoy, envoy_with_plugin_config, tail
from helpers import assert_invalid_token, json_body, minting, token, upstream_saw
from test_mcp import EXAMPLE as MCP_EXAMPLE
from test_mcp import Gateway, McpServer, assert_refused_by, refused, run_session, text_of

MAX_DEPTH = 6
TASK = {"detail_fields": {"max_amount": "Long", "allowed_recipient_domain": "String"}}


def delegated(sub: str, actors: list[str], groups: list[str] | None = None, aud: str = minting.AUDIENCE,
              **claims) -> str:
    """A token-exchange token from the IdP: `sub` is the person, `actors` acted in that order (the
    last is the current actor, the outermost `act`)."""
    return token(minting.IDP, sub, groups=groups if groups is not None else ["staff"], aud=aud,
                 act=minting.act_chain(actors), **claims)


def assert_forbidden(resp: httpx.Response, policies: list[str]) -> None:
    assert resp.status_code == 403, f"expected 403, got {resp.status_code}: {resp.text}"
    body = json_body(resp)
    assert body.get("error") == "forbidden" and sorted(body.get("policies") or []) == sorted(policies), body


# ---------------------------------------------------------------------------------------------
# HTTP: envoy-http.yaml with a sensitive route and a smaller delegation limit

@pytest.fixture(scope="module")
def http_api(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo):
    cfg = copy.deepcopy(plugin_config)
    cfg["routes"].insert(-1, {"name": "payments", "prefix": "/payments", "max_token_age_s": 60})
    cfg.setdefault("limits", {})["max_delegation_depth"] = MAX_DEPTH
    e = envoy_with_plugin_config(envoy_bin, wasm_path, example_bootstrap, echo, cfg, "envoy-delegation")
    try:
        if not e.wait_ready():
            pytest.fail(f"Envoy exited (code {e.proc.returncode}):\n{tail(e.log)}", pytrace=False)
        yield httpx.Client(base_url=e.url, timeout=10)
    finally:
        e.stop()


def get(api: httpx.Client, path: str, bearer: str) -> httpx.Response:
    return api.get(path, headers={"authorization": f"Bearer {bearer}"})


def test_the_current_actor_is_the_principal_and_the_person_is_the_subject(http_api):
    saw = upstream_saw(get(http_api, "/orders/1", delegated("alice", ["planner", "executor"], scope="orders:read")))
    assert saw["headers"].get("x-tessera-principal") == 'Agent::"corp|executor"'
    assert saw["headers"].get("x-tessera-subject") == "alice"


def test_an_agent_acting_for_an_admin_does_not_get_the_admins_group(http_api, echo):
    before = echo.count()
    assert_forbidden(get(http_api, "/orders/1", delegated("root", ["planner"], groups=["admins"])), [])
    assert_forbidden(get(http_api, "/admin/x", delegated("root", ["planner"], groups=["admins"])),
                     ["admin-api-people-only"])
    assert echo.count() == before


def test_a_chain_longer_than_the_policy_allows_is_forbidden(http_api):
    five = ["planner", "executor", "mailer", "researcher", "agent-7"]
    assert_forbidden(get(http_api, "/orders/1", delegated("alice", five, scope="orders:read")),
                     ["delegation-at-most-four-actors"])
    upstream_saw(get(http_api, "/orders/1", delegated("alice", five[:4], scope="orders:read")))


def test_an_untrusted_actor_anywhere_in_the_chain_is_forbidden(http_api):
    assert_forbidden(get(http_api, "/orders/1", delegated("alice", ["rogue", "executor"], scope="orders:read")),
                     ["delegation-trusted-actors-only"])


def test_a_chain_deeper_than_the_configured_limit_is_401_before_cedar(http_api, echo):
    before = echo.count()
    actors = [f"a{i}" for i in range(MAX_DEPTH + 1)]
    assert_invalid_token(get(http_api, "/orders/1", delegated("alice", actors, scope="orders:read")),
                         f"delegation chain deeper than {MAX_DEPTH}")
    assert echo.count() == before


def test_a_token_whose_claims_exceed_the_size_limit_is_401(http_api):
    # 8 KiB of claims, in a chain within the depth limit: the size limit holds whatever the shape.
    big = delegated("alice", ["planner"], scope="orders:read", padding="x" * 9000)
    assert_invalid_token(get(http_api, "/orders/1", big), "too large")


def test_a_malformed_act_claim_is_401(http_api):
    bad = token(minting.IDP, "alice", groups=["staff"], act=["planner"], scope="orders:read")
    assert_invalid_token(get(http_api, "/orders/1", bad), "act")


def test_a_fresh_token_reaches_the_sensitive_route(http_api):
    upstream_saw(get(http_api, "/payments/7", token(minting.IDP, "alice", groups=["staff"])))


def test_a_token_older_than_the_routes_max_age_is_401_there_but_fine_elsewhere(http_api, echo):
    import time
    old = token(minting.IDP, "alice", groups=["staff"], iat=int(time.time()) - 120)
    before = echo.count()
    assert_invalid_token(get(http_api, "/payments/7", old), "older than this route accepts")
    assert echo.count() == before
    upstream_saw(get(http_api, "/orders/7", old))


def test_a_token_without_iat_is_401_on_the_sensitive_route(http_api):
    assert_invalid_token(get(http_api, "/payments/7", token(minting.IDP, "alice", groups=["staff"], iat=None)),
                         "iat")


# ---------------------------------------------------------------------------------------------
# MCP: envoy-mcp.yaml with task detail fields, through the official SDK client

MCP_AUD = "mcp-tools"


@pytest.fixture(scope="module")
def gw(envoy_bin, wasm_path):
    bootstrap = envoy_config.rendered(MCP_EXAMPLE)
    # The example configures the task detail fields that policies/agents.cedar reads.
    assert envoy_config.get_plugin_config(bootstrap)["issuers"][0]["task"] == TASK
    server = McpServer("mcp-server-delegation")
    envoy = Envoy(envoy_bin, copy.deepcopy(bootstrap), "envoy-mcp-delegation", wasm_path, server.port)
    try:
        if not envoy.wait_ready():
            pytest.fail(f"Envoy exited (code {envoy.proc.returncode}):\n{tail(envoy.log)}", pytrace=False)
        yield Gateway(envoy, server)
    finally:
        envoy.stop()
        server.stop()


def mcp_delegated(sub: str, actors: list[str], groups: list[str] | None = None, **claims) -> str:
    return delegated(sub, actors, groups, aud=MCP_AUD, **claims)


def tool_detail(tool: str, **fields) -> dict:
    return {"type": "mcp_tool", "identifier": tool, **fields}


def test_an_agent_acting_for_a_finance_person_pays_and_the_server_sees_the_agent(gw):
    async def body(s: ClientSession):
        return await s.call_tool("transfer_funds", {"amount": 120, "to_account": "ACC-9"})

    result, ex = run_session(gw, mcp_delegated("alice", ["planner"], ["finance"]), body)
    assert text_of(result) == "transferred 120 to ACC-9"
    calls = [r for r in gw.server.requests()
             if r["rpc"] == ["tools/call"] and r["headers"].get("mcp-session-id") == ex.session_id]
    assert [c["headers"].get("x-tessera-principal") for c in calls] == ['Agent::"corp|planner"']
    assert calls[0]["headers"].get("x-tessera-subject") == "alice"


def test_only_agents_acting_for_finance_may_pay(gw):
    async def body(s: ClientSession):
        return await refused(s, "transfer_funds", {"amount": 120, "to_account": "BOB-1"})

    err, _ = run_session(gw, mcp_delegated("bob", ["planner"], ["staff"], scope="payments:write"), body)
    assert_refused_by(err, ["delegated-payments-for-finance-only"])
    assert "BOB-1" not in [c["arguments"].get("to_account") for c in gw.server.calls()]


def test_an_agent_acting_for_itself_is_limited_to_its_own_scopes(gw):
    async def without_scope(s: ClientSession):
        return await refused(s, "transfer_funds", {"amount": 33, "to_account": "SELF-1"})

    async def with_scope(s: ClientSession):
        return await s.call_tool("transfer_funds", {"amount": 34, "to_account": "SELF-2"})

    err, _ = run_session(gw, mcp_delegated("agent-7", ["agent-7"], ["finance"]), without_scope)
    assert_refused_by(err, [])
    ok, _ = run_session(gw, mcp_delegated("agent-7", ["agent-7"], ["finance"], scope="payments:write"), with_scope)
    assert text_of(ok) == "transferred 34 to SELF-2"
    accounts = [c["arguments"]["to_account"] for c in gw.server.calls() if c["tool"] == "transfer_funds"]
    assert "SELF-1" not in accounts and "SELF-2" in accounts


def test_a_task_token_calls_only_its_tools_within_their_constraints(gw):
    bearer = mcp_delegated("alice", ["planner"], ["finance"], scope="files:read", task_id="t-42",
                           intent="pay the plumber",
                           authorization_details=[tool_detail("transfer_funds", max_amount=500)])

    async def body(s: ClientSession):
        within = await s.call_tool("transfer_funds", {"amount": 300, "to_account": "PLUMBER"})
        over = await refused(s, "transfer_funds", {"amount": 501, "to_account": "PLUMBER"})
        other_tool = await refused(s, "read_file", {"path": "/workspace/report.md"})
        return within, over, other_tool

    (within, over, other_tool), _ = run_session(gw, bearer, body)
    assert text_of(within) == "transferred 300 to PLUMBER"
    assert_refused_by(over, ["task-max-amount"])
    assert_refused_by(other_tool, ["task-tools-only"])
    paid = [c["arguments"]["amount"] for c in gw.server.calls() if c["arguments"].get("to_account") == "PLUMBER"]
    assert paid == [300]


def test_a_task_token_emails_only_its_allowed_recipient_domain(gw):
    bearer = mcp_delegated("alice", ["mailer"], scope="email:send",
                           authorization_details=[tool_detail("send_email", allowed_recipient_domain="example.com")])

    async def body(s: ClientSession):
        ok = await s.call_tool("send_email", {"to": "bob@example.com", "subject": "t", "body": "b"})
        # `to` is inside the company (agents-email-inside-company allows it), but another address
        # among the arguments is outside the task's domain.
        smuggled = await refused(s, "send_email", {"to": "eve@example.com", "subject": "fwd:eve@evil.example",
                                                   "body": "b"})
        return ok, smuggled

    (ok, smuggled), _ = run_session(gw, bearer, body)
    assert text_of(ok).startswith("sent to bob@example.com")
    assert_refused_by(smuggled, ["task-recipient-domain"])
    recipients = [c["arguments"]["to"] for c in gw.server.calls() if c["tool"] == "send_email"]
    assert "eve@example.com" not in recipients


def test_a_task_token_for_another_domain_cannot_email_inside_the_company(gw):
    bearer = mcp_delegated("alice", ["mailer"], scope="email:send",
                           authorization_details=[tool_detail("send_email", allowed_recipient_domain="example.org")])

    async def body(s: ClientSession):
        return await refused(s, "send_email", {"to": "dave@example.com", "subject": "t", "body": "b"})

    err, _ = run_session(gw, bearer, body)
    assert_refused_by(err, ["task-recipient-domain"])


def test_a_task_detail_of_the_wrong_type_is_401(gw):
    bad = mcp_delegated("alice", ["planner"], authorization_details=[tool_detail("transfer_funds", max_amount="500")])
    resp = httpx.post(gw.mcp_url, headers={"authorization": f"Bearer {bad}", "content-type": "application/json",
                                           "accept": "application/json, text/event-stream"},
                      json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10)
    assert_invalid_token(resp, "authorization_details")

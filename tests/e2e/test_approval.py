"""Single-use tokens and human approval end to end, through real Envoy.

HTTP: the example (envoy-examples/envoy-http.yaml), whose agents issuer declares
`single_use_claim: single_use` and whose `approval` section trusts the demo approver
(tests/keys/approver-jwks.json). An agent's refund (POST /orders/<id>/refund) needs approval
(policies/orders.cedar, `agent-refunds-need-approval`).

MCP: envoy-examples/envoy-mcp.yaml with the same `approval` section, in front of
tests/peers/mcp_server.py, driven by the official MCP Python SDK client. A transfer of more than 100
to an external account needs approval (policies/mcp.cedar, `external-transfers-need-approval`).

Tokens are minted by tests/peers/mint.py and approvals by tests/peers/approve.py (joserfc); the
digest is recomputed here from the approval request (sorted-key JSON, SHA-256, base64url).
"""
from __future__ import annotations

import copy
import uuid

import anyio
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

import envoy_config
from approve import HEADER, approval_config, approve, digest_of
from conftest import ARTIFACTS, REPO_ROOT, Api, Envoy, Peer, envoy_with_plugin_config, tail
from helpers import agent, assert_invalid_token, json_body, minting, token, upstream_saw

APPROVAL_REQUIRED, FORBIDDEN = -32005, -32003


def single_use(jti: str | None, scope: str = "orders:read") -> str:
    return agent(scope, single_use=True, **({"jti": jti} if jti else {}))


# ---------------------------------------------------------------------------------------------
# Single-use tokens (HTTP)

def test_a_single_use_token_is_accepted_once_then_401_token_already_used(api, echo):
    t = single_use(f"e2e-{uuid.uuid4()}")
    upstream_saw(api.get("/orders/1", t))
    before = echo.count()
    for _ in range(2):  # the second and third use hit the filter's token cache: still refused
        assert_invalid_token(api.get("/orders/1", t), "token already used")
    assert echo.count() == before


def test_a_single_use_token_without_jti_gets_401(api):
    assert_invalid_token(api.get("/orders/1", single_use(None)), "jti")


def test_a_denied_request_does_not_use_up_a_single_use_token(api):
    t = single_use(f"e2e-{uuid.uuid4()}")
    assert api.request("DELETE", "/orders/1", t).status_code == 403
    upstream_saw(api.get("/orders/1", t))
    assert_invalid_token(api.get("/orders/1", t), "already used")


def test_the_same_jti_from_another_issuer_is_another_token(api):
    jti = f"e2e-{uuid.uuid4()}"
    upstream_saw(api.get("/orders/1", single_use(jti)))
    # The IdP issuer declares no single-use claim: its tokens are reusable, whatever their jti.
    alice = token(minting.IDP, "alice", groups=["staff"], jti=jti, single_use=True)
    upstream_saw(api.get("/orders/1", alice))
    upstream_saw(api.get("/orders/1", alice))


# ---------------------------------------------------------------------------------------------
# Human approval (HTTP)

def refund_agent() -> str:
    return agent("orders:write", sub="agent-9")


def ask_http(api, path: str, bearer: str, headers: dict | None = None) -> dict:
    resp = api.request("POST", path, bearer, headers=headers, json={"reason": "damaged"})
    assert resp.status_code == 403, resp.text
    body = json_body(resp)
    assert body["error"] == "approval_required", body
    assert body["policies"] == ["agent-refunds-need-approval"], body
    return body


def test_a_refund_needs_approval_then_is_allowed_once_with_it(api, echo):
    bearer = refund_agent()
    body = ask_http(api, "/orders/42/refund", bearer)
    asked = body["approval"]
    assert asked["request"] == {"principal": 'Agent::"agents|agent-9"', "action": "POST",
                                "resource": 'Route::"orders"', "route": "orders",
                                "path": "/orders/42/refund", "issuer": "https://agents.demo.tessera.dev",
                                "on_behalf_of": "agents|agent-9", "actors": [], "task": None}
    assert asked["digest"] == digest_of(asked["request"]), "digest recomputed independently"
    assert (asked["header"], asked["issuer"]) == (HEADER, "https://approvals.demo.tessera.dev")

    approval = approve(asked["digest"], approver="bob@example.com")
    before = echo.count()
    saw = upstream_saw(api.request("POST", "/orders/42/refund", bearer, headers={HEADER: approval}))
    assert saw["headers"]["x-tessera-principal"] == 'Agent::"agents|agent-9"'
    assert echo.count() == before + 1

    replay = ask_http(api, "/orders/42/refund", bearer, headers={HEADER: approval})
    assert replay["reason"] == "approval already used"
    assert echo.count() == before + 1


def test_an_approval_binds_the_exact_request_principal_and_approver_key(api):
    bearer = refund_agent()
    digest = ask_http(api, "/orders/42/refund", bearer)["approval"]["digest"]
    approval = approve(digest)
    other_order = ask_http(api, "/orders/43/refund", bearer, headers={HEADER: approval})
    assert other_order["reason"] == "the approval is for another request"
    other_agent = ask_http(api, "/orders/42/refund", agent("orders:write", sub="agent-10"),
                           headers={HEADER: approval})
    assert other_agent["reason"] == "the approval is for another request"
    # Signed by a bearer issuer's key (not the approver's): not an approval.
    forged = minting.mint("EdDSA", {"iss": "https://approvals.demo.tessera.dev", "aud": "tessera-approvals",
                                    "sub": "mallory", "jti": str(uuid.uuid4()), "approval_digest": digest})
    assert ask_http(api, "/orders/42/refund", bearer, headers={HEADER: forged})["reason"].startswith(
        "approval rejected")
    # Longer-lived than approval.max_ttl_s (300 s).
    long = approve(digest, ttl=3600)
    assert "lifetime" in ask_http(api, "/orders/42/refund", bearer, headers={HEADER: long})["reason"]
    # None of the refused attempts used the approval up.
    upstream_saw(api.request("POST", "/orders/42/refund", bearer, headers={HEADER: approval}))


def test_approval_does_not_lift_a_denial_that_is_not_only_approval_policies(api):
    # No orders:write: no permit, so approval could not allow it: a plain 403.
    resp = api.request("POST", "/orders/42/refund", agent("orders:read"))
    assert resp.status_code == 403
    assert json_body(resp)["error"] == "forbidden"


def test_an_approval_request_is_announced_to_the_webhook_cluster(envoy_bin, wasm_path, example_bootstrap,
                                                                  plugin_config, echo):
    """approval.webhook: the filter POSTs each approval request to an Envoy cluster (here the echo
    upstream's, which counts what reaches it) before it answers the client."""
    cfg = copy.deepcopy(plugin_config)
    cfg["approval"]["webhook"] = {"cluster": "upstream", "path": "/approval-requests"}
    e = envoy_with_plugin_config(envoy_bin, wasm_path, example_bootstrap, echo, cfg, "envoy-approval-webhook")
    try:
        assert e.wait_ready(), tail(e.log)
        hooked = Api(e.url)
        before = echo.count()
        ask_http(hooked, "/orders/42/refund", refund_agent())
        # The answer came after the announcement: no waiting here.
        assert echo.count() == before + 1, "the webhook received the approval request"
        # (That a plain denial announces nothing is shown in the harness, without waiting.)
    finally:
        e.stop()


# ---------------------------------------------------------------------------------------------
# Human approval (MCP, through the official SDK client)

MCP_EXAMPLE = REPO_ROOT / "envoy-examples" / "envoy-mcp.yaml"
MCP_AUDIENCE = "mcp-tools"


class McpServer(Peer):
    def __init__(self):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        super().__init__("mcp_server.py", ARTIFACTS / "mcp-server-approval.log")

    def calls(self) -> list[dict]:
        return self._client.get("/__mcp/log").json()["calls"]


@pytest.fixture(scope="module")
def gw(envoy_bin, wasm_path):
    bootstrap = envoy_config.rendered(MCP_EXAMPLE)
    # The example trusts the demo approver as configured here, and sends 2026-07-28 clients to the
    # demo approval page (tests/e2e/test_mcp_approval.py).
    assert envoy_config.get_plugin_config(bootstrap)["approval"] == approval_config(
        page="http://127.0.0.1:8090/approve", webhook={"cluster": "approval_page", "path": "/webhook"}
    ), MCP_EXAMPLE
    server = McpServer()
    envoy = Envoy(envoy_bin, copy.deepcopy(bootstrap), "envoy-mcp-approval", wasm_path, server.port)
    try:
        if not envoy.wait_ready():
            pytest.fail(f"Envoy exited with the MCP example + approval:\n{tail(envoy.log)}", pytrace=False)
        yield envoy, server
    finally:
        envoy.stop()
        server.stop()


async def refused(session: ClientSession, arguments: dict) -> MCPError:
    with pytest.raises(MCPError) as info:
        await session.call_tool("transfer_funds", arguments)
    return info.value


def test_mcp_transfer_needs_approval_then_goes_through_once_in_the_same_session(gw):
    envoy, server = gw
    bearer = token(minting.AGENTS, "agent-pay", scope="payments:write", aud=MCP_AUDIENCE)
    args = {"amount": 500, "to_account": "EXT-42"}

    async def main():
        async with create_mcp_http_client(headers={"authorization": f"Bearer {bearer}"}) as http:
            async with streamable_http_client(f"{envoy.url}/mcp", http_client=http) as (read, write):
                async with ClientSession(read, write) as s:
                    with anyio.fail_after(30):  # a safety net against a hang, not a timing check
                        await s.initialize()
                        asked = await refused(s, args)
                        # The retry carries the approval in the header (the SDK client's headers).
                        approval = approve(asked.data["approval"]["digest"])
                        http.headers[HEADER] = approval
                        done = await s.call_tool("transfer_funds", args)
                        replay = await refused(s, args)
                        other_args = await refused(s, {"amount": 501, "to_account": "EXT-42"})
                        del http.headers[HEADER]
                        # The session goes on: a small transfer needs no approval.
                        small = await s.call_tool("transfer_funds", {"amount": 20, "to_account": "EXT-42"})
                        return asked, done, replay, other_args, small

    asked, done, replay, other_args, small = anyio.run(main)
    assert asked.code == APPROVAL_REQUIRED, asked
    assert asked.message == "approval required by policy external-transfers-need-approval"
    request = asked.data["approval"]["request"]
    assert request == {"principal": 'Agent::"agents|agent-pay"', "action": "call:transfer_funds",
                       "resource": 'Tool::"transfer_funds"', "route": "tools", "arguments": args,
                       "issuer": "https://agents.demo.tessera.dev", "on_behalf_of": "agents|agent-pay",
                       "actors": [], "task": None}
    assert asked.data["approval"]["digest"] == digest_of(request)
    assert "".join(c.text for c in done.content) == "transferred 500 to EXT-42"
    assert replay.code == APPROVAL_REQUIRED and "approval already used" in replay.message
    assert other_args.code == APPROVAL_REQUIRED and "another request" in other_args.message
    assert not small.is_error
    transfers = [c["arguments"] for c in server.calls() if c["tool"] == "transfer_funds"]
    assert [t["amount"] for t in transfers] == [500, 20], "the server ran the approved call once"


def test_mcp_approval_cannot_lift_the_hard_limit(gw):
    envoy, _ = gw
    bearer = token(minting.AGENTS, "agent-pay", scope="payments:write", aud=MCP_AUDIENCE)

    async def main():
        async with create_mcp_http_client(headers={"authorization": f"Bearer {bearer}"}) as http:
            async with streamable_http_client(f"{envoy.url}/mcp", http_client=http) as (read, write):
                async with ClientSession(read, write) as s:
                    with anyio.fail_after(30):
                        await s.initialize()
                        return await refused(s, {"amount": 5000, "to_account": "EXT-42"})

    err = anyio.run(main)
    assert err.code == FORBIDDEN
    assert err.data["policies"] == ["external-transfers-need-approval", "large-transfers-forbidden"]

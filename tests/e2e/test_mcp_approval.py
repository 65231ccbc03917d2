"""Human approval for MCP 2026-07-28 clients, end to end (issue 14): the official MCP Python SDK
client (`mcp.Client`, mode "2026-07-28") drives the approval loop with its own input-required
handling and no code of Tessera's: envoy-examples/envoy-mcp.yaml answers a payment held by
`@approval("required")` with `input_required` (a URL-mode elicitation of the approval page and a
requestState); the client's elicitation callback plays the person — it opens the page
(tests/peers/approval_page.py, which Tessera announced the request to), reads who asks and what,
and presses Approve; the page signs the approval and posts it to Tessera; the SDK retries the
call, which reaches the SDK server (tests/peers/mcp_server.py) once, without Tessera's
requestState (the SDK server rejects state it did not issue, so the call succeeding shows that).
"""
from __future__ import annotations

import copy

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import Client, InputRequiredRoundsExceededError, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

import envoy_config
from conftest import ARTIFACTS, REPO_ROOT, Envoy, McpServer, Peer, tail
from helpers import minting, token

EXAMPLE = REPO_ROOT / "envoy-examples" / "envoy-mcp.yaml"
AUDIENCE = "mcp-tools"
PAYMENT = {"amount": 500, "to_account": "EXT-42"}
APPROVAL_REQUIRED = -32005


class ApprovalPage(Peer):
    def __init__(self):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        super().__init__("approval_page.py", ARTIFACTS / "approval-page.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def point_at(self, receiver: str) -> None:
        self._client.post("/admin/tessera", json={"url": receiver}).raise_for_status()


@pytest.fixture(scope="module")
def loop(envoy_bin, wasm_path):
    """The MCP example with its approval page and cluster moved to the page peer's port."""
    page = ApprovalPage()
    server = McpServer("mcp-server-approval-2026")
    bootstrap = envoy_config.rendered(EXAMPLE)
    cfg = envoy_config.get_plugin_config(bootstrap)
    assert cfg["approval"]["page"] == "http://127.0.0.1:8090/approve"
    cfg["approval"]["page"] = f"{page.url}/approve"
    envoy_config.set_plugin_config(bootstrap, cfg)
    for c in bootstrap["static_resources"]["clusters"]:
        if c["name"] == "approval_page":
            endpoint = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"]["socket_address"]["port_value"] = page.port
    envoy = Envoy(envoy_bin, copy.deepcopy(bootstrap), "envoy-mcp-approval-2026", wasm_path, server.port)
    try:
        if not envoy.wait_ready():
            pytest.fail(f"Envoy exited with the MCP example:\n{tail(envoy.log)}", pytrace=False)
        page.point_at(f"{envoy.url}/.well-known/tessera/approvals")
        yield envoy, server, page
    finally:
        envoy.stop()
        server.stop()
        page.stop()


def payer() -> str:
    return token(minting.AGENTS, "agent-pay", scope="payments:write", aud=AUDIENCE)


def pay(envoy: Envoy, bearer: str, person, mode: str = "2026-07-28", rounds: int = 4):
    """`transfer_funds` through the SDK client; `person(url)` is the elicitation callback's human:
    it returns the ElicitResult action. Returns (result or MCPError, the URLs the person saw)."""
    seen: list[str] = []

    async def elicit(context, params):
        assert getattr(params, "mode", None) == "url", params
        seen.append(params.url)
        return types.ElicitResult(action=await anyio.to_thread.run_sync(person, params.url))

    async def main():
        async with create_mcp_http_client(headers={"authorization": f"Bearer {bearer}"}) as http:
            transport = streamable_http_client(f"{envoy.url}/mcp", http_client=http)
            async with Client(transport, mode=mode, elicitation_callback=elicit,
                              input_required_max_rounds=rounds) as client:
                with anyio.fail_after(60):  # a safety net against a hang, not a timing check
                    try:
                        return await client.call_tool("transfer_funds", PAYMENT)
                    except (MCPError, InputRequiredRoundsExceededError) as e:
                        return e

    return anyio.run(main), seen


def approving(page: ApprovalPage, pages: list[str]):
    """The person who opens the page, checks what it shows, and presses Approve."""
    def person(url: str) -> str:
        assert url.startswith(f"{page.url}/approve?digest="), url
        shown = httpx.get(url, timeout=10)
        assert shown.status_code == 200, shown.text
        pages.append(shown.text)
        digest = url.split("digest=", 1)[1]
        approved = httpx.post(f"{page.url}/approve", data={"digest": digest, "approver": "bob@example.com"},
                              timeout=10)
        assert approved.status_code == 200 and "Tessera answered 202" in approved.text, approved.text
        return "accept"
    return person


def test_the_sdk_client_follows_the_approval_loop_and_the_call_runs_once(loop):
    envoy, server, page = loop
    pages: list[str] = []
    before = [c for c in server.calls() if c["tool"] == "transfer_funds"]
    result, urls = pay(envoy, payer(), approving(page, pages))
    assert not isinstance(result, MCPError), result
    assert not result.is_error, result
    assert len(urls) == 1, urls
    # The page showed the person who asks and what.
    for shown in ["https://agents.demo.tessera.dev", "agents|agent-pay", "call:transfer_funds", "EXT-42"]:
        assert shown in pages[0], shown
    calls = [c for c in server.calls() if c["tool"] == "transfer_funds"]
    assert calls == before + [{"tool": "transfer_funds", "arguments": {**PAYMENT, "memo": None}}] or \
        calls == before + [{"tool": "transfer_funds", "arguments": PAYMENT}], calls
    # No session was minted or used: 2026-07-28 has none.
    assert not any(r["headers"].get("mcp-session-id") for r in server.requests()
                   if r["rpc"] == ["tools/call"]), server.requests()


def test_without_the_persons_approval_the_call_never_reaches_the_server(loop):
    envoy, server, page = loop
    before = len(server.calls())
    # The person opens the page but does not approve (an approval of this same call was used up
    # by the test before, if it ran): Tessera asks again on every retry, the client gives up.
    result, urls = pay(envoy, payer(), lambda url: "accept", rounds=3)
    assert isinstance(result, InputRequiredRoundsExceededError), result
    assert len(urls) == 3 and all(u.startswith(f"{page.url}/approve?digest=") for u in urls), urls
    assert len(server.calls()) == before


def test_a_declined_approval_is_refused(loop):
    envoy, server, page = loop
    before = len(server.calls())
    result, urls = pay(envoy, payer(), lambda url: "decline", rounds=3)
    assert isinstance(result, MCPError) and result.code == APPROVAL_REQUIRED, result
    assert "declined" in result.message, result.message
    assert len(urls) == 1, urls
    assert len(server.calls()) == before


def test_a_2025_11_25_client_on_the_same_route_gets_approval_required(loop):
    envoy, server, _ = loop
    before = len(server.calls())
    result, urls = pay(envoy, payer(), lambda url: "accept", mode="legacy")
    assert isinstance(result, MCPError) and result.code == APPROVAL_REQUIRED, result
    assert "approval" in (result.data or {}), result.data
    assert urls == []
    assert len(server.calls()) == before

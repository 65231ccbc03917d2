"""MCP revision 2026-07-28 through the gateway, end to end: envoy-examples/envoy-mcp.yaml in a real
Envoy in front of tests/peers/mcp_server.py (dual-era, as every server of the official Python SDK),
driven by the SDK's `mcp.client.Client` pinned to 2026-07-28 (`mode="2026-07-28"`: no `initialize`,
no session; every request carries its version in `params._meta` and mirrors version, method and
name into the MCP-Protocol-Version, Mcp-Method and Mcp-Name headers) and by raw httpx for the
requests no SDK sends.

Pinned here (core/src/mcp_revision.rs, core/src/listing/mod.rs, policies/mcp.cedar):
- tools/list filtered per caller and tools/call decided per tool as for 2025-11-25, with no
  Mcp-Session-Id minted or sent, and the server sees the mirrored headers;
- a 2025-11-25 client (`mode="legacy"`, with its session) on the same route at the same time;
- mirrored headers that do not say what the body says: 400 with HeaderMismatch -32020, never
  forwarded; an unknown version: 400 with -32022 {supported, requested}; a mirrored header sent
  twice: 400, never forwarded;
- list answers to a 2026-07-28 request are cacheScope "private" (the server here says "public",
  `--public-lists`, so that the test sees who made them private);
- on a subscriptions/listen stream, notifications/resources/updated for a resource the caller may
  not read is dropped, everything else passes.

The SDK tests run twice: the server with its default SSE mode and with --json-response (its
2026-07-28 path answers a request with JSON unless the handler streams; a listen is always SSE).
"""
from __future__ import annotations

import base64
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
import httpx
import httpx2
import pytest
from mcp import MCPError
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ResourceUpdated, ServerEvent, Subscription, ToolsListChanged
from mcp.shared._httpx_utils import create_mcp_http_client

import envoy_config
from conftest import REPO_ROOT, McpServer
from helpers import json_body
import test_mcp
from test_mcp import Gateway, assert_refused_by, mcp_agent, mcp_user, rpc_error, text_of

EXAMPLE = REPO_ROOT / "envoy-examples" / "envoy-mcp.yaml"
MODERN, LEGACY = "2026-07-28", "2025-11-25"
HEADER_MISMATCH, UNSUPPORTED_VERSION = -32020, -32022
META_VERSION = "io.modelcontextprotocol/protocolVersion"
ALL_TOOLS = {"read_file", "send_email", "transfer_funds", "delete_file"}
GUIDE = "file:///workspace/guide.md"  # readable by anyone (policy read-workspace-resources)
SALARIES = "file:///private/salaries.csv"  # readable by admins only (admins-all)
BARRIER = "file:///workspace/last.md"  # touched last: once it arrives, every earlier event has
SAFETY_NET_S = 30  # bounds a hang; how long anything took is never asserted


# ---------------------------------------------------------------------------------------------
# Peers: the MCP server (list results "public") and an Envoy from envoy-mcp.yaml in front of it

@pytest.fixture(scope="module")
def bootstrap() -> dict:
    return envoy_config.rendered(EXAMPLE)


def _gateway(envoy_bin, wasm_path, bootstrap: dict, mode: str):
    yield from test_mcp._gateway(envoy_bin, wasm_path, bootstrap, mode, "mcp2026", "--public-lists")


@pytest.fixture(scope="module")
def gw_sse(envoy_bin, wasm_path, bootstrap):
    yield from _gateway(envoy_bin, wasm_path, bootstrap, "sse")


@pytest.fixture(scope="module")
def gw_json(envoy_bin, wasm_path, bootstrap):
    yield from _gateway(envoy_bin, wasm_path, bootstrap, "json")


@pytest.fixture(params=["sse", "json"])
def gw(request) -> Gateway:
    """The gateway, once with an SSE-mode server and once with a JSON-mode one."""
    return request.getfixturevalue(f"gw_{request.param}")


def seen_since(gw: Gateway, before: int) -> list[dict]:
    """The HTTP requests that reached the MCP server after the first `before`."""
    return gw.server.requests()[before:]


# ---------------------------------------------------------------------------------------------
# The official SDK client, through Envoy

@dataclass
class Wire:
    """What one SDK client sent and got over HTTP: (method, headers) and (method, status, headers),
    header names in lower case."""
    sent: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    got: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)

    def session_ids(self) -> set[str]:
        return ({h["mcp-session-id"] for _, h in self.sent if "mcp-session-id" in h}
                | {h["mcp-session-id"] for _, _, h in self.got if "mcp-session-id" in h})


def _lower(headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


@asynccontextmanager
async def sdk_client(gw: Gateway, bearer: str, mode: str = MODERN) -> AsyncIterator[tuple[Client, Wire]]:
    """`mcp.client.Client` on the gateway's MCP URL with `Authorization: Bearer <bearer>`, in `mode`
    ("2026-07-28": pinned, no probe; "legacy": the initialize handshake), its HTTP recorded. No
    response cache: every list reaches the gateway."""
    wire = Wire()

    async def on_request(request: httpx2.Request) -> None:
        wire.sent.append((request.method, _lower(request.headers)))

    async def on_response(response: httpx2.Response) -> None:
        wire.got.append((response.request.method, response.status_code, _lower(response.headers)))

    async with create_mcp_http_client(headers={"authorization": f"Bearer {bearer}"}) as http:
        http.event_hooks = {"request": [on_request], "response": [on_response]}
        async with Client(streamable_http_client(gw.mcp_url, http_client=http), mode=mode, cache=None) as client:
            yield client, wire


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    async def guarded():
        with anyio.fail_after(SAFETY_NET_S):
            return await main()
    return anyio.run(guarded)


async def refused(client: Client, tool: str, arguments: dict) -> MCPError:
    with pytest.raises(MCPError) as info:
        await client.call_tool(tool, arguments)
    return info.value


def assert_modern_without_session(wire: Wire, requests: list[dict]) -> None:
    """Every POST of the client and every request the server saw spoke 2026-07-28, no
    Mcp-Session-Id went either way, and nothing opened a session (initialize, GET, DELETE)."""
    assert wire.sent and {m for m, _ in wire.sent} == {"POST"}, wire.sent
    assert all(h.get("mcp-protocol-version") == MODERN for _, h in wire.sent), wire.sent
    assert wire.session_ids() == set(), wire
    assert requests, "nothing reached the server"
    for r in requests:
        assert r["method"] == "POST" and r["rpc"] != ["initialize"], r
        assert r["headers"].get("mcp-protocol-version") == MODERN, r
        assert "mcp-session-id" not in r["headers"], r


# ---------------------------------------------------------------------------------------------
# 1. The SDK client pinned to 2026-07-28

@pytest.mark.parametrize("bearer, tools", [
    pytest.param(lambda: mcp_user("alice"), ALL_TOOLS, id="user"),
    pytest.param(lambda: mcp_agent("files:read", sub="agent-2026"), {"read_file", "delete_file"},
                 id="agent-files-read"),
])
def test_modern_client_lists_the_tools_it_may_use_without_a_session(gw, bearer, tools):
    before = len(gw.server.requests())

    async def main():
        async with sdk_client(gw, bearer()) as (client, wire):
            return client.protocol_version, await client.list_tools(), wire

    version, listed, wire = run(main)
    assert version == MODERN
    assert {t.name for t in listed.tools} == tools
    assert listed.cache_scope == "private", "a list judged for one caller must not be shared"
    requests = seen_since(gw, before)
    assert [r["rpc"] for r in requests] == [["tools/list"]], requests
    assert requests[0]["headers"].get("mcp-method") == "tools/list"
    assert_modern_without_session(wire, requests)


def test_modern_call_reaches_the_server_with_its_mirrored_headers_and_identity(gw):
    before = len(gw.server.requests())

    async def main():
        async with sdk_client(gw, mcp_user("alice")) as (client, wire):
            return await client.call_tool("read_file", {"path": "/workspace/2026.md"}), wire

    result, wire = run(main)
    assert text_of(result) == "contents of /workspace/2026.md: lorem ipsum dolor sit amet\n"
    requests = seen_since(gw, before)
    [call] = [r for r in requests if r["rpc"] == ["tools/call"]]
    assert {k: call["headers"].get(k) for k in ("mcp-protocol-version", "mcp-method", "mcp-name")} == {
        "mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": "read_file"}, call
    assert call["headers"].get("x-tessera-principal") == 'User::"corp|alice"', call
    assert "authorization" not in call["headers"], "drop_authorization: the server must not get the token"
    assert_modern_without_session(wire, requests)


def test_modern_calls_refused_by_policy_get_32003_and_never_reach_the_server(gw):
    """Each refused call fails alone with -32003 naming the determining policies; the next
    call of the same client goes through."""
    before = len(gw.server.requests())

    async def main():
        async with sdk_client(gw, mcp_agent("files:read payments:write", sub="agent-2026-refused")) as (client, wire):
            no_permit = await refused(client, "send_email", {"to": "bob@example.com", "subject": "s", "body": "b"})
            too_much = await refused(client, "transfer_funds", {"amount": 5000, "to_account": "ACC-2026"})
            secret = await refused(client, "read_file", {"path": "/etc/passwd"})
            ok = await client.call_tool("read_file", {"path": "/workspace/after-refusals"})
            return no_permit, too_much, secret, ok, wire

    no_permit, too_much, secret, ok, wire = run(main)
    assert_refused_by(no_permit, [])
    assert_refused_by(too_much, ["large-transfers-forbidden"])
    assert_refused_by(secret, ["no-reading-secrets"])
    assert text_of(ok).startswith("contents of /workspace/after-refusals")
    requests = seen_since(gw, before)
    called = [r["headers"].get("mcp-name") for r in requests if r["rpc"] == ["tools/call"]]
    assert called == ["read_file"], f"only the allowed call may reach the server: {requests}"
    ran = [c for c in gw.server.calls() if c["tool"] == "send_email"
           or c["arguments"].get("to_account") == "ACC-2026" or c["arguments"].get("path") == "/etc/passwd"]
    assert ran == [], ran
    assert_modern_without_session(wire, requests)


# ---------------------------------------------------------------------------------------------
# 2. Both revisions on one route, at the same time

def test_a_2025_11_25_client_and_a_2026_07_28_client_share_the_route(gw):
    """The same person with both clients open at once: the older one opens a session
    (initialize, Mcp-Session-Id) and speaks 2025-11-25, the newer one sends each request on its
    own; lists are filtered and calls decided the same for both."""
    bearer = mcp_agent("files:read payments:write", sub="agent-both-eras")
    before = len(gw.server.requests())

    async def main():
        async with sdk_client(gw, bearer, mode="legacy") as (old, old_wire), \
                sdk_client(gw, bearer, mode=MODERN) as (new, new_wire):
            versions = (old.protocol_version, new.protocol_version)
            lists = ({t.name for t in (await old.list_tools()).tools}, {t.name for t in (await new.list_tools()).tools})
            calls = (await old.call_tool("read_file", {"path": "/workspace/old"}),
                     await new.call_tool("read_file", {"path": "/workspace/new"}),
                     await old.call_tool("transfer_funds", {"amount": 20, "to_account": "ACC-OLD"}))
            refusals = (await refused(old, "transfer_funds", {"amount": 5000, "to_account": "ACC-OLD"}),
                        await refused(new, "transfer_funds", {"amount": 5000, "to_account": "ACC-NEW"}))
            return versions, lists, calls, refusals, old_wire, new_wire

    versions, lists, calls, refusals, old_wire, new_wire = run(main)
    assert versions == (LEGACY, MODERN)
    assert lists == ({"read_file", "transfer_funds", "delete_file"},) * 2
    assert text_of(calls[0]).startswith("contents of /workspace/old")
    assert text_of(calls[1]).startswith("contents of /workspace/new")
    assert text_of(calls[2]) == "transferred 20 to ACC-OLD"
    for err in refusals:
        assert_refused_by(err, ["large-transfers-forbidden"])

    [session] = old_wire.session_ids()
    assert new_wire.session_ids() == set(), new_wire
    requests = seen_since(gw, before)
    old_seen = [r for r in requests if r["headers"].get("mcp-session-id") == session or r["rpc"] == ["initialize"]]
    new_seen = [r for r in requests if r["headers"].get("mcp-protocol-version") == MODERN]
    assert len(old_seen) + len(new_seen) == len(requests), requests
    assert ["initialize"] in [r["rpc"] for r in old_seen], old_seen
    assert all(r["headers"].get("mcp-protocol-version") in (None, LEGACY) for r in old_seen), old_seen
    assert [r["headers"].get("mcp-name") for r in new_seen if r["rpc"] == ["tools/call"]] == ["read_file"], new_seen
    assert_modern_without_session(new_wire, new_seen)


# ---------------------------------------------------------------------------------------------
# 3. Raw HTTP: mirrored headers that do not say what the body says

def modern(method: str, params: dict | None = None, id_: Any = 1, version: str = MODERN) -> dict:
    """A 2026-07-28 request body: the version (and capabilities, client) in params._meta."""
    meta = {META_VERSION: version, "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "raw-httpx", "version": "1"}}
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": {**(params or {}), "_meta": meta}}


def raw(url: str, body: dict, headers: list[tuple[str, str]], bearer: str | None) -> httpx.Response:
    """POST `body` with exactly these extra headers (a list: a name may come twice)."""
    h = [("accept", "application/json, text/event-stream"), ("content-type", "application/json"), *headers]
    if bearer:
        h.append(("authorization", f"Bearer {bearer}"))
    return httpx.post(url, content=json.dumps(body), headers=h, timeout=30)


def mirrored(method: str | None, name: str | None = None, version: str | None = MODERN) -> list[tuple[str, str]]:
    return [(k, v) for k, v in (("mcp-protocol-version", version), ("mcp-method", method), ("mcp-name", name))
            if v is not None]


READ = modern("tools/call", {"name": "read_file", "arguments": {"path": "/workspace/raw.md"}}, id_=31)
GUIDE_READ = modern("resources/read", {"uri": GUIDE}, id_=32)
LIST = modern("tools/list", id_=33)
LEGACY_LIST = {"jsonrpc": "2.0", "id": 34, "method": "tools/list", "params": {}}


def b64(value: str) -> str:
    """The `=?base64?…?=` form of a mirrored value (what clients send for non-ASCII ones)."""
    return f"=?base64?{base64.b64encode(value.encode()).decode()}?="


@pytest.fixture
def nothing_forwarded(gw_sse):
    """Asserts, after the test, that no HTTP request reached the MCP server during it."""
    before = len(gw_sse.server.requests())
    yield gw_sse
    after = gw_sse.server.requests()
    assert len(after) == before, f"the MCP server saw {after[before:]}"


@pytest.mark.parametrize("body, headers", [
    pytest.param(READ, mirrored("tools/call", "delete_file"), id="name-differs"),
    pytest.param(READ, mirrored("tools/call", b64("delete_file")), id="base64-name-differs"),
    pytest.param(READ, mirrored("tools/call", "Read_file"), id="name-differs-in-case"),
    pytest.param(READ, mirrored("tools/call", None), id="name-missing"),
    pytest.param(READ, mirrored(None, "read_file"), id="method-missing"),
    pytest.param(READ, mirrored("tools/list", "read_file"), id="method-differs"),
    pytest.param(READ, mirrored("tools/call", "read_file", version=None), id="version-missing"),
    pytest.param(READ, mirrored("tools/call", "read_file", version=LEGACY), id="version-differs"),
    pytest.param(GUIDE_READ, mirrored("resources/read", SALARIES), id="uri-differs"),
    pytest.param(LIST, mirrored("tools/list", "read_file"), id="name-on-a-list"),
    pytest.param(LEGACY_LIST, mirrored("tools/list"), id="modern-header-over-a-body-without-meta"),
])
def test_mirrored_headers_that_differ_from_the_body_are_400_header_mismatch(nothing_forwarded, body, headers):
    """alice may make each of these requests: only the headers are wrong."""
    r = raw(nothing_forwarded.mcp_url, body, headers, mcp_user("alice"))
    err = rpc_error(r, 400, HEADER_MISMATCH, body["id"])
    assert "mismatch" in err["message"].lower(), err


@pytest.mark.parametrize("body, headers, answer", [
    pytest.param(READ, mirrored("tools/call", "read_file"), "contents of /workspace/raw.md", id="plain"),
    pytest.param(READ, mirrored("tools/call", b64("read_file")), "contents of /workspace/raw.md", id="base64-name"),
    pytest.param(GUIDE_READ, mirrored("resources/read", b64(GUIDE)), "# Workspace guide", id="base64-uri"),
])
def test_mirrored_headers_that_match_the_body_are_forwarded_as_sent(gw_sse, body, headers, answer):
    before = len(gw_sse.server.requests())
    r = raw(gw_sse.mcp_url, body, headers, mcp_user("alice"))
    assert r.status_code == 200, r.text
    assert answer in r.text, r.text
    [seen] = seen_since(gw_sse, before)
    assert [(k, seen["headers"].get(k)) for k, _ in headers] == headers, seen


@pytest.mark.parametrize("body, headers, supported", [
    pytest.param(modern("tools/list", id_=41, version="2099-01-01"), mirrored("tools/list", version="2099-01-01"),
                 [MODERN], id="body-and-header"),
    pytest.param({**LEGACY_LIST, "id": 41}, mirrored(None, version="2099-01-01"), [MODERN, LEGACY], id="header-only"),
])
def test_unknown_protocol_version_is_400_unsupported_with_what_is_supported(nothing_forwarded, body, headers,
                                                                            supported):
    err = rpc_error(raw(nothing_forwarded.mcp_url, body, headers, mcp_user("alice")), 400, UNSUPPORTED_VERSION, 41)
    assert err["data"]["requested"] == "2099-01-01", err
    assert set(supported) <= set(err["data"]["supported"]), err


@pytest.mark.parametrize("twice", ["mcp-name", "mcp-method", "mcp-protocol-version"])
def test_a_mirrored_header_sent_twice_is_400_even_when_both_copies_match(nothing_forwarded, twice):
    headers = mirrored("tools/call", "read_file")
    headers += [(k, v) for k, v in headers if k == twice]
    r = raw(nothing_forwarded.mcp_url, READ, headers, mcp_user("alice"))
    assert r.status_code == 400, r.text
    assert twice in json_body(r).get("reason", ""), r.text


# ---------------------------------------------------------------------------------------------
# 4. Filtered list answers are private to the caller

@pytest.mark.parametrize("method, field", [
    ("tools/list", "tools"), ("resources/list", "resources"),
    ("resources/templates/list", "resourceTemplates"), ("prompts/list", "prompts"),
])
def test_list_answers_to_a_modern_client_are_cache_scope_private(gw_sse, method, field):
    """The server says "public" (--public-lists, straight to it); through the gateway, which
    judged the items for this caller, the answer says "private"."""
    body = modern(method, id_=51)
    direct = raw(f"http://127.0.0.1:{gw_sse.server.port}/mcp", body, mirrored(method), None)
    assert direct.status_code == 200 and direct.json()["result"]["cacheScope"] == "public", direct.text
    r = raw(gw_sse.mcp_url, body, mirrored(method), mcp_agent(None, sub="agent-cache"))
    assert r.status_code == 200, r.text
    result = json_body(r)["result"]
    assert result["cacheScope"] == "private", result
    assert isinstance(result[field], list), result
    if method == "tools/list":
        assert [t["name"] for t in result["tools"]] == ["delete_file"], result


# ---------------------------------------------------------------------------------------------
# 5. subscriptions/listen: a changed resource is announced only to a caller who may read it

async def _publish(server: McpServer, *events: str) -> None:
    """Publish on the server, in order: a URI → notifications/resources/updated for it;
    "tools" → notifications/tools/list_changed."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
        for event in events:
            r = await (http.post("/__mcp/tools-changed") if event == "tools"
                       else http.post("/__mcp/touch", json={"uri": event}))
            r.raise_for_status()


async def _until_barrier(sub: Subscription) -> list[ServerEvent]:
    """The events of `sub` up to and including the barrier's update (the stream's order is the
    server's order, so every event published before the barrier has arrived or was dropped)."""
    events: list[ServerEvent] = []
    async for event in sub:
        events.append(event)
        if event == ResourceUpdated(BARRIER):
            break
    return events


def test_listen_is_allowed_only_for_resources_the_caller_may_subscribe_to_and_announces_those(gw):
    """A listen naming a resource the caller may not subscribe to (alice, the salaries) is refused
    whole (-32003), as a 2025-11-25 `resources/subscribe` of it would be, and never reaches the
    server. alice (staff) and root (admins) then listen through the gateway; the server announces
    a change of the guide, of the salaries, of the tool list, then of the barrier: alice gets what
    she subscribed to, root gets all four. (An update the caller may not read that the server sends
    anyway — a sub-resource — is dropped on the stream: tests/tests/mcp_2026.rs.)"""
    before = len(gw.server.requests())

    async def refused():
        async with sdk_client(gw, mcp_user("alice")) as (alice, _):
            with pytest.raises(MCPError) as info:
                async with alice.listen(resource_subscriptions=[GUIDE, SALARIES]):
                    pass
            return info.value

    err = run(refused)
    assert err.code == -32003 and "subscription to file:///private/salaries.csv" in err.message, err
    assert not [r for r in seen_since(gw, before) if r["rpc"] == ["subscriptions/listen"]]

    async def main():
        async with sdk_client(gw, mcp_user("alice")) as (alice, alice_wire), \
                sdk_client(gw, mcp_user("root", ["admins"])) as (root, _):
            async with alice.listen(resource_subscriptions=[GUIDE, BARRIER], tools_list_changed=True) as alice_sub, \
                    root.listen(resource_subscriptions=[GUIDE, SALARIES, BARRIER],
                                tools_list_changed=True) as root_sub:
                honored = alice_sub.honored
                await _publish(gw.server, GUIDE, SALARIES, "tools", BARRIER)
                return honored, await _until_barrier(alice_sub), await _until_barrier(root_sub), alice_wire

    honored, alice_events, root_events, alice_wire = run(main)
    assert honored.tools_list_changed is True and {GUIDE, BARRIER} <= set(honored.resource_subscriptions), honored
    assert root_events == [ResourceUpdated(GUIDE), ResourceUpdated(SALARIES), ToolsListChanged(),
                           ResourceUpdated(BARRIER)], "the server announced all four"
    assert alice_events == [ResourceUpdated(GUIDE), ToolsListChanged(), ResourceUpdated(BARRIER)]
    listens = [r for r in seen_since(gw, before) if r["rpc"] == ["subscriptions/listen"]]
    assert len(listens) == 2 and all(r["headers"].get("mcp-method") == "subscriptions/listen" for r in listens)
    assert_modern_without_session(alice_wire, listens)

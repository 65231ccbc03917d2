"""The MCP gateway end to end: envoy-examples/envoy-mcp.yaml in a real Envoy, in front of
tests/peers/mcp_server.py (an MCP server written with the official MCP Python SDK), driven by the
official SDK client (`mcp.client.streamable_http` + `mcp.ClientSession`) and by raw httpx.

Tokens are minted by tests/peers/mint.py for the gateway's audience `mcp-tools`. The decisions come
from policies/mcp.cedar (and the HTTP policies for GET/DELETE on the route). Every SDK test runs
twice: with the server answering POSTs as SSE streams (the SDK default) and as application/json.

Also here: tools/list, resources/list and prompts/list answers filtered per caller (SSE and JSON),
and the 403 insufficient_scope step-up challenge read by a raw HTTP client.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

import envoy_config
from conftest import REPO_ROOT, Envoy, McpServer, tail
from helpers import assert_invalid_token, json_body, minting, token

EXAMPLE = REPO_ROOT / "envoy-examples" / "envoy-mcp.yaml"
AUDIENCE = "mcp-tools"
MIB = 1024 * 1024
FORBIDDEN, NOT_FORWARDED, PARSE_ERROR, INVALID_REQUEST = -32003, -32004, -32700, -32600


def mcp_agent(scope: str | None, sub: str = "agent-7") -> str:
    return token(minting.AGENTS, sub, scope=scope, aud=AUDIENCE)


def mcp_user(sub: str = "alice", groups: list[str] | None = None, scope: str | None = None) -> str:
    return token(minting.IDP, sub, groups=groups if groups is not None else ["staff"], aud=AUDIENCE, scope=scope)


# ---------------------------------------------------------------------------------------------
# Peers: the MCP server and an Envoy from envoy-mcp.yaml in front of it

@dataclass
class Gateway:
    envoy: Envoy
    server: McpServer

    @property
    def mcp_url(self) -> str:
        return f"{self.envoy.url}/mcp"


@pytest.fixture(scope="module")
def mcp_bootstrap() -> dict:
    return envoy_config.rendered(EXAMPLE)


def _gateway(envoy_bin, wasm_path, bootstrap: dict, mode: str, name: str = "mcp", *server_args: str):
    """Envoy from `bootstrap` in front of a fresh SDK server (`mode` "json": --json-response)."""
    server = McpServer(f"{name}-server-{mode}", *server_args, *(["--json-response"] if mode == "json" else []))
    envoy = Envoy(envoy_bin, copy.deepcopy(bootstrap), f"envoy-{name}-{mode}", wasm_path, server.port)
    try:
        if not envoy.wait_ready():
            pytest.fail(f"Envoy exited (code {envoy.proc.returncode}) with {EXAMPLE.name}:\n{tail(envoy.log)}",
                        pytrace=False)
        yield Gateway(envoy, server)
    finally:
        envoy.stop()
        server.stop()


@pytest.fixture(scope="module")
def gw_sse(envoy_bin, wasm_path, mcp_bootstrap):
    yield from _gateway(envoy_bin, wasm_path, mcp_bootstrap, "sse")


@pytest.fixture(scope="module")
def gw_json(envoy_bin, wasm_path, mcp_bootstrap):
    yield from _gateway(envoy_bin, wasm_path, mcp_bootstrap, "json")


@pytest.fixture(params=["sse", "json"])
def gw(request) -> Gateway:
    """The gateway, once with an SSE-answering server and once with a JSON-answering one."""
    return request.getfixturevalue(f"gw_{request.param}")


# ---------------------------------------------------------------------------------------------
# The official SDK client, through Envoy

@dataclass
class Exchanges:
    """The HTTP exchanges the SDK client made: (method, status) in order, and the session id."""
    seen: list[tuple[str, int]] = field(default_factory=list)
    session_id: str | None = None
    get_answered: anyio.Event | None = None

    def of(self, method: str) -> list[int]:
        return [status for m, status in self.seen if m == method]


def run_session(gw: Gateway, bearer: str, body: Callable[[ClientSession], Awaitable[Any]],
                wait_for_get_stream: bool = False) -> tuple[Any, Exchanges]:
    """Open an SDK session through Envoy with `Authorization: Bearer <bearer>`, initialize, run
    body(session) and close (the SDK then sends DELETE). With wait_for_get_stream, the session is
    held open until Envoy has answered the SDK's GET (the server-to-client SSE stream)."""
    ex = Exchanges()

    async def main():
        ex.get_answered = anyio.Event()

        async def on_response(resp: httpx2.Response) -> None:
            ex.seen.append((resp.request.method, resp.status_code))
            if resp.request.method == "GET":
                ex.get_answered.set()
            if ex.session_id is None and resp.headers.get("mcp-session-id"):
                ex.session_id = resp.headers["mcp-session-id"]

        async with create_mcp_http_client(headers={"authorization": f"Bearer {bearer}"}) as http:
            http.event_hooks = {"response": [on_response]}
            async with streamable_http_client(gw.mcp_url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    with anyio.fail_after(30):  # a safety net against a hang, not a timing check
                        await session.initialize()
                        result = await body(session)
                        if wait_for_get_stream:
                            await ex.get_answered.wait()
                    return result

    return anyio.run(main), ex


def text_of(result) -> str:
    assert not result.is_error, f"tool call failed: {result}"
    return "".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def refused(session: ClientSession, tool: str, arguments: dict) -> MCPError:
    """Call a tool that the gateway must refuse; return the SDK's MCPError."""
    with pytest.raises(MCPError) as info:
        await session.call_tool(tool, arguments)
    return info.value


def assert_refused_by(err: MCPError, policies: list[str]) -> None:
    assert err.code == FORBIDDEN, f"expected -32003, got {err.code}: {err.message}"
    if policies:
        assert err.message == f"forbidden by policy {', '.join(policies)}", err.message
    else:
        assert err.message == "forbidden: no policy permits this call", err.message
    assert isinstance(err.data, dict) and err.data.get("policies") == policies, err.data
    assert err.data.get("request_id"), err.data


# ---------------------------------------------------------------------------------------------
# The example

def test_mcp_example_routes_and_stop_iteration():
    """The example has the MCP route, and lets the filter pause the headers while it reads the
    body: without `allow_on_headers_stop_iteration` Envoy never hands the body to the filter and
    every MCP POST hangs."""
    doc = envoy_config.load_yaml(EXAMPLE)
    cfg = envoy_config.get_plugin_config(doc)
    assert {"name": "tools", "prefix": "/mcp", "kind": "mcp"} in cfg["routes"]
    assert cfg["schema"] == "@policies/tessera.cedarschema" and cfg["policies"] == "@policies/*.cedar"
    assert all(pc.get("allow_on_headers_stop_iteration") is True for pc in envoy_config.wasm_plugin_configs(doc))


# ---------------------------------------------------------------------------------------------
# The official SDK client

def test_user_lists_tools_and_a_call_returns_the_servers_result(gw):
    async def body(s: ClientSession):
        tools = await s.list_tools()
        return {t.name for t in tools.tools}, await s.call_tool("read_file", {"path": "/workspace/README.md"})

    (names, result), ex = run_session(gw, mcp_user("alice"), body)
    assert names == {"read_file", "send_email", "transfer_funds", "delete_file"}
    assert text_of(result) == "contents of /workspace/README.md: lorem ipsum dolor sit amet\n"
    call = [r for r in gw.server.requests()
            if r["rpc"] == ["tools/call"] and r["headers"].get("mcp-session-id") == ex.session_id]
    assert len(call) == 1, call
    assert call[0]["headers"].get("x-tessera-principal") == 'User::"corp|alice"'
    assert "authorization" not in call[0]["headers"], "drop_authorization: the server must not get the token"


def test_denied_call_fails_alone_and_the_session_goes_on(gw):
    """An agent may email inside the company only: the outside address fails that one call with
    -32003, the next calls in the same session work."""
    async def body(s: ClientSession):
        err = await refused(s, "send_email", {"to": "mallory@evil.example", "subject": "q3", "body": "numbers"})
        ok = await s.call_tool("send_email", {"to": "bob@example.com", "subject": "q3", "body": "numbers"})
        read = await s.call_tool("read_file", {"path": "/workspace/q3.csv"})
        return err, ok, read

    (err, ok, read), _ = run_session(gw, mcp_agent("email:send files:read", sub="agent-mail"), body)
    assert_refused_by(err, [])
    assert text_of(ok) == "sent to bob@example.com: 'q3' (7 characters)"
    assert text_of(read).startswith("contents of /workspace/q3.csv")
    sent_to = [c["arguments"]["to"] for c in gw.server.calls() if c["tool"] == "send_email"]
    assert "mallory@evil.example" not in sent_to and "bob@example.com" in sent_to


def test_agent_without_the_scope_cannot_call_the_tool_but_can_call_others(gw):
    async def body(s: ClientSession):
        err = await refused(s, "send_email", {"to": "bob@example.com", "subject": "hi", "body": "x"})
        return err, await s.call_tool("read_file", {"path": "/workspace/a.txt"})

    (err, read), _ = run_session(gw, mcp_agent("files:read"), body)
    assert_refused_by(err, [])
    assert text_of(read).startswith("contents of /workspace/a.txt")


def test_transfer_amount_decides_large_transfers_forbidden(gw):
    async def body(s: ClientSession):
        big = await refused(s, "transfer_funds", {"amount": 5000, "to_account": "ACC-77"})
        just_over = await refused(s, "transfer_funds", {"amount": 1001, "to_account": "ACC-77"})
        small = await s.call_tool("transfer_funds", {"amount": 50, "to_account": "ACC-77"})
        limit = await s.call_tool("transfer_funds", {"amount": 1000, "to_account": "ACC-77", "memo": "rent"})
        return big, just_over, small, limit

    (big, just_over, small, limit), _ = run_session(gw, mcp_agent("payments:write", sub="agent-pay"), body)
    assert_refused_by(big, ["large-transfers-forbidden"])
    assert_refused_by(just_over, ["large-transfers-forbidden"])
    assert text_of(small) == "transferred 50 to ACC-77"
    assert text_of(limit) == "transferred 1000 to ACC-77 (rent)"
    amounts = [c["arguments"]["amount"] for c in gw.server.calls() if c["tool"] == "transfer_funds"]
    assert 5000 not in amounts and 1001 not in amounts


def test_people_are_bound_by_the_transfer_guardrail_too(gw):
    async def body(s: ClientSession):
        return await refused(s, "transfer_funds", {"amount": 5000, "to_account": "ACC-1"})

    err, _ = run_session(gw, mcp_user("alice"), body)
    assert_refused_by(err, ["large-transfers-forbidden"])


def test_no_reading_secrets(gw):
    async def body(s: ClientSession):
        passwd = await refused(s, "read_file", {"path": "/etc/passwd"})
        secret = await refused(s, "read_file", {"path": "/home/alice/.aws/secret-keys"})
        fine = await s.call_tool("read_file", {"path": "/workspace/notes.md"})
        return passwd, secret, fine

    (passwd, secret, fine), _ = run_session(gw, mcp_agent("files:read", sub="agent-reader"), body)
    assert_refused_by(passwd, ["no-reading-secrets"])
    assert_refused_by(secret, ["no-reading-secrets"])
    assert text_of(fine).startswith("contents of /workspace/notes.md")
    paths = [c["arguments"]["path"] for c in gw.server.calls() if c["tool"] == "read_file"]
    assert "/etc/passwd" not in paths and "/home/alice/.aws/secret-keys" not in paths


# The SDK's session flow also uses GET (server-to-client SSE stream, opened after initialize) and
# DELETE (end of session) on the same URL. The filter decides those as HTTP requests: action = the
# method on Route::"tools". With the example policies, GET is permitted to any User
# (`users-read`) but to no Agent, and DELETE only to admins (`admins-all`; `agents-never-delete`
# forbids it for agents). The SDK tolerates both refusals (it drops the GET stream and logs
# "Session termination failed: 403"), so tool calls work, but an agent never gets server-initiated
# messages and its sessions are never ended on the server.

def _session_requests(gw: Gateway, session_id: str | None) -> list[tuple[str, list[str] | None]]:
    assert session_id, "the server did not hand out an Mcp-Session-Id"
    return [(r["method"], r["rpc"]) for r in gw.server.requests()
            if r["headers"].get("mcp-session-id") == session_id]


def test_sdk_session_as_an_agent_gets_the_stream_and_ends_its_session(gw):
    async def body(s: ClientSession):
        return await s.call_tool("read_file", {"path": "/workspace/x"})

    result, ex = run_session(gw, mcp_agent("files:read", sub="agent-session"), body, wait_for_get_stream=True)
    assert text_of(result).startswith("contents of /workspace/x")
    assert all(200 <= status < 300 for status in ex.of("POST")), ex.seen
    # policy mcp-transport: GET (SSE stream) and DELETE (end of session) on the MCP route.
    assert ex.of("GET") and set(ex.of("GET")) == {200}, ex.seen
    assert ex.of("DELETE") == [200], ex.seen
    methods = [m for m, _ in _session_requests(gw, ex.session_id)]
    assert "GET" in methods and "DELETE" in methods, methods


def test_sdk_session_as_a_user_gets_the_stream_and_ends_its_session(gw):
    async def body(s: ClientSession):
        return await s.call_tool("read_file", {"path": "/workspace/y"})

    result, ex = run_session(gw, mcp_user("alice", ["staff"]), body, wait_for_get_stream=True)
    assert text_of(result).startswith("contents of /workspace/y")
    assert ex.of("GET") == [200], ex.seen
    assert ex.of("DELETE") == [200], ex.seen


def test_an_mcp_session_cannot_be_used_by_another_principal(gw):
    async def body(s: ClientSession):
        return await s.call_tool("read_file", {"path": "/workspace/y"})

    result, ex = run_session(gw, mcp_user("alice", ["staff"]), body)
    assert text_of(result).startswith("contents of /workspace/y")
    # The session has ended (DELETE); a fresh one, hijacked by another principal's token:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    owner = {**headers, "authorization": f"Bearer {mcp_user('alice', ['staff'])}"}
    r = httpx.post(f"{gw.envoy.url}/mcp", json=init, headers=owner, timeout=10)
    assert r.status_code == 200, r.text
    session = r.headers["mcp-session-id"]
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "read_file", "arguments": {"path": "/workspace/q"}}}
    thief = {**headers, "authorization": f"Bearer {mcp_agent('files:read', sub='mallory')}", "mcp-session-id": session}
    before = len(gw.server.requests())
    r = httpx.post(f"{gw.envoy.url}/mcp", json=call, headers=thief, timeout=10)
    assert r.status_code == 403 and "another identity" in r.text, r.text
    assert len(gw.server.requests()) == before, "the hijacked call reached the server"
    r = httpx.post(f"{gw.envoy.url}/mcp", json=call, headers={**owner, "mcp-session-id": session}, timeout=10)
    assert r.status_code == 200, r.text


def test_sdk_session_as_an_admin_ends_the_session(gw):
    async def body(s: ClientSession):
        return await s.call_tool("read_file", {"path": "/workspace/z"})

    result, ex = run_session(gw, mcp_user("root", ["admins"]), body, wait_for_get_stream=True)
    assert text_of(result).startswith("contents of /workspace/z")
    assert ex.of("GET") == [200], ex.seen
    assert ex.of("DELETE") == [200], ex.seen
    assert ("DELETE", None) in _session_requests(gw, ex.session_id)


# ---------------------------------------------------------------------------------------------
# Raw HTTP: what the filter does with bodies no SDK would send

def post(gw: Gateway, body: bytes | str | dict | list | Any, bearer: str | None = None,
         content_type: str | None = "application/json", headers: dict | None = None) -> httpx.Response:
    h = {"accept": "application/json, text/event-stream", **(headers or {})}
    if content_type:
        h["content-type"] = content_type
    if bearer:
        h["authorization"] = f"Bearer {bearer}"
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    return httpx.post(gw.mcp_url, content=body, headers=h, timeout=30)


def call(tool: str, arguments: dict, id_: Any = 1) -> dict:
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}


def rpc_error(resp: httpx.Response, status: int, code: int, id_: Any) -> dict:
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = json_body(resp)
    assert body.get("jsonrpc") == "2.0" and body.get("id") == id_, body
    assert body.get("error", {}).get("code") == code, body
    return body["error"]


@pytest.fixture
def nothing_forwarded(gw_sse):
    """Asserts, after the test, that no HTTP request reached the MCP server during it."""
    before = len(gw_sse.server.requests())
    yield gw_sse
    after = gw_sse.server.requests()
    assert len(after) == before, f"the MCP server saw {after[before:]}"


def test_allowed_post_is_forwarded_with_identity_and_without_the_token(gw_sse):
    before = len(gw_sse.server.requests())
    r = post(gw_sse, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, mcp_agent(None, sub="agent-raw"),
             headers={"x-tessera-principal": 'User::"root"'})
    # No session: the server itself answers 400, which shows the request reached it.
    assert r.status_code == 400 and "session" in r.text.lower(), r.text
    [seen] = gw_sse.server.requests()[before:]
    assert seen["rpc"] == ["ping"]
    assert seen["headers"].get("x-tessera-principal") == 'Agent::"agents|agent-raw"'
    assert "authorization" not in seen["headers"]


def test_no_token_is_401(nothing_forwarded):
    r = post(nothing_forwarded, call("read_file", {"path": "/workspace/a"}))
    assert r.status_code == 401, r.text
    assert r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers


def test_token_for_another_audience_is_401(nothing_forwarded):
    orders_token = token(minting.AGENTS, "agent-7", scope="files:read")  # aud orders-api
    assert_invalid_token(post(nothing_forwarded, call("read_file", {"path": "/a"}), orders_token), "audience")


def test_body_over_the_limit_is_413_and_never_forwarded(nothing_forwarded):
    padded = json.dumps(call("read_file", {"path": "x" * (MIB + 10)}))
    r = post(nothing_forwarded, padded, mcp_user())
    assert r.status_code == 413, r.text[:300]
    assert json_body(r).get("error") == "payload_too_large"


def test_chunked_body_over_the_limit_is_413_and_never_forwarded(nothing_forwarded):
    """No Content-Length: the filter counts what it buffers (here 1.5 MiB, under Envoy's 2 MiB
    buffer, so the answer is the filter's)."""
    padded = json.dumps(call("read_file", {"path": "x" * (MIB + MIB // 2)})).encode()

    def chunks():
        for i in range(0, len(padded), 64 * 1024):
            yield padded[i:i + 64 * 1024]

    r = post(nothing_forwarded, chunks(), mcp_user())
    assert r.status_code == 413, r.text[:300]
    assert json_body(r).get("error") == "payload_too_large"


def test_body_of_exactly_the_limit_is_decided_and_forwarded(gw_sse):
    doc = call("read_file", {"path": ""})
    overhead = len(json.dumps(doc).encode())
    doc["params"]["arguments"]["path"] = "/workspace/" + "x" * (MIB - overhead - len("/workspace/"))
    body = json.dumps(doc).encode()
    assert len(body) == MIB
    before = len(gw_sse.server.requests())
    r = post(gw_sse, body, mcp_user())
    seen = gw_sse.server.requests()[before:]
    assert [(s["body_bytes"], s["rpc"]) for s in seen] == [(MIB, ["tools/call"])], r.text[:300]
    assert r.status_code == seen[0]["status"], "the answer is the server's"


@pytest.mark.parametrize("body", [
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"tools/call",', id="truncated"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file",'
                 b'"arguments":{"path":"/workspace/notes.md","path":"/etc/passwd"}}}', id="duplicate-key"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\xff\xfe"}}', id="invalid-utf8"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":' + b'{"a":' * 40 + b'1' + b'}' * 41,
                 id="too-deep"),
    pytest.param(b'', id="empty"),
])
def test_unparsable_body_is_400_parse_error_and_never_forwarded(nothing_forwarded, body):
    """A duplicate key is a parser differential (first vs last wins): refused, not guessed."""
    err = rpc_error(post(nothing_forwarded, body, mcp_user("root", ["admins"])), 400, PARSE_ERROR, None)
    assert err["message"].startswith("parse error"), err


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_non_json_post_is_415_and_never_forwarded(nothing_forwarded, content_type):
    r = post(nothing_forwarded, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}), mcp_user(),
             content_type=content_type)
    assert r.status_code == 415, r.text


def test_invalid_json_rpc_is_400_invalid_request(nothing_forwarded):
    err = rpc_error(post(nothing_forwarded, {"jsonrpc": "1.0", "id": 9, "method": "ping"}, mcp_user()),
                    400, INVALID_REQUEST, 9)
    assert "2.0" in err["message"], err


def test_method_the_schema_does_not_declare_is_refused(nothing_forwarded):
    r = post(nothing_forwarded, {"jsonrpc": "2.0", "id": "x", "method": "tools/delete", "params": {}},
             mcp_user("root", ["admins"]))
    err = rpc_error(r, 200, FORBIDDEN, "x")
    assert "not declared" in err["message"], err


def test_batch_with_one_refused_message_is_not_forwarded_and_every_request_gets_an_error(nothing_forwarded):
    batch = [
        call("transfer_funds", {"amount": 5000, "to_account": "ACC-9"}, id_=1),
        {"jsonrpc": "2.0", "id": "b", "method": "ping"},
        call("read_file", {"path": "/workspace/ok"}, id_=3),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ]
    r = post(nothing_forwarded, batch, mcp_agent("payments:write files:read"))
    assert r.status_code == 200, r.text
    answers = {a["id"]: a["error"] for a in json_body(r)}
    assert set(answers) == {1, "b", 3}, answers  # the notification gets no answer
    assert answers[1]["code"] == FORBIDDEN and answers[1]["data"]["policies"] == ["large-transfers-forbidden"]
    assert answers["b"]["code"] == NOT_FORWARDED and answers[3]["code"] == NOT_FORWARDED, answers


def test_batch_with_every_message_allowed_is_forwarded_whole(gw_sse):
    before = len(gw_sse.server.requests())
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"},
             call("read_file", {"path": "/workspace/ok"}, id_=2)]
    post(gw_sse, batch, mcp_agent("files:read"))
    assert [s["rpc"] for s in gw_sse.server.requests()[before:]] == [["ping", "tools/call"]]


@pytest.mark.parametrize("arguments", [
    pytest.param({"amount": "5000", "to_account": "ACC-9"}, id="amount-as-string"),
    pytest.param({"amount": 5000.0, "to_account": "ACC-9"}, id="amount-as-float"),
    pytest.param({"amount": 5, "to_account": "ACC-9", "note": "undeclared"}, id="undeclared-argument"),
    pytest.param({"to_account": "ACC-9"}, id="missing-amount"),
])
def test_arguments_that_do_not_fit_the_declared_type_are_refused(nothing_forwarded, arguments):
    """The SDK server validates with pydantic in lax mode ("5000" and 5000.0 become 5000), so a
    gateway that let them through untyped would be bypassed; they must be refused."""
    r = post(nothing_forwarded, call("transfer_funds", arguments, id_=5), mcp_user("root", ["admins"]))
    assert r.status_code in (200, 400), r.text
    body = json_body(r)
    assert body.get("id") == 5 and body.get("error", {}).get("code") in (FORBIDDEN, -32602), body


def test_unknown_tool_is_decided_as_tools_call(gw_sse):
    """A tool without a per-tool action in the schema falls back to `tools/call` on Tool::"<name>":
    agents have no permit for it; people (`users-call-tools`) do and the server answers."""
    before = len(gw_sse.server.requests())
    r = post(gw_sse, call("rm_rf", {"path": "/"}, id_=4), mcp_agent("files:read payments:write email:send"))
    assert rpc_error(r, 200, FORBIDDEN, 4)["data"]["policies"] == []
    assert len(gw_sse.server.requests()) == before
    post(gw_sse, call("rm_rf", {"path": "/"}, id_=4), mcp_user())
    assert [s["rpc"] for s in gw_sse.server.requests()[before:]] == [["tools/call"]]


def test_refused_notification_is_403(nothing_forwarded):
    r = post(nothing_forwarded, {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
             mcp_agent("files:read"))
    assert r.status_code == 403, f"{r.status_code} {r.text}"


def test_health_route_needs_no_token(gw_sse):
    r = httpx.get(f"{gw_sse.envoy.url}/healthz", timeout=10)
    assert r.status_code == 200 and r.text == "ok"


# ---------------------------------------------------------------------------------------------
# List filtering: what each caller sees, through the SDK client (SSE and JSON server modes)

async def _lists(s: ClientSession) -> tuple[set[str], set[str], set[str]]:
    tools = {t.name for t in (await s.list_tools()).tools}
    resources = {str(r.uri) for r in (await s.list_resources()).resources}
    prompts = {p.name for p in (await s.list_prompts()).prompts}
    return tools, resources, prompts


@pytest.mark.parametrize("who, bearer, tools", [
    pytest.param("user", lambda: mcp_user("alice"),
                 {"read_file", "send_email", "transfer_funds", "delete_file"}, id="user"),
    pytest.param("user+files:write", lambda: mcp_user("alice", scope="files:write"),
                 {"read_file", "send_email", "transfer_funds", "delete_file"}, id="user-files-write"),
    pytest.param("agent", lambda: mcp_agent(None, sub="agent-lists"), {"delete_file"}, id="agent-no-scopes"),
    pytest.param("agent+files:read", lambda: mcp_agent("files:read", sub="agent-lists"),
                 {"read_file", "delete_file"}, id="agent-files-read"),
    pytest.param("agent+email+pay", lambda: mcp_agent("email:send payments:write", sub="agent-lists"),
                 {"send_email", "transfer_funds", "delete_file"}, id="agent-email-pay"),
])
def test_each_caller_sees_the_tools_it_may_use(gw, who, bearer, tools):
    """The server lists four tools; the filter removes those the caller could not call with any
    arguments (Cedar partial evaluation with the arguments unknown). send_email for an agent
    depends on the address: it stays listed. delete_file is held back only by a `@scope`
    forbid (files:write), which a step-up lifts: it stays listed so that a client can call it,
    get the 403 insufficient_scope challenge and step up."""
    (seen, _, _), _ = run_session(gw, bearer(), _lists)
    assert seen == tools, f"{who}: {seen}"


def test_resources_and_prompts_are_listed_per_caller(gw):
    (_, user_resources, user_prompts), _ = run_session(gw, mcp_user("alice"), _lists)
    (_, agent_resources, agent_prompts), _ = run_session(gw, mcp_agent(None, sub="agent-lists"), _lists)
    assert user_resources == agent_resources == {"file:///workspace/guide.md"}
    assert user_prompts == {"summarize", "draft_email"}
    assert agent_prompts == {"summarize"}


def test_a_listed_tool_can_be_called_and_the_unlisted_one_is_refused(gw):
    async def body(s: ClientSession):
        names = {t.name for t in (await s.list_tools()).tools}
        ok = await s.call_tool("read_file", {"path": "/workspace/listed"})
        err = await refused(s, "send_email", {"to": "bob@example.com", "subject": "s", "body": "b"})
        return names, ok, err

    (names, ok, err), _ = run_session(gw, mcp_agent("files:read", sub="agent-lists"), body)
    assert names == {"read_file", "delete_file"}
    assert text_of(ok).startswith("contents of /workspace/listed")
    assert_refused_by(err, [])


def test_a_raw_sse_list_answer_is_rewritten_and_stays_a_valid_stream(gw_sse):
    """Raw HTTP on an SDK session: the tools/list answer comes as an SSE event, rewritten; the
    response has no Content-Length of the original body."""
    bearer = mcp_agent("files:read", sub="agent-raw-list")
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    r = post(gw_sse, init, bearer)
    assert r.status_code == 200, r.text
    session = {"mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    post(gw_sse, {"jsonrpc": "2.0", "method": "notifications/initialized"}, bearer, headers=session)
    r = post(gw_sse, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, bearer, headers=session)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.headers
    events = [e for e in r.text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    answers = [json.loads("\n".join(line[5:].lstrip() for line in e.split("\n") if line.startswith("data:")))
               for e in events if "data:" in e]
    [answer] = [a for a in answers if a.get("id") == 2]
    assert [t["name"] for t in answer["result"]["tools"]] == ["read_file", "delete_file"]
    assert answer["result"]["tools"][0]["inputSchema"]["properties"]["path"], answer


# ---------------------------------------------------------------------------------------------
# Step-up: a call refused only for a missing scope is HTTP 403 insufficient_scope

def test_missing_scope_is_a_403_step_up_challenge_and_nothing_is_forwarded(nothing_forwarded):
    r = post(nothing_forwarded, call("delete_file", {"path": "/workspace/old.txt"}, id_=7), mcp_user("alice"))
    assert r.status_code == 403, r.text
    challenge = r.headers.get("www-authenticate", "")
    assert challenge.startswith('Bearer error="insufficient_scope", scope="files:write"'), challenge
    assert 'error_description="' in challenge, challenge
    body = json_body(r)
    assert body["error"] == "insufficient_scope" and body["scope"] == "files:write", body
    assert body["policies"] == ["delete-needs-files-write"], body


def test_after_stepping_up_the_call_goes_through(gw):
    async def body(s: ClientSession):
        return await s.call_tool("delete_file", {"path": "/workspace/old.txt"})

    result, _ = run_session(gw, mcp_user("alice", scope="files:write"), body)
    assert text_of(result) == "deleted /workspace/old.txt"


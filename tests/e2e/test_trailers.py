"""MCP POSTs whose HTTP/2 stream ends with trailers are decided exactly like those whose body ends it.

An HTTP/2 request may end with a TRAILERS frame (HEADERS, DATA without END_STREAM, then HEADERS with
END_STREAM) instead of END_STREAM on its last DATA frame. The filter holds an MCP POST until it has
judged the whole body, so it must judge the body at the trailers too: otherwise the request hangs,
or worse, passes unjudged. Through a real Envoy (envoy-examples/envoy-mcp.yaml, cleartext HTTP/2
with prior knowledge on its `codec_type: AUTO` listener) in front of tests/peers/mcp_server.py,
every test sends its frames itself with the `h2` library, once ending with trailers and once ending
on the DATA frame, and expects the same outcome:

- a tools/call refused by policy gets the filter's JSON-RPC error -32003, and not one byte of it
  reaches the MCP server;
- an allowed tools/call is forwarded with Tessera's identity header (a forged one is replaced);
- a single-use token is forwarded once, then refused with 401;
- a tools/list answer comes back filtered for the caller.

And, for the trailers only: identity and approval headers sent by the client as *trailers* never
reach the server. The MCP server (ASGI) cannot see trailers, so a TCP relay between Envoy and the
server keeps the raw bytes Envoy sent upstream, and the cluster lets Envoy forward trailers to its
HTTP/1.1 upstream (`enable_trailers`): a harmless trailer is seen there, the forged ones are not.

Departures from the example: the agents issuer declares `single_use_claim: single_use` (as in
envoy-http.yaml), the server answers POSTs with application/json, the upstream is the relay.
"""
from __future__ import annotations

import copy
import hashlib
import json
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

import envoy_config
from approve import HEADER as APPROVAL_HEADER
from conftest import ARTIFACTS, REPO_ROOT, Envoy, Peer, tail
from helpers import assert_invalid_token, minting, token

EXAMPLE = REPO_ROOT / "envoy-examples" / "envoy-mcp.yaml"
AUDIENCE = "mcp-tools"
FORBIDDEN = -32003
AGENT_7 = 'Agent::"agents|agent-7"'
FORGED = 'User::"forged-root"'
PROTOCOL_VERSION = "2025-11-25"
ENDINGS = ["trailers", "data"]  # how the request stream ends: a TRAILERS frame, or END_STREAM on DATA


def agent_7(**claims) -> str:
    return token(minting.AGENTS, "agent-7", scope="files:read", aud=AUDIENCE, **claims)


def call(tool: str, arguments: dict, id_: Any) -> dict:
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}


# ---------------------------------------------------------------------------------------------
# Peers: the MCP server, a recording relay in front of it, and Envoy in front of the relay

class McpServer(Peer):
    """tests/peers/mcp_server.py (JSON answers); /__mcp/log tells what reached it."""

    def __init__(self):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        super().__init__("mcp_server.py", ARTIFACTS / "mcp-server-trailers.log", "--json-response")

    def requests(self) -> list[dict]:
        return self._client.get("/__mcp/log").json()["http"]

    def calls(self) -> list[dict]:
        return self._client.get("/__mcp/log").json()["calls"]


class Relay:
    """TCP relay 127.0.0.1:<port> -> the MCP server that keeps every byte Envoy sends upstream
    (recorded before it is passed on, so it is there once the server has answered)."""

    def __init__(self, target_port: int):
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sent = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pump, args=(downstream, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self._sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def mark(self) -> int:
        with self._lock:
            return len(self._sent)

    def since(self, mark: int) -> bytes:
        """The bytes Envoy sent upstream since mark()."""
        with self._lock:
            return bytes(self._sent[mark:])

    def close(self) -> None:
        self._listener.close()


@dataclass
class Gateway:
    envoy: Envoy
    server: McpServer
    relay: Relay

    @property
    def port(self) -> int:
        return int(self.envoy.url.rsplit(":", 1)[1])


def bootstrap() -> dict:
    doc = envoy_config.rendered(EXAMPLE)
    cfg = envoy_config.get_plugin_config(doc)
    [agents] = [i for i in cfg["issuers"] if i["issuer"] == minting.AGENTS]
    agents["single_use_claim"] = "single_use"
    envoy_config.set_plugin_config(doc, cfg)
    # Envoy's HTTP/1 codec drops request trailers unless told to forward them.
    [cluster] = [c for c in doc["static_resources"]["clusters"] if c["name"] == "upstream"]
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {"enable_trailers": True}},
        }}
    return doc


@pytest.fixture(scope="module")
def gw(envoy_bin, wasm_path):
    server = McpServer()
    relay = Relay(server.port)
    envoy = Envoy(envoy_bin, copy.deepcopy(bootstrap()), "envoy-mcp-trailers", wasm_path, relay.port)
    try:
        if not envoy.wait_ready():
            pytest.fail(f"Envoy exited (code {envoy.proc.returncode}) with {EXAMPLE.name} + trailers:\n"
                        f"{tail(envoy.log)}", pytrace=False)
        yield Gateway(envoy, server, relay)
    finally:
        envoy.stop()
        relay.close()
        server.stop()


@pytest.fixture(scope="module")
def session(gw) -> dict[str, str]:
    """An MCP session opened by agent-7 over HTTP/1.1 (the filter binds it to that principal)."""
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json",
               "authorization": f"Bearer {agent_7()}"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                       "clientInfo": {"name": "test-trailers", "version": "1"}}}
    r = httpx.post(f"{gw.envoy.url}/mcp", json=init, headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers.get("mcp-session-id"), f"{r.status_code} {r.headers} {r.text}"
    ids = {"mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": PROTOCOL_VERSION}
    r = httpx.post(f"{gw.envoy.url}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                   headers={**headers, **ids}, timeout=30)
    assert r.status_code == 202, f"{r.status_code} {r.text}"
    return ids


# ---------------------------------------------------------------------------------------------
# A raw HTTP/2 client: one POST on a fresh connection, frames chosen by the test

@dataclass
class H2Response:
    """What came back on the stream (shaped like httpx.Response where helpers.py reads it)."""
    status_code: int
    headers: dict[str, str]
    content: bytes
    trailers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None  # RST_STREAM error code, if Envoy reset the stream after answering

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def h2_post(port: int, headers: list[tuple[str, str]], body: bytes,
            trailers: list[tuple[str, str]] | None, timeout: float = 30) -> H2Response:
    """POST /mcp over cleartext HTTP/2 (prior knowledge). The body goes in DATA frames; with
    `trailers` the last DATA frame does not end the stream and a HEADERS frame with END_STREAM
    (the trailers) does; without, the last DATA frame carries END_STREAM. Every frame is written
    before anything is read, so an early answer cannot cut the request short."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    pseudo = [(":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"), (":path", "/mcp")]
    conn.send_headers(sid, pseudo + headers, end_stream=False)
    assert len(body) < 65535, "bodies here fit the initial flow-control window"
    size = conn.max_outbound_frame_size
    chunks = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    for i, chunk in enumerate(chunks):
        conn.send_data(sid, chunk, end_stream=trailers is None and i == len(chunks) - 1)
    if trailers is not None:
        conn.send_headers(sid, trailers, end_stream=True)

    status, resp_headers, content, resp_trailers, reset = None, {}, bytearray(), {}, None
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no end of the response stream within {timeout} s (status {status}): "
                                     f"the request is held, never decided") from None
            if not data:
                raise ConnectionError(f"Envoy closed the connection before the stream ended "
                                      f"(status {status}, body {bytes(content)!r})")
            for ev in conn.receive_data(data):
                if getattr(ev, "stream_id", sid) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    resp_headers = {k.lower(): v for k, v in ev.headers}
                    status = int(resp_headers.pop(":status"))
                elif isinstance(ev, h2.events.DataReceived):
                    content += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.TrailersReceived):
                    resp_trailers = {k.lower(): v for k, v in ev.headers}
                elif isinstance(ev, h2.events.StreamEnded):
                    ended = True
                elif isinstance(ev, h2.events.StreamReset):
                    reset, ended = ev.error_code, True
                elif isinstance(ev, h2.events.ConnectionTerminated) and not ended:
                    raise ConnectionError(f"Envoy sent GOAWAY ({ev.error_code}) before the stream ended")
            sock.sendall(conn.data_to_send())
        conn.close_connection()
        sock.sendall(conn.data_to_send())
    assert status is not None, f"the stream was reset (code {reset}) before any response"
    return H2Response(status, resp_headers, bytes(content), resp_trailers, reset)


def body_digest(body: bytes) -> str:
    return "sha256=" + hashlib.sha256(body).hexdigest()


def mcp_post(gw: Gateway, message: dict, bearer: str, ending: str, session: dict[str, str] | None = None,
             headers: list[tuple[str, str]] = (), trailers: list[tuple[str, str]] = ()) -> H2Response:
    """An MCP POST over HTTP/2 that ends as `ending` says. A trailer-terminated one always carries
    a harmless `x-body-sha256` trailer (an empty TRAILERS frame is not a realistic client)."""
    body = json.dumps(message).encode()
    h = [("authorization", f"Bearer {bearer}"), ("content-type", "application/json"),
         ("accept", "application/json, text/event-stream"), *(session or {}).items(), *headers]
    if ending == "trailers":
        return h2_post(gw.port, h, body, [("x-body-sha256", body_digest(body)), *trailers])
    assert ending == "data" and not trailers, ending
    return h2_post(gw.port, h, body, None)


def rpc_answer(resp: H2Response, id_: Any) -> dict:
    assert resp.status_code == 200, f"expected 200, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    answer = resp.json()
    assert answer.get("jsonrpc") == "2.0" and answer.get("id") == id_, answer
    return answer


def result_text(answer: dict) -> str:
    assert "result" in answer and not answer["result"].get("isError"), answer
    return "".join(c["text"] for c in answer["result"]["content"] if c.get("type") == "text")


# ---------------------------------------------------------------------------------------------
# Tests

@pytest.mark.parametrize("ending", ENDINGS)
def test_a_refused_call_is_answered_by_the_filter_and_never_reaches_the_server(gw, session, ending):
    before, mark = len(gw.server.requests()), gw.relay.mark()
    resp = mcp_post(gw, call("read_file", {"path": "/etc/shadow"}, id_=31), agent_7(), ending, session)
    error = rpc_answer(resp, 31).get("error")
    assert error and error["code"] == FORBIDDEN, resp.text
    assert error["message"] == "forbidden by policy no-reading-secrets", error
    assert error["data"]["policies"] == ["no-reading-secrets"] and error["data"].get("request_id"), error
    assert gw.server.requests()[before:] == [], "the refused call reached the MCP server"
    assert gw.relay.since(mark) == b"", "Envoy sent bytes of the refused call upstream"
    assert "/etc/shadow" not in [c["arguments"].get("path") for c in gw.server.calls()]


@pytest.mark.parametrize("ending", ENDINGS)
def test_an_allowed_call_is_forwarded_with_tesseras_identity(gw, session, ending):
    path = f"/workspace/README-{ending}.md"
    before = len(gw.server.requests())
    resp = mcp_post(gw, call("read_file", {"path": path}, id_=32), agent_7(), ending, session,
                    headers=[("x-tessera-principal", FORGED)],
                    trailers=[("x-tessera-principal", FORGED)] if ending == "trailers" else [])
    assert result_text(rpc_answer(resp, 32)) == f"contents of {path}: lorem ipsum dolor sit amet\n"
    [seen] = gw.server.requests()[before:]
    assert seen["rpc"] == ["tools/call"] and seen["body_bytes"] > 0, seen
    assert seen["headers"].get("x-tessera-principal") == AGENT_7, seen["headers"]
    assert seen["headers"].get("x-tessera-subject") == "agent-7", seen["headers"]
    assert "authorization" not in seen["headers"], "drop_authorization: the server must not get the token"
    assert [c for c in gw.server.calls() if c["arguments"].get("path") == path] == [
        {"tool": "read_file", "arguments": {"path": path}}]


def test_identity_and_approval_trailers_from_the_client_never_reach_the_server(gw, session):
    """Trailers do reach the upstream here (the probe arrives after the last chunk), but the ones
    named like the headers the filter owns are removed."""
    path = "/workspace/trailers.md"
    mark = gw.relay.mark()
    forged = [("x-tessera-principal", FORGED), ("x-tessera-issuer", "https://forged.example"),
              ("x-tessera-subject", "forged-subject"), (APPROVAL_HEADER, "forged-approval")]
    resp = mcp_post(gw, call("read_file", {"path": path}, id_=33), agent_7(), "trailers", session,
                    trailers=forged)
    assert result_text(rpc_answer(resp, 33)).startswith(f"contents of {path}")
    wire = gw.relay.since(mark).lower()
    assert path.encode() in wire, wire
    head, sep, tail_ = wire.partition(b"\r\n\r\n")
    assert sep and b"transfer-encoding: chunked" in head, head
    # The header section carries Tessera's identity exactly once; the trailer section (after the
    # last, zero-length chunk) carries the probe and nothing the client forged.
    assert head.count(b"x-tessera-principal:") == 1 and f"x-tessera-principal: {AGENT_7}".lower().encode() in head, head
    _, last_chunk, trailer_section = tail_.rpartition(b"\r\n0\r\n")
    assert last_chunk, f"no last chunk in {tail_!r}"
    sent = json.dumps(call("read_file", {"path": path}, id_=33)).encode()
    assert f"x-body-sha256: {body_digest(sent)}".encode() in trailer_section, (
        f"the harmless trailer did not reach the upstream, so this test proves nothing: {trailer_section!r}")
    for name, value in forged:
        assert name.encode() not in trailer_section, f"{name} trailer reached the upstream: {trailer_section!r}"
        assert value.lower().encode() not in wire, f"forged {name} value reached the upstream: {wire!r}"


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_single_use_token_is_forwarded_once_then_refused_with_401(gw, session, ending):
    once = agent_7(single_use=True, jti=f"e2e-trailers-{uuid.uuid4()}")
    path = f"/workspace/once-{ending}.md"
    before = len(gw.server.requests())
    first = mcp_post(gw, call("read_file", {"path": path}, id_=34), once, ending, session)
    assert result_text(rpc_answer(first, 34)).startswith(f"contents of {path}")
    assert [r["rpc"] for r in gw.server.requests()[before:]] == [["tools/call"]]

    before = len(gw.server.requests())
    second = mcp_post(gw, call("read_file", {"path": path}, id_=35), once, ending, session)
    assert_invalid_token(second, "token already used")
    assert gw.server.requests()[before:] == [], "the replayed token was forwarded"
    assert [c["arguments"]["path"] for c in gw.server.calls()].count(path) == 1


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_tools_list_answer_is_filtered_for_the_caller(gw, session, ending):
    """The server lists four tools; agent-7 with files:read may use read_file, and delete_file
    stays listed for a step-up (see test_mcp.py)."""
    before = len(gw.server.requests())
    resp = mcp_post(gw, {"jsonrpc": "2.0", "id": 36, "method": "tools/list"}, agent_7(), ending, session)
    answer = rpc_answer(resp, 36)
    assert [t["name"] for t in answer["result"]["tools"]] == ["read_file", "delete_file"], answer
    assert [r["rpc"] for r in gw.server.requests()[before:]] == [["tools/list"]]

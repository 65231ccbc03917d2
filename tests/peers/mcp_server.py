#!/usr/bin/env python3
"""MCP tool server for Tessera's end-to-end tests, written with the official MCP Python SDK.

    python tests/peers/mcp_server.py <port> [--json-response] [--stateless] [--public-lists]
                                                                         # port 0 picks a free port

Serves MCP Streamable HTTP at http://127.0.0.1:<port>/mcp (127.0.0.1 only) with three tools that
touch nothing real:
    read_file(path: str) -> str                                        fake content, never the disk
    send_email(to: str, subject: str, body: str) -> str                pretends to send
    transfer_funds(amount: int, to_account: str, memo: str | None = None) -> str   pretends to pay
    delete_file(path: str) -> str                                      pretends to delete
two resources (file:///workspace/guide.md, file:///private/salaries.csv) and two prompts
(summarize(text), draft_email(to)), so that list filtering has something to hide.
By default a POST is answered with an SSE stream (text/event-stream); --json-response makes the SDK
answer with application/json; --stateless turns sessions off. Like every server of the SDK it is
dual-era: a 2025-11-25 client opens a session with `initialize`, a 2026-07-28 client sends each
request on its own (the SDK answers those as JSON unless the handler streams, and a
subscriptions/listen always as SSE). --public-lists marks 2026-07-28 list results
`cacheScope: "public"` (the SDK's default is "private"), so that a test can tell who made them private.

Prints "READY <port>" on stdout once listening. Test endpoints (not MCP, not counted):
    GET /__mcp/log      {"http": [every HTTP request that reached the server: method, path,
                         content_type, body_bytes, rpc (the JSON-RPC methods of the body), headers
                         of interest, status], "calls": [every tool that ran: tool, arguments]}
    POST /__mcp/touch   {"uri": "<resource uri>"}: notifications/resources/updated for it to every
                        open subscriptions/listen stream that subscribed to it; {"published": true}
    POST /__mcp/tools-changed   notifications/tools/list_changed to every listen stream that asked
    GET /healthz        200 "ok"

The app is the SDK's own (`MCPServer.streamable_http_app`, what `MCPServer.run("streamable-http")`
builds and serves with uvicorn); it is served here on a socket bound beforehand, so that port 0 works
without a race and READY is printed when uvicorn has started, and wrapped in an ASGI recorder so that
tests can assert what reached the server at the HTTP level (an over-size body that the SDK itself
would reject still counts as "seen").
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
from typing import Any

import anyio
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated, ToolsListChanged

_lock = threading.Lock()
HTTP_LOG: list[dict[str, Any]] = []
CALLS: list[dict[str, Any]] = []
TEST_PATHS = ("/__mcp/", "/healthz")
RECORDED_HEADERS = ("mcp-session-id", "mcp-protocol-version", "x-tessera-principal", "x-tessera-issuer",
                    "x-tessera-subject", "authorization", "mcp-method", "mcp-name")
LIST_METHODS = ("tools/list", "resources/list", "resources/templates/list", "prompts/list")

# The fan-out of subscriptions/listen streams (the SDK's default bus, named so that the test
# endpoints can publish on it).
BUS = InMemorySubscriptionBus()
app = MCPServer("tessera-test-tools", instructions="Fake file, mail and payment tools for Tessera's tests.",
                subscriptions=BUS)


def _called(tool: str, **arguments: Any) -> None:
    with _lock:
        CALLS.append({"tool": tool, "arguments": arguments})


@app.tool()
def read_file(path: str) -> str:
    """Read a text file from the workspace."""
    _called("read_file", path=path)
    return f"contents of {path}: lorem ipsum dolor sit amet\n"


@app.tool()
def send_email(to: str, subject: str, body: str) -> str:
    """Send an email."""
    _called("send_email", to=to, subject=subject, body=body)
    return f"sent to {to}: {subject!r} ({len(body)} characters)"


@app.tool()
def transfer_funds(amount: int, to_account: str, memo: str | None = None) -> str:
    """Transfer money to an account."""
    _called("transfer_funds", amount=amount, to_account=to_account, memo=memo)
    return f"transferred {amount} to {to_account}" + (f" ({memo})" if memo else "")


@app.tool()
def delete_file(path: str) -> str:
    """Delete a file from the workspace."""
    _called("delete_file", path=path)
    return f"deleted {path}"


@app.resource("file:///workspace/guide.md", name="guide", mime_type="text/markdown")
def guide() -> str:
    return "# Workspace guide\n"


@app.resource("file:///private/salaries.csv", name="salaries", mime_type="text/csv")
def salaries() -> str:
    return "name,salary\n"


@app.prompt()
def summarize(text: str) -> str:
    """Summarize a text."""
    return f"Summarize this:\n{text}"


@app.prompt()
def draft_email(to: str) -> str:
    """Draft an email."""
    return f"Draft a short email to {to}."


@app.custom_route("/__mcp/log", methods=["GET"])
async def mcp_log(_: Request) -> JSONResponse:
    with _lock:
        return JSONResponse({"http": list(HTTP_LOG), "calls": list(CALLS)})


@app.custom_route("/__mcp/touch", methods=["POST"])
async def mcp_touch(request: Request) -> JSONResponse:
    uri = (await request.json()).get("uri")
    if not isinstance(uri, str):
        return JSONResponse({"error": "body must be {\"uri\": \"...\"}"}, status_code=400)
    await BUS.publish(ResourceUpdated(uri=uri))
    return JSONResponse({"published": True})


@app.custom_route("/__mcp/tools-changed", methods=["POST"])
async def mcp_tools_changed(_: Request) -> JSONResponse:
    await BUS.publish(ToolsListChanged())
    return JSONResponse({"published": True})


async def public_lists(ctx, call_next):
    """Middleware (--public-lists): a 2026-07-28 list result says cacheScope "public"."""
    result = await call_next(ctx)
    if ctx.method in LIST_METHODS and isinstance(result, dict) and "cacheScope" in result:
        result = {**result, "cacheScope": "public"}
    return result


@app.custom_route("/healthz", methods=["GET"])
async def healthz(_: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def _rpc_methods(body: bytes) -> list[str] | None:
    """The JSON-RPC methods of a body ("<response>" for a client's answer), None if not JSON-RPC."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    items = doc if isinstance(doc, list) else [doc]
    return [(m.get("method") or "<response>") if isinstance(m, dict) else "?" for m in items]


class Recorder:
    """ASGI wrapper: appends every HTTP request (but the test endpoints) to HTTP_LOG."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(TEST_PATHS):
            return await self.inner(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        entry: dict[str, Any] = {
            "method": scope["method"], "path": scope["path"],
            "content_type": headers.get("content-type"), "body_bytes": 0, "rpc": None, "status": None,
            "headers": {k: headers[k] for k in RECORDED_HEADERS if k in headers},
        }
        with _lock:
            HTTP_LOG.append(entry)
        body = bytearray()

        async def recv():
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                entry["body_bytes"] = len(body)
                if not message.get("more_body"):
                    entry["rpc"] = _rpc_methods(bytes(body))
            return message

        async def snd(message):
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.inner(scope, recv, snd)


async def serve(sock: socket.socket, json_response: bool, stateless: bool) -> None:
    starlette_app = app.streamable_http_app(streamable_http_path="/mcp", json_response=json_response,
                                            stateless_http=stateless, host="127.0.0.1")
    config = uvicorn.Config(Recorder(starlette_app), log_level="info", lifespan="on")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            if server.should_exit:
                return
            await anyio.sleep(0.02)
        print(f"READY {sock.getsockname()[1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("port", type=int, nargs="?", default=0)
    ap.add_argument("--json-response", action="store_true", help="answer POSTs with application/json, not SSE")
    ap.add_argument("--stateless", action="store_true", help="no Mcp-Session-Id sessions")
    ap.add_argument("--public-lists", action="store_true",
                    help='2026-07-28 list results say cacheScope "public" (the SDK says "private")')
    args = ap.parse_args(argv)
    if args.public_lists:
        app.middleware.append(public_lists)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    sock.set_inheritable(True)
    try:
        anyio.run(serve, sock, args.json_response, args.stateless)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The demo approval page: where an MCP 2026-07-28 client sends the person who must approve a call.

    python tests/peers/approval_page.py <port> [--tessera URL]   # port 0 picks a free port

Tessera answers a tool call held only by `@approval("required")` with `input_required`: a URL-mode
elicitation of `<approval.page>?digest=<digest>`. Tessera also announces the request on its
`approval.webhook` cluster, which points here. This page:

    POST /webhook            Tessera's announcement {"event": "approval_required", "approval":
                             {"digest", "request": {principal, action, resource, route, arguments |
                             path, issuer, on_behalf_of, actors, task}}}: kept by digest, if the digest
                             is the RFC 8785 (JCS) SHA-256 of the request (computed here, independently)
    GET  /approve?digest=D   the page a person reads: who asks (issuer, subject, actor chain, task),
                             what (tool and arguments), and an Approve button
    POST /approve            form `digest`, `approver`: signs an approval for D (tests/peers/approve.py,
                             the TEST/DEMO-ONLY approver key) and posts it to Tessera's receiver
                             (`approval.receiver_path`); the page shows what Tessera answered
    GET  /requests           every announced request (JSON), for tests
    POST /admin/tessera      {"url": "<Tessera's receiver URL>"} (when Envoy's port is known only later)

Prints "READY <port>" once listening. 127.0.0.1 only; a demo, not a product: anyone who reaches the
page can approve.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from approve import approve, digest_of

_lock = threading.Lock()
REQUESTS: dict[str, dict] = {}
STATE = {"tessera": None}


def _row(label: str, value) -> str:
    if value in (None, "", [], {}):
        value = "—"
    elif not isinstance(value, str):
        value = json.dumps(value, indent=2, sort_keys=True)
    return f"<tr><th>{html.escape(label)}</th><td><pre>{html.escape(value)}</pre></td></tr>"


def page(digest: str, req: dict) -> str:
    """The request as a person reads it: who (and through whom), what, and the Approve form."""
    rows = "".join([
        _row("Issuer", req.get("issuer")),
        _row("Principal", req.get("principal")),
        _row("On behalf of", req.get("on_behalf_of")),
        _row("Actor chain", req.get("actors")),
        _row("Task", req.get("task")),
        _row("Action", req.get("action")),
        _row("Resource", req.get("resource")),
        _row("Route", req.get("route")),
        _row("Arguments", req.get("arguments")),
        _row("Path", req.get("path")),
    ])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Approve this call?</title></head>
<body><h1>An agent asks for your approval</h1>
<table>{rows}</table>
<form method="post" action="/approve">
<input type="hidden" name="digest" value="{html.escape(digest)}">
<label>Approver <input name="approver" value="alice@example.com"></label>
<button type="submit">Approve</button></form>
<p><small>Digest {html.escape(digest)}</small></p></body></html>"""


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):  # to stderr, as the peers do
        sys.stderr.write("approval_page: " + fmt % args + "\n")

    def _send(self, status: int, body: str, content_type: str = "text/html; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/approve":
            digest = urllib.parse.parse_qs(url.query).get("digest", [""])[0]
            with _lock:
                req = REQUESTS.get(digest)
            if req is None:
                return self._send(404, "<p>No such approval request (Tessera has not announced it).</p>")
            return self._send(200, page(digest, req))
        if url.path == "/requests":
            with _lock:
                return self._send(200, json.dumps(REQUESTS), "application/json")
        if url.path == "/healthz":
            return self._send(200, "ok", "text/plain")
        self._send(404, "not found", "text/plain")

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/webhook":
            try:
                note = json.loads(self._body())
                ask = note["approval"]
                digest, req = ask["digest"], ask["request"]
            except (ValueError, KeyError, TypeError):
                return self._send(400, "not an approval announcement", "text/plain")
            if digest_of(req) != digest:
                return self._send(400, "the digest is not the request's", "text/plain")
            with _lock:
                REQUESTS[digest] = req
            return self._send(204, "")
        if url.path == "/admin/tessera":
            STATE["tessera"] = json.loads(self._body())["url"]
            return self._send(200, "{}", "application/json")
        if url.path == "/approve":
            form = urllib.parse.parse_qs(self._body().decode())
            digest = form.get("digest", [""])[0]
            approver = form.get("approver", ["alice@example.com"])[0]
            with _lock:
                known = digest in REQUESTS
            if not known:
                return self._send(404, "<p>No such approval request.</p>")
            if not STATE["tessera"]:
                return self._send(503, "<p>Tessera's receiver is not configured.</p>")
            approval = approve(digest, approver=approver)
            post = urllib.request.Request(STATE["tessera"], data=approval.encode(), method="POST",
                                          headers={"content-type": "application/jwt"})
            try:
                with urllib.request.urlopen(post, timeout=10) as r:
                    status, answer = r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                status, answer = e.code, e.read().decode()
            except OSError as e:
                return self._send(502, f"<p>Tessera did not answer: {html.escape(str(e))}</p>")
            ok = status == 202
            return self._send(200 if ok else 502,
                              f"<p>{'Approved' if ok else 'Not accepted'}: Tessera answered {status} "
                              f"{html.escape(answer)}. You can close this page.</p>")
        self._send(404, "not found", "text/plain")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--tessera", help="Tessera's approval receiver URL")
    args = ap.parse_args(argv)
    STATE["tessera"] = args.tessera
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

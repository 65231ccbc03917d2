#!/usr/bin/env python3
"""Programmable identity provider, status-list server and SSF transmitter for Tessera's end-to-end tests.

    python tests/peers/idp.py <port>     # port 0 picks a free port

Listens on 127.0.0.1:<port> (HTTP/1.1, one thread per connection) and prints "READY <port>" on stdout
once listening. It holds no key and signs nothing: the test makes the keys, the JWKS, the Status
List Tokens and the SETs (tests/peers/jose_kit.py) and puts them here over the admin API, so that
what the filter fetches is exactly what the test chose, including broken documents.

Served (every path but /admin/…; each request is counted and recorded):
    GET  <path>      the document PUT for <path>: the exact path and query first, then the path
                     without its query; 404 when there is none.
    POST /poll       RFC 8936 poll: reads {"ack": [jti…], "setErrs": {jti: {"err", "description"}},
                     "maxEvents": N, "returnImmediately": bool}; acknowledged and refused SETs leave
                     the queue; answers {"sets": {jti: SET}, "moreAvailable": bool} with at most
                     maxEvents SETs not yet acknowledged (all of them without maxEvents).
A fault (POST /admin/down) on a prefix of the path answers 503 (down) and/or answers after a delay.

Admin API (JSON in and out; never counted):
    PUT  /admin/doc      {"path": "/jwks", "body": "<text>" or a JSON value, "status": 200,
                          "content_type": "application/json"}             → {"ok": true}
    POST /admin/down     {"down": bool, "delay_s": 0, "prefix": "/"}: the fault of the paths under
                          prefix (the longest matching prefix wins; down false and delay 0 clear it)
    GET  /admin/hits     {"hits": {path: count}, "requests": [{"method", "path", "accept", "host",
                          "content_type", "body" (JSON bodies only)}]}  (path includes the query)
    POST /admin/enqueue  {"jti": "...", "set": "<compact JWS>"}: queued for /poll
    GET  /admin/acks     {"acks": [jti…], "setErrs": {jti: {...}}, "pending": [jti…],
                          "polls": [every poll request body, in order]}
    POST /admin/reset    forget documents, faults, counters, the queue and the acks
"""
from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MAX_RECORDED = 2000


class State:
    """Everything the test programs, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.faults: dict[str, dict[str, Any]] = {}
        self.hits: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []
        self.queue: dict[str, str] = {}  # jti → SET, in insertion order
        self.acks: list[str] = []
        self.set_errs: dict[str, Any] = {}
        self.polls: list[Any] = []

    def fault_for(self, path: str) -> dict[str, Any]:
        matching = [p for p in self.faults if path.startswith(p)]
        return self.faults[max(matching, key=len)] if matching else {"down": False, "delay_s": 0.0}

    def poll(self, request: dict) -> dict:
        for jti in request.get("ack") or []:
            self.acks.append(jti)
            self.queue.pop(jti, None)
        for jti, err in (request.get("setErrs") or {}).items():
            self.set_errs[jti] = err
            self.queue.pop(jti, None)
        limit = request.get("maxEvents")
        pending = list(self.queue.items())
        sent = pending if limit is None else pending[:max(int(limit), 0)]
        return {"sets": dict(sent), "moreAvailable": len(sent) < len(pending)}


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tessera-idp/1"
    disable_nagle_algorithm = True

    # --- plumbing -------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes | str | Any = b"", content_type: str = "application/json") -> None:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        data = body.encode() if isinstance(body, str) else body
        try:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout under test)
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # keep stdout for READY only
        sys.stderr.write("idp: " + (format % args) + "\n")

    # --- dispatch -------------------------------------------------------------------------

    def _handle(self) -> None:
        raw = self._body()
        path = urlsplit(self.path).path
        if path.startswith("/admin/"):
            try:
                payload = json.loads(raw) if raw else {}
                self._admin(path, payload)
            except (ValueError, KeyError, TypeError) as e:
                self._send(400, {"error": f"{type(e).__name__}: {e}"})
            return
        self._serve(path, raw)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def _admin(self, path: str, p: dict) -> None:
        route = (self.command, path)
        with STATE.lock:
            if route == ("PUT", "/admin/doc"):
                body = p["body"]
                STATE.docs[p["path"]] = {
                    "status": int(p.get("status", 200)),
                    "content_type": p.get("content_type", "application/json"),
                    "body": body if isinstance(body, str) else json.dumps(body)}
                out: Any = {"ok": True}
            elif route == ("POST", "/admin/down"):
                prefix = p.get("prefix", "/")
                fault = {"down": bool(p.get("down", False)), "delay_s": float(p.get("delay_s", 0))}
                if fault["down"] or fault["delay_s"] > 0:
                    STATE.faults[prefix] = fault
                else:
                    STATE.faults.pop(prefix, None)
                out = {"faults": STATE.faults}
            elif route == ("GET", "/admin/hits"):
                out = {"hits": dict(STATE.hits), "requests": list(STATE.requests)}
            elif route == ("POST", "/admin/enqueue"):
                STATE.queue[p["jti"]] = p["set"]
                out = {"pending": list(STATE.queue)}
            elif route == ("GET", "/admin/acks"):
                out = {"acks": list(STATE.acks), "setErrs": dict(STATE.set_errs),
                       "pending": list(STATE.queue), "polls": list(STATE.polls)}
            elif route == ("POST", "/admin/reset"):
                STATE.reset()
                out = {"ok": True}
            else:
                out = None
        if out is None:
            self._send(404, {"error": f"no admin endpoint {self.command} {path}"})
        else:
            self._send(200, out)

    def _serve(self, path: str, raw: bytes) -> None:
        full = self.path  # path and query, as the filter asked for it
        try:
            body_json = json.loads(raw) if raw else None
        except ValueError:
            body_json = None
        with STATE.lock:
            STATE.hits[full] = STATE.hits.get(full, 0) + 1
            STATE.requests.append({"method": self.command, "path": full,
                                   "accept": self.headers.get("accept"), "host": self.headers.get("host"),
                                   "content_type": self.headers.get("content-type"), "body": body_json})
            del STATE.requests[:-MAX_RECORDED]
            fault = STATE.fault_for(path)
        if fault["delay_s"] > 0:
            time.sleep(fault["delay_s"])
        if fault["down"]:
            self._send(503, {"error": "down (test fault)"})
            return
        if (self.command, path) == ("POST", "/poll"):
            if not isinstance(body_json, dict):
                self._send(400, {"err": "invalid_request", "description": "poll body is not a JSON object"})
                return
            with STATE.lock:
                STATE.polls.append(body_json)
                del STATE.polls[:-MAX_RECORDED]
                answer = STATE.poll(body_json)
            self._send(200, answer)
            return
        with STATE.lock:
            doc = STATE.docs.get(full) or STATE.docs.get(path)
        if doc is None or self.command not in ("GET", "HEAD"):
            self._send(404, {"error": f"no document at {full}"})
            return
        self._send(doc["status"], doc["body"], doc["content_type"])


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Every worker thread of Envoy fetches every issuer's keys at once at startup: with the default
    # backlog (5) connections are dropped, and Envoy's connect timeout turns them into 503s.
    request_queue_size = 256


def main() -> int:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = Server(("127.0.0.1", port), Handler)
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

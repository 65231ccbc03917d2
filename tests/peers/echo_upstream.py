#!/usr/bin/env python3
"""Echo upstream for Tessera's end-to-end tests.

    python tests/peers/echo_upstream.py <port>     # port 0 picks a free port

Listens on 127.0.0.1:<port> (HTTP/1.1, one thread per connection) and answers every method with
200 and a JSON body {"method", "path", "headers": {lowercased name: value}, "body_bytes"}.
Prints "READY <port>" on stdout once listening. GET /__echo/count returns how many requests were
echoed so far (that one is not counted), so tests can assert that nothing reached the upstream.
"""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tessera-echo/1"
    # Headers and body are two small writes on a keep-alive connection: with Nagle's algorithm the
    # body waits for the client's delayed ACK (~40 ms per request), which anyone timing the demo
    # would blame on the filter.
    disable_nagle_algorithm = True
    count = 0
    lock = threading.Lock()

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/__echo/count":
            payload = {"count": EchoHandler.count}
        else:
            with EchoHandler.lock:
                EchoHandler.count += 1
            headers: dict[str, str] = {}
            for name, value in self.headers.items():
                name = name.lower()
                headers[name] = f"{headers[name]},{value}" if name in headers else value
            payload = {"method": self.command, "path": self.path, "headers": headers, "body_bytes": len(body)}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args) -> None:  # keep stdout for READY only
        sys.stderr.write("echo: " + (format % args) + "\n")


def main() -> int:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), EchoHandler)
    server.daemon_threads = True
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

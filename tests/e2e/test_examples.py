"""The shipped examples in envoy-examples/ are valid and agree with each other."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import envoy_config
from conftest import ARTIFACTS, REPO_ROOT

# Envoy bootstraps only: the Istio resources (WasmPlugin, EnvoyFilter) are checked by their own tests
# below.
EXAMPLES = [p for p in sorted((REPO_ROOT / "envoy-examples").glob("*.yaml"))
            if envoy_config.is_envoy_bootstrap(envoy_config.load_yaml(p))]
MCP_EXAMPLE = REPO_ROOT / "envoy-examples/envoy-mcp.yaml"
ENVOYFILTER_EXAMPLE = REPO_ROOT / "envoy-examples/istio-envoyfilter-mcp.yaml"


def envoy_validate(envoy_bin: Path, bootstrap: dict, name: str) -> subprocess.CompletedProcess:
    out = envoy_config.dump_yaml(bootstrap, ARTIFACTS / f"validate-{name}")
    return subprocess.run([str(envoy_bin), "--mode", "validate", "-c", str(out), "--disable-hot-restart",
                           "-l", "warning"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_envoy_validate_accepts_example(example: Path, request):
    envoy_bin = request.getfixturevalue("envoy_bin")
    wasm_path = request.getfixturevalue("wasm_path")
    expanded = envoy_config.rendered(example)
    # `--mode validate` loads the module named in the config, so point it at the one under test,
    # and the certificates of a TLS listener, so give it a PKI.
    envoy_config.patch(expanded, wasm_path=wasm_path)
    if envoy_config.terminates_tls(expanded):
        envoy_config.with_pki(expanded, request.getfixturevalue("pki").dir)
    r = envoy_validate(envoy_bin, expanded, example.name)
    assert r.returncode == 0, f"envoy --mode validate rejected {example.name}:\n{r.stdout}\n{r.stderr}"


def test_every_envoy_example_is_validated_and_no_istio_resource_is_taken_for_one():
    assert {p.name for p in EXAMPLES} >= {"envoy-http.yaml", "envoy-mcp.yaml", "envoy-mtls.yaml"}
    istio = {p.name for p in (REPO_ROOT / "envoy-examples").glob("istio-*.yaml")}
    assert istio >= {"istio-wasmplugin.yaml", "istio-envoyfilter-mcp.yaml"}
    assert not istio & {p.name for p in EXAMPLES}


def test_example_plugin_config_uses_policy_placeholders():
    cfg = envoy_config.get_plugin_config(envoy_config.load_yaml(REPO_ROOT / "envoy-examples/envoy-http.yaml"))
    assert cfg["schema"] == "@policies/tessera.cedarschema"
    assert cfg["policies"] == "@policies/*.cedar"


def test_istio_wasmplugin_is_fail_close_authn_with_the_same_plugin_config():
    doc = envoy_config.load_yaml(REPO_ROOT / "envoy-examples/istio-wasmplugin.yaml")
    assert doc["apiVersion"] == "extensions.istio.io/v1alpha1" and doc["kind"] == "WasmPlugin"
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"]
    assert spec["url"].startswith(("oci://", "file://"))
    assert spec["phase"] == "AUTHN" and spec["failStrategy"] == "FAIL_CLOSE"
    envoy_cfg = envoy_config.get_plugin_config(envoy_config.load_yaml(REPO_ROOT / "envoy-examples/envoy-http.yaml"))
    assert json.loads(json.dumps(spec["pluginConfig"])) == envoy_cfg


def test_examples_trust_exactly_the_demo_jwks_and_hmac_secret():
    cfg = envoy_config.get_plugin_config(envoy_config.load_yaml(REPO_ROOT / "envoy-examples/envoy-http.yaml"))
    jwks = json.loads((REPO_ROOT / "tests/keys/jwks.json").read_text())
    by_iss = {i["issuer"]: i for i in cfg["issuers"]}
    assert by_iss["https://idp.demo.tessera.dev"]["jwks"] == jwks
    assert by_iss["https://agents.demo.tessera.dev"]["jwks"] == jwks
    assert by_iss["https://legacy.demo.tessera.dev"]["hmac_secret"] == \
        (REPO_ROOT / "tests/keys/hmac.b64").read_text().strip()


# ---------------------------------------------------------------------------------------------
# Istio EnvoyFilter for MCP routes: envoy-mcp.yaml's Wasm filter, `allow_on_headers_stop_iteration`
# included, which a WasmPlugin cannot set.

def tessera_patch(envoyfilter: dict) -> dict:
    """The EnvoyFilter's one patch: the one that inserts Tessera's Wasm filter."""
    [cp] = envoyfilter["spec"]["configPatches"]
    return cp


def wasm_http_filters(bootstrap: dict) -> list[tuple[list, int]]:
    """(http_filters list, index) of every Wasm HTTP filter of a bootstrap."""
    found = []
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                http_filters = f.get("typed_config", {}).get("http_filters", [])
                found += [(http_filters, i) for i, h in enumerate(http_filters)
                          if h.get("typed_config", {}).get("@type") == envoy_config.WASM_FILTER]
    return found


def test_istio_envoyfilter_inserts_tessera_first_in_the_gateway_fail_closed_with_the_mcp_flag():
    doc = envoy_config.load_yaml(ENVOYFILTER_EXAMPLE)
    assert doc["apiVersion"] == "networking.istio.io/v1alpha3" and doc["kind"] == "EnvoyFilter"
    # The same gateway as the WasmPlugin example: the file says which of the two to use there.
    wasmplugin = envoy_config.load_yaml(REPO_ROOT / "envoy-examples/istio-wasmplugin.yaml")
    assert doc["metadata"]["namespace"] == wasmplugin["metadata"]["namespace"] == "istio-ingress"
    assert doc["spec"]["workloadSelector"]["labels"] == wasmplugin["spec"]["selector"]["matchLabels"] \
        == {"istio": "ingressgateway"}
    cp = tessera_patch(doc)
    assert cp["applyTo"] == "HTTP_FILTER" and cp["match"]["context"] == "GATEWAY"
    assert cp["match"]["listener"]["filterChain"]["filter"]["name"] == \
        "envoy.filters.network.http_connection_manager"
    # Applied whatever Istio filters the gateway has; INSERT_BEFORE a filter that is not there
    # would insert nothing, and the gateway would forward without Tessera.
    assert cp["patch"]["operation"] == "INSERT_FIRST"
    typed_config = cp["patch"]["value"]["typed_config"]
    assert typed_config["@type"] == envoy_config.WASM_FILTER
    plugin = typed_config["config"]
    assert plugin["failure_policy"] == "FAIL_CLOSED" and plugin.get("fail_open", False) is False
    assert plugin["allow_on_headers_stop_iteration"] is True
    assert plugin["vm_config"]["runtime"] == "envoy.wasm.runtime.v8"
    assert plugin["vm_config"]["code"] == {"local": {"filename": "/var/local/wasm/tessera_plugin.wasm"}}


def test_istio_envoyfilter_is_the_mcp_example_filter_but_for_the_module_path():
    envoyfilter, bootstrap = envoy_config.rendered(ENVOYFILTER_EXAMPLE), envoy_config.rendered(MCP_EXAMPLE)
    cfg = envoy_config.get_plugin_config(envoyfilter)
    assert "mcp.cedar" in cfg["policies"], "placeholders not expanded"
    assert cfg == envoy_config.get_plugin_config(bootstrap)
    [ours] = envoy_config.wasm_plugin_configs(envoyfilter)
    [theirs] = envoy_config.wasm_plugin_configs(bootstrap)
    for plugin in (ours, theirs):
        plugin["vm_config"]["code"]["local"]["filename"] = "tessera_plugin.wasm"
    assert ours == theirs


def test_envoy_validate_accepts_the_envoyfilter_wasm_filter_in_the_mcp_bootstrap(envoy_bin, wasm_path):
    tessera = tessera_patch(envoy_config.rendered(ENVOYFILTER_EXAMPLE))["patch"]["value"]
    bootstrap = envoy_config.rendered(MCP_EXAMPLE)
    [(http_filters, index)] = wasm_http_filters(bootstrap)
    assert index == 0, "envoy-mcp.yaml's Wasm filter is first, where INSERT_FIRST puts it"
    http_filters[index] = tessera
    envoy_config.patch(bootstrap, wasm_path=wasm_path)
    r = envoy_validate(envoy_bin, bootstrap, ENVOYFILTER_EXAMPLE.name)
    assert r.returncode == 0, f"envoy --mode validate rejected the EnvoyFilter's filter:\n{r.stdout}\n{r.stderr}"

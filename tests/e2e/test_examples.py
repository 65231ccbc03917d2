"""The shipped examples in envoy-examples/ are valid and agree with each other."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import envoy_config
from conftest import ARTIFACTS, REPO_ROOT

# Envoy bootstraps only: the Istio WasmPlugin is checked by its own test below.
EXAMPLES = [p for p in sorted((REPO_ROOT / "envoy-examples").glob("*.yaml"))
            if envoy_config.is_envoy_bootstrap(envoy_config.load_yaml(p))]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_envoy_validate_accepts_example(example: Path, request):
    envoy_bin = request.getfixturevalue("envoy_bin")
    wasm_path = request.getfixturevalue("wasm_path")
    expanded = envoy_config.rendered(example)
    # `--mode validate` loads the module named in the config, so point it at the one under test.
    envoy_config.patch(expanded, wasm_path=wasm_path)
    out = envoy_config.dump_yaml(expanded, ARTIFACTS / f"validate-{example.name}")
    r = subprocess.run([str(envoy_bin), "--mode", "validate", "-c", str(out), "--disable-hot-restart",
                        "-l", "warning"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"envoy --mode validate rejected {example.name}:\n{r.stdout}\n{r.stderr}"


def test_every_envoy_example_is_validated():
    assert {p.name for p in EXAMPLES} >= {"envoy-http.yaml", "envoy-mcp.yaml"}


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

"""A broken plugin configuration never lets a request through (DESIGN.md: fail closed everywhere)."""
from __future__ import annotations

import copy

import httpx
import pytest

from conftest import envoy_with_plugin_config, tail
from helpers import agent, user


def _bad_policy_syntax(cfg):
    cfg["policies"]["broken.cedar"] = "permit(principal, action, resource) when { principal == ;\n"
    return cfg


def _issuer_without_audiences(cfg):
    del cfg["issuers"][0]["audiences"]
    return cfg


def _oct_key_in_jwks(cfg):
    cfg["issuers"][1]["jwks"]["keys"].append({"kty": "oct", "k": "c2VjcmV0", "kid": "oct-1", "alg": "HS256"})
    return cfg


def _unknown_schema_entity(cfg):
    cfg["policies"]["broken.cedar"] = "permit(principal is NoSuchType, action, resource);\n"
    return cfg


BROKEN = {
    "policy_syntax_error": _bad_policy_syntax,
    "issuer_without_audiences": _issuer_without_audiences,
    "oct_key_in_jwks": _oct_key_in_jwks,
    "policy_not_valid_against_schema": _unknown_schema_entity,
}


# What the plugin's error must name (DESIGN.md: "every error names the field and what is wrong").
# A policy error names the document it is in (the examples bundle policies/*.cedar by file name).
NAMED_FIELD = {"policy_syntax_error": "broken.cedar", "issuer_without_audiences": "audiences",
               "oct_key_in_jwks": "kty", "policy_not_valid_against_schema": "broken.cedar"}


@pytest.fixture(scope="module")
def broken_envoys(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo):
    """One Envoy per broken config, all started at once (V8 compiles the module in each)."""
    started = {case: envoy_with_plugin_config(envoy_bin, wasm_path, example_bootstrap, echo,
                                              breaker(copy.deepcopy(plugin_config)), f"broken-{case}",
                                              attach_log=False)
               for case, breaker in BROKEN.items()}
    yield started
    for e in started.values():
        e.stop()


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_plugin_config_is_refused_or_lets_nothing_through(broken_envoys, echo, case):
    e = broken_envoys[case]
    if not e.wait_ready():
        assert e.proc.returncode != 0, f"Envoy exited with status 0 on a broken config:\n{tail(e.log)}"
        # Envoy refused the config: nothing can get through. The operator is told what is wrong.
        if NAMED_FIELD[case]:
            assert NAMED_FIELD[case] in e.log.read_text(), f"log does not name `{NAMED_FIELD[case]}`:\n{tail(e.log)}"
        return
    before = echo.count()
    attempts = [("GET", "/healthz", None), ("GET", "/orders/1", agent("orders:read")),
                ("DELETE", "/admin/x", user("root", ["admins"]))]
    statuses = []
    with httpx.Client(base_url=e.url, timeout=10) as client:
        for method, path, t in attempts:
            headers = {"authorization": f"Bearer {t}"} if t else {}
            statuses.append((method, path, client.request(method, path, headers=headers).status_code))
    log = tail(e.log)
    assert all(not 200 <= s < 300 for _, _, s in statuses), f"2xx with a broken config: {statuses}\n{log}"
    assert echo.count() == before, f"the upstream saw requests with a broken config: {statuses}\n{log}"
    assert all(s >= 500 for _, _, s in statuses), f"README: config invalid -> 503/5xx, got {statuses}\n{log}"

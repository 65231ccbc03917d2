"""Decisions are counted in Envoy's stats (README.md: the tessera.decisions.* counters)."""
from __future__ import annotations

from helpers import agent, upstream_saw

KINDS = ["allow", "deny", "unauthenticated", "public"]


def _counter(stats: dict[str, int], kind: str) -> int | None:
    for name, value in stats.items():
        if name.endswith(f"tessera.decisions.{kind}"):
            return value
    return None


def test_decision_counters_move_in_admin_stats(envoy, api):
    before = envoy.stats("tessera")
    upstream_saw(api.get("/orders/1", agent("orders:read")))          # allow
    assert api.request("DELETE", "/orders/1", agent("orders:write")).status_code == 403   # deny
    assert api.get("/orders/1").status_code == 401                     # unauthenticated
    assert api.get("/healthz").status_code == 200                      # public
    after = envoy.stats("tessera")
    for kind in KINDS:
        a = _counter(after, kind)
        assert a is not None, f"no tessera.decisions.{kind} in /stats?filter=tessera: {sorted(after)}"
        assert a >= (_counter(before, kind) or 0) + 1, f"tessera.decisions.{kind} did not move: {before} -> {after}"

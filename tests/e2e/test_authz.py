"""Routes and Cedar decisions as a client sees them (policies/ facts in the suite's brief)."""
from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import pytest

from helpers import agent, json_body, upstream_saw, user


def assert_forbidden(resp, policies: list[str]) -> dict:
    assert resp.status_code == 403, f"expected 403, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = json_body(resp)
    assert body.get("error") == "forbidden", body
    assert sorted(body.get("policies", None) or []) == sorted(policies) and isinstance(body["policies"], list), body
    assert body.get("request_id"), body
    return body


def test_agent_with_read_scope_can_get_orders(api):
    upstream_saw(api.get("/orders", agent("orders:read")))


def test_agent_without_scope_gets_403_forbidden_with_no_policies(api, echo):
    before = echo.count()
    assert_forbidden(api.get("/orders", agent(scope=None)), [])
    assert echo.count() == before


@pytest.mark.parametrize("method,path", [("POST", "/orders"), ("PUT", "/orders/1"), ("PATCH", "/orders/1")])
def test_agent_with_write_scope_can_change_orders(api, method, path):
    saw = upstream_saw(api.request(method, path, agent("orders:write"), json={"qty": 1}))
    assert saw["method"] == method


def test_agent_with_only_read_scope_cannot_post_orders(api):
    assert_forbidden(api.request("POST", "/orders", agent("orders:read"), json={}), [])


def test_agent_delete_is_forbidden_by_agents_never_delete_whatever_its_scopes(api, echo):
    before = echo.count()
    assert_forbidden(api.request("DELETE", "/orders/1", agent("orders:read orders:write")),
                     ["agents-never-delete"])
    assert echo.count() == before


def test_agent_is_forbidden_on_admin_route_by_admin_api_people_only(api):
    assert_forbidden(api.get("/admin/x", agent("orders:read orders:write")), ["admin-api-people-only"])


def test_admin_user_can_delete_on_admin_route(api):
    saw = upstream_saw(api.request("DELETE", "/admin/x", user("root", ["admins"])))
    assert saw["headers"].get("x-tessera-principal") == 'User::"corp|root"'


def test_any_user_can_get_admin_route(api):
    upstream_saw(api.get("/admin/x", user("alice", ["staff"])))


def test_non_admin_user_cannot_delete(api):
    assert_forbidden(api.request("DELETE", "/admin/x", user("alice", ["staff"])), [])


@pytest.mark.parametrize("path", ["/nowhere", "/ordersx", "/", "/orders-archive/1"])
def test_unrouted_path_gets_403_and_never_reaches_upstream(api, echo, path):
    before = echo.count()
    r = api.get(path, user("root", ["admins"]))
    assert r.status_code == 403, f"{path}: {r.status_code} {r.text}"
    assert "no route" in r.text, f"README: no match -> 403 `no route`; got {r.text}"
    assert echo.count() == before


def test_route_prefix_matches_on_segment_boundary_and_ignores_query(api):
    upstream_saw(api.get("/orders?x=1", agent("orders:read")))
    upstream_saw(api.get("/orders/1/items", agent("orders:read")))


@pytest.mark.parametrize("raw_path", ["/healthz/../orders/1", "//orders/1", "/./orders/1",
                                      "/healthz/%2e%2e/orders/1", "/healthz%2F..%2Forders%2F1"])
def test_path_tricks_do_not_reach_a_protected_route_without_token(api, echo, raw_path):
    """Envoy normalises the path (normalize_path, merge_slashes, escaped slashes) before the filter."""
    before = echo.count()
    u = urlsplit(api.http.base_url.__str__())
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", raw_path)  # sent verbatim, no client-side normalisation
        resp = conn.getresponse()
        status, body = resp.status, resp.read()
    finally:
        conn.close()
    assert not 200 <= status < 300, f"{raw_path} -> {status} {body!r}"
    assert echo.count() == before, f"{raw_path} reached the upstream without a token"

"""Helpers shared by the end-to-end tests: tokens, response checks, requests on fresh connections
and waiting for a condition."""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))
import mint as minting  # noqa: E402


def token(iss: str = minting.AGENTS, sub: str = "agent-7", alg: str = "ES256", *,
          scope: str | None = None, groups: list[str] | None = None, kid: Any = None,
          headers_extra: dict | None = None, key: Any = None, **claims) -> str:
    """A valid token unless the arguments say otherwise (aud orders-api, iat now, exp now+300);
    `key`: another signing key than the demo key of `alg` (see mint.mint)."""
    c: dict[str, Any] = {"iss": iss, "sub": sub, "aud": minting.AUDIENCE, **claims}
    if scope is not None:
        c["scope"] = scope
    if groups is not None:
        c["groups"] = groups
    return minting.mint(alg, c, kid=kid, headers_extra=headers_extra, key=key)


def agent(scope: str | None = "orders:read", sub: str = "agent-7", alg: str = "ES256", **kw) -> str:
    return token(minting.AGENTS, sub, alg, scope=scope, **kw)


def user(sub: str = "alice", groups: list[str] | None = None, alg: str = "ES256", **kw) -> str:
    return token(minting.IDP, sub, alg, groups=groups if groups is not None else ["staff"], **kw)


def upstream_saw(resp: httpx.Response) -> dict:
    """The echo body: what the upstream received (method, path, headers)."""
    assert resp.status_code == 200, f"expected 200 from upstream, got {resp.status_code}: {resp.text}"
    body = resp.json()
    assert "headers" in body, f"not an echo response: {resp.text}"
    return body


def json_body(resp: httpx.Response) -> dict:
    try:
        return resp.json()
    except json.JSONDecodeError:
        pytest.fail(f"{resp.status_code} body is not JSON: {resp.text!r} "
                    f"(content-type {resp.headers.get('content-type')!r})", pytrace=False)
        raise


def www_authenticate_params(value: str) -> dict[str, str]:
    """RFC 6750 auth-params of a `Bearer k="v", …` challenge."""
    return {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)="((?:[^"\\]|\\.)*)"', value)}


_AUTH_ITEM = re.compile(r'\s*,?\s*([A-Za-z][\w!#$%&\'*+.^`|~-]*)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*))?')


def challenges(resp: httpx.Response) -> dict[str, dict[str, str]]:
    """Every challenge of every `www-authenticate` header (RFC 9110 §11.6.1), scheme (lower-case) →
    auth-params (names lower-case, quoted values unquoted): `DPoP error="x", Bearer` →
    {"dpop": {"error": "x"}, "bearer": {}}."""
    out: dict[str, dict[str, str]] = {}
    for value in resp.headers.get_list("www-authenticate"):
        current: dict[str, str] | None = None
        for m in _AUTH_ITEM.finditer(value):
            name, val = m.group(1), m.group(2)
            if val is None:
                current = out.setdefault(name.lower(), {})
            elif current is not None:
                current[name.lower()] = re.sub(r'\\(.)', r'\1', val[1:-1]) if val.startswith('"') else val
    return out


def assert_invalid_token(resp: httpx.Response, *reason_words: str) -> None:
    """401, `www-authenticate: Bearer error="invalid_token", error_description="…"` and the JSON
    body, with error_description containing one of reason_words (case-insensitive)."""
    assert resp.status_code == 401, f"expected 401, got {resp.status_code}: {resp.text}"
    challenge = resp.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer"), f"www-authenticate: {challenge!r}"
    params = www_authenticate_params(challenge)
    assert params.get("error") == "invalid_token", f"www-authenticate: {challenge!r}"
    body = json_body(resp)
    assert body.get("error") == "invalid_token", body
    assert body.get("request_id"), f"no request_id in {body}"
    for description in (params.get("error_description", ""), body.get("error_description", "")):
        assert any(w.lower() in description.lower() for w in reason_words), (
            f"reason {description!r} should mention one of {reason_words}; challenge {challenge!r}, body {body}")


# ---------------------------------------------------------------------------------------------
# Several workers: requests each on a new connection, and conditions that hold after a while.

T = TypeVar("T")


def bearer(t: str) -> dict[str, str]:
    return {"authorization": f"Bearer {t}"}


def on_fresh_connections(base_url: str, t: str | None, n: int, path: str = "/orders/1") -> list[httpx.Response]:
    """`n` GETs of `path`, each on a connection of its own (so that Envoy spreads them over its workers)."""
    out = []
    for _ in range(n):
        with httpx.Client(base_url=base_url, timeout=10) as client:
            out.append(client.get(path, headers=bearer(t) if t else {}))
    return out


def statuses(base_url: str, t: str | None, n: int = 6, path: str = "/orders/1") -> list[int]:
    """The status codes of on_fresh_connections."""
    return [r.status_code for r in on_fresh_connections(base_url, t, n, path)]


def eventually(probe: Callable[[], T], ok: Callable[[T], bool], timeout_s: float, what: str,
               interval_s: float = 0.2) -> T:
    """Call `probe` until `ok` holds for its result (returned), or fail after `timeout_s` with the last
    result. The deadline only bounds the wait: how long it took is never asserted."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = probe()
        if ok(last):
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still not the case after {timeout_s} s; last: {last!r}", pytrace=False)
        time.sleep(interval_s)


def all_(status: int) -> Callable[[list[int]], bool]:
    """A predicate for eventually(): every status code of a list is `status`."""
    return lambda codes: bool(codes) and all(c == status for c in codes)

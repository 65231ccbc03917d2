"""Revocation through a real Envoy with two worker threads: OAuth Token Status Lists
(draft-ietf-oauth-status-list), Security Event Tokens pushed to the filter's receiver (RFC 8935)
and polled from a transmitter (RFC 8936).

One Envoy for the module: envoy-examples/envoy-http.yaml with its policies, routes and issuers,
plus the `revocation` section of the configuration reference, whose status-list source (cluster
`status`) and transmitter (cluster `ssf`) are both tests/peers/idp.py. The status-list signer's
and the transmitter's keys are made at run time; lists and SETs are signed by
tests/peers/jose_kit.py, access tokens by tests/peers/mint.py (the demo agents issuer).
"""
from __future__ import annotations

import copy
import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import ARTIFACTS, Idp, envoy_with_plugin_config, measured, tail
from helpers import (agent, all_, assert_invalid_token, bearer, eventually, json_body, minting,
                     on_fresh_connections, statuses, upstream_saw)
from jose_kit import (CREDENTIAL_CHANGE, INVALID, SESSION_REVOKED, SUSPENDED, SigningKey, complex_subject,
                      encode_lst, event, iss_sub, jwks, jwt_id, revoked, security_event_token, status_claim,
                      status_list_token, tessera_actor, tessera_client, tessera_task)

CONCURRENCY = 2
STATUS_ISS = "https://status.example"
LISTS = f"{STATUS_ISS}/lists/"
STATUS_KEY = SigningKey.generate("ES256", "status-1")
SSF_ISS = "https://ssf.example"
SSF_AUD = "https://tessera.example/events"
SSF_KEY = SigningKey.generate("EdDSA", "ssf-1")
RECEIVER = "/.well-known/tessera/events"
SECEVENT = "application/secevent+jwt"
STATUSLIST = "application/statuslist+jwt"
MAX_EVENTS = 2

REVOCATION = {
    "status_list": {
        "signers": [{"issuer": STATUS_ISS, "jwks": jwks(STATUS_KEY)}],
        "sources": [{"uri_prefix": LISTS, "cluster": "status", "authority": "status.example"}],
        "timeout_ms": 1000,
        "default_ttl_s": 2,
        # Long enough that a slow machine's requests after the list's ttl still fall inside it
        # (each refetch of a list whose server is down costs a request up to timeout_ms).
        "max_stale_s": 5,
        "fail_open": False,
    },
    "events": {
        "issuer": SSF_ISS,
        "audiences": [SSF_AUD],
        "jwks": jwks(SSF_KEY),
        "receiver_path": RECEIVER,
        "poll": {"cluster": "ssf", "path": "/poll", "authority": "ssf.example", "interval_s": 1,
                 "timeout_ms": 1000, "max_events": MAX_EVENTS},
    },
    "retain_s": 3600,
    "max_entries": 1000,
}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def idp():
    peer = Idp(ARTIFACTS / "idp-revocation.log")
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def gateway(envoy_bin, wasm_path, example_bootstrap, plugin_config, echo, idp):
    cfg = copy.deepcopy(plugin_config)
    cfg["revocation"] = REVOCATION
    e = envoy_with_plugin_config(envoy_bin, wasm_path, example_bootstrap, echo, cfg, "envoy-revocation",
                                 concurrency=CONCURRENCY, clusters={"status": idp.port, "ssf": idp.port})
    try:
        if not e.wait_ready():
            pytest.fail(f"Envoy exited (code {e.proc.returncode}):\n{tail(e.log)}", pytrace=False)
        yield e
    finally:
        e.stop()


# ---------------------------------------------------------------------------------------------
# Status lists

def serve_list(idp: Idp, name: str, statuses_: list[int], bits: int = 1, key: SigningKey = STATUS_KEY,
               **claims) -> str:
    """Sign a Status List Token for LISTS + name, serve it, return its uri."""
    uri = LISTS + name
    idp.put_doc(urlsplit(uri).path, status_list_token(key, STATUS_ISS, uri, statuses_, bits, **claims),
                content_type=STATUSLIST)
    return uri


def with_status(uri: str, idx: int, sub: str = "agent-status") -> str:
    return agent(sub=sub, status=status_claim(uri, idx))


# A list of 1024 entries: VALID but at 201 (INVALID), 202 (SUSPENDED) and 203 (3) where bits allow.
LENGTH = 1024


def entries(bits: int) -> list[int]:
    out = [0] * LENGTH
    out[201] = INVALID
    if bits >= 2:
        out[202], out[203] = SUSPENDED, 3
    return out


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_a_status_list_decides_per_index(gateway, idp, echo, bits):
    uri = serve_list(idp, f"bits-{bits}", entries(bits), bits, ttl=300)
    upstream_saw(on_fresh_connections(gateway.url, with_status(uri, 200), 1)[0])
    assert statuses(gateway.url, with_status(uri, 200)) == [200] * 6
    before = echo.count()
    assert_invalid_token(on_fresh_connections(gateway.url, with_status(uri, 201), 1)[0], "revoked")
    if bits >= 2:
        assert_invalid_token(on_fresh_connections(gateway.url, with_status(uri, 202), 1)[0], "suspended")
        assert_invalid_token(on_fresh_connections(gateway.url, with_status(uri, 203), 1)[0], "status 3")
    for idx in (LENGTH, 10 * LENGTH):
        assert_invalid_token(on_fresh_connections(gateway.url, with_status(uri, idx), 1)[0], "out of range")
    assert echo.count() == before
    fetch = idp.requests(urlsplit(uri).path)[0]
    assert (fetch["method"], fetch["accept"], fetch["host"]) == ("GET", STATUSLIST, "status.example"), fetch


@pytest.mark.parametrize("uri", [
    "https://elsewhere.example/lists/1",
    "https://status.example/lists-of-others/1",    # shares the text of the prefix, not the prefix
    "http://status.example/lists/1",
])
def test_a_status_list_outside_the_configured_prefixes_is_not_trusted(gateway, idp, uri):
    r = on_fresh_connections(gateway.url, with_status(uri, 0), 1)[0]
    assert_invalid_token(r, "not trusted")
    assert idp.hits(urlsplit(uri).path) == 0, "an untrusted list was fetched"


# Lists that must not be used: name → the document served for uri.
UNUSABLE = {
    "signed_by_another_key": lambda uri: status_list_token(STATUS_KEY.impostor(), STATUS_ISS, uri, [0] * 16),
    "signed_by_an_unknown_kid": lambda uri: status_list_token(SigningKey.generate("ES256", "status-x"),
                                                              STATUS_ISS, uri, [0] * 16),
    "typ_jwt": lambda uri: status_list_token(STATUS_KEY, STATUS_ISS, uri, [0] * 16, typ="JWT"),
    "iss_not_the_signer": lambda uri: status_list_token(STATUS_KEY, "https://other.example", uri, [0] * 16),
    "sub_not_its_uri": lambda uri: status_list_token(STATUS_KEY, STATUS_ISS, uri, [0] * 16, sub=LISTS + "other"),
    "tampered": lambda uri: minting.tampered(status_list_token(STATUS_KEY, STATUS_ISS, uri, [1] * 16),
                                             {"status_list": {"bits": 1, "lst": encode_lst([0] * 16, 1)}}),
    "bits_3": lambda uri: status_list_token(STATUS_KEY, STATUS_ISS, uri, [],
                                            status_list={"bits": 3, "lst": encode_lst([0] * 16, 1)}),
    "lst_not_zlib": lambda uri: status_list_token(STATUS_KEY, STATUS_ISS, uri, [], 1, lst=minting.b64u(b"raw")),
    "not_a_jws": lambda uri: "this is not a status list",
}


@pytest.mark.parametrize("kind", list(UNUSABLE))
def test_a_status_list_that_cannot_be_used_fails_closed_with_503(gateway, idp, echo, kind):
    uri = LISTS + f"unusable-{kind}"
    idp.put_doc(urlsplit(uri).path, UNUSABLE[kind](uri), content_type=STATUSLIST)
    before = echo.count()
    assert statuses(gateway.url, with_status(uri, 0)) == [503] * 6
    assert echo.count() == before


def test_a_list_changed_at_the_server_is_applied_once_its_ttl_expires(gateway, idp):
    t = with_status(serve_list(idp, "changing", [0] * 64, ttl=1), 7)
    assert statuses(gateway.url, t) == [200] * 6

    def republished() -> list[int]:
        # The server re-issues its list (a fresh iat) as a status list server does: the test holds
        # whether Tessera counts the ttl from the list's iat or from its fetch.
        serve_list(idp, "changing", [0] * 7 + [INVALID] + [0] * 56, ttl=1)
        return statuses(gateway.url, t)

    eventually(republished, all_(401), 15, "the token refused after the list changed")
    assert_invalid_token(on_fresh_connections(gateway.url, t, 1)[0], "revoked")


def test_a_list_server_that_is_down_with_nothing_cached_gives_503(gateway, idp, echo):
    uri = serve_list(idp, "down/1", [0] * 16)
    idp.fault("/lists/down/", down=True)
    try:
        before = echo.count()
        assert statuses(gateway.url, with_status(uri, 0)) == [503] * 6
        assert echo.count() == before
    finally:
        idp.fault("/lists/down/", down=False)


def test_a_list_fetch_slower_than_timeout_ms_gives_503(gateway, idp):
    uri = serve_list(idp, "slow/1", [0] * 16)
    idp.fault("/lists/slow/", delay_s=3)
    try:
        assert statuses(gateway.url, with_status(uri, 0), 2) == [503, 503]
    finally:
        idp.fault("/lists/slow/", delay_s=0)


def test_a_cached_list_serves_past_its_ttl_for_max_stale_then_503_then_recovers(gateway, idp):
    t = with_status(serve_list(idp, "stale/1", [0] * 16, ttl=1), 3)
    assert statuses(gateway.url, t) == [200] * 6
    idp.fault("/lists/stale/", down=True)
    try:
        # fetched at T: fresh until T + ttl (1), usable until T + 1 + max_stale_s (5)
        assert statuses(gateway.url, t, 2) == [200, 200], "a cached list was dropped as soon as its server went down"
        eventually(lambda: statuses(gateway.url, t), all_(503), 15, "503 once the list is past max_stale_s")
    finally:
        idp.fault("/lists/stale/", down=False)

    def republished() -> list[int]:  # back, the server re-issues its list (a fresh iat)
        serve_list(idp, "stale/1", [0] * 16, ttl=1)
        return statuses(gateway.url, t)

    eventually(republished, all_(200), 15, "accepted again once the list server is back")


# ---------------------------------------------------------------------------------------------
# Push (RFC 8935)

def set_of(events: dict | None, key: SigningKey = SSF_KEY, **claims) -> str:
    return security_event_token(key, SSF_ISS, SSF_AUD, events, **claims)


def push(gateway, body: str, content_type: str = SECEVENT) -> httpx.Response:
    return httpx.post(gateway.url + RECEIVER, content=body, timeout=5,
                      headers={"content-type": content_type, "accept": "application/json"})


def assert_accepted(r: httpx.Response) -> None:
    assert r.status_code == 202, f"expected 202, got {r.status_code}: {r.text}"
    assert r.content == b"", f"a 202 carries no body: {r.text!r}"


def assert_refused_as_revoked(gateway, t: str, n: int = 6) -> None:
    for r in on_fresh_connections(gateway.url, t, n):
        assert_invalid_token(r, "revoked")


def test_a_pushed_jwt_id_revocation_refuses_that_token_and_no_other(gateway, echo):
    jti = new_id("jti")
    doomed, other = agent(sub="agent-jti", jti=jti), agent(sub="agent-jti", jti=new_id("jti"))
    assert statuses(gateway.url, doomed) == [200] * 6
    before = echo.count()
    assert_accepted(push(gateway, set_of(revoked(jwt_id(minting.AGENTS, jti)))))
    assert echo.count() == before, "the SET reached the upstream"
    assert_refused_as_revoked(gateway, doomed)
    assert statuses(gateway.url, other) == [200] * 6, "another token of the same agent was refused"


def test_a_pushed_revocation_holds_on_every_worker_at_once(gateway):
    """Connections opened (and the token verified and cached) before the push, and fresh ones after:
    every request after the 202 is refused; the time from the 202 to the first refusal is reported."""
    jti = new_id("jti")
    t = agent(sub="agent-fanout", jti=jti)
    reused = [httpx.Client(base_url=gateway.url, timeout=10) for _ in range(8)]
    try:
        for c in reused:
            assert c.get("/orders/1", headers=bearer(t)).status_code == 200
        workers_before = gateway.connections_per_worker()
        r = push(gateway, set_of(revoked(jwt_id(minting.AGENTS, jti))))
        t202 = time.monotonic()
        assert_accepted(r)
        seen: list[tuple[float, int]] = []
        for c in reused:
            code = c.get("/orders/1", headers=bearer(t)).status_code
            seen.append(((time.monotonic() - t202) * 1000, code))
        for _ in range(32):
            code = on_fresh_connections(gateway.url, t, 1)[0].status_code
            seen.append(((time.monotonic() - t202) * 1000, code))
    finally:
        for c in reused:
            c.close()
    workers = {w: n - workers_before.get(w, 0) for w, n in gateway.connections_per_worker().items()}
    refused = [ms for ms, code in seen if code == 401]
    first = f"{refused[0]:.1f} ms" if refused else "never"
    measured(f"push revocation (--concurrency {CONCURRENCY}): first refusal {first} after the 202; "
             f"{len(refused)}/{len(seen)} requests refused (8 connections opened before, 32 fresh), "
             f"the last answered {seen[-1][0]:.1f} ms after the 202; new connections per worker {workers}")
    assert len(refused) == len(seen), f"(ms after the 202, status) of the requests: {seen}"
    assert len([w for w, n in workers.items() if n > 0]) == CONCURRENCY, \
        f"the fresh connections did not reach every worker ({workers}): the test proved less than it says"


def test_a_pushed_actor_revocation_cuts_off_that_agent_wherever_it_acts(gateway):
    acting = agent(sub="alice", act=minting.act_chain(["planner", "mailer"]))     # mailer is the current actor
    earlier = agent(sub="alice", act=minting.act_chain(["mailer", "executor"]))   # mailer earlier in the chain
    itself = agent(sub="mailer")
    bystander = agent(sub="alice", act=minting.act_chain(["planner", "executor"]))
    for t in (acting, earlier, itself, bystander):
        assert statuses(gateway.url, t, 2) == [200, 200]
    assert_accepted(push(gateway, set_of(revoked(tessera_actor("mailer")))))
    for t in (acting, earlier, itself):
        assert_refused_as_revoked(gateway, t, 3)
    assert statuses(gateway.url, bystander) == [200] * 6


def test_a_pushed_task_revocation_ends_that_task_only(gateway):
    task = new_id("task")
    in_task, other_task = agent(sub="agent-task", task_id=task), agent(sub="agent-task", task_id=new_id("task"))
    assert statuses(gateway.url, in_task, 2) == [200, 200]
    assert_accepted(push(gateway, set_of(revoked(tessera_task(task, iss=minting.AGENTS)))))
    assert_refused_as_revoked(gateway, in_task)
    assert statuses(gateway.url, other_task) == [200] * 6


@pytest.mark.parametrize("claim", ["client_id", "azp"])
def test_a_pushed_client_revocation_refuses_that_clients_tokens(gateway, claim):
    client = new_id("client")
    doomed, other = agent(sub="agent-client", **{claim: client}), agent(sub="agent-client", **{claim: new_id("client")})
    assert statuses(gateway.url, doomed, 2) == [200, 200]
    assert_accepted(push(gateway, set_of(revoked(tessera_client(client)))))
    assert_refused_as_revoked(gateway, doomed)
    assert statuses(gateway.url, other) == [200] * 6


def test_a_pushed_iss_sub_revocation_refuses_that_subjects_tokens(gateway):
    sub = new_id("agent")
    doomed, other = agent(sub=sub), agent(sub=new_id("agent"))
    assert_accepted(push(gateway, set_of(revoked(iss_sub(minting.AGENTS, sub)))))
    assert_refused_as_revoked(gateway, doomed)
    assert statuses(gateway.url, other) == [200] * 6


def test_caep_session_revoked_refuses_tokens_issued_before_the_event_only(gateway):
    sub, now = new_id("agent"), int(time.time())
    before_event = agent(sub=sub, iat=now - 20)
    after_event = agent(sub=sub, iat=now)
    s = set_of(event(SESSION_REVOKED, iss_sub(minting.AGENTS, sub), event_timestamp=now - 10))
    assert_accepted(push(gateway, s))
    assert_refused_as_revoked(gateway, before_event)
    assert statuses(gateway.url, after_event) == [200] * 6, "a token issued after the event was refused"


@pytest.mark.parametrize("form", ["ssf_1_0_format_complex", "without_format"])
def test_caep_credential_change_with_an_ssf_sub_id_complex_subject(gateway, form):
    sub, now = new_id("agent"), int(time.time())
    before_event, after_event = agent(sub=sub, iat=now - 20), agent(sub=sub, iat=now)
    subject = complex_subject(iss_sub(minting.AGENTS, sub))
    if form == "without_format":   # the complex subjects of CAEP drafts before SSF 1.0
        del subject["format"]
    s = set_of(event(CREDENTIAL_CHANGE, event_timestamp=now - 10, change_type="revoke", credential_type="password"),
               sub_id=subject)
    assert_accepted(push(gateway, s))
    assert_refused_as_revoked(gateway, before_event)
    assert statuses(gateway.url, after_event) == [200] * 6


def test_an_event_type_tessera_does_not_know_is_accepted_and_ignored(gateway):
    sub = new_id("agent")
    t = agent(sub=sub)
    s = set_of(event("https://schemas.openid.net/secevent/caep/event-type/assurance-level-change",
                     iss_sub(minting.AGENTS, sub), current_level="nist-aal1"))
    assert_accepted(push(gateway, s))
    assert statuses(gateway.url, t) == [200] * 6


# Bad SETs: name → (SET text given the jti of a token it tries to revoke, RFC 8935 `err`).
BAD_SETS = {
    "not_a_jws": (lambda jti: "not a security event token", "invalid_request"),
    "typ_jwt": (lambda jti: set_of(revoked(jwt_id(minting.AGENTS, jti)), typ="JWT"), "invalid_request"),
    "no_events": (lambda jti: set_of(None), "invalid_request"),
    "no_jti": (lambda jti: set_of(revoked(jwt_id(minting.AGENTS, jti)), jti=None), "invalid_request"),
    "no_iat": (lambda jti: set_of(revoked(jwt_id(minting.AGENTS, jti)), iat=None), "invalid_request"),
    "known_event_with_an_unusable_subject": (
        lambda jti: set_of(revoked({"format": "email", "email": "agent@example.com"})), "invalid_request"),
    "jwt_id_subject_without_jti": (lambda jti: set_of(revoked({"format": "jwt_id", "iss": minting.AGENTS})),
                                   "invalid_request"),
    "unknown_kid": (lambda jti: set_of(revoked(jwt_id(minting.AGENTS, jti)), key=SigningKey.generate("EdDSA", "ssf-x")),
                    "invalid_key"),
    "signed_by_another_key": (lambda jti: set_of(revoked(jwt_id(minting.AGENTS, jti)), key=SSF_KEY.impostor()),
                              "invalid_key"),
    "tampered": (lambda jti: minting.tampered(set_of(revoked(jwt_id(minting.AGENTS, "x"))),
                                              {"events": revoked(jwt_id(minting.AGENTS, jti))}), "invalid_key"),
    "wrong_issuer": (lambda jti: security_event_token(SSF_KEY, "https://other-ssf.example", SSF_AUD,
                                                      revoked(jwt_id(minting.AGENTS, jti))), "invalid_issuer"),
    "wrong_audience": (lambda jti: security_event_token(SSF_KEY, SSF_ISS, "https://other.example/events",
                                                        revoked(jwt_id(minting.AGENTS, jti))), "invalid_audience"),
}


@pytest.mark.parametrize("case", list(BAD_SETS))
def test_a_bad_set_is_refused_with_its_rfc8935_error_and_revokes_nothing(gateway, echo, case):
    make, err = BAD_SETS[case]
    jti = new_id("jti")
    t = agent(sub="agent-canary", jti=jti)
    before = echo.count()
    r = push(gateway, make(jti))
    assert r.status_code == 400, f"expected 400, got {r.status_code}: {r.text}"
    body = json_body(r)
    assert body.get("err") == err and isinstance(body.get("description"), str), body
    assert echo.count() == before, "the SET reached the upstream"
    assert statuses(gateway.url, t) == [200] * 6, "a refused SET revoked a token"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_the_receiver_answers_405_to_other_methods_and_never_reaches_the_upstream(gateway, echo, method):
    before = echo.count()
    r = httpx.request(method, gateway.url + RECEIVER, timeout=10)
    assert r.status_code == 405, f"{method} {RECEIVER}: {r.status_code} {r.text}"
    assert echo.count() == before


# ---------------------------------------------------------------------------------------------
# Poll (RFC 8936)

def test_polled_sets_are_applied_and_acknowledged(gateway, idp):
    jtis = [new_id("jti") for _ in range(MAX_EVENTS + 1)]   # more than one poll's worth
    tokens = [agent(sub="agent-polled", jti=j) for j in jtis]
    for t in tokens:
        assert statuses(gateway.url, t, 2) == [200, 200]
    set_ids = []
    for j in jtis:
        set_id = new_id("set")
        idp.enqueue(set_id, set_of(revoked(jwt_id(minting.AGENTS, j)), jti=set_id))
        set_ids.append(set_id)
    for t in tokens:
        eventually(lambda: statuses(gateway.url, t), all_(401), 15, "a token revoked by a polled SET refused")
        assert_invalid_token(on_fresh_connections(gateway.url, t, 1)[0], "revoked")
    state = eventually(idp.acks, lambda a: set(set_ids) <= set(a["acks"]), 10, "every polled SET acknowledged")
    assert not set(set_ids) & set(state["setErrs"]), state["setErrs"]
    polls = idp.requests("/poll")
    assert polls, "no poll reached the transmitter"
    for p in polls:
        assert (p["method"], p["host"]) == ("POST", "ssf.example"), p
        assert (p["content_type"] or "").startswith("application/json"), p
        assert p["body"].get("maxEvents") == MAX_EVENTS and p["body"].get("returnImmediately") is True, p


def test_a_polled_set_that_is_refused_is_reported_in_seterrs(gateway, idp):
    jti, set_id = new_id("jti"), new_id("set")
    t = agent(sub="agent-polled", jti=jti)
    idp.enqueue(set_id, security_event_token(SSF_KEY, SSF_ISS, "https://other.example/events",
                                             revoked(jwt_id(minting.AGENTS, jti)), jti=set_id))
    state = eventually(idp.acks, lambda a: set_id in a["setErrs"], 10, "the refused SET reported in setErrs")
    assert state["setErrs"][set_id].get("err") == "invalid_audience", state["setErrs"][set_id]
    assert set_id not in state["acks"]
    assert statuses(gateway.url, t) == [200] * 6, "a refused SET revoked a token"

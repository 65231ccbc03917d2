//! Revocation before expiry (issue 12), through the `.wasm` in the harness: security events
//! pushed to the filter (RFC 8935) and polled (RFC 8936), and OAuth Token Status Lists fetched
//! through a cluster (the test answers the fetches). SETs and lists are signed with jsonwebtoken
//! and the demo keys, independent of the filter's JOSE library.

use std::time::Duration;

use anyhow::{Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use tessera_harness::{Action, Harness};
use tessera_tests::signed::{
    revocation_config, revoke, set_token, status_list_token, EVENTS_PATH, LISTS, STATUS_SIGNER,
};
use tessera_tests::{bearer, harness_with, now_s, AGENTS, IDP};

/// The test configuration with the demo `revocation`, as `edit` changes it.
fn harness(edit: impl FnOnce(&mut Value)) -> Result<Harness> {
    let mut revocation = revocation_config()?;
    edit(&mut revocation);
    harness_with(|c| c["revocation"] = revocation)
}

fn set_with(typ: &str, kid: &str, claims: Value) -> Result<String> {
    set_token(typ, kid, &claims)
}

/// POSTs a SET to the receiver path: the reply's status and body.
fn push(h: &mut Harness, set: &str) -> Result<(u32, String)> {
    let ctx = h.new_http()?;
    let len = set.len().to_string();
    let headers = [
        (":method", "POST"),
        (":path", EVENTS_PATH),
        (":authority", "api.example.com"),
        ("content-type", "application/secevent+jwt"),
        ("content-length", len.as_str()),
    ];
    assert_eq!(h.request_headers(ctx, &headers, false)?, Action::Pause);
    h.request_body(ctx, set.as_bytes(), true)?;
    let reply = h.local_reply(ctx).context("the receiver always answers")?;
    assert!(!h.request_resumed(ctx), "never forwarded");
    Ok((reply.status, reply.body_text()))
}

fn get(h: &mut Harness, auth: &str) -> Result<Option<u32>> {
    Ok(tessera_tests::request(h, "GET", "/orders/1", Some(auth), &[])?.1)
}

fn agent_token(extra: Value) -> Result<String> {
    let mut c = json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read"});
    tessera_tests::merge_claims(&mut c, &extra);
    bearer(c)
}

#[test]
fn a_pushed_set_revokes_one_token_by_jti_and_spares_the_others() -> Result<()> {
    let mut h = harness(|_| {})?;
    let leaked = agent_token(json!({"jti": "leaked-1"}))?;
    let other = agent_token(json!({"jti": "fine-2"}))?;
    assert_eq!(get(&mut h, &leaked)?, None, "valid and now cached");
    let set = revoke(json!({"format": "jwt_id", "iss": AGENTS, "jti": "leaked-1"}))?;
    assert_eq!(push(&mut h, &set)?, (202, String::new()));
    let ctx = h.new_http()?;
    h.request_headers(
        ctx,
        &[
            (":method", "GET"),
            (":path", "/orders/1"),
            (":authority", "api.example.com"),
            ("authorization", leaked.as_str()),
        ],
        true,
    )?;
    let reply = h.local_reply(ctx).context("refused")?;
    assert_eq!(reply.status, 401);
    assert!(
        reply
            .header("www-authenticate")
            .unwrap_or("")
            .contains("token revoked"),
        "{reply:?}"
    );
    assert_eq!(
        get(&mut h, &other)?,
        None,
        "another token of the same agent"
    );
    Ok(())
}

#[test]
fn cutting_off_an_agent_refuses_it_as_subject_and_anywhere_in_a_chain() -> Result<()> {
    let mut h = harness(|_| {})?;
    let own = agent_token(json!({}))?;
    let relayed = bearer(json!({"iss": IDP, "sub": "alice", "groups": ["staff"],
                                "act": {"sub": "agent-7", "act": {"sub": "planner"}}}))?;
    let planner_only = bearer(json!({"iss": IDP, "sub": "alice", "groups": ["staff"],
                                     "act": {"sub": "planner"}}))?;
    let rogue = agent_token(json!({"sub": "agent-9"}))?;
    let set = revoke(json!({"format": "tessera_actor", "sub": "agent-7"}))?;
    assert_eq!(push(&mut h, &set)?.0, 202);
    assert_eq!(get(&mut h, &own)?, Some(401));
    assert_eq!(
        get(&mut h, &relayed)?,
        Some(401),
        "agent-7 relays alice's call"
    );
    assert_ne!(get(&mut h, &planner_only)?, Some(401));
    assert_ne!(get(&mut h, &rogue)?, Some(401));
    Ok(())
}

#[test]
fn a_task_or_a_client_is_cut_off_by_one_event() -> Result<()> {
    let mut h = harness(|_| {})?;
    let task = agent_token(json!({"task_id": "task-42"}))?;
    let other_task = agent_token(json!({"task_id": "task-43"}))?;
    let client = agent_token(json!({"client_id": "crm-bot"}))?;
    assert_eq!(
        push(
            &mut h,
            &revoke(json!({"format": "tessera_task", "task_id": "task-42", "iss": AGENTS}))?
        )?
        .0,
        202
    );
    assert_eq!(
        push(
            &mut h,
            &revoke(json!({"format": "tessera_client", "client_id": "crm-bot"}))?
        )?
        .0,
        202
    );
    assert_eq!(get(&mut h, &task)?, Some(401));
    assert_eq!(get(&mut h, &client)?, Some(401));
    assert_eq!(get(&mut h, &other_task)?, None);
    Ok(())
}

#[test]
fn caep_session_revoked_refuses_tokens_issued_before_the_event_only() -> Result<()> {
    let mut h = harness(|_| {})?;
    let now = now_s();
    let before = agent_token(json!({"iat": now - 100}))?;
    let after = agent_token(json!({"iat": now - 10}))?;
    let set = set_with(
        "secevent+jwt",
        "demo-ed25519",
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {
            "subject": {"user": {"format": "iss_sub", "iss": AGENTS, "sub": "agent-7"},
                        "session": {"format": "opaque", "id": "s-1"}},
            "event_timestamp": (now - 50) as f64 + 0.5}}}),
    )?;
    assert_eq!(push(&mut h, &set)?.0, 202);
    assert_eq!(get(&mut h, &before)?, Some(401));
    assert_eq!(get(&mut h, &after)?, None, "a token issued after the event");
    // SSF 1.0 writes a complex subject with `"format": "complex"`, at the SET's `sub_id`.
    let other = agent_token(json!({"sub": "agent-9", "iat": now - 100}))?;
    let set = set_with(
        "secevent+jwt",
        "demo-ed25519",
        json!({"sub_id": {"format": "complex",
                          "user": {"format": "iss_sub", "iss": AGENTS, "sub": "agent-9"}},
               "events": {"https://schemas.openid.net/secevent/caep/event-type/credential-change": {
                   "credential_type": "password", "change_type": "update"}}}),
    )?;
    assert_eq!(push(&mut h, &set)?.0, 202);
    assert_eq!(get(&mut h, &other)?, Some(401));
    Ok(())
}

#[test]
fn bad_sets_get_400_with_the_rfc_8935_error_and_revoke_nothing() -> Result<()> {
    let mut h = harness(|_| {})?;
    let victim = agent_token(json!({"jti": "victim"}))?;
    let subject = json!({"format": "jwt_id", "iss": AGENTS, "jti": "victim"});
    let events = json!({"urn:tessera:secevent:revoked": {}});
    let cases = [
        (
            "invalid_request",
            set_with(
                "JWT",
                "demo-ed25519",
                json!({"sub_id": subject, "events": events}),
            )?,
        ),
        (
            "invalid_issuer",
            set_with(
                "secevent+jwt",
                "demo-ed25519",
                json!({"iss": "https://evil.test", "sub_id": subject, "events": events}),
            )?,
        ),
        (
            "invalid_audience",
            set_with(
                "secevent+jwt",
                "demo-ed25519",
                json!({"aud": "https://someone-else.test", "sub_id": subject, "events": events}),
            )?,
        ),
        (
            "invalid_key",
            set_with(
                "secevent+jwt",
                "other-kid",
                json!({"sub_id": subject, "events": events}),
            )?,
        ),
        ("invalid_key", {
            let s = revoke(subject.clone())?;
            let (head, sig) = s.rsplit_once('.').context("jws")?;
            format!(
                "{head}.{}",
                URL_SAFE_NO_PAD
                    .encode(vec![7u8; 64])
                    .chars()
                    .take(sig.len())
                    .collect::<String>()
            )
        }),
        (
            "invalid_request",
            set_with("secevent+jwt", "demo-ed25519", json!({"sub_id": subject}))?,
        ),
        (
            "invalid_request",
            set_with(
                "secevent+jwt",
                "demo-ed25519",
                json!({"sub_id": {"format": "email", "email": "a@b.c"}, "events": events}),
            )?,
        ),
        ("invalid_request", "not a jwt".to_string()),
    ];
    for (err, set) in cases {
        let (status, body) = push(&mut h, &set)?;
        assert_eq!(status, 400, "{err}: {body}");
        let body: Value = serde_json::from_str(&body)?;
        assert_eq!(body["err"], err, "{body}");
    }
    assert_eq!(get(&mut h, &victim)?, None, "nothing was revoked");
    // Any other method on the receiver: 405, answered by the filter.
    let (ctx, status) = tessera_tests::request(&mut h, "GET", EVENTS_PATH, None, &[])?;
    assert_eq!(status, Some(405));
    assert!(!h.request_resumed(ctx));
    Ok(())
}

#[test]
fn events_of_unknown_types_are_accepted_and_ignored() -> Result<()> {
    let mut h = harness(|_| {})?;
    let set = set_with(
        "secevent+jwt",
        "demo-ed25519",
        json!({"sub_id": {"format": "iss_sub", "iss": AGENTS, "sub": "agent-7"},
               "events": {"https://schemas.openid.net/secevent/caep/event-type/assurance-level-change": {}}}),
    )?;
    assert_eq!(push(&mut h, &set)?.0, 202);
    assert_eq!(get(&mut h, &agent_token(json!({}))?)?, None);
    Ok(())
}

#[test]
fn polled_sets_are_applied_and_acknowledged_in_the_next_poll() -> Result<()> {
    let mut h = harness(|r| {
        r["events"]["poll"] = json!({"cluster": "ssf", "path": "/poll", "interval_s": 5});
    })?;
    h.tick()?;
    let poll = h
        .http_calls()
        .iter()
        .find(|c| c.upstream == "ssf")
        .cloned()
        .context("a poll")?;
    assert_eq!(poll.header(":method"), Some("POST"));
    assert_eq!(poll.header(":path"), Some("/poll"));
    let asked: Value = serde_json::from_slice(&poll.body)?;
    assert_eq!(asked["returnImmediately"], true);
    assert_eq!(asked["ack"], json!([]));
    let set = revoke(json!({"format": "jwt_id", "iss": AGENTS, "jti": "polled-1"}))?;
    let bad = set_with("JWT", "demo-ed25519", json!({"events": {}}))?;
    let answer = json!({"sets": {"j-1": set, "j-2": bad}, "moreAvailable": false}).to_string();
    h.respond_to_call(
        poll.token,
        200,
        &[("content-type", "application/json")],
        answer.as_bytes(),
    )?;
    assert_eq!(
        get(&mut h, &agent_token(json!({"jti": "polled-1"}))?)?,
        Some(401)
    );
    h.advance(Duration::from_secs(6));
    h.tick()?;
    let next = h
        .http_calls()
        .iter()
        .find(|c| c.upstream == "ssf")
        .cloned()
        .context("the next poll")?;
    let asked: Value = serde_json::from_slice(&next.body)?;
    assert_eq!(asked["ack"], json!(["j-1"]));
    assert_eq!(asked["setErrs"]["j-2"]["err"], "invalid_request");
    Ok(())
}

// ---- status lists ----

fn status_list(
    uri: &str,
    bits: u8,
    statuses: &[u8],
    signer: &str,
    typ: &str,
    ttl: u64,
) -> Result<String> {
    status_list_token(uri, bits, statuses, signer, typ, ttl)
}

fn with_status(idx: u64, uri: &str) -> Result<String> {
    agent_token(json!({"status": {"status_list": {"idx": idx, "uri": uri}}}))
}

/// A GET with `auth` that waits for the list: answers the list fetch with `list` (or fails it),
/// and returns the context and the reply's status.
fn get_fetching(h: &mut Harness, auth: &str, list: Option<&str>) -> Result<(u32, Option<u32>)> {
    let ctx = h.new_http()?;
    let headers = [
        (":method", "GET"),
        (":path", "/orders/1"),
        (":authority", "api.example.com"),
        ("authorization", auth),
    ];
    assert_eq!(h.request_headers(ctx, &headers, true)?, Action::Pause);
    let call = h
        .http_calls()
        .iter()
        .find(|c| c.context_id == ctx)
        .cloned()
        .context("the request's list fetch")?;
    assert_eq!(call.upstream, "status");
    assert_eq!(call.header("accept"), Some("application/statuslist+jwt"));
    match list {
        Some(l) => h.respond_to_call(
            call.token,
            200,
            &[("content-type", "application/statuslist+jwt")],
            l.as_bytes(),
        )?,
        None => h.fail_call(call.token)?,
    }
    Ok((ctx, h.local_reply(ctx).map(|r| r.status)))
}

#[test]
fn status_lists_of_every_width_decide_valid_revoked_and_suspended() -> Result<()> {
    for bits in [1u8, 2, 4, 8] {
        let mut h = harness(|_| {})?;
        let uri = format!("{LISTS}{bits}");
        let mut statuses = vec![0u8; 40];
        statuses[3] = 1;
        if bits > 1 {
            statuses[5] = 2;
            statuses[7] = 3;
        }
        let list = status_list(&uri, bits, &statuses, STATUS_SIGNER, "statuslist+jwt", 300)?;
        let (ctx, status) = get_fetching(&mut h, &with_status(0, &uri)?, Some(&list))?;
        assert_eq!(status, None, "bits {bits}: valid");
        assert!(
            h.request_resumed(ctx),
            "bits {bits}: forwarded after the fetch"
        );
        // The list is cached now: no more fetches.
        assert_eq!(
            get(&mut h, &with_status(3, &uri)?)?,
            Some(401),
            "bits {bits}: revoked"
        );
        if bits > 1 {
            assert_eq!(get(&mut h, &with_status(5, &uri)?)?, Some(401), "suspended");
            assert_eq!(get(&mut h, &with_status(7, &uri)?)?, Some(401), "status 3");
        }
        let past = (40 * usize::from(bits)).div_ceil(8) * 8 / usize::from(bits);
        assert_eq!(
            get(&mut h, &with_status(past as u64, &uri)?)?,
            Some(401),
            "out of range"
        );
        assert!(
            h.http_calls().is_empty(),
            "bits {bits}: {:?}",
            h.http_calls()
        );
    }
    Ok(())
}

#[test]
fn lists_that_cannot_be_trusted_or_had_fail_closed() -> Result<()> {
    let uri = format!("{LISTS}x");
    let statuses = vec![0u8; 16];
    // Not under a configured prefix: refused without a fetch.
    let mut h = harness(|_| {})?;
    assert_eq!(
        get(&mut h, &with_status(0, "https://elsewhere.test/lists/x")?)?,
        Some(401)
    );
    assert!(h.http_calls().is_empty());
    for (what, list) in [
        (
            "wrong typ",
            Some(status_list(&uri, 1, &statuses, STATUS_SIGNER, "JWT", 300)?),
        ),
        (
            "unknown signer",
            Some(status_list(
                &uri,
                1,
                &statuses,
                "https://evil.test",
                "statuslist+jwt",
                300,
            )?),
        ),
        (
            "sub is another uri",
            Some(status_list(
                &format!("{LISTS}y"),
                1,
                &statuses,
                STATUS_SIGNER,
                "statuslist+jwt",
                300,
            )?),
        ),
        ("no answer", None),
    ] {
        let mut h = harness(|_| {})?;
        let (_, status) = get_fetching(&mut h, &with_status(0, &uri)?, list.as_deref())?;
        assert_eq!(status, Some(503), "{what}");
    }
    // fail_open: the same unreachable list lets the token pass.
    let mut h = harness(|r| r["status_list"]["fail_open"] = json!(true))?;
    let (_, status) = get_fetching(&mut h, &with_status(0, &uri)?, None)?;
    assert_eq!(status, None, "fail_open");
    Ok(())
}

#[test]
fn a_changed_list_is_refetched_after_its_ttl_and_then_refuses() -> Result<()> {
    let mut h = harness(|_| {})?;
    let uri = format!("{LISTS}ttl");
    let list = status_list(&uri, 1, &[0u8; 8], STATUS_SIGNER, "statuslist+jwt", 10)?;
    let token = with_status(2, &uri)?;
    let (_, status) = get_fetching(&mut h, &token, Some(&list))?;
    assert_eq!(status, None);
    h.advance(Duration::from_secs(11));
    h.tick()?;
    let refresh = h
        .http_calls()
        .iter()
        .find(|c| c.upstream == "status")
        .cloned()
        .context("the background refresh")?;
    let mut statuses = [0u8; 8];
    statuses[2] = 1;
    let revoked = status_list(&uri, 1, &statuses, STATUS_SIGNER, "statuslist+jwt", 10)?;
    h.respond_to_call(refresh.token, 200, &[], revoked.as_bytes())?;
    assert_eq!(get(&mut h, &token)?, Some(401));
    Ok(())
}

#[test]
fn an_older_list_never_replaces_a_newer_one_and_a_list_without_iat_is_refused() -> Result<()> {
    use tessera_tests::signed::status_list_claims;
    let mut h = harness(|_| {})?;
    let uri = format!("{LISTS}replay");
    let now = now_s();
    let mut revoked = [0u8; 8];
    revoked[3] = 1;
    let old = status_list_claims(
        &uri,
        1,
        &[0u8; 8],
        STATUS_SIGNER,
        "statuslist+jwt",
        json!({"iat": now - 100, "ttl": 10_000}),
    )?;
    let new = status_list_claims(
        &uri,
        1,
        &revoked,
        STATUS_SIGNER,
        "statuslist+jwt",
        json!({"iat": now - 10, "ttl": 20}),
    )?;
    let token = with_status(3, &uri)?;
    let (_, status) = get_fetching(&mut h, &token, Some(&new))?;
    assert_eq!(status, Some(401), "revoked in the newer list");
    // Its ttl runs out; the refresh brings the older list back (a replay, a stale mirror).
    h.advance(Duration::from_secs(21));
    h.tick()?;
    let refresh = h
        .http_calls()
        .iter()
        .find(|c| c.upstream == "status")
        .cloned()
        .context("refresh")?;
    h.respond_to_call(refresh.token, 200, &[], old.as_bytes())?;
    assert_eq!(get(&mut h, &token)?, Some(401), "still revoked");
    assert!(h
        .logs()
        .iter()
        .any(|l| l.message.contains("older than the list held")));

    let fine = with_status(1, &uri)?;
    let mut h = harness(|_| {})?;
    let no_iat = status_list_claims(
        &uri,
        1,
        &[0u8; 8],
        STATUS_SIGNER,
        "statuslist+jwt",
        json!({"ttl": 60}),
    )?;
    assert_eq!(get_fetching(&mut h, &fine, Some(&no_iat))?.1, Some(503));
    Ok(())
}

#[test]
fn requests_waiting_for_one_list_share_a_bounded_number_of_fetches() -> Result<()> {
    let mut h = harness(|_| {})?;
    let uri = format!("{LISTS}burst");
    let token = with_status(0, &uri)?;
    let headers = [
        (":method", "GET"),
        (":path", "/orders/1"),
        (":authority", "api.example.com"),
        ("authorization", token.as_str()),
    ];
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let ctx = h.new_http()?;
        assert_eq!(h.request_headers(ctx, &headers, true)?, Action::Pause);
        waiting.push(ctx);
    }
    let (ctx, status) = tessera_tests::request(&mut h, "GET", "/orders/1", Some(&token), &[])?;
    assert_eq!(
        status,
        Some(503),
        "a fifth fetch of the same list is not started"
    );
    assert_eq!(
        h.local_reply(ctx)
            .and_then(|r| r.header("retry-after").map(str::to_string))
            .as_deref(),
        Some("1")
    );
    assert_eq!(h.http_calls().len(), 4);
    // A waiting stream that ends frees its place.
    h.done(waiting[0])?;
    let ctx = h.new_http()?;
    assert_eq!(h.request_headers(ctx, &headers, true)?, Action::Pause);
    Ok(())
}

#[test]
fn revocation_events_need_issuers_whose_tokens_do_not_outlive_a_revocation() -> Result<()> {
    let mut h = tessera_harness::Harness::load(tessera_tests::wasm_path())?;
    let mut c = tessera_tests::test_config()?;
    c["revocation"] = revocation_config()?;
    c["revocation"]["retain_s"] = json!(1800);
    assert!(
        !h.configure(&c.to_string())?,
        "max_ttl_s 3600 > retain_s 1800"
    );
    assert!(
        h.logs()
            .iter()
            .any(|l| l.message.contains("issuers[0].max_ttl_s")),
        "{:?}",
        h.logs()
    );
    Ok(())
}

/// A token whose requests run Cedar every time keeps its Cedar parts from its second request
/// (`authz::TokenParts`); what is kept never stands in for the credential's checks: revoked, the
/// same token is refused on its next call.
#[test]
fn a_token_that_keeps_its_cedar_parts_is_refused_once_revoked() -> Result<()> {
    let mut h = harness(|_| {})?;
    let token = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "files:read",
                              "jti": "kept-1"}),
    )?;
    for id in 1..=4 {
        let call = tessera_tests::read_file(id, "/srv/notes.txt");
        let (ctx, status) = tessera_tests::post_mcp(&mut h, &token, &[], &call)?;
        assert_eq!(status, None, "call {id} allowed: {:?}", h.local_reply(ctx));
        h.done(ctx)?;
    }
    let set = revoke(json!({"format": "jwt_id", "iss": AGENTS, "jti": "kept-1"}))?;
    assert_eq!(push(&mut h, &set)?, (202, String::new()));
    let call = tessera_tests::read_file(5, "/srv/notes.txt");
    let (ctx, status) = tessera_tests::post_mcp(&mut h, &token, &[], &call)?;
    assert_eq!(status, Some(401), "{:?}", h.local_reply(ctx));
    Ok(())
}

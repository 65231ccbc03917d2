//! Single-use credentials redeemed in the store every replica shares (`store.etcd`, issue 13),
//! through the `.wasm` in the harness: the test answers the module's calls to etcd's JSON
//! gateway as etcd does.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tessera_harness::{Action, Harness, HttpCall};
use tessera_tests::{bearer, harness_with, now_s, AGENTS, APPROVALS};

/// `store.etcd` set to `etcd` in the test configuration, whose MCP route makes a fleet seal its
/// sessions (sessions.rs).
fn with_store(c: &mut Value, etcd: Value) {
    c["store"] = json!({ "etcd": etcd });
    c["sessions"] = json!({"seal_keys": [tessera_tests::SEAL_KEY]});
}

fn harness() -> Result<Harness> {
    harness_with(|c| {
        with_store(
            c,
            json!({"cluster": "etcd", "prefix": "t/", "lease_bucket_s": 60}),
        )
    })
}

fn single_use(jti: &str) -> Result<String> {
    bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read",
                  "single_use": true, "jti": jti, "exp": now_s() + 120}),
    )
}

/// Starts a GET with `auth` (the stream not ended when `open`): its context and action.
fn start(h: &mut Harness, auth: &str, open: bool) -> Result<(u32, Action)> {
    let ctx = h.new_http()?;
    let headers = [
        (":method", "GET"),
        (":path", "/orders/1"),
        (":authority", "api.example.com"),
        ("authorization", auth),
    ];
    let action = h.request_headers(ctx, &headers, !open)?;
    Ok((ctx, action))
}

/// The only unanswered call: to etcd, POST `path`.
fn etcd_call(h: &Harness, path: &str) -> Result<HttpCall> {
    let calls = h.http_calls();
    anyhow::ensure!(calls.len() == 1, "one call expected: {calls:?}");
    let c = calls[0].clone();
    assert_eq!(c.upstream, "etcd");
    assert_eq!(c.header(":method"), Some("POST"));
    assert_eq!(c.header(":path"), Some(path));
    Ok(c)
}

fn answer(h: &mut Harness, call: &HttpCall, body: Value) -> Result<()> {
    h.respond_to_call(
        call.token,
        200,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

#[test]
fn a_single_use_token_is_recorded_in_etcd_once_then_refused_without_asking_again() -> Result<()> {
    let mut h = harness()?;
    let token = single_use("fleet-1")?;
    let (ctx, action) = start(&mut h, &token, false)?;
    assert_eq!(action, Action::Pause, "waits for the fleet's store");
    let lease = etcd_call(&h, "/v3/lease/grant")?;
    let asked: Value = serde_json::from_slice(&lease.body)?;
    assert!(asked["TTL"]
        .as_str()
        .and_then(|t| t.parse::<u64>().ok())
        .is_some_and(|t| t >= 120));
    answer(&mut h, &lease, json!({"ID": "7587", "TTL": "240"}))?;
    let txn = etcd_call(&h, "/v3/kv/txn")?;
    let asked: Value = serde_json::from_slice(&txn.body)?;
    assert_eq!(asked["compare"][0]["target"], "CREATE");
    assert_eq!(asked["compare"][0]["create_revision"], "0");
    assert_eq!(asked["success"][0]["request_put"]["lease"], "7587");
    let key = asked["compare"][0]["key"].as_str().context("key")?;
    use base64::Engine as _;
    let key = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(key)?)?;
    assert!(key.starts_with("t/tessera.once."), "{key}");
    assert!(!h.request_resumed(ctx));
    answer(
        &mut h,
        &txn,
        json!({"header": {"revision": "9"}, "succeeded": true}),
    )?;
    assert!(h.request_resumed(ctx), "first use: forwarded");
    assert!(h.local_reply(ctx).is_none());
    // The replay on this proxy: refused at once, no call.
    let (ctx, _) = start(&mut h, &token, false)?;
    assert_eq!(h.local_reply(ctx).map(|r| r.status), Some(401));
    assert!(h.http_calls().is_empty());
    // Another token in the same lease bucket: the lease is reused.
    let (ctx, _) = start(&mut h, &single_use("fleet-2")?, false)?;
    let txn = etcd_call(&h, "/v3/kv/txn")?;
    answer(&mut h, &txn, json!({"header": {}, "succeeded": true}))?;
    assert!(h.request_resumed(ctx));
    Ok(())
}

#[test]
fn a_token_another_replica_used_first_is_refused() -> Result<()> {
    let mut h = harness()?;
    let (ctx, _) = start(&mut h, &single_use("elsewhere")?, false)?;
    let lease = etcd_call(&h, "/v3/lease/grant")?;
    answer(&mut h, &lease, json!({"ID": "1", "TTL": "240"}))?;
    let txn = etcd_call(&h, "/v3/kv/txn")?;
    // proto3 JSON leaves `succeeded: false` out.
    answer(&mut h, &txn, json!({"header": {"revision": "12"}}))?;
    let reply = h.local_reply(ctx).context("refused")?;
    assert_eq!(reply.status, 401);
    assert!(reply
        .header("www-authenticate")
        .unwrap_or("")
        .contains("already used"));
    assert!(!h.request_resumed(ctx));
    Ok(())
}

#[test]
fn no_answer_from_etcd_fails_closed_with_503_and_plain_requests_pass() -> Result<()> {
    let mut h = harness()?;
    let (ctx, _) = start(&mut h, &single_use("down-1")?, false)?;
    let lease = etcd_call(&h, "/v3/lease/grant")?;
    h.fail_call(lease.token)?;
    let reply = h.local_reply(ctx).context("refused")?;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(!h.request_resumed(ctx));
    // A token that is not single-use needs no store.
    let plain = bearer(json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read"}))?;
    assert_eq!(
        tessera_tests::request(&mut h, "GET", "/orders/1", Some(&plain), &[])?.1,
        None
    );
    assert!(h.http_calls().is_empty());
    // A transaction etcd refuses (a lease it dropped): 503, and the lease is asked for again.
    let (_, _) = start(&mut h, &single_use("down-2")?, false)?;
    let lease = etcd_call(&h, "/v3/lease/grant")?;
    answer(&mut h, &lease, json!({"ID": "5", "TTL": "240"}))?;
    let txn = etcd_call(&h, "/v3/kv/txn")?;
    h.respond_to_call(
        txn.token,
        400,
        &[],
        br#"{"error":"etcdserver: requested lease not found","code":5}"#,
    )?;
    let (ctx, _) = start(&mut h, &single_use("down-3")?, false)?;
    etcd_call(&h, "/v3/lease/grant").context("a new lease")?;
    assert!(h.local_reply(ctx).is_none());
    Ok(())
}

#[test]
fn a_body_that_arrives_while_etcd_decides_is_held() -> Result<()> {
    let mut h = harness()?;
    let (ctx, action) = start(&mut h, &single_use("body-1")?, true)?;
    assert_eq!(action, Action::Pause);
    assert_eq!(
        h.request_body(ctx, b"payload", true)?,
        Action::Pause,
        "held"
    );
    assert_eq!(
        h.request_trailers(ctx, &[("x-t", "1")])?,
        Action::Pause,
        "held"
    );
    let lease = etcd_call(&h, "/v3/lease/grant")?;
    answer(&mut h, &lease, json!({"ID": "3", "TTL": "240"}))?;
    let txn = etcd_call(&h, "/v3/kv/txn")?;
    assert!(!h.request_resumed(ctx));
    answer(&mut h, &txn, json!({"header": {}, "succeeded": true}))?;
    assert!(h.request_resumed(ctx));
    Ok(())
}

#[test]
fn store_configuration_errors_name_the_field() -> Result<()> {
    for (etcd, field) in [
        (json!({"cluster": ""}), "store.etcd.cluster"),
        (
            json!({"cluster": "etcd", "lease_bucket_s": 0}),
            "store.etcd",
        ),
        (json!({"cluster": "etcd", "nodes": 3}), "store.etcd"),
    ] {
        let mut h = tessera_harness::Harness::load(tessera_tests::wasm_path())?;
        let mut c = tessera_tests::test_config()?;
        with_store(&mut c, etcd.clone());
        assert!(!h.configure(&c.to_string())?, "{etcd}");
        assert!(
            h.logs().iter().any(|l| l.message.contains(field)),
            "{field}: {:?}",
            h.logs()
        );
    }
    Ok(())
}

// ---- revocations shared by the fleet ----

use tessera_tests::signed::{revocation_config, revoke, EVENTS_PATH};

fn harness_with_events() -> Result<Harness> {
    harness_with(|c| {
        with_store(c, json!({"cluster": "etcd", "prefix": "t/"}));
        c["revocation"] = revocation_config().unwrap_or_default();
    })
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> Result<String> {
    use base64::Engine as _;
    Ok(String::from_utf8(
        base64::engine::general_purpose::STANDARD.decode(s)?,
    )?)
}

/// The unanswered etcd call to `path`, among others.
fn etcd_call_to(h: &Harness, path: &str) -> Result<HttpCall> {
    h.http_calls()
        .iter()
        .find(|c| c.upstream == "etcd" && c.header(":path") == Some(path))
        .cloned()
        .with_context(|| format!("no call to {path}: {:?}", h.http_calls()))
}

#[test]
fn a_pushed_revocation_is_accepted_once_etcd_holds_it() -> Result<()> {
    let mut h = harness_with_events()?;
    // The first look at what other replicas wrote: nothing yet.
    let follow = etcd_call_to(&h, "/v3/kv/range")?;
    answer(&mut h, &follow, json!({"header": {"revision": "5"}}))?;
    let set = revoke(json!({"format": "jwt_id", "iss": AGENTS, "jti": "pushed-1"}))?;
    let ctx = push(&mut h, &set)?;
    assert!(h.local_reply(ctx).is_none(), "the 202 waits for etcd");
    let lease = etcd_call_to(&h, "/v3/lease/grant")?;
    answer(&mut h, &lease, json!({"ID": "9", "TTL": "90000"}))?;
    let txn = etcd_call_to(&h, "/v3/kv/txn")?;
    let asked: Value = serde_json::from_slice(&txn.body)?;
    let put = &asked["success"][0]["request_put"];
    assert!(unb64(put["key"].as_str().context("key")?)?.starts_with("t/revoked/"));
    let value: Value = serde_json::from_str(&unb64(put["value"].as_str().context("value")?)?)?;
    assert_eq!(value["kind"], "jti");
    assert_eq!(value["value"], "pushed-1");
    answer(&mut h, &txn, json!({"header": {}, "succeeded": true}))?;
    assert_eq!(h.local_reply(ctx).map(|r| r.status), Some(202));
    Ok(())
}

#[test]
fn a_push_etcd_cannot_hold_gets_503_and_still_revokes_here() -> Result<()> {
    let mut h = harness_with_events()?;
    let set = revoke(json!({"format": "jwt_id", "iss": AGENTS, "jti": "pushed-2"}))?;
    let ctx = push(&mut h, &set)?;
    let lease = etcd_call_to(&h, "/v3/lease/grant")?;
    h.fail_call(lease.token)?;
    let reply = h.local_reply(ctx).context("answered")?;
    assert_eq!(reply.status, 503, "the transmitter sends it again");
    let token = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read", "jti": "pushed-2"}),
    )?;
    assert_eq!(
        tessera_tests::request(&mut h, "GET", "/orders/1", Some(&token), &[])?.1,
        Some(401)
    );
    Ok(())
}

#[test]
fn revocations_other_replicas_wrote_are_enforced_after_the_next_look() -> Result<()> {
    let mut h = harness_with_events()?;
    let token =
        bearer(json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read", "jti": "far-1"}))?;
    assert_eq!(
        tessera_tests::request(&mut h, "GET", "/orders/1", Some(&token), &[])?.1,
        None
    );
    let follow = etcd_call_to(&h, "/v3/kv/range")?;
    let asked: Value = serde_json::from_slice(&follow.body)?;
    assert_eq!(asked["min_mod_revision"], "1");
    assert_eq!(unb64(asked["key"].as_str().context("key")?)?, "t/revoked/");
    assert_eq!(
        unb64(asked["range_end"].as_str().context("end")?)?,
        "t/revoked0"
    );
    let value = json!({"kind": "jti", "issuer": AGENTS, "value": "far-1", "issued_before": null});
    answer(
        &mut h,
        &follow,
        json!({"header": {"revision": "17"},
               "kvs": [{"key": b64("t/revoked/x/*"), "value": b64(&value.to_string()), "mod_revision": "17"}]}),
    )?;
    assert_eq!(
        tessera_tests::request(&mut h, "GET", "/orders/1", Some(&token), &[])?.1,
        Some(401)
    );
    // The next look asks only for what changed after revision 17.
    h.advance(std::time::Duration::from_secs(2));
    h.tick()?;
    let next = etcd_call_to(&h, "/v3/kv/range")?;
    let asked: Value = serde_json::from_slice(&next.body)?;
    assert_eq!(asked["min_mod_revision"], "18");
    Ok(())
}

/// A POST of `set` to the receiver: its context (the reply may wait for etcd).
fn push(h: &mut Harness, set: &str) -> Result<u32> {
    let ctx = h.new_http()?;
    let headers = [
        (":method", "POST"),
        (":path", EVENTS_PATH),
        (":authority", "api.example.com"),
        ("content-type", "application/secevent+jwt"),
    ];
    h.request_headers(ctx, &headers, false)?;
    h.request_body(ctx, set.as_bytes(), true)?;
    Ok(ctx)
}

#[test]
fn each_push_waits_for_the_write_of_its_own_revocations() -> Result<()> {
    let mut h = harness_with_events()?;
    let first = push(
        &mut h,
        &revoke(json!({"format": "jwt_id", "iss": AGENTS, "jti": "p-1"}))?,
    )?;
    let lease = etcd_call_to(&h, "/v3/lease/grant")?;
    answer(
        &mut h,
        &lease,
        json!({"header": {}, "ID": "4", "TTL": "90000"}),
    )?;
    let txn1 = etcd_call_to(&h, "/v3/kv/txn")?;
    // A second push while the first write is unanswered: it writes its own revocation.
    let second = push(
        &mut h,
        &revoke(json!({"format": "jwt_id", "iss": AGENTS, "jti": "p-2"}))?,
    )?;
    let txn2 = h
        .http_calls()
        .iter()
        .find(|c| c.context_id == second)
        .cloned()
        .context("the second push's own write")?;
    let asked: Value = serde_json::from_slice(&txn2.body)?;
    let value = unb64(
        asked["success"][0]["request_put"]["value"]
            .as_str()
            .context("value")?,
    )?;
    assert!(value.contains("p-2"), "{value}");
    answer(&mut h, &txn2, json!({"header": {}, "succeeded": true}))?;
    assert_eq!(h.local_reply(second).map(|r| r.status), Some(202));
    assert!(
        h.local_reply(first).is_none(),
        "the first still waits for its own write"
    );
    answer(&mut h, &txn1, json!({"header": {}, "succeeded": true}))?;
    assert_eq!(h.local_reply(first).map(|r| r.status), Some(202));
    Ok(())
}

#[test]
fn reading_in_pages_starts_again_where_the_oldest_unread_change_is() -> Result<()> {
    let mut h = harness_with_events()?;
    let follow = etcd_call_to(&h, "/v3/kv/range")?;
    let asked: Value = serde_json::from_slice(&follow.body)?;
    assert_eq!(
        (asked["sort_target"].as_str(), asked["sort_order"].as_str()),
        (Some("MOD"), Some("ASCEND"))
    );
    let value = json!({"kind": "jti", "issuer": AGENTS, "value": "paged", "issued_before": null});
    answer(
        &mut h,
        &follow,
        json!({"header": {"revision": "90"}, "more": true,
        "kvs": [{"key": b64("t/revoked/a/*"), "value": b64(&value.to_string()), "mod_revision": "25"}]}),
    )?;
    h.tick()?;
    let next = etcd_call_to(&h, "/v3/kv/range")?;
    let asked: Value = serde_json::from_slice(&next.body)?;
    assert_eq!(
        asked["min_mod_revision"], "25",
        "revision 25 may hold more keys than the page"
    );
    // The store went back (recreated): everything is read again.
    answer(&mut h, &next, json!({"header": {"revision": "3"}}))?;
    h.tick()?;
    let again = etcd_call_to(&h, "/v3/kv/range")?;
    let asked: Value = serde_json::from_slice(&again.body)?;
    assert_eq!(asked["min_mod_revision"], "1");
    Ok(())
}

#[test]
fn an_answer_that_is_not_etcds_refuses_nothing_for_good() -> Result<()> {
    let mut h = harness()?;
    let token = single_use("not-etcd")?;
    let (ctx, _) = start(&mut h, &token, false)?;
    let lease = etcd_call(&h, "/v3/lease/grant")?;
    answer(&mut h, &lease, json!({"ID": "8", "TTL": "240"}))?;
    let txn = etcd_call(&h, "/v3/kv/txn")?;
    answer(&mut h, &txn, json!({}))?;
    assert_eq!(
        h.local_reply(ctx).map(|r| r.status),
        Some(503),
        "not taken for 'used'"
    );
    // The same token again: etcd is asked again (nothing was cached as used).
    let (ctx, _) = start(&mut h, &token, false)?;
    assert!(h.local_reply(ctx).is_none());
    assert!(!h.http_calls().is_empty());
    Ok(())
}

// ---- a request's credentials recorded together ----

/// A POST of the refund with `auth` and, if any, an approval: its context and local status.
fn refund(h: &mut Harness, auth: &str, approval: Option<&str>) -> Result<(u32, Option<u32>)> {
    let extra: Vec<(&str, &str)> = approval
        .map(|a| ("x-tessera-approval", a))
        .into_iter()
        .collect();
    tessera_tests::request(h, "POST", "/orders/42/refund", Some(auth), &extra)
}

fn refund_token(jti: &str) -> Result<String> {
    bearer(
        json!({"iss": AGENTS, "sub": "agent-9", "scope": "orders:write",
                  "single_use": true, "jti": jti, "exp": now_s() + 120}),
    )
}

/// etcd's key (base64) of the record of `kind` (`token`, `approval`) `jti` of `issuer`.
fn record_key(kind: &str, issuer: &str, jti: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!(
        "t/{}",
        tessera_core::approval::once_key(kind, issuer, jti)
    ))
}

/// Answers the recording of a request's two credentials as etcd does when the record `existing`
/// exists: the transaction failed, its failure branch read each key.
fn answer_existing(h: &mut Harness, txn: &HttpCall, existing: &str) -> Result<()> {
    let asked: Value = serde_json::from_slice(&txn.body)?;
    for part in ["compare", "success", "failure"] {
        let n = asked[part].as_array().map(Vec::len);
        assert_eq!(n, Some(2), "one transaction for both, {part}: {asked}");
    }
    assert!(asked["compare"].to_string().contains(existing), "{asked}");
    let responses: Vec<Value> = (0..2)
        .map(|i| {
            let key = &asked["compare"][i]["key"];
            assert_eq!(&asked["failure"][i]["request_range"]["key"], key);
            match *key == json!(existing) {
                true => {
                    json!({"response_range": {"header": {}, "kvs": [{"key": key}], "count": "1"}})
                }
                false => json!({"response_range": {"header": {}}}),
            }
        })
        .collect();
    answer(
        h,
        txn,
        json!({"header": {"revision": "30"}, "responses": responses}),
    )
}

/// The refund with `token` and `approval`: recorded in etcd (the transaction succeeds) and
/// forwarded.
fn recorded_and_forwarded(h: &mut Harness, token: &str, approval: &str) -> Result<()> {
    let (ctx, _) = refund(h, token, Some(approval))?;
    let txn = etcd_call(h, "/v3/kv/txn")?;
    answer(h, &txn, json!({"header": {}, "succeeded": true}))?;
    assert!(
        h.request_resumed(ctx),
        "{:?}",
        h.local_reply(ctx).map(|r| r.status)
    );
    h.done(ctx)
}

#[test]
fn a_request_s_single_use_token_and_approval_are_recorded_together_or_not_at_all() -> Result<()> {
    let mut h = harness()?;
    let (ctx, status) = refund(&mut h, &refund_token("t-first")?, None)?;
    assert_eq!(
        status,
        Some(403),
        "approval required (a denial uses nothing up)"
    );
    let body: Value = serde_json::from_slice(&h.local_reply(ctx).context("reply")?.body)?;
    let digest = body["approval"]["digest"]
        .as_str()
        .context("digest")?
        .to_string();
    h.done(ctx)?;
    let approval = |jti: &str| tessera_tests::approval_token(&digest, &json!({ "jti": jti }));

    // A token another replica used, with a fresh approval: refused as the token's replay...
    let (ctx, _) = refund(&mut h, &refund_token("t-used")?, Some(&approval("a-kept")?))?;
    let lease = etcd_call(&h, "/v3/lease/grant")?;
    answer(&mut h, &lease, json!({"ID": "5", "TTL": "240"}))?;
    let txn = etcd_call(&h, "/v3/kv/txn")?;
    answer_existing(&mut h, &txn, &record_key("token", AGENTS, "t-used"))?;
    assert_eq!(
        h.local_reply(ctx).map(|r| r.status),
        Some(401),
        "token already used"
    );
    h.done(ctx)?;
    // ...and the approval is not used up: with a fresh token it is recorded and forwarded.
    recorded_and_forwarded(&mut h, &refund_token("t-fresh")?, &approval("a-kept")?)?;

    // An approval another replica used, with a fresh token: refused as the approval's replay...
    let (ctx, _) = refund(&mut h, &refund_token("t-kept")?, Some(&approval("a-used")?))?;
    let txn = etcd_call(&h, "/v3/kv/txn")?;
    answer_existing(&mut h, &txn, &record_key("approval", APPROVALS, "a-used"))?;
    let reply = h.local_reply(ctx).context("refused")?;
    let body: Value = serde_json::from_slice(&reply.body)?;
    assert_eq!(
        (reply.status, &body["reason"]),
        (403, &json!("approval already used"))
    );
    h.done(ctx)?;
    // ...and the token is not used up.
    recorded_and_forwarded(&mut h, &refund_token("t-kept")?, &approval("a-other")?)?;
    // Both recorded now, on this proxy too: a replay is refused without a call.
    let (_, status) = refund(
        &mut h,
        &refund_token("t-kept")?,
        Some(&approval("a-third")?),
    )?;
    assert_eq!(status, Some(401), "token already used");
    assert!(h.http_calls().is_empty());
    Ok(())
}

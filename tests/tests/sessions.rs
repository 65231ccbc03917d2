//! MCP session bindings (issue 10, items 2 and 7, and review findings): a session is used only by
//! the whole identity that created it (principal, on whose behalf, actors, task), and live
//! bindings are bounded per worker and per caller. Through the `.wasm` in the harness.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use tessera_harness::Harness;
use tessera_tests::{
    agent, bearer, harness_with, initialize_session, now_s, read_file, AGENTS, IDP, SEAL_KEY,
};

/// The status the filter answered a `tools/call` in session `session` with (`None`: forwarded).
fn call_in_session(h: &mut Harness, auth: &str, session: &str) -> Result<Option<u32>> {
    let (ctx, status) = tessera_tests::post_mcp(
        h,
        auth,
        &[("mcp-session-id", session)],
        &read_file(2, "/workspace/a"),
    )?;
    h.done(ctx)?;
    Ok(status)
}

/// A DELETE of `session` with `auth`; when the filter forwards it (`None`), the server answers
/// with `answer`. Returns the status of the filter's own reply, if it sent one.
fn delete_session(
    h: &mut Harness,
    auth: &str,
    session: &str,
    answer: &[(&str, &str)],
) -> Result<Option<u32>> {
    let (ctx, status) = tessera_tests::request(
        h,
        "DELETE",
        "/mcp",
        Some(auth),
        &[("mcp-session-id", session)],
    )?;
    if status.is_none() {
        h.response_headers(ctx, answer, true)?;
    }
    h.done(ctx)?;
    Ok(status)
}

#[test]
fn a_session_created_for_alice_through_an_executor_is_not_bobs() -> Result<()> {
    let mut h = harness_with(|_| {})?;
    let person = |sub: &str, task: &str| {
        bearer(json!({"iss": IDP, "sub": sub, "act": {"sub": "executor"},
                      "scope": "files:read", "task_id": task}))
    };
    let alice = person("alice", "t-1")?;
    assert_eq!(initialize_session(&mut h, &alice, "s-alice")?, "200");
    assert_eq!(call_in_session(&mut h, &alice, "s-alice")?, None);
    // The same executor (the same principal), acting for bob: not this session.
    assert_eq!(
        call_in_session(&mut h, &person("bob", "t-1")?, "s-alice")?,
        Some(403)
    );
    // For alice in another task: not this session either.
    assert_eq!(
        call_in_session(&mut h, &person("alice", "t-2")?, "s-alice")?,
        Some(403)
    );
    // Alice's own token again (a new one, same identity): still hers.
    assert_eq!(
        call_in_session(&mut h, &person("alice", "t-1")?, "s-alice")?,
        None
    );
    Ok(())
}

#[test]
fn one_caller_cannot_take_every_session() -> Result<()> {
    let mut h = harness_with(|c| c["limits"]["max_sessions_per_principal"] = json!(2))?;
    let greedy = agent("files:read")?;
    assert_eq!(initialize_session(&mut h, &greedy, "g-1")?, "200");
    assert_eq!(initialize_session(&mut h, &greedy, "g-2")?, "200");
    assert_eq!(
        initialize_session(&mut h, &greedy, "g-3")?,
        "503",
        "past this caller's limit"
    );
    assert_eq!(
        call_in_session(&mut h, &greedy, "g-3")?,
        Some(404),
        "never bound"
    );
    let other = bearer(json!({"iss": AGENTS, "sub": "agent-8", "scope": "files:read"}))?;
    assert_eq!(
        initialize_session(&mut h, &other, "o-1")?,
        "200",
        "another caller still gets a session"
    );
    Ok(())
}

#[test]
fn live_session_bindings_are_bounded() -> Result<()> {
    let mut h = harness_with(|c| c["limits"]["max_sessions"] = json!(2))?;
    let auth = agent("files:read")?;
    assert_eq!(
        tessera_tests::initialize_session(&mut h, &auth, "s-1")?,
        "200"
    );
    assert_eq!(
        tessera_tests::initialize_session(&mut h, &auth, "s-2")?,
        "200"
    );
    // A session that is bound already is not a new one.
    assert_eq!(
        tessera_tests::initialize_session(&mut h, &auth, "s-2")?,
        "200"
    );
    assert_eq!(
        tessera_tests::initialize_session(&mut h, &auth, "s-3")?,
        "503",
        "past the limit"
    );
    let (_, status) = tessera_tests::post_mcp(
        &mut h,
        &auth,
        &[("mcp-session-id", "s-3")],
        &read_file(2, "/workspace/a"),
    )?;
    assert_eq!(status, Some(404), "the refused session was never bound");
    // Once old sessions expire (idle 1 h by default), new ones are bound again.
    h.advance(Duration::from_secs(3601));
    let later = now_s() + 3601;
    let auth = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "files:read",
                             "iat": later, "exp": later + 300}),
    )?;
    assert_eq!(
        tessera_tests::initialize_session(&mut h, &auth, "s-4")?,
        "200"
    );
    Ok(())
}

#[test]
fn a_session_the_server_ended_frees_its_place() -> Result<()> {
    let mut h = harness_with(|c| c["limits"]["max_sessions_per_principal"] = json!(1))?;
    let auth = agent("files:read")?;
    assert_eq!(initialize_session(&mut h, &auth, "d-1")?, "200");
    assert_eq!(
        delete_session(&mut h, &auth, "d-1", &[(":status", "204")])?,
        None,
        "the owner may end its session"
    );
    assert_eq!(call_in_session(&mut h, &auth, "d-1")?, Some(404), "ended");
    assert_eq!(
        initialize_session(&mut h, &auth, "d-2")?,
        "200",
        "the ended session no longer counts"
    );
    Ok(())
}

#[test]
fn a_delete_answer_repeating_the_session_id_does_not_bind_it_again() -> Result<()> {
    let mut h = harness_with(|_| {})?;
    let auth = agent("files:read")?;
    assert_eq!(initialize_session(&mut h, &auth, "r-1")?, "200");
    let answer = [(":status", "200"), ("mcp-session-id", "r-1")];
    assert_eq!(delete_session(&mut h, &auth, "r-1", &answer)?, None);
    assert_eq!(
        call_in_session(&mut h, &auth, "r-1")?,
        Some(404),
        "ended, not bound again with a new lifetime"
    );
    Ok(())
}

#[test]
fn a_session_ended_and_created_again_counts_once() -> Result<()> {
    let mut h = harness_with(|c| c["limits"]["max_sessions_per_principal"] = json!(2))?;
    let auth = agent("files:read")?;
    assert_eq!(initialize_session(&mut h, &auth, "again")?, "200");
    delete_session(&mut h, &auth, "again", &[(":status", "204")])?;
    assert_eq!(initialize_session(&mut h, &auth, "again")?, "200");
    // The sweep runs on the tick: it must not count the re-created session twice.
    h.tick()?;
    assert_eq!(
        initialize_session(&mut h, &auth, "other")?,
        "200",
        "one live session so far, the limit is two"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sealed session handles (`sessions.seal_keys`, issue 13): what a fleet uses.

fn sealed(keys: &[&str]) -> Result<Harness> {
    harness_with(|c| c["sessions"] = json!({ "seal_keys": keys }))
}

/// `initialize` answered by the server with its session id `server_id`: the id the client sees.
fn sealed_initialize(h: &mut Harness, auth: &str, server_id: &str) -> Result<String> {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}});
    let (ctx, status) = tessera_tests::post_mcp(h, auth, &[], &init)?;
    anyhow::ensure!(status.is_none(), "initialize refused: {status:?}");
    h.response_headers(
        ctx,
        &[(":status", "200"), ("mcp-session-id", server_id)],
        false,
    )?;
    let seen = h.response_header(ctx, "mcp-session-id").unwrap_or_default();
    h.done(ctx)?;
    Ok(seen)
}

/// A `tools/call` presenting `handle`: `Ok(server id forwarded)` or `Err(the filter's status)`.
fn sealed_call(h: &mut Harness, auth: &str, handle: &str) -> Result<Result<String, u32>> {
    let (ctx, status) = tessera_tests::post_mcp(
        h,
        auth,
        &[("mcp-session-id", handle)],
        &read_file(2, "/workspace/a"),
    )?;
    let out = match status {
        Some(s) => Err(s),
        None => Ok(h.request_header(ctx, "mcp-session-id").unwrap_or_default()),
    };
    h.done(ctx)?;
    Ok(out)
}

const OTHER_KEY: &str = "b3RoZXItdGVzdC1zZWFsLWtleS0zMi1ieXRlcy4uLi4=";

#[test]
fn a_sealed_session_is_the_servers_id_upstream_and_its_owners_only() -> Result<()> {
    let mut h = sealed(&[SEAL_KEY])?;
    let alice = agent("files:read")?;
    let handle = sealed_initialize(&mut h, &alice, "srv-1")?;
    assert!(
        handle.starts_with("t1.") && !handle.contains("srv-1"),
        "{handle}"
    );
    // The owner's requests reach the server with its own id.
    assert_eq!(sealed_call(&mut h, &alice, &handle)?, Ok("srv-1".into()));
    // Anyone else: 403; the server's raw id or an altered handle: 404 (never forwarded).
    let bob = bearer(json!({"iss": AGENTS, "sub": "agent-8", "scope": "files:read"}))?;
    assert_eq!(sealed_call(&mut h, &bob, &handle)?, Err(403));
    assert_eq!(sealed_call(&mut h, &alice, "srv-1")?, Err(404));
    let altered = handle.replacen("t1.", "t1.9", 1);
    assert_eq!(sealed_call(&mut h, &alice, &altered)?, Err(404));
    // A second copy of the header (the raw id of another session) is refused, not forwarded.
    let (ctx, status) = tessera_tests::post_mcp(
        &mut h,
        &alice,
        &[("mcp-session-id", &handle), ("mcp-session-id", "srv-2")],
        &read_file(3, "/workspace/a"),
    )?;
    assert_eq!(status, Some(400));
    h.done(ctx)?;
    Ok(())
}

#[test]
fn an_answer_repeating_the_servers_id_carries_the_handle_the_client_holds() -> Result<()> {
    let mut h = sealed(&[SEAL_KEY])?;
    let alice = agent("files:read")?;
    let handle = sealed_initialize(&mut h, &alice, "srv-1")?;
    h.advance(Duration::from_secs(5));
    let (ctx, status) = tessera_tests::post_mcp(
        &mut h,
        &alice,
        &[("mcp-session-id", &handle)],
        &read_file(2, "/workspace/a"),
    )?;
    assert_eq!(status, None);
    h.response_headers(
        ctx,
        &[(":status", "200"), ("mcp-session-id", "srv-1")],
        false,
    )?;
    assert_eq!(h.response_header(ctx, "mcp-session-id"), Some(handle));
    h.done(ctx)?;
    Ok(())
}

#[test]
fn every_replica_with_the_keys_knows_a_session_and_a_restart_forgets_none() -> Result<()> {
    let alice = agent("files:read")?;
    let handle = sealed_initialize(&mut sealed(&[SEAL_KEY])?, &alice, "srv-1")?;
    // Another module instance (another replica, or this one restarted): the same keys open it.
    let mut b = sealed(&[SEAL_KEY])?;
    assert_eq!(sealed_call(&mut b, &alice, &handle)?, Ok("srv-1".into()));
    // Rotation: a new first key still opens handles of the old one.
    let mut rotated = sealed(&[OTHER_KEY, SEAL_KEY])?;
    assert_eq!(
        sealed_call(&mut rotated, &alice, &handle)?,
        Ok("srv-1".into())
    );
    // Other keys: not a session of this fleet.
    let mut stranger = sealed(&[OTHER_KEY])?;
    assert_eq!(sealed_call(&mut stranger, &alice, &handle)?, Err(404));
    Ok(())
}

#[test]
fn a_sealed_session_ends_at_its_absolute_lifetime() -> Result<()> {
    let mut h = harness_with(|c| {
        c["sessions"] = json!({ "seal_keys": [SEAL_KEY] });
        c["limits"]["session_ttl_s"] = json!(600);
    })?;
    let handle = sealed_initialize(&mut h, &agent("files:read")?, "srv-1")?;
    h.advance(Duration::from_secs(601));
    let later = now_s() + 601;
    let fresh = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "files:read",
                              "iat": later, "exp": later + 300}),
    )?;
    assert_eq!(sealed_call(&mut h, &fresh, &handle)?, Err(404));
    Ok(())
}

// ---- attacker review of sealed sessions: each finding, with a test that failed before ----

#[test]
fn shadow_mode_never_seals_a_session_the_caller_presented_but_could_not_open() -> Result<()> {
    // Alice's session; the server's id is readable in her handle. Bob presents the raw id in
    // shadow mode (forwarded, refusal only logged): the answer's id is not sealed for him.
    let mut alice_h = sealed(&[SEAL_KEY])?;
    let alice = agent("files:read")?;
    let handle = sealed_initialize(&mut alice_h, &alice, "srv-1")?;
    let mut shadow = harness_with(|c| {
        c["sessions"] = json!({ "seal_keys": [SEAL_KEY] });
        c["mode"] = json!("shadow");
    })?;
    let bob = bearer(json!({"iss": AGENTS, "sub": "agent-8", "scope": "files:read"}))?;
    let (ctx, status) = tessera_tests::post_mcp(
        &mut shadow,
        &bob,
        &[("mcp-session-id", "srv-1")],
        &read_file(2, "/workspace/a"),
    )?;
    assert_eq!(status, None, "shadow mode forwards");
    shadow.response_headers(
        ctx,
        &[(":status", "200"), ("mcp-session-id", "srv-1")],
        false,
    )?;
    assert_eq!(
        shadow.response_header(ctx, "mcp-session-id"),
        None,
        "withheld, not sealed for bob"
    );
    shadow.done(ctx)?;
    assert!(handle.starts_with("t1."));
    Ok(())
}

#[test]
fn an_answer_naming_another_session_or_an_unsealable_id_carries_none() -> Result<()> {
    let mut h = sealed(&[SEAL_KEY])?;
    let alice = agent("files:read")?;
    let handle = sealed_initialize(&mut h, &alice, "srv-1")?;
    let answer = |h: &mut Harness, presented: Option<&str>, id: &str| -> Result<Option<String>> {
        let extra: Vec<(&str, &str)> = presented
            .map(|p| ("mcp-session-id", p))
            .into_iter()
            .collect();
        let (ctx, status) =
            tessera_tests::post_mcp(h, &alice, &extra, &read_file(3, "/workspace/a"))?;
        assert_eq!(status, None);
        h.response_headers(ctx, &[(":status", "200"), ("mcp-session-id", id)], false)?;
        let seen = h.response_header(ctx, "mcp-session-id");
        h.done(ctx)?;
        Ok(seen)
    };
    // In Alice's session, an answer naming another session: removed.
    assert_eq!(answer(&mut h, Some(&handle), "srv-2")?, None);
    // Without a session: an id too long to seal is removed, never passed on raw.
    assert_eq!(answer(&mut h, None, &"x".repeat(600))?, None);
    Ok(())
}

#[test]
fn a_session_header_under_another_spelling_or_in_the_trailers_never_reaches_the_server(
) -> Result<()> {
    let mut h = sealed(&[SEAL_KEY])?;
    let bob = agent("files:read")?;
    // `mcp_session_id` (a server folding `_` into `-` would read it as the session): 400.
    let (ctx, status) = tessera_tests::post_mcp(
        &mut h,
        &bob,
        &[("mcp_session_id", "srv-1")],
        &read_file(2, "/workspace/a"),
    )?;
    assert_eq!(status, Some(400));
    h.done(ctx)?;
    // A copy in the request trailers is removed.
    let body = read_file(3, "/workspace/a").to_string();
    let ctx = h.new_http()?;
    let len = body.len().to_string();
    h.request_headers(
        ctx,
        &[
            (":method", "POST"),
            (":path", "/mcp"),
            (":authority", "api.example.com"),
            ("authorization", &bob),
            ("content-type", "application/json"),
            ("content-length", &len),
        ],
        false,
    )?;
    h.request_body(ctx, body.as_bytes(), false)?;
    h.request_trailers(ctx, &[("mcp-session-id", "srv-1"), ("x-other", "kept")])?;
    let trailers = h.request_trailers_of(ctx);
    assert!(
        !trailers.iter().any(|(k, _)| k == "mcp-session-id"),
        "{trailers:?}"
    );
    assert!(trailers.iter().any(|(k, _)| k == "x-other"), "{trailers:?}");
    Ok(())
}

#[test]
fn shortening_the_session_lifetime_shortens_handles_sealed_before() -> Result<()> {
    let long = |ttl: u64| {
        harness_with(move |c| {
            c["sessions"] = json!({ "seal_keys": [SEAL_KEY] });
            c["limits"]["session_ttl_s"] = json!(ttl);
        })
    };
    let alice = agent("files:read")?;
    let handle = sealed_initialize(&mut long(30 * 86_400)?, &alice, "srv-1")?;
    assert_eq!(
        sealed_call(&mut long(30 * 86_400)?, &alice, &handle)?,
        Ok("srv-1".into())
    );
    assert_eq!(sealed_call(&mut long(600)?, &alice, &handle)?, Err(404));
    Ok(())
}

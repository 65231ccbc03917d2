//! Single-use redemption and MCP session binding, natively: `tessera_core::obligations` over the
//! in-memory `Store` (the `.wasm` runs the same code over the proxy's shared data; see
//! `sessions.rs` and `mcp_scenarios.rs` for the same flows through the module).

use anyhow::Result;
use serde_json::{json, Value};
use tessera_core::obligations::Redeemed;
use tessera_core::session::{Binding, SessionCaller};
use tessera_core::store::MemoryStore;
use tessera_core::{Decision, Engine, HttpRequest, Verdict};
use tessera_tests::{bearer, now_s, test_config, AGENTS};

fn engine_with(edit: impl FnOnce(&mut Value)) -> Result<Engine> {
    let mut c = test_config()?;
    edit(&mut c);
    Engine::from_json(c.to_string().as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))
}

fn agent(sub: &str) -> Result<String> {
    bearer(json!({"iss": AGENTS, "sub": sub, "scope": "files:read orders:read"}))
}

fn decide(e: &Engine, method: &str, path: &str, auth: &str) -> Decision {
    e.check(
        &HttpRequest {
            method,
            path,
            host: "api.example.com",
            authorization: Some(auth),
            request_id: "r-1",
            ..HttpRequest::default()
        },
        &MemoryStore::new(),
        now_s(),
    )
}

/// The caller of an allowed GET on the MCP route with `auth`: whose session its answer may create.
fn caller_of(e: &Engine, store: &MemoryStore, auth: &str) -> Result<SessionCaller> {
    let mut d = decide(e, "GET", "/mcp", auth);
    e.check_session(store, &mut d, "GET", None, "r", now_s())
        .ok_or_else(|| anyhow::anyhow!("no caller: {}", d.reason))
}

/// The status a GET on the MCP route presenting `session` gets from `e` (`None`: forwarded).
fn get_in_session(e: &Engine, store: &MemoryStore, auth: &str, session: &str) -> Option<u32> {
    let mut d = decide(e, "GET", "/mcp", auth);
    assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
    e.check_session(
        store,
        &mut d,
        "GET",
        Some(session.as_bytes()),
        "r-1",
        now_s(),
    );
    d.reply.map(|r| r.status)
}

#[test]
fn a_session_is_bound_to_its_creator_and_unknown_ids_are_not_found() -> Result<()> {
    let e = engine_with(|_| {})?;
    let store = MemoryStore::new();
    let (alice, bob) = (agent("alice")?, agent("bob")?);
    let caller = caller_of(&e, &store, &alice)?;
    assert_eq!(
        e.bind_session(&store, &caller, "s-1", now_s()),
        Binding::Bound
    );
    assert_eq!(get_in_session(&e, &store, &alice, "s-1"), None);
    assert_eq!(get_in_session(&e, &store, &bob, "s-1"), Some(403));
    assert_eq!(get_in_session(&e, &store, &alice, "s-2"), Some(404));
    // Bound already: the server repeating the id does not move the binding to someone else.
    let bobs = caller_of(&e, &store, &bob)?;
    assert_eq!(
        e.bind_session(&store, &bobs, "s-1", now_s()),
        Binding::Bound
    );
    assert_eq!(get_in_session(&e, &store, &bob, "s-1"), Some(403));
    Ok(())
}

#[test]
fn a_request_on_another_route_binds_nothing() -> Result<()> {
    let e = engine_with(|_| {})?;
    let store = MemoryStore::new();
    let mut d = decide(&e, "GET", "/orders/1", &agent("alice")?);
    assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
    assert!(e
        .check_session(&store, &mut d, "GET", Some(b"s-1"), "r-1", now_s())
        .is_none());
    assert!(d.reply.is_none(), "the session header means nothing here");
    Ok(())
}

#[test]
fn session_limits_hold_per_worker_and_per_caller() -> Result<()> {
    let e = engine_with(|c| {
        c["limits"]["max_sessions"] = json!(3);
        c["limits"]["max_sessions_per_principal"] = json!(2);
    })?;
    let store = MemoryStore::new();
    let (a, b) = (
        caller_of(&e, &store, &agent("a")?)?,
        caller_of(&e, &store, &agent("b")?)?,
    );
    let bind = |c, s| e.bind_session(&store, c, s, now_s());
    assert_eq!(bind(&a, "a-1"), Binding::Bound);
    assert_eq!(bind(&a, "a-2"), Binding::Bound);
    assert!(matches!(
        bind(&a, "a-3"),
        Binding::Refused { limit, enforce: true } if limit.contains("max_sessions_per_principal")
    ));
    assert_eq!(bind(&b, "b-1"), Binding::Bound);
    assert!(matches!(
        bind(&b, "b-2"),
        Binding::Refused { limit, .. } if limit.starts_with("limits.max_sessions live")
    ));
    Ok(())
}

#[test]
fn a_binding_expires_when_idle() -> Result<()> {
    let e = engine_with(|c| c["limits"]["session_idle_s"] = json!(60))?;
    let store = MemoryStore::new();
    let alice = agent("alice")?;
    let caller = caller_of(&e, &store, &alice)?;
    let start = now_s();
    assert_eq!(
        e.bind_session(&store, &caller, "s-1", start),
        Binding::Bound
    );
    let mut d = decide(&e, "GET", "/mcp", &alice);
    e.check_session(&store, &mut d, "GET", Some(b"s-1"), "r", start + 61);
    assert_eq!(d.reply.map(|r| r.status), Some(404), "idle past 60 s");
    Ok(())
}

#[test]
fn a_single_use_token_is_redeemed_once() -> Result<()> {
    let e = engine_with(|_| {})?;
    let store = MemoryStore::new();
    let token = bearer(
        json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read",
                              "single_use": true, "jti": "once-1"}),
    )?;
    let d = decide(&e, "GET", "/orders/1", &token);
    assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
    assert_eq!(d.once.len(), 1, "a single-use token carries its obligation");
    assert!(
        matches!(e.redeem(&store, &d, 0, "r-1", now_s()), Redeemed::Stands),
        "first use: forwarded"
    );
    let again = decide(&e, "GET", "/orders/1", &token);
    let Redeemed::Refused(refused) = e.redeem(&store, &again, 0, "r-2", now_s()) else {
        anyhow::bail!("a replay is refused");
    };
    assert_ne!(refused.verdict, Verdict::Allow);
    assert_eq!(refused.reply.map(|r| r.status), Some(401));
    assert!(refused.set_headers.is_empty(), "no identity headers");
    Ok(())
}

#[test]
fn a_principal_with_many_tasks_still_has_one_session_quota() -> Result<()> {
    let e = engine_with(|c| c["limits"]["max_sessions_per_principal"] = json!(2))?;
    let store = MemoryStore::new();
    let in_task = |task: &str| -> Result<_> {
        let auth = bearer(
            json!({"iss": AGENTS, "sub": "agent-7", "scope": "files:read",
                                 "task_id": task}),
        )?;
        caller_of(&e, &store, &auth)
    };
    assert_eq!(
        e.bind_session(&store, &in_task("t-1")?, "s-1", now_s()),
        Binding::Bound
    );
    assert_eq!(
        e.bind_session(&store, &in_task("t-2")?, "s-2", now_s()),
        Binding::Bound
    );
    assert!(
        matches!(
            e.bind_session(&store, &in_task("t-3")?, "s-3", now_s()),
            Binding::Refused { .. }
        ),
        "a new task is not a new quota"
    );
    Ok(())
}

#[test]
fn a_session_the_server_ended_is_unbound() -> Result<()> {
    let e = engine_with(|c| c["limits"]["max_sessions_per_principal"] = json!(1))?;
    let store = MemoryStore::new();
    let alice = agent("alice")?;
    let caller = caller_of(&e, &store, &alice)?;
    assert_eq!(
        e.bind_session(&store, &caller, "s-1", now_s()),
        Binding::Bound
    );
    // A DELETE the server refuses ends nothing.
    let mut d = decide(&e, "DELETE", "/mcp", &alice);
    let deleting = e
        .check_session(&store, &mut d, "DELETE", Some(b"s-1"), "r", now_s())
        .expect("caller");
    e.end_session(&store, &deleting, 405);
    assert_eq!(
        get_in_session(&e, &store, &alice, "s-1"),
        None,
        "still bound"
    );
    // Bob's DELETE of alice's session is refused before it reaches the server.
    let mut d = decide(&e, "DELETE", "/mcp", &agent("bob")?);
    assert!(e
        .check_session(&store, &mut d, "DELETE", Some(b"s-1"), "r", now_s())
        .is_none());
    assert_eq!(d.reply.map(|r| r.status), Some(403));
    // Alice's, answered 204: unbound, and her quota is free again.
    e.end_session(&store, &deleting, 204);
    assert_eq!(get_in_session(&e, &store, &alice, "s-1"), Some(404));
    assert_eq!(
        e.bind_session(&store, &caller, "s-2", now_s()),
        Binding::Bound
    );
    Ok(())
}

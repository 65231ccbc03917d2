//! Harness mechanics against the real Tessera module (`$TESSERA_WASM`, or the release build in
//! the target directory). Assertions stick to the configuration and replies README.md documents, so the plugin can
//! evolve underneath without breaking these.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tessera_harness::{Action, Harness, LogLevel};

fn harness() -> Harness {
    Harness::load_tessera().unwrap_or_else(|e| panic!("{e:#}"))
}

/// JSON string literal for `s` (the harness has no JSON dependency to lean on).
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A small valid configuration: the reference schema, allow-all policy, an HMAC issuer, one
/// public and one protected route.
fn valid_config() -> String {
    let schema_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/tessera.cedarschema"
    );
    let schema =
        std::fs::read_to_string(schema_path).unwrap_or_else(|e| panic!("{schema_path}: {e}"));
    format!(
        r#"{{
          "issuers": [{{
            "issuer": "https://idp.harness.test",
            "audiences": ["orders-api"],
            "hmac_secret": "Ll7Gb1mHJsZ3wDiwagv8dy3kDanBeG8BY_mET9hDztY",
            "principal": {{ "type": "User" }}
          }}],
          "schema": {},
          "policies": "permit(principal, action, resource);",
          "routes": [
            {{ "name": "health", "prefix": "/healthz", "auth": "none" }},
            {{ "name": "orders", "prefix": "/orders" }}
          ]
        }}"#,
        json_string(&schema)
    )
}

fn get(path: &str) -> [(&str, &str); 4] {
    [
        (":method", "GET"),
        (":path", path),
        (":authority", "api.example.com"),
        (":scheme", "http"),
    ]
}

/// Imports the proxy-wasm SDK links in whether or not the filter uses them (gRPC, shared queues,
/// foreign functions). The harness leaves these as trapping stubs; anything else stubbed is a
/// hostcall the module started using that the harness must learn first.
const SDK_UNUSED_IMPORTS: &[&str] = &[
    "env::proxy_grpc_call",
    "env::proxy_grpc_stream",
    "env::proxy_grpc_send",
    "env::proxy_grpc_cancel",
    "env::proxy_grpc_close",
    "env::proxy_get_status",
    "env::proxy_register_shared_queue",
    "env::proxy_resolve_shared_queue",
    "env::proxy_enqueue_shared_queue",
    "env::proxy_dequeue_shared_queue",
    "env::proxy_call_foreign_function",
];

#[test]
fn module_loads_and_uses_only_implemented_hostcalls() {
    let h = harness();
    let unknown: Vec<&String> = h
        .stubbed_imports()
        .iter()
        .filter(|i| !SDK_UNUSED_IMPORTS.contains(&i.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the module imports hostcalls tessera-harness does not implement: {unknown:?}"
    );
}

#[test]
fn bad_config_is_refused_logged_and_fails_closed() {
    let mut h = harness();
    assert!(!h.configure("{ this is not json").unwrap());
    assert_eq!(h.configured(), Some(false));
    assert!(
        h.logs().iter().any(|l| l.level >= LogLevel::Error),
        "no error logged for a bad configuration: {:?}",
        h.logs()
    );
    // Not configured: every request is refused with a 5xx, never forwarded.
    let ctx = h.new_http().unwrap();
    assert_eq!(
        h.request_headers(ctx, &get("/orders"), true).unwrap(),
        Action::Pause
    );
    let reply = h.local_reply(ctx).expect("a local reply");
    assert!((500..600).contains(&reply.status), "{reply:?}");
    h.done(ctx).unwrap();
}

#[test]
fn unrouted_and_unauthenticated_requests_get_local_replies() {
    let mut h = harness();
    assert!(
        h.configure(&valid_config()).unwrap(),
        "valid config refused: {:?}",
        h.logs()
    );

    // No route: 403.
    let ctx = h.new_http().unwrap();
    assert_eq!(
        h.request_headers(ctx, &get("/nowhere"), true).unwrap(),
        Action::Pause
    );
    assert_eq!(h.local_reply(ctx).expect("a local reply").status, 403);
    h.done(ctx).unwrap();

    // Protected route without a token: 401 with a Bearer challenge.
    let ctx = h.new_http().unwrap();
    assert_eq!(
        h.request_headers(ctx, &get("/orders/1"), true).unwrap(),
        Action::Pause
    );
    let reply = h.local_reply(ctx).expect("a local reply");
    assert_eq!(reply.status, 401);
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{reply:?}"
    );
    h.done(ctx).unwrap();

    // Public route: forwarded untouched by a reply.
    let ctx = h.new_http().unwrap();
    assert_eq!(
        h.request_headers(ctx, &get("/healthz"), true).unwrap(),
        Action::Continue
    );
    assert_eq!(h.local_reply(ctx), None);
    h.done(ctx).unwrap();

    assert_eq!(h.metric("tessera.decisions.unauthenticated"), Some(1));
    assert_eq!(h.metric("tessera.decisions.public"), Some(1));
    assert_eq!(h.metric("tessera.decisions.allow"), Some(0));
}

//! Property tests of the parsers an attacker feeds (issue 10, item 10). Bounded here (the case
//! count of `PROPTEST_CASES`, default 256 per property, inside `cargo xtask test`); `cargo xtask
//! fuzz` runs the same properties with many more cases.
//!
//! - token verification never panics, and a valid token with any byte changed never verifies;
//! - strict JSON accepts only what serde_json accepts, as serde_json reads it, and refuses
//!   duplicate keys and nesting past the limit;
//! - the SSE rewriter gives the same output however the stream is cut into chunks;
//! - path canonicalisation is idempotent, keeps what the upstream decodes, and routes the
//!   canonical path as the decoded raw path would be routed;
//! - configuration parsing never panics.

use proptest::prelude::*;
use serde_json::{json, Value};
use tessera_core::listing::SseRewriter;
use tessera_core::store::MemoryStore;
use tessera_core::{Engine, HttpRequest, Verdict};
use tessera_tests::{mint, now_s, test_config, AGENTS};

fn engine() -> &'static Engine {
    static E: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    E.get_or_init(|| {
        let c = test_config().unwrap_or_default();
        match Engine::from_json(c.to_string().as_bytes()) {
            Ok(e) => e,
            Err(e) => unreachable!("the test configuration compiles: {e}"),
        }
    })
}

fn valid_token() -> &'static str {
    static T: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        mint(
            "ES256",
            &json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read", "exp": now_s() + 3000, "iat": now_s()}),
        )
        .unwrap_or_default()
    })
}

fn decide(token: &str) -> Verdict {
    let auth = format!("Bearer {token}");
    let req = HttpRequest {
        method: "GET",
        path: "/orders/1",
        host: "api.example.com",
        authorization: Some(&auth),
        request_id: "prop",
        ..HttpRequest::default()
    };
    engine().check(&req, &MemoryStore::new(), now_s()).verdict
}

/// Percent-decodes once, as an upstream does.
fn decode(p: &str) -> Vec<u8> {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn path_strategy() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        Just("admin".to_string()),
        Just("ADMIN".to_string()),
        Just("%61dmin".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just("%2e".to_string()),
        Just("%2F".to_string()),
        Just("a;b".to_string()),
        Just("%7e%41".to_string()),
        Just("%c3%a9".to_string()),
        "[a-zA-Z0-9_~%.-]{0,6}",
    ];
    proptest::collection::vec(seg, 0..6).prop_map(|s| format!("/{}", s.join("/")))
}

fn json_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z\"\\\\é]{0,5}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map("[a-c]{1,2}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn sse_strategy() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just("data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}".to_string()),
        Just("event: message".to_string()),
        Just(": keepalive".to_string()),
        Just("id: 7".to_string()),
        Just("data: list".to_string()),
        Just("".to_string()),
        "[a-z: ]{0,8}",
    ];
    let eol = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
    proptest::collection::vec((line, eol), 0..12).prop_map(|v| {
        v.into_iter()
            .flat_map(|(l, e)| format!("{l}{e}").into_bytes())
            .collect()
    })
}

fn rewrite_all(stream: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut upper = |d: &str| d.contains("list").then(|| d.to_uppercase());
    let mut r = SseRewriter::new();
    let mut out = Vec::new();
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    for c in cuts.into_iter().chain([stream.len()]) {
        out.extend(r.push(&stream[at..c], &mut upper));
        at = c;
    }
    out.extend(r.finish(&mut upper));
    out
}

proptest! {
    #[test]
    fn token_verification_never_panics(s in "\\PC{0,300}") {
        let _ = decide(&s);
        let dotted = format!("{s}.{s}.{s}");
        let _ = decide(&dotted);
    }

    #[test]
    fn a_valid_token_with_a_byte_changed_never_verifies(i in any::<prop::sample::Index>(), b in any::<u8>()) {
        let t = valid_token().as_bytes().to_vec();
        prop_assume!(!t.is_empty());
        let at = i.index(t.len());
        prop_assume!(t[at] != b);
        let mut m = t.clone();
        m[at] = b;
        let Ok(m) = String::from_utf8(m) else { return Ok(()) };
        // The unmutated token is allowed; a changed one is never.
        prop_assert_eq!(decide(valid_token()), Verdict::Allow);
        prop_assert_ne!(decide(&m), Verdict::Allow, "mutated at {}: {}", at, m);
    }

    #[test]
    fn strict_json_reads_what_serde_json_reads(v in json_strategy()) {
        let text = v.to_string();
        let strict = tessera_core::json::parse_strict(text.as_bytes(), 64);
        let loose: Result<Value, _> = serde_json::from_str(&text);
        prop_assert_eq!(strict.ok(), loose.ok());
    }

    #[test]
    fn strict_json_accepts_nothing_serde_json_refuses(s in "[\\[\\]{}\":,a-c0-9 ]{0,40}") {
        if let Ok(v) = tessera_core::json::parse_strict(s.as_bytes(), 64) {
            let loose: Value = serde_json::from_str(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(v, loose);
        }
    }

    #[test]
    fn duplicate_keys_and_deep_nesting_are_refused(k in "[a-z]{1,4}", a in any::<i32>(), b in any::<i32>(), depth in 3usize..40) {
        let dup = format!("{{\"{k}\":{a},\"x\":[],\"{k}\":{b}}}");
        prop_assert!(tessera_core::json::parse_strict(dup.as_bytes(), 64).is_err());
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        prop_assert!(tessera_core::json::parse_strict(deep.as_bytes(), 2).is_err());
    }

    #[test]
    fn the_sse_rewriter_does_not_depend_on_chunking(stream in sse_strategy(), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        prop_assert_eq!(rewrite_all(&stream, &cuts), rewrite_all(&stream, &[]));
    }

    #[test]
    fn path_canonicalisation_is_idempotent_and_keeps_meaning(p in path_strategy()) {
        if let Ok(c) = tessera_core::path::canonical(&p) {
            let again = tessera_core::path::canonical(&c).map(|x| x.into_owned());
            prop_assert_eq!(again.as_deref(), Ok(c.as_ref()));
            // What the upstream decodes is what was routed.
            prop_assert_eq!(decode(&c), decode(&p));
            for prefix in ["/admin", "/admin/", "/a"] {
                let decoded = String::from_utf8_lossy(&decode(&p)).into_owned();
                prop_assert_eq!(
                    tessera_core::path::under(&c, prefix),
                    tessera_core::path::under(&decoded, prefix),
                    "{} vs {}", c, decoded
                );
            }
        }
    }

    #[test]
    fn configuration_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Engine::from_json(&bytes);
    }

    #[test]
    fn a_mutated_configuration_never_panics(i in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut c = test_config().unwrap_or_default().to_string().into_bytes();
        let at = i.index(c.len());
        c[at] = b;
        let _ = Engine::from_json(&c);
    }
}

//! Native `tessera-core`, per stage and whole request: token parse, parse + signature verify per
//! algorithm, the verified-token cache, Cedar evaluation, `Engine::check` cold and cached, and
//! how cost grows with the number of policies and the size of the token.

// Benchmark setup that cannot run (no demo keys, a config core rejects) must stop the run with a
// message, not measure something else: expect/panic are the right tools here, unlike in the filter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::sync::Arc;

use cedar_policy::{Entity, RestrictedExpression};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use serde_json::{json, Map, Value};
use tessera_benches::{
    agent_token, config, delegated_token, engine, mcp_body, padded_token, with_unknown_kid, Setup,
    ALGORITHMS, DELEGATION_DEPTHS, MCP_BATCHES, MCP_PATH, PATH, POLICY_COUNTS, TOKEN_SIZES,
};
use tessera_core::authz::{uid, PerRequest, Policies};
use tessera_core::cache::{self, TokenCache};
use tessera_core::config::{Config, PolicySource};
use tessera_core::store::MemoryStore;
use tessera_core::token::{self, Issuer, VerifiedToken};
use tessera_core::{Engine, HttpRequest, Verdict};
use tessera_tests::{now_s, AGENTS};

const MAX_TOKEN_BYTES: usize = 16_384;

/// The compiled issuers of the bench configuration, as the engine holds them.
fn issuers() -> Vec<Issuer> {
    compile_issuers(config(Setup::CACHED).expect("bench config"))
}

fn compile_issuers(config: Value) -> Vec<Issuer> {
    let json = serde_json::to_vec(&config).unwrap();
    let c = Config::parse(&json).expect("bench config parses");
    c.issuers
        .iter()
        .enumerate()
        .map(|(i, ic)| {
            Issuer::compile(ic, &format!("issuers[{i}]"), &c.limits).expect("issuer compiles")
        })
        .collect()
}

fn request(authorization: &str) -> HttpRequest<'_> {
    HttpRequest {
        method: "GET",
        path: PATH,
        host: "api.example.com",
        authorization: Some(authorization),
        request_id: "bench-request",
        ..HttpRequest::default()
    }
}

fn mcp_request(authorization: &str) -> HttpRequest<'_> {
    HttpRequest {
        method: "POST",
        path: MCP_PATH,
        content_type: Some("application/json"),
        ..request(authorization)
    }
}

fn check_allows(engine: &Engine, authorization: &str) {
    let d = engine.check(&request(authorization), &MemoryStore::new(), now_s());
    assert_eq!(
        d.verdict,
        Verdict::Allow,
        "bench request not allowed: {d:?}"
    );
}

/// Token parse (header + payload decode, issuer and key lookup) and parse + verify per algorithm.
fn token_stages(c: &mut Criterion) {
    let issuers = issuers();
    let now = now_s();
    let mut g = c.benchmark_group("native/token");

    let parse_only = with_unknown_kid(&agent_token("ES256", &json!({})).unwrap()).unwrap();
    assert!(matches!(
        token::verify(&issuers, &parse_only, now, MAX_TOKEN_BYTES, None),
        Err(tessera_core::TokenError::UnknownKid(_))
    ));
    g.bench_function("parse", |b| {
        b.iter(|| token::verify(&issuers, black_box(&parse_only), now, MAX_TOKEN_BYTES, None))
    });

    for alg in ALGORITHMS {
        let t = agent_token(alg, &json!({})).expect("mint");
        token::verify(&issuers, &t, now, MAX_TOKEN_BYTES, None).expect("bench token verifies");
        g.bench_with_input(BenchmarkId::new("verify", alg), &t, |b, t| {
            b.iter(|| token::verify(&issuers, black_box(t), now, MAX_TOKEN_BYTES, None))
        });
    }

    // Verified by Envoy's jwt_authn: the metadata compared with the payload, claims checked.
    let by_jwt_authn = compile_issuers(tessera_benches::by_jwt_authn(
        config(Setup::CACHED).expect("bench config"),
    ));
    let t = agent_token("ES256", &json!({})).expect("mint");
    let metadata = tessera_benches::jwt_authn_metadata(&t).expect("metadata");
    token::verify(&by_jwt_authn, &t, now, MAX_TOKEN_BYTES, Some(&metadata))
        .expect("bench token verified by jwt_authn");
    g.bench_function(BenchmarkId::new("verify", "jwt_authn"), |b| {
        b.iter(|| {
            token::verify(
                &by_jwt_authn,
                black_box(&t),
                now,
                MAX_TOKEN_BYTES,
                Some(&metadata),
            )
        })
    });
    g.finish();
}

fn verified(i: usize, now: u64) -> Arc<VerifiedToken> {
    let mut payload = Map::new();
    payload.insert("sub".into(), Value::String(format!("agent-{i}")));
    Arc::new(VerifiedToken {
        issuer_index: 1,
        issuer: AGENTS.into(),
        subject: Some(format!("agent-{i}")),
        audience: vec!["orders-api".into()],
        scopes: vec!["orders:read".into()],
        client_id: None,
        issued_at: Some(now),
        expires_at: now + 3_000,
        jti: None,
        key_generation: 0,
        checked: Default::default(),
        session_owner: Default::default(),
        payload: payload.into(),
        agent: Default::default(),
        binding: Default::default(),
    })
}

/// The cache alone: SHA-256 of the token and the lookup in a full cache (10,000 tokens).
fn cache_hit(c: &mut Criterion) {
    let now = now_s();
    let t = agent_token("ES256", &json!({})).unwrap();
    let mut cache = TokenCache::new(10_000, 64 << 20);
    for i in 0..9_999 {
        cache.insert(
            cache::digest(&format!("other-token-{i}")),
            verified(i, now),
            600,
            now,
        );
    }
    cache.insert(cache::digest(&t), verified(7, now), t.len(), now);
    assert_eq!(cache.len(), 10_000);
    let mut g = c.benchmark_group("native/cache");
    g.bench_function("hit", |b| {
        b.iter(|| cache.get(&cache::digest(black_box(&t)), now).is_some())
    });
    // Token churn: a new token into the full cache (the oldest makes room).
    let fresh = verified(8, now);
    let mut n = 0u64;
    g.bench_function("insert_full", |b| {
        b.iter(|| {
            n += 1;
            let key = cache::digest(&format!("churn-{n}"));
            cache.insert(key, fresh.clone(), 600, now);
        })
    });
    assert_eq!(cache.len(), 10_000);
    g.finish();
}

/// The Cedar inputs Tessera builds for `GET /orders/42` by `Agent::"agent-7"` (as
/// `Engine::evaluate` does: principal entity, route resource, token/request/now/delegation
/// context).
fn cedar_inputs(
    now: u64,
) -> (
    Entity,
    cedar_policy::EntityUid,
    Vec<(String, RestrictedExpression)>,
) {
    let principal = Entity::new(
        uid("Agent", "agent-7").unwrap(),
        HashMap::new(),
        HashSet::new(),
    )
    .unwrap();
    let resource = uid("Route", "orders").unwrap();
    let s = |v: &str| RestrictedExpression::new_string(v.to_string());
    let long = |n: u64| RestrictedExpression::new_long(n as i64);
    let token = RestrictedExpression::new_record([
        ("issuer".to_string(), s(AGENTS)),
        ("subject".to_string(), s("agent-7")),
        (
            "audience".to_string(),
            RestrictedExpression::new_set([s("orders-api")]),
        ),
        (
            "scopes".to_string(),
            RestrictedExpression::new_set([s("orders:read")]),
        ),
        ("expires_at".to_string(), long(now + 3_000)),
        ("issued_at".to_string(), long(now)),
        (
            "claims".to_string(),
            RestrictedExpression::new_record(Vec::<(String, RestrictedExpression)>::new()).unwrap(),
        ),
    ])
    .unwrap();
    let request = RestrictedExpression::new_record([
        ("method".to_string(), s("GET")),
        ("path".to_string(), s("/orders/42")),
        ("host".to_string(), s("api.example.com")),
        (
            "headers".to_string(),
            RestrictedExpression::new_record([]).unwrap(),
        ),
    ])
    .unwrap();
    // A token without `act`: the agent acts for itself (agent.rs).
    let delegation = tessera_core::agent::delegation_record(
        &tessera_core::agent::Delegation::default(),
        uid("User", "agent-7").unwrap(),
        "agent-7",
    )
    .unwrap();
    let context = vec![
        ("token".to_string(), token),
        ("request".to_string(), request),
        ("now".to_string(), long(now)),
        ("delegation".to_string(), delegation),
        // A bearer token: not bound, nothing proven (pop/mod.rs).
        (
            "pop".to_string(),
            tessera_core::authz::expression_of(
                tessera_core::pop::Binding::default().context().unwrap(),
            ),
        ),
    ];
    (principal, resource, context)
}

fn policies(extra: usize) -> Policies {
    let c = config(Setup::with_policies(extra)).unwrap();
    let schema = c["schema"].as_str().unwrap().to_string();
    let mut text = String::new();
    for v in c["policies"].as_object().unwrap().values() {
        text.push_str(v.as_str().unwrap());
        text.push('\n');
    }
    let p = Policies::compile(&schema, &PolicySource::Text(text)).expect("policies compile");
    assert_eq!(p.policy_count(), examples() + extra);
    p
}

/// How many example policies `policies/*.cedar` hold.
fn examples() -> usize {
    engine(Setup::CACHED).unwrap().policy_count()
}

/// Cedar: building the request (entities and context) and evaluating it; and how evaluation
/// grows with the number of policies.
fn cedar(c: &mut Criterion) {
    let now = now_s();
    let mut g = c.benchmark_group("native/cedar");
    let p = policies(0);
    let (principal, resource, context) = cedar_inputs(now);
    assert!(matches!(
        p.evaluate(
            vec![principal.clone()],
            "GET",
            resource.clone(),
            context.clone(),
            None,
            PerRequest::Fixed
        ),
        tessera_core::authz::Evaluation::Allow { .. }
    ));
    g.bench_function("build_request", |b| b.iter(|| cedar_inputs(black_box(now))));
    g.bench_function("evaluate", |b| {
        b.iter_batched(
            || (principal.clone(), resource.clone(), context.clone()),
            |(pr, r, ctx)| p.evaluate(vec![pr], "GET", r, ctx, None, PerRequest::Fixed),
            BatchSize::SmallInput,
        )
    });
    for n in POLICY_COUNTS {
        let p = policies(n);
        g.bench_with_input(BenchmarkId::new("evaluate_policies", n), &p, |b, p| {
            b.iter_batched(
                || (principal.clone(), resource.clone(), context.clone()),
                |(pr, r, ctx)| p.evaluate(vec![pr], "GET", r, ctx, None, PerRequest::Fixed),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// `Engine::check`, the whole request: cached token, and cold (cache off, so every request
/// verifies) per algorithm.
fn whole_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("native/request");
    let cached = engine(Setup::CACHED).unwrap();
    let es256 = format!("Bearer {}", agent_token("ES256", &json!({})).unwrap());
    check_allows(&cached, &es256);
    g.bench_function("cached", |b| {
        b.iter(|| cached.check(&request(black_box(&es256)), &MemoryStore::new(), now_s()))
    });
    let cold = engine(Setup::COLD).unwrap();
    for alg in ALGORITHMS {
        let auth = format!("Bearer {}", agent_token(alg, &json!({})).unwrap());
        check_allows(&cold, &auth);
        g.bench_with_input(BenchmarkId::new("cold", alg), &auth, |b, auth| {
            b.iter(|| cold.check(&request(black_box(auth)), &MemoryStore::new(), now_s()))
        });
    }
    for n in POLICY_COUNTS {
        let e = engine(Setup::with_policies(n)).unwrap();
        assert!(e.policy_count() >= n);
        check_allows(&e, &es256);
        g.bench_with_input(BenchmarkId::new("cached_policies", n), &e, |b, e| {
            b.iter(|| e.check(&request(black_box(&es256)), &MemoryStore::new(), now_s()))
        });
    }
    g.finish();
}

/// MCP: the body parsed into JSON-RPC messages and their Cedar targets alone, and the whole body
/// decision (`Engine::check_mcp`: parse, then one Cedar decision per message), by batch size.
fn mcp(c: &mut Criterion) {
    let e = engine(Setup::CACHED).unwrap();
    let auth = format!(
        "Bearer {}",
        agent_token("ES256", &json!({"scope": "files:read"})).unwrap()
    );
    let headers = e.check(&mcp_request(&auth), &MemoryStore::new(), now_s());
    let pending = headers
        .pending
        .clone()
        .unwrap_or_else(|| panic!("the MCP route did not wait for the body: {headers:?}"));
    let mut g = c.benchmark_group("native/mcp");
    for n in MCP_BATCHES {
        let body = mcp_body(n);
        let store = MemoryStore::new();
        let d = e.check_mcp(
            &pending,
            &mcp_request(&auth),
            body.as_bytes(),
            &store,
            now_s(),
        );
        assert_eq!(
            d.verdict,
            Verdict::Allow,
            "MCP bench body not allowed: {d:?}"
        );
        g.bench_with_input(BenchmarkId::new("parse", n), &body, |b, body| {
            b.iter(|| {
                let v: Value = serde_json::from_slice(black_box(body.as_bytes())).unwrap();
                let (messages, _) = tessera_core::mcp::messages(&v, 128).unwrap();
                messages
                    .iter()
                    .filter_map(|m| m.as_ref().ok())
                    .filter(|m| tessera_core::mcp::target(m, "tools").is_ok())
                    .count()
            })
        });
        g.bench_with_input(BenchmarkId::new("decide", n), &body, |b, body| {
            b.iter(|| {
                e.check_mcp(
                    &pending,
                    &mcp_request(&auth),
                    black_box(body.as_bytes()),
                    &store,
                    now_s(),
                )
            })
        });
    }
    g.finish();
}

/// Token size: verify (cold) and the whole request with the token cached.
fn token_size(c: &mut Criterion) {
    let issuers = issuers();
    let cached = engine(Setup::CACHED).unwrap();
    let now = now_s();
    let mut g = c.benchmark_group("native/token_size");
    for size in TOKEN_SIZES {
        let t = padded_token(size).unwrap();
        token::verify(&issuers, &t, now, MAX_TOKEN_BYTES, None).expect("padded token verifies");
        let auth = format!("Bearer {t}");
        check_allows(&cached, &auth);
        g.bench_with_input(BenchmarkId::new("verify", size), &t, |b, t| {
            b.iter(|| token::verify(&issuers, black_box(t), now, MAX_TOKEN_BYTES, None))
        });
        g.bench_with_input(BenchmarkId::new("cached", size), &auth, |b, auth| {
            b.iter(|| cached.check(&request(black_box(auth)), &MemoryStore::new(), now_s()))
        });
    }
    g.finish();
}

/// Delegation: the whole request (`Engine::check`, token cached) without `act` and with a chain
/// of four actors: what a delegation chain adds to a cached decision.
fn delegation(c: &mut Criterion) {
    let e = engine(Setup::CACHED).unwrap();
    let mut g = c.benchmark_group("native/delegation");
    for depth in DELEGATION_DEPTHS {
        let auth = format!("Bearer {}", delegated_token(depth).unwrap());
        check_allows(&e, &auth);
        g.bench_with_input(BenchmarkId::new("cached", depth), &auth, |b, auth| {
            b.iter(|| e.check(&request(black_box(auth)), &MemoryStore::new(), now_s()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = token_stages, cache_hit, cedar, whole_request, mcp, token_size, delegation
}
criterion_main!(benches);

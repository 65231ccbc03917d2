//! The release `.wasm` in the wasmtime harness: `on_http_request_headers` from the host's call to
//! the module's decision, with the token cached, cold per algorithm (cache off), by number of
//! policies and by token size; and the whole stream (context create, headers, done) as the
//! proxy drives it.

// Benchmark setup that cannot run (no .wasm, a config the module refuses) must stop the run with
// a message, not measure something else: expect/panic are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::json;
use tessera_benches::{
    agent_token, borrowed, config, delegated_token, expect_allowed, harness, harness_with_config,
    mcp_body, mcp_headers, padded_token, request_headers, Setup, ALGORITHMS, DELEGATION_DEPTHS,
    MCP_BATCHES, POLICY_COUNTS, TOKEN_SIZES,
};
use tessera_harness::Harness;
use tessera_tests::dpop::Holder;
use tessera_tests::signed::{revocation_config, revoke, status_list_token, LISTS, STATUS_SIGNER};

/// Times `on_http_request_headers` alone, `iters` times; each request gets its own HTTP context
/// (created and finished outside the timed span), as in the proxy.
fn time_request_headers(h: &mut Harness, headers: &[(&str, &str)], iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let ctx = h.new_http().expect("new_http");
        let start = Instant::now();
        let action = h
            .request_headers(ctx, headers, true)
            .expect("request_headers");
        total += start.elapsed();
        std::hint::black_box(action);
        h.done(ctx).expect("done");
    }
    total
}

fn bench_headers(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    setup: Setup,
    token: &str,
) {
    let mut h = harness(setup).expect("harness");
    let headers = request_headers(token);
    let headers = borrowed(&headers);
    // Also puts the token in the cache when the setup has one.
    expect_allowed(&mut h, &headers).expect("bench request");
    g.bench_function(id, |b| {
        b.iter_custom(|iters| time_request_headers(&mut h, &headers, iters))
    });
}

fn whole_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("wasm/request");
    let es256 = agent_token("ES256", &json!({})).unwrap();
    bench_headers(
        &mut g,
        BenchmarkId::from_parameter("cached"),
        Setup::CACHED,
        &es256,
    );
    for alg in ALGORITHMS {
        let t = agent_token(alg, &json!({})).unwrap();
        bench_headers(&mut g, BenchmarkId::new("cold", alg), Setup::COLD, &t);
    }
    for n in POLICY_COUNTS {
        bench_headers(
            &mut g,
            BenchmarkId::new("cached_policies", n),
            Setup::with_policies(n),
            &es256,
        );
    }

    // The whole stream as the proxy drives it: context create, headers, done/log/delete.
    let mut h = harness(Setup::CACHED).unwrap();
    let headers = request_headers(&es256);
    let headers = borrowed(&headers);
    expect_allowed(&mut h, &headers).unwrap();
    g.bench_function("cached_stream", |b| {
        b.iter(|| {
            let ctx = h.new_http().unwrap();
            h.request_headers(ctx, &headers, true).unwrap();
            h.done(ctx).unwrap();
        })
    });
    g.finish();
}

/// A fresh token (cache off) whose signature Envoy's `jwt_authn` checked
/// (`issuers[].jwt_authn_payload`): the metadata read and compared with the payload, and the
/// claims checked, in place of a signature.
fn by_jwt_authn(c: &mut Criterion) {
    let mut g = c.benchmark_group("wasm/jwt_authn");
    let token = agent_token("ES256", &json!({})).unwrap();
    let metadata = tessera_benches::jwt_authn_metadata(&token).unwrap();
    let mut h =
        harness_with_config(tessera_benches::by_jwt_authn(config(Setup::COLD).unwrap())).unwrap();
    let headers = request_headers(&token);
    let headers = borrowed(&headers);
    let attribute = tessera_core::jwt_authn::ATTRIBUTE;
    let ctx = h.new_http().unwrap();
    h.set_stream_property_path(ctx, &attribute, &metadata)
        .unwrap();
    h.request_headers(ctx, &headers, true).unwrap();
    if let Some(reply) = h.local_reply(ctx) {
        panic!(
            "jwt_authn bench refused: {} {}",
            reply.status,
            reply.body_text()
        );
    }
    h.done(ctx).unwrap();
    g.bench_function("cold", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let ctx = h.new_http().expect("new_http");
                h.set_stream_property_path(ctx, &attribute, &metadata)
                    .expect("metadata");
                let start = Instant::now();
                let action = h.request_headers(ctx, &headers, true).expect("headers");
                total += start.elapsed();
                std::hint::black_box(action);
                h.done(ctx).expect("done");
            }
            total
        })
    });
    g.finish();
}

/// MCP: headers (the module waits for the body) then the body at end of stream, decided per
/// JSON-RPC message; timed from the headers call to the body call's return.
fn mcp(c: &mut Criterion) {
    let mut g = c.benchmark_group("wasm/mcp");
    let token = agent_token("ES256", &json!({"scope": "files:read"})).unwrap();
    let mut h = harness(Setup::CACHED).unwrap();
    for n in MCP_BATCHES {
        let body = mcp_body(n);
        let headers = mcp_headers(&token, body.len());
        let headers = borrowed(&headers);
        let ctx = h.new_http().unwrap();
        h.request_headers(ctx, &headers, false).unwrap();
        h.request_body(ctx, body.as_bytes(), true).unwrap();
        if let Some(reply) = h.local_reply(ctx) {
            panic!(
                "MCP bench body refused: {} {}",
                reply.status,
                reply.body_text()
            );
        }
        h.done(ctx).unwrap();
        // The whole exchange as a proxy runs it: the decision, then the server's answer (JSON,
        // headers and body) through the response hooks, then the end of the stream.
        let answer =
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}"#;
        let answer_len = answer.len().to_string();
        let response = [
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-length", answer_len.as_str()),
        ];
        g.bench_function(BenchmarkId::new("exchange", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let ctx = h.new_http().expect("new_http");
                    let start = Instant::now();
                    h.request_headers(ctx, &headers, false).expect("headers");
                    h.request_body(ctx, body.as_bytes(), true).expect("body");
                    h.response_headers(ctx, &response, false)
                        .expect("response headers");
                    h.response_body(ctx, answer.as_bytes(), true)
                        .expect("response body");
                    h.done(ctx).expect("done");
                    total += start.elapsed();
                }
                total
            })
        });
        g.bench_function(BenchmarkId::new("decide", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let ctx = h.new_http().expect("new_http");
                    let start = Instant::now();
                    h.request_headers(ctx, &headers, false).expect("headers");
                    let action = h.request_body(ctx, body.as_bytes(), true).expect("body");
                    total += start.elapsed();
                    std::hint::black_box(action);
                    h.done(ctx).expect("done");
                }
                total
            })
        });
    }
    g.finish();
}

fn token_size(c: &mut Criterion) {
    let mut g = c.benchmark_group("wasm/token_size");
    for size in TOKEN_SIZES {
        let t = padded_token(size).unwrap();
        bench_headers(&mut g, BenchmarkId::new("cached", size), Setup::CACHED, &t);
        bench_headers(&mut g, BenchmarkId::new("cold", size), Setup::COLD, &t);
    }
    g.finish();
}

/// Delegation: `on_http_request_headers` with the token cached, without `act` and with a chain of
/// four actors.
fn delegation(c: &mut Criterion) {
    let mut g = c.benchmark_group("wasm/delegation");
    for depth in DELEGATION_DEPTHS {
        let t = delegated_token(depth).unwrap();
        bench_headers(&mut g, BenchmarkId::new("cached", depth), Setup::CACHED, &t);
    }
    g.finish();
}

/// Revocation on a cached request: with security events configured and one revocation recorded
/// (so every request looks its token up), and with a status list the module has cached.
fn revocation(c: &mut Criterion) {
    let mut g = c.benchmark_group("wasm/revocation");
    let mut cfg = config(Setup::CACHED).unwrap();
    cfg["revocation"] = revocation_config().unwrap();
    let uri = format!("{LISTS}bench");

    let mut h = harness_with_config(cfg.clone()).unwrap();
    let set = revoke(
        json!({"format": "jwt_id", "iss": "https://agents.demo.tessera.dev", "jti": "gone"}),
    )
    .unwrap();
    let push = [
        (":method", "POST"),
        (":path", tessera_tests::signed::EVENTS_PATH),
        (":authority", "api.example.com"),
        ("content-type", "application/secevent+jwt"),
    ];
    let ctx = h.new_http().unwrap();
    h.request_headers(ctx, &push, false).unwrap();
    h.request_body(ctx, set.as_bytes(), true).unwrap();
    assert_eq!(
        h.local_reply(ctx).map(|r| r.status),
        Some(202),
        "{:?}",
        h.logs()
    );
    h.done(ctx).unwrap();
    let t = agent_token("ES256", &json!({"jti": "kept"})).unwrap();
    let headers = request_headers(&t);
    let headers = borrowed(&headers);
    expect_allowed(&mut h, &headers).unwrap();
    g.bench_function("cached_events_recorded", |b| {
        b.iter_custom(|iters| time_request_headers(&mut h, &headers, iters))
    });

    let mut h = harness_with_config(cfg).unwrap();
    let t = agent_token(
        "ES256",
        &json!({"status": {"status_list": {"idx": 3, "uri": uri}}}),
    )
    .unwrap();
    let headers = request_headers(&t);
    let headers = borrowed(&headers);
    // The first request fetches the list; the benchmark then runs on the cached list.
    let ctx = h.new_http().unwrap();
    h.request_headers(ctx, &headers, true).unwrap();
    let call = h.http_calls().first().cloned().expect("the list fetch");
    let list =
        status_list_token(&uri, 1, &[0; 1024], STATUS_SIGNER, "statuslist+jwt", 3600).unwrap();
    h.respond_to_call(call.token, 200, &[], list.as_bytes())
        .unwrap();
    assert!(h.request_resumed(ctx), "{:?}", h.local_reply(ctx));
    h.done(ctx).unwrap();
    expect_allowed(&mut h, &headers).unwrap();
    g.bench_function("cached_status_list", |b| {
        b.iter_custom(|iters| time_request_headers(&mut h, &headers, iters))
    });
    g.finish();
}

/// Proof of possession: a cached `cnf.jkt`-bound token with a fresh DPoP proof per request (the
/// proof is new on every request, so its signature is always verified, and its `jti` recorded),
/// beside the same token bound to the client certificate the connection reports.
fn proof_of_possession(c: &mut Criterion) {
    let mut g = c.benchmark_group("wasm/pop");
    let holder = Holder::agent().unwrap();
    let mut cfg = config(Setup::CACHED).unwrap();
    cfg["dpop"] = json!({});
    let mut h = harness_with_config(cfg.clone()).unwrap();
    let token = agent_token("ES256", &json!({"cnf": {"jkt": holder.jkt}})).unwrap();
    let htu = format!("http://api.example.com{}", tessera_benches::PATH);
    let headers_with = |proof: &str| {
        let mut headers = request_headers(&token);
        for (k, v) in &mut headers {
            if k == "authorization" {
                *v = format!("DPoP {token}");
            }
        }
        headers.push(("dpop".into(), proof.to_string()));
        headers
    };
    let first = headers_with(&holder.proof("GET", &htu, &token, &json!({})).unwrap());
    expect_allowed(&mut h, &borrowed(&first)).unwrap();
    g.bench_function("dpop_cached_token_fresh_proof", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // A new proof (new jti, iat now) made outside the timed span.
                let proof = holder.proof("GET", &htu, &token, &json!({})).unwrap();
                let headers = headers_with(&proof);
                total += time_request_headers(&mut h, &borrowed(&headers), 1);
            }
            total
        })
    });

    let digest = [7u8; 32];
    let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let mut h = harness_with_config(cfg).unwrap();
    h.set_property("connection.mtls", [1u8]);
    h.set_property("connection.sha256_peer_certificate_digest", hex.as_bytes());
    let token = agent_token("ES256", &json!({"cnf": {"x5t#S256": x5t}})).unwrap();
    let headers = request_headers(&token);
    let headers = borrowed(&headers);
    expect_allowed(&mut h, &headers).unwrap();
    g.bench_function("mtls_cached_token", |b| {
        b.iter_custom(|iters| time_request_headers(&mut h, &headers, iters))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = whole_request, by_jwt_authn, mcp, token_size, delegation, revocation, proof_of_possession
}
criterion_main!(benches);

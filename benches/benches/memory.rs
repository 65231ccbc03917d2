//! The module's memory with 10,000 cached tokens: one measurement, not a criterion benchmark.
//!
//! Drives 10,000 distinct EdDSA tokens through `on_http_request_headers` in the harness (each is
//! verified and cached), then the same 10,000 again (each a cache hit), and writes what it saw to
//! `target/tessera-perf/memory.json` for `cargo xtask bench` to report.
//!
//! The module's linear memory size (`Harness::memory_bytes`) is the figure the target is about:
//! it is reported after the first request and after the 10,000 tokens. The growth of the
//! process's resident memory is reported next to it.

// A measurement whose setup failed must stop with a message, not report a number: expect/panic
// are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use serde_json::json;
use tessera_benches::{agent_token, borrowed, harness, request_headers, Setup};
use tessera_harness::Harness;

const TOKENS: usize = 10_000;

/// Resident set size of this process in bytes (Linux), for the memory growth estimate.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Sends every token once; returns the mean microseconds per `on_http_request_headers`.
fn pass(h: &mut Harness, tokens: &[String]) -> f64 {
    let mut total = std::time::Duration::ZERO;
    for t in tokens {
        let headers = request_headers(t);
        let headers = borrowed(&headers);
        let ctx = h.new_http().expect("new_http");
        let start = Instant::now();
        h.request_headers(ctx, &headers, true)
            .expect("request_headers");
        total += start.elapsed();
        assert!(h.local_reply(ctx).is_none(), "a token was not allowed");
        h.done(ctx).expect("done");
    }
    total.as_secs_f64() * 1e6 / tokens.len() as f64
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter); `cargo test --all-targets` runs this
    // without it, as a smoke test: then drive a few tokens and report nothing.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| "memory".contains(f.as_str())) {
        return;
    }
    let count = if measuring { TOKENS } else { 10 };
    let setup = Setup::CACHED;
    let mut h = harness(setup).expect("harness");
    let tokens: Vec<String> = (0..count)
        .map(|i| agent_token("EdDSA", &json!({"jti": format!("bench-{i}")})).expect("mint"))
        .collect();
    let mean_len = tokens.iter().map(String::len).sum::<usize>() / count;
    // One request first, so that what the first request allocates once is not counted.
    pass(&mut h, &[agent_token("EdDSA", &json!({})).expect("mint")]);
    let allowed_before = h.metric("tessera.decisions.allow").unwrap_or(0);
    let memory_before = h.memory_bytes();
    let rss_before = rss_bytes();
    let cold_us = pass(&mut h, &tokens);
    let rss_after = rss_bytes();
    let cached_us = pass(&mut h, &tokens);
    let memory_after = h.memory_bytes();
    assert!(memory_after >= memory_before && memory_before > 0);
    let allowed = h.metric("tessera.decisions.allow").unwrap_or(0) - allowed_before;
    assert_eq!(allowed, 2 * count as i64, "every request must be allowed");
    if !measuring {
        println!("memory: smoke run ({count} tokens) passed; `cargo bench` measures");
        return;
    }
    let growth = match (rss_before, rss_after) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let report = json!({
        "tokens": TOKENS,
        "algorithm": "EdDSA",
        "mean_token_bytes": mean_len,
        "token_cache_entries": setup.cache_entries,
        "token_cache_bytes": setup.cache_bytes,
        "linear_memory_bytes_before": memory_before,
        "linear_memory_bytes": memory_after,
        "rss_growth_bytes": growth,
        "first_pass_us_per_request": cold_us,
        "second_pass_us_per_request": cached_us,
    });
    println!("memory: {report}");
    let dir = tessera_tests::repo_root()
        .join("target")
        .join("tessera-perf");
    std::fs::create_dir_all(&dir).expect("creating target/tessera-perf");
    std::fs::write(dir.join("memory.json"), report.to_string()).expect("writing memory.json");
}

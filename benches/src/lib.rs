//! Shared fixtures for Tessera's benchmarks: the configurations, tokens and generated policies
//! that the native and the wasm benchmarks measure alike, so that their numbers compare.
//!
//! The configuration is the tests' one (`tessera_tests::test_config`: the example policies and
//! the demo issuers) with bench limits; tokens are minted by `tessera_tests::mint` with the demo
//! keys.

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use tessera_harness::{Action, Harness, LogLevel};
use tessera_tests::{AGENTS, LEGACY};

/// The algorithms benchmarked, one demo key each.
pub const ALGORITHMS: [&str; 6] = ["EdDSA", "ES256", "ES384", "RS256", "PS256", "HS256"];

/// Policy set sizes for the scaling benchmarks (generated policies on top of the examples).
pub const POLICY_COUNTS: [usize; 3] = [10, 100, 1_000];

/// JSON-RPC messages per MCP POST body for the body-size benchmarks (1 is a plain request, more
/// a batch, each message decided on its own).
pub const MCP_BATCHES: [usize; 3] = [1, 10, 100];

/// The MCP route of the test configuration.
pub const MCP_PATH: &str = "/mcp";

/// Approximate token lengths in bytes for the token-size benchmarks.
pub const TOKEN_SIZES: [usize; 3] = [512, 2_048, 8_192];

/// Tokens live this long: longer than a bench run, within the demo issuers' `max_ttl_s` (3600).
const TOKEN_TTL_S: u64 = 3_000;

/// The path every benchmarked request asks for: `orders`, which `agents-read-orders` permits.
pub const PATH: &str = "/orders/42";

/// The short, repeatable criterion settings: the whole `cargo xtask bench` must finish in a few
/// minutes on a 2-core machine.
pub const MEASUREMENT: Duration = Duration::from_secs(2);
pub const WARM_UP: Duration = Duration::from_secs(1);
pub const SAMPLES: usize = 30;

/// The issuer whose key verifies `alg` in the test configuration (HS256 only has the legacy one).
pub fn issuer_for(alg: &str) -> &'static str {
    if alg == "HS256" {
        LEGACY
    } else {
        AGENTS
    }
}

/// A token for `Agent::"agent-7"` with scope `orders:read` (allowed on GET /orders), signed with
/// the demo key of `alg`; `extra` claims are added (and override).
pub fn agent_token(alg: &str, extra: &Value) -> Result<String> {
    let now = tessera_tests::now_s();
    let mut claims = json!({
        "iss": issuer_for(alg),
        "sub": "agent-7",
        "scope": "orders:read",
        "iat": now,
        "exp": now + TOKEN_TTL_S,
    });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    tessera_tests::mint(alg, &claims)
}

/// An ES256 agent token about `target` bytes long: an extra claim (`x_pad`, which no policy
/// reads) pads it, so the cost of decoding and hashing a larger token shows.
pub fn padded_token(target: usize) -> Result<String> {
    let base = agent_token("ES256", &json!({"x_pad": ""}))?.len();
    // base64url turns 3 bytes into 4.
    let pad = target.saturating_sub(base) * 3 / 4;
    agent_token("ES256", &json!({"x_pad": "p".repeat(pad)}))
}

/// `token` with its header replaced by one naming a `kid` no issuer has: `token::verify` then
/// decodes the header and payload, finds the issuer and stops before any signature check. That
/// measures the parse stage alone.
pub fn with_unknown_kid(token: &str) -> Result<String> {
    let Some((_, rest)) = token.split_once('.') else {
        bail!("not a compact JWS");
    };
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT","kid":"no-such-kid"}"#);
    Ok(format!("{header}.{rest}"))
}

/// `n` policies that validate against `policies/tessera.cedarschema` and decide nothing for the
/// benchmarked request (they name other routes, scopes and groups), so a decision has to look at
/// all of them: permits with `when` conditions, and every tenth a `forbid … unless`.
pub fn generated_policies(n: usize) -> String {
    let mut out = String::with_capacity(n * 200);
    for i in 0..n {
        let policy = if i % 10 == 9 {
            format!(
                "@id(\"generated-{i}\")\nforbid (principal, action == Action::\"DELETE\", \
                 resource == Route::\"route-{i}\")\nunless {{ principal in Group::\"group-{i}\" }};\n\n"
            )
        } else if i % 3 == 0 {
            format!(
                "@id(\"generated-{i}\")\npermit (principal == Agent::\"agent-{i}\", action in \
                 [Action::\"GET\", Action::\"HEAD\"], resource)\nwhen {{ \
                 context.request.path like \"/route-{i}/*\" }};\n\n"
            )
        } else {
            format!(
                "@id(\"generated-{i}\")\npermit (principal is Agent, action in [Action::\"GET\", \
                 Action::\"POST\"], resource == Route::\"route-{i}\")\nwhen {{ \
                 context.token.scopes.contains(\"scope-{i}:read\") && context.now < {} }};\n\n",
                4_000_000_000u64 + i as u64
            )
        };
        out.push_str(&policy);
    }
    out
}

/// What a configuration under benchmark varies.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Verified tokens cached (0: the cache is off and every request verifies its token).
    pub cache_entries: usize,
    /// Estimated bytes the cache may hold.
    pub cache_bytes: usize,
    /// Generated policies added to the examples.
    pub extra_policies: usize,
}

impl Setup {
    /// The cache on (core's default entries, room for all of them), no extra policies.
    pub const CACHED: Setup = Setup {
        cache_entries: 10_000,
        cache_bytes: 64 << 20,
        extra_policies: 0,
    };
    /// The cache off: every request verifies its token's signature.
    pub const COLD: Setup = Setup {
        cache_entries: 0,
        ..Setup::CACHED
    };

    pub fn with_policies(n: usize) -> Setup {
        Setup {
            extra_policies: n,
            ..Setup::CACHED
        }
    }
}

/// The plugin configuration for `setup`: the tests' configuration (example policies, demo
/// issuers) with bench limits.
pub fn config(setup: Setup) -> Result<Value> {
    let mut c = tessera_tests::test_config()?;
    c["limits"] = json!({
        "max_token_bytes": 16_384,
        "max_body_bytes": 1 << 20,
        // The MCP benches decide batches of up to 100 messages.
        "max_batch_messages": 128,
        "token_cache_entries": setup.cache_entries,
        "token_cache_bytes": setup.cache_bytes,
    });
    if setup.extra_policies > 0 {
        let files = c["policies"]
            .as_object_mut()
            .context("test_config has no policy files")?;
        files.insert(
            "generated.cedar".into(),
            Value::String(generated_policies(setup.extra_policies)),
        );
    }
    Ok(c)
}

/// The compiled native engine for `setup`.
pub fn engine(setup: Setup) -> Result<tessera_core::Engine> {
    let json = serde_json::to_vec(&config(setup)?)?;
    tessera_core::Engine::from_json(&json).map_err(|e| anyhow::anyhow!("config: {e}"))
}

/// The release module in the harness, configured for `setup`, its clock at the real time and
/// logging below warnings dropped by the host (as an Envoy at `-l warning` does).
pub fn harness(setup: Setup) -> Result<Harness> {
    harness_with_config(config(setup)?)
}

/// [`harness`] with a configuration of the caller's.
/// The payload key of the agents issuer in [`by_jwt_authn`] configurations.
pub const JWT_AUTHN_KEY: &str = "agents";

/// `config` with the agents issuer's tokens verified by Envoy's `jwt_authn`
/// (`issuers[].jwt_authn_payload`, no keys).
pub fn by_jwt_authn(mut config: Value) -> Value {
    let agents = &mut config["issuers"][1];
    if let Some(a) = agents.as_object_mut() {
        a.remove("jwks");
    }
    agents["jwt_authn_payload"] = json!(JWT_AUTHN_KEY);
    config
}

/// The dynamic metadata Envoy gives after `jwt_authn` verified `token` (see
/// `tessera_core::jwt_authn`).
pub fn jwt_authn_metadata(token: &str) -> Result<Vec<u8>> {
    let middle = token.split('.').nth(1).context("not a JWS")?;
    let payload: serde_json::Map<String, Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(middle)?)?;
    Ok(tessera_core::jwt_authn::encode_metadata(&[(
        JWT_AUTHN_KEY,
        &payload,
    )]))
}

pub fn harness_with_config(config: Value) -> Result<Harness> {
    let wasm = tessera_tests::wasm_path();
    if !wasm.is_file() {
        bail!(
            "{} is missing: build it with `cargo xtask wasm` (cargo xtask bench does)",
            wasm.display()
        );
    }
    let mut h = Harness::load(&wasm)?;
    h.set_time(SystemTime::now());
    h.set_log_level(LogLevel::Warn);
    let config = serde_json::to_string(&config)?;
    if !h.configure(&config)? {
        bail!(
            "the module refused the bench configuration: {:?}",
            h.logs_at(LogLevel::Warn)
        );
    }
    Ok(h)
}

/// The request headers Envoy hands the filter for `GET /orders/42` with `token`.
pub fn request_headers(token: &str) -> Vec<(String, String)> {
    vec![
        (":method".into(), "GET".into()),
        (":path".into(), PATH.into()),
        (":authority".into(), "api.example.com".into()),
        (":scheme".into(), "http".into()),
        ("user-agent".into(), "tessera-bench".into()),
        ("authorization".into(), format!("Bearer {token}")),
        ("x-request-id".into(), "bench-request".into()),
    ]
}

/// An MCP body of `n` `tools/call read_file` requests (a batch when `n > 1`), which
/// `agents-read-files` permits for a token with scope `files:read`.
pub fn mcp_body(n: usize) -> String {
    let call = |i: usize| {
        json!({
            "jsonrpc": "2.0",
            "id": i,
            "method": "tools/call",
            "params": {"name": "read_file", "arguments": {"path": format!("/data/report-{i}.txt")}}
        })
    };
    if n == 1 {
        call(1).to_string()
    } else {
        Value::Array((1..=n).map(call).collect()).to_string()
    }
}

/// The request headers Envoy hands the filter for an MCP POST with `token`.
pub fn mcp_headers(token: &str, body_len: usize) -> Vec<(String, String)> {
    vec![
        (":method".into(), "POST".into()),
        (":path".into(), MCP_PATH.into()),
        (":authority".into(), "api.example.com".into()),
        (":scheme".into(), "http".into()),
        ("content-type".into(), "application/json".into()),
        (
            "accept".into(),
            "application/json, text/event-stream".into(),
        ),
        ("content-length".into(), body_len.to_string()),
        ("authorization".into(), format!("Bearer {token}")),
        ("x-request-id".into(), "bench-request".into()),
    ]
}

/// Borrowed form of [`request_headers`] for `Harness::request_headers`.
pub fn borrowed(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Runs one request through the module and fails unless it was allowed (forwarded, no local
/// reply): a benchmark that measured a denial would measure the wrong path.
pub fn expect_allowed(h: &mut Harness, headers: &[(&str, &str)]) -> Result<()> {
    let ctx = h.new_http()?;
    let action = h.request_headers(ctx, headers, true)?;
    if let Some(reply) = h.local_reply(ctx) {
        bail!(
            "the module answered {} {} instead of allowing the request",
            reply.status,
            reply.body_text()
        );
    }
    if action != Action::Continue {
        bail!("the module paused the request instead of allowing it");
    }
    h.done(ctx)
}

/// Delegation chain depths for the delegation benchmarks: a token without `act`, and one whose
/// `act` nests four actors (all trusted by `policies/agents.cedar`).
pub const DELEGATION_DEPTHS: [usize; 2] = [0, 4];

/// An agent token (as `agent_token`, ES256) whose `act` chain has `depth` actors: the principal is
/// the last of them, still allowed on GET /orders by `agents-read-orders`.
pub fn delegated_token(depth: usize) -> Result<String> {
    let actors = ["planner", "executor", "mailer", "researcher"];
    let mut act = Value::Null;
    for a in actors.iter().cycle().take(depth) {
        act = if act.is_null() {
            json!({ "sub": a })
        } else {
            json!({ "sub": a, "act": act })
        };
    }
    let extra = if act.is_null() {
        json!({})
    } else {
        json!({ "act": act })
    };
    agent_token("ES256", &extra)
}

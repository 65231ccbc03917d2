//! The decision cases in `policies/cases/*.json`, each run through the native engine and through
//! the release `.wasm` in the wasmtime harness. Both must give the case's expected outcome.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};
use tessera_core::store::MemoryStore;
use tessera_core::{Engine, HttpRequest};
use tessera_harness::Harness;
use tessera_tests::{mint, now_s, repo_root, test_config, wasm_path};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    token: Option<TokenSpec>,
    request: RequestSpec,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    alg: String,
    claims: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    method: String,
    path: String,
    #[serde(default = "default_host")]
    host: String,
    /// A JSON body (sent as `application/json` unless `content_type` says otherwise).
    #[serde(default)]
    body: Option<Value>,
    /// A body sent as is, for malformed input.
    #[serde(default)]
    raw_body: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    /// More request headers (e.g. MCP 2026-07-28's `mcp-protocol-version`, `mcp-method`,
    /// `mcp-name`), names in lower case.
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

impl RequestSpec {
    fn body(&self) -> Option<Vec<u8>> {
        match (&self.raw_body, &self.body) {
            (Some(raw), _) => Some(raw.clone().into_bytes()),
            (None, Some(v)) => Some(v.to_string().into_bytes()),
            _ => None,
        }
    }

    fn content_type(&self) -> Option<&str> {
        self.content_type
            .as_deref()
            .or(self.body().map(|_| "application/json"))
    }
}

fn default_host() -> String {
    "api.example.com".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    decision: String,
    status: u32,
    #[serde(default)]
    policies: Option<Vec<String>>,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    error_description_contains: Option<String>,
    /// JSON-RPC error codes in the reply, in order (one per answered request).
    #[serde(default)]
    jsonrpc_errors: Option<Vec<i64>>,
    /// A step-up challenge: `WWW-Authenticate: Bearer error="insufficient_scope", scope="<this>"`.
    #[serde(default)]
    insufficient_scope: Option<String>,
}

/// What one run of a case produced, from either engine.
#[derive(Debug)]
struct Outcome {
    decision: String,
    status: u32,
    policies: Vec<String>,
    principal: Option<String>,
    www_authenticate: Option<String>,
    forwarded_principal: Option<String>,
    reply_body: Option<String>,
}

/// The JSON-RPC error codes of a reply body: one object or a batch.
fn jsonrpc_codes(body: &str) -> Vec<i64> {
    let code = |v: &Value| v.pointer("/error/code").and_then(Value::as_i64);
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Array(a)) => a.iter().filter_map(code).collect(),
        Ok(v) => code(&v).into_iter().collect(),
        Err(_) => vec![],
    }
}

fn load_cases() -> Result<Vec<(PathBuf, Case)>> {
    let dir = repo_root().join("policies/cases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        let cases: Vec<Case> =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        out.extend(cases.into_iter().map(|c| (f.clone(), c)));
    }
    Ok(out)
}

/// Mints the case's token; numeric `iat`/`exp`/`nbf` are offsets from now.
fn token_for(spec: &TokenSpec) -> Result<String> {
    let now = now_s() as i64;
    let mut claims = spec.claims.clone();
    for k in ["iat", "exp", "nbf"] {
        if let Some(off) = claims.get(k).and_then(Value::as_i64) {
            claims.insert(k.into(), Value::from(now + off));
        }
    }
    mint(&spec.alg, &Value::Object(claims))
}

/// Reads `policies=[a,b]` and `principal=…` back from the module's decision log line.
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    if rest.starts_with('[') {
        return rest.find(']').map(|end| &rest[1..end]);
    }
    Some(rest.split(' ').next().unwrap_or(""))
}

fn run_native(engine: &Engine, case: &Case, auth: Option<&str>) -> Outcome {
    let header = |name: &str| case.request.headers.get(name).cloned();
    let mirrored = tessera_core::mcp_revision::Mirrored {
        version: header("mcp-protocol-version"),
        method: header("mcp-method"),
        name: header("mcp-name"),
    };
    let req = HttpRequest {
        method: &case.request.method,
        path: &case.request.path,
        host: &case.request.host,
        authorization: auth,
        request_id: "case",
        content_type: case.request.content_type(),
        approval: None,
        repeated: None,
        mirrored: Some(&mirrored),
        ..HttpRequest::default()
    };
    let mut d = engine.check(&req, &MemoryStore::new(), now_s());
    if let Some(p) = d.pending.take() {
        d = engine.check_mcp(
            &p,
            &req,
            &case.request.body().unwrap_or_default(),
            &MemoryStore::new(),
            now_s(),
        );
    }
    let reply = d.reply.as_ref();
    Outcome {
        decision: d.verdict.name().to_string(),
        status: reply.map_or(200, |r| r.status),
        policies: d.policies.clone(),
        principal: d.principal.clone(),
        www_authenticate: reply.and_then(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "www-authenticate")
                .map(|(_, v)| v.clone())
        }),
        forwarded_principal: d
            .set_headers
            .iter()
            .find(|(k, _)| k == "x-tessera-principal")
            .map(|(_, v)| v.clone()),
        reply_body: reply.map(|r| r.body.clone()),
    }
}

fn run_wasm(h: &mut Harness, case: &Case, auth: Option<&str>) -> Result<Outcome> {
    h.clear_logs();
    let ctx = h.new_http()?;
    let mut headers = vec![
        (":method", case.request.method.as_str()),
        (":path", case.request.path.as_str()),
        (":authority", case.request.host.as_str()),
        (":scheme", "http"),
        ("x-request-id", "case"),
        // A client trying to spoof the identity the filter forwards.
        ("x-tessera-principal", "User::\"spoofed\""),
    ];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    for (k, v) in &case.request.headers {
        headers.push((k.as_str(), v.as_str()));
    }
    let body = case.request.body();
    let length = body.as_ref().map(|b| b.len().to_string());
    if let (Some(ct), Some(len)) = (case.request.content_type(), length.as_deref()) {
        headers.push(("content-type", ct));
        headers.push(("content-length", len));
    }
    h.request_headers(ctx, &headers, body.is_none())?;
    if let (Some(b), None) = (&body, h.local_reply(ctx)) {
        h.request_body(ctx, b, true)?;
    }
    let line = h
        .find_log("tessera decision=")
        .map(|l| l.message.clone())
        .context("the module logged no decision line")?;
    let reply = h.local_reply(ctx);
    let forwarded = h.request_header(ctx, "x-tessera-principal");
    h.done(ctx)?;
    let policies = log_field(&line, "policies")
        .map(|p| {
            p.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let principal = log_field(&line, "principal")
        .filter(|p| *p != "-")
        .map(str::to_string);
    Ok(Outcome {
        decision: log_field(&line, "decision").unwrap_or("").to_string(),
        status: reply.as_ref().map_or(200, |r| r.status),
        policies,
        principal,
        www_authenticate: reply
            .as_ref()
            .and_then(|r| r.header("www-authenticate").map(str::to_string)),
        forwarded_principal: if reply.is_some() { None } else { forwarded },
        reply_body: reply.as_ref().map(|r| r.body_text()),
    })
}

fn check(case: &Case, o: &Outcome) -> Result<()> {
    let e = &case.expect;
    if o.decision != e.decision || o.status != e.status {
        bail!(
            "expected {} / {}, got {} / {} ({o:?})",
            e.decision,
            e.status,
            o.decision,
            o.status
        );
    }
    if let Some(p) = &e.policies {
        if &o.policies != p {
            bail!("expected policies {p:?}, got {:?}", o.policies);
        }
    }
    if let Some(p) = &e.principal {
        if o.principal.as_ref() != Some(p) {
            bail!("expected principal {p}, got {:?}", o.principal);
        }
    }
    if let Some(words) = &e.error_description_contains {
        let w = o.www_authenticate.as_deref().unwrap_or("");
        if !w.contains("error=\"invalid_token\"") || !w.contains(words.as_str()) {
            bail!("expected an invalid_token challenge mentioning {words:?}, got {w:?}");
        }
    }
    if let Some(scope) = &e.insufficient_scope {
        let w = o.www_authenticate.as_deref().unwrap_or("");
        let want = format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"");
        if !w.starts_with(&want) {
            bail!("expected a challenge starting {want:?}, got {w:?}");
        }
    }
    if let Some(codes) = &e.jsonrpc_errors {
        let got = jsonrpc_codes(o.reply_body.as_deref().unwrap_or(""));
        if &got != codes {
            bail!(
                "expected JSON-RPC errors {codes:?}, got {got:?} in {:?}",
                o.reply_body
            );
        }
    }
    if e.status == 200 && e.decision == "allow" {
        // The filter's identity header replaced the client's spoofed one.
        let expected = o.principal.clone();
        if o.forwarded_principal != expected {
            bail!(
                "forwarded x-tessera-principal {:?}, expected {expected:?}",
                o.forwarded_principal
            );
        }
    } else if o.forwarded_principal.as_deref() == Some("User::\"spoofed\"") {
        bail!("a client-sent identity header was forwarded");
    }
    Ok(())
}

#[test]
fn decision_cases_hold_natively_and_in_wasm() -> Result<()> {
    let cases = load_cases()?;
    assert!(
        cases.len() >= 10,
        "expected the example cases, found {}",
        cases.len()
    );
    let config = test_config()?.to_string();
    let engine = Engine::from_json(config.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let wasm = wasm_path();
    let mut h = Harness::load(&wasm).with_context(|| {
        format!(
            "loading {} (build it with `cargo xtask wasm`)",
            wasm.display()
        )
    })?;
    assert!(
        h.configure(&config)?,
        "the module refused the test configuration: {:?}",
        h.logs()
    );

    let mut failures = Vec::new();
    for (file, case) in &cases {
        let auth = match &case.token {
            Some(t) => Some(format!("Bearer {}", token_for(t)?)),
            None => None,
        };
        let native = run_native(&engine, case, auth.as_deref());
        if let Err(e) = check(case, &native) {
            failures.push(format!("{} — {} [native]: {e}", file.display(), case.name));
        }
        let wasm = run_wasm(&mut h, case, auth.as_deref())?;
        if let Err(e) = check(case, &wasm) {
            failures.push(format!("{} — {} [wasm]: {e}", file.display(), case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("{} decision cases held natively and in wasm", cases.len());
    Ok(())
}

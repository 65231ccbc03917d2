//! Shared support for Tessera's integration tests and benchmarks: the test configuration (the
//! example policies with the demo issuers), token minting with an independent JOSE library
//! (`jsonwebtoken`, not the jwt-simple the filter verifies with), and the built `.wasm`.

pub mod dpop;
pub mod signed;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub const IDP: &str = "https://idp.demo.tessera.dev";
pub const AGENTS: &str = "https://agents.demo.tessera.dev";
pub const LEGACY: &str = "https://legacy.demo.tessera.dev";
pub const AUDIENCE: &str = "orders-api";
/// The demo approval issuer (human approval) and the audience of its approvals.
pub const APPROVALS: &str = "https://approvals.demo.tessera.dev";
pub const APPROVAL_AUDIENCE: &str = "tessera-approvals";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn read(rel: &str) -> Result<String> {
    let p = repo_root().join(rel);
    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

/// `policies/*.cedar` as named documents, the way the xtask bundles them.
pub fn policy_files() -> Result<Value> {
    let mut files = serde_json::Map::new();
    let mut entries: Vec<_> = std::fs::read_dir(repo_root().join("policies"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        files.insert(name, Value::String(std::fs::read_to_string(&p)?));
    }
    Ok(Value::Object(files))
}

/// The plugin configuration the tests use: the example policies and schema, the three demo
/// issuers of `envoy-examples/envoy-http.yaml` with the keys in `tests/keys/`.
pub fn test_config() -> Result<Value> {
    let jwks: Value = serde_json::from_str(&read("tests/keys/jwks.json")?)?;
    let hmac = read("tests/keys/hmac.b64")?.trim().to_string();
    Ok(json!({
        "issuers": [
            {
                "issuer": IDP, "audiences": [AUDIENCE], "jwks": jwks,
                "clock_skew_s": 60, "max_ttl_s": 3600, "required_claims": ["sub"],
                "identity_namespace": "corp", "delegation": {},
                "principal": {"type": "User", "claim": "sub", "groups_claim": "groups"},
                "claims": ["email"],
                "task": {"detail_fields": {"max_amount": "Long", "allowed_recipient_domain": "String"}}
            },
            {
                "issuer": AGENTS, "audiences": [AUDIENCE], "jwks": jwks,
                "clock_skew_s": 60, "max_ttl_s": 3600, "required_claims": ["sub"],
                "identity_namespace": "agents", "delegation": {},
                "principal": {"type": "Agent", "claim": "sub"},
                "single_use_claim": "single_use"
            },
            {
                "issuer": LEGACY, "audiences": [AUDIENCE], "hmac_secret": hmac,
                "clock_skew_s": 60, "max_ttl_s": 3600, "required_claims": ["sub"],
                "identity_namespace": "legacy",
                "principal": {"type": "Agent", "claim": "sub"}
            }
        ],
        "schema": read("policies/tessera.cedarschema")?,
        "policies": policy_files()?,
        "routes": [
            {"name": "health", "prefix": "/healthz", "auth": "none"},
            {"name": "orders", "prefix": "/orders"},
            {"name": "admin", "prefix": "/admin"},
            {"name": "payments", "prefix": "/payments", "max_token_age_s": 60},
            {"name": "tools", "prefix": "/mcp", "kind": "mcp"}
        ],
        "resource_metadata": {
            "resource": "https://api.example.com/mcp",
            "authorization_servers": [IDP],
            "scopes_supported": ["files:read", "email:send", "payments:write"]
        },
        "forward": {
            "headers": {
                "x-tessera-principal": "principal",
                "x-tessera-issuer": "issuer",
                "x-tessera-subject": "subject"
            }
        },
        "argument_formats": {
            "read_file": {"path": "path"},
            "delete_file": {"path": "path"},
            "send_email": {"to": "email"}
        },
        "approval": {
            "issuer": APPROVALS, "audiences": [APPROVAL_AUDIENCE],
            "jwks": serde_json::from_str::<Value>(&read("tests/keys/approver-jwks.json")?)?,
            "max_ttl_s": 300
        }
    }))
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The demo key and kid for an algorithm name.
fn key_for(alg: &str) -> Result<(Algorithm, EncodingKey, Option<&'static str>)> {
    let pem = |f: &str| -> Result<Vec<u8>> { Ok(read(&format!("tests/keys/{f}"))?.into_bytes()) };
    Ok(match alg {
        "EdDSA" => (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&pem("ed25519.pem")?)?,
            Some("demo-ed25519"),
        ),
        "ES256" => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&pem("p256.pem")?)?,
            Some("demo-p256"),
        ),
        "ES384" => (
            Algorithm::ES384,
            EncodingKey::from_ec_pem(&pem("p384.pem")?)?,
            Some("demo-p384"),
        ),
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
            let a = match alg {
                "RS256" => (Algorithm::RS256, "demo-rs256"),
                "RS384" => (Algorithm::RS384, "demo-rs384"),
                "RS512" => (Algorithm::RS512, "demo-rs512"),
                "PS256" => (Algorithm::PS256, "demo-ps256"),
                "PS384" => (Algorithm::PS384, "demo-ps384"),
                _ => (Algorithm::PS512, "demo-ps512"),
            };
            (
                a.0,
                EncodingKey::from_rsa_pem(&pem("rsa2048.pem")?)?,
                Some(a.1),
            )
        }
        "HS256" => {
            use base64::Engine as _;
            let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(read("tests/keys/hmac.b64")?.trim())?;
            (Algorithm::HS256, EncodingKey::from_secret(&secret), None)
        }
        other => anyhow::bail!("no demo key for {other}"),
    })
}

/// Mints a token signed with the demo key for `alg`. `iat`, `exp` (now + 300 s) and `aud` are
/// filled in unless `claims` has them (`null` removes one).
pub fn mint(alg: &str, claims: &Value) -> Result<String> {
    mint_typed(alg, Some("JWT"), claims)
}

/// [`mint`] with the JOSE header's `typ` as given (`None`: no `typ`).
pub fn mint_typed(alg: &str, typ: Option<&str>, claims: &Value) -> Result<String> {
    let (algorithm, key, kid) = key_for(alg)?;
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    header.typ = typ.map(str::to_string);
    let now = now_s();
    let mut c = json!({"iat": now, "exp": now + 300, "aud": AUDIENCE});
    merge_claims(&mut c, claims);
    Ok(jsonwebtoken::encode(&header, &c, &key)?)
}

/// The release `.wasm` (`TESSERA_WASM`, else the workspace's build output).
pub fn wasm_path() -> PathBuf {
    std::env::var_os("TESSERA_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/wasm32-wasip1/release/tessera_plugin.wasm"))
}

/// The module in the harness, configured with the test configuration as `edit` changes it.
pub fn harness_with(edit: impl FnOnce(&mut Value)) -> Result<tessera_harness::Harness> {
    let mut h = tessera_harness::Harness::load(wasm_path())
        .context("load the module (cargo xtask wasm)")?;
    let mut c = test_config()?;
    edit(&mut c);
    anyhow::ensure!(h.configure(&c.to_string())?, "configure: {:?}", h.logs());
    Ok(h)
}

/// A `sessions.seal_keys` entry (32 bytes, base64): TEST-ONLY.
pub const SEAL_KEY: &str = "dGVzc2VyYS10ZXN0LXNlYWwta2V5LTMyLWJ5dGVzLi4=";

/// `Bearer <token>`, the token minted with ES256 from `claims`.
pub fn bearer(claims: Value) -> Result<String> {
    Ok(format!("Bearer {}", mint("ES256", &claims)?))
}

/// A bearer token of `agent-7` from the agents issuer with `scope`.
pub fn agent(scope: &str) -> Result<String> {
    bearer(json!({"iss": AGENTS, "sub": "agent-7", "scope": scope}))
}

/// A JSON-RPC `tools/call` of `read_file` on `path`.
pub fn read_file(id: i64, path: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "read_file", "arguments": {"path": path}}})
}

/// Claims of `extra` set on `base` (both JSON objects); an `extra` claim that is `null` removes it.
pub fn merge_claims(base: &mut Value, extra: &Value) {
    if let (Some(c), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
}

/// POSTs one JSON-RPC message to `/mcp` through the module in the harness, with `extra` request
/// headers (e.g. `mcp-session-id`, an approval); returns the stream's context and the status of
/// the local reply, if the module sent one. The module must pause on the headers: an MCP POST is
/// judged by its body.
pub fn post_mcp(
    h: &mut tessera_harness::Harness,
    auth: &str,
    extra: &[(&str, &str)],
    body: &Value,
) -> Result<(u32, Option<u32>)> {
    let (ctx, _, status) = post_mcp_raw(h, auth, extra, &body.to_string())?;
    Ok((ctx, status))
}

/// [`post_mcp`] with the body as given, byte for byte; also returns what the module answered to
/// the body.
pub fn post_mcp_raw(
    h: &mut tessera_harness::Harness,
    auth: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Result<(u32, tessera_harness::Action, Option<u32>)> {
    let ctx = h.new_http()?;
    let len = body.len().to_string();
    let mut headers = vec![
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "api.example.com"),
        ("authorization", auth),
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    headers.extend_from_slice(extra);
    let action = h.request_headers(ctx, &headers, false)?;
    anyhow::ensure!(
        action == tessera_harness::Action::Pause,
        "the body must be judged first, but the headers got {action:?}"
    );
    let on_body = h.request_body(ctx, body.as_bytes(), true)?;
    Ok((ctx, on_body, h.local_reply(ctx).map(|r| r.status)))
}

/// An approval signed with the demo approver key (jsonwebtoken, independent of the filter's JOSE
/// library), of type `approval+jwt`. `claims` override the defaults; `null` removes one.
pub fn approval_token(digest: &str, claims: &Value) -> Result<String> {
    let pem = std::fs::read(repo_root().join("tests/keys/approver-ed25519.pem"))?;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("demo-approver".into());
    header.typ = Some("approval+jwt".into());
    let now = now_s();
    let mut c = json!({
        "iss": APPROVALS, "aud": APPROVAL_AUDIENCE, "sub": "alice@example.com",
        "iat": now, "exp": now + 120, "jti": format!("approval-{digest}-{now}"),
        "approval_digest": digest,
    });
    merge_claims(&mut c, claims);
    Ok(jsonwebtoken::encode(
        &header,
        &c,
        &EncodingKey::from_ed_pem(&pem)?,
    )?)
}

/// One request without a body through the module in the harness (`auth`: the `authorization`
/// header, if any): its context and the status of the local reply, if the module sent one.
pub fn request(
    h: &mut tessera_harness::Harness,
    method: &str,
    path: &str,
    auth: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<(u32, Option<u32>)> {
    let ctx = h.new_http()?;
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", "api.example.com"),
    ];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    headers.extend_from_slice(extra);
    h.request_headers(ctx, &headers, true)?;
    Ok((ctx, h.local_reply(ctx).map(|r| r.status)))
}

/// An `initialize` the server answers with session id `session` (the filter binds it to the
/// caller): the response status the client gets.
pub fn initialize_session(
    h: &mut tessera_harness::Harness,
    auth: &str,
    session: &str,
) -> Result<String> {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}});
    let (ctx, status) = post_mcp(h, auth, &[], &init)?;
    anyhow::ensure!(status.is_none(), "initialize refused: {status:?}");
    h.response_headers(
        ctx,
        &[
            (":status", "200"),
            ("mcp-session-id", session),
            ("content-type", "application/json"),
        ],
        false,
    )?;
    let status = h.response_header(ctx, ":status").unwrap_or_default();
    h.done(ctx)?;
    Ok(status)
}

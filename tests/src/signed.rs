//! Signed documents of the revocation tests and benchmarks, minted with jsonwebtoken and the demo
//! keys (independent of the filter's JOSE library): Security Event Tokens from the demo
//! transmitter, OAuth Token Status List tokens from the demo status signer, and the
//! `revocation` configuration that trusts them.

use anyhow::{Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::{merge_claims, now_s, repo_root};

/// The demo transmitter of security events (its SETs are signed with the demo Ed25519 key).
pub const TRANSMITTER: &str = "https://ssf.test";
/// The audience its SETs name.
pub const RECEIVER: &str = "https://tessera.test/events";
/// Where the filter receives pushed SETs.
pub const EVENTS_PATH: &str = "/.well-known/tessera/events";
/// The demo status list signer (the demo P-256 key).
pub const STATUS_SIGNER: &str = "https://status.test";
/// Where the demo status lists live (fetched through the `status` cluster).
pub const LISTS: &str = "https://status.test/lists/";

/// The demo JWKS with only the keys named.
pub fn jwks_with(kids: &[&str]) -> Result<Value> {
    let all: Value = serde_json::from_str(&std::fs::read_to_string(
        repo_root().join("tests/keys/jwks.json"),
    )?)?;
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .context("keys")?
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    Ok(json!({ "keys": keys }))
}

/// `revocation` trusting the demo transmitter (pushed SETs at [`EVENTS_PATH`]) and the demo
/// status signer (lists under [`LISTS`]).
pub fn revocation_config() -> Result<Value> {
    Ok(json!({
        "events": {
            "issuer": TRANSMITTER, "audiences": [RECEIVER], "jwks": jwks_with(&["demo-ed25519"])?,
            "receiver_path": EVENTS_PATH
        },
        "status_list": {
            "signers": [{"issuer": STATUS_SIGNER, "jwks": jwks_with(&["demo-p256"])?}],
            "sources": [{"uri_prefix": LISTS, "cluster": "status"}],
            "default_ttl_s": 60, "max_stale_s": 30
        }
    }))
}

fn pem(name: &str) -> Result<Vec<u8>> {
    Ok(std::fs::read(repo_root().join("tests/keys").join(name))?)
}

/// A SET from the demo transmitter with header `typ` and `kid`: `claims` over the defaults (`iss`,
/// `aud`, `iat`, a fresh `jti`; `null` removes one).
pub fn set_token(typ: &str, kid: &str, claims: &Value) -> Result<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    header.typ = Some(typ.into());
    let now = now_s();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut c =
        json!({"iss": TRANSMITTER, "aud": RECEIVER, "iat": now, "jti": format!("set-{now}-{n}")});
    merge_claims(&mut c, claims);
    Ok(jsonwebtoken::encode(
        &header,
        &c,
        &EncodingKey::from_ed_pem(&pem("ed25519.pem")?)?,
    )?)
}

/// A `urn:tessera:secevent:revoked` SET about `subject`.
pub fn revoke(subject: Value) -> Result<String> {
    set_token(
        "secevent+jwt",
        "demo-ed25519",
        &json!({"sub_id": subject, "events": {"urn:tessera:secevent:revoked": {}}}),
    )
}

/// A status list token for `uri`: `statuses` packed `bits` per entry (least significant bits
/// first), zlib-compressed, signed with the demo P-256 key as `signer`, typed `typ`, fresh for
/// `ttl` seconds.
pub fn status_list_token(
    uri: &str,
    bits: u8,
    statuses: &[u8],
    signer: &str,
    typ: &str,
    ttl: u64,
) -> Result<String> {
    let now = now_s();
    status_list_claims(
        uri,
        bits,
        statuses,
        signer,
        typ,
        json!({"iat": now, "exp": now + 3600, "ttl": ttl}),
    )
}

/// A status list token as [`status_list_token`] with the times given in `times` (`iat`, `exp`,
/// `ttl`; absent: none).
pub fn status_list_claims(
    uri: &str,
    bits: u8,
    statuses: &[u8],
    signer: &str,
    typ: &str,
    times: Value,
) -> Result<String> {
    let per_byte = 8 / usize::from(bits);
    let mut bytes = vec![0u8; statuses.len().div_ceil(per_byte)];
    for (i, s) in statuses.iter().enumerate() {
        let byte = bytes.get_mut(i / per_byte).context("index")?;
        *byte |= s << ((i % per_byte) * usize::from(bits));
    }
    let lst = URL_SAFE_NO_PAD.encode(miniz_oxide::deflate::compress_to_vec_zlib(&bytes, 6));
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("demo-p256".into());
    header.typ = Some(typ.into());
    let mut claims = json!({"iss": signer, "sub": uri, "status_list": {"bits": bits, "lst": lst}});
    merge_claims(&mut claims, &times);
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(&pem("p256.pem")?)?,
    )?)
}

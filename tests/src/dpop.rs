//! DPoP proofs (RFC 9449 §4.2) made with jsonwebtoken, a JOSE library independent of the
//! filter's, by an agent's own key (`tests/keys/holder-p256.pem`, in no JWKS).

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{merge_claims, now_s, repo_root};

/// A key an agent holds: it signs proofs, and tokens are bound to its thumbprint.
pub struct Holder {
    key: EncodingKey,
    alg: Algorithm,
    jwk: Jwk,
    /// The RFC 7638 thumbprint of the public key, as jsonwebtoken computes it: `cnf.jkt`.
    pub jkt: String,
}

impl Holder {
    /// The demo agent's P-256 key.
    pub fn agent() -> Result<Holder> {
        Holder::from_pem("holder-p256.pem", Algorithm::ES256)
    }

    /// A key nobody bound a token to: the attacker's Ed25519 key.
    pub fn attacker() -> Result<Holder> {
        Holder::from_pem("attacker-ed25519.pem", Algorithm::EdDSA)
    }

    fn from_pem(file: &str, alg: Algorithm) -> Result<Holder> {
        let pem = std::fs::read(repo_root().join("tests/keys").join(file))?;
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem)?,
            _ => EncodingKey::from_ec_pem(&pem)?,
        };
        let mut jwk = Jwk::from_encoding_key(&key, alg)?;
        // A proof's `jwk` is the bare public key.
        jwk.common.key_algorithm = None;
        let jkt = jwk.thumbprint(ThumbprintHash::SHA256)?;
        Ok(Holder { key, alg, jwk, jkt })
    }

    /// A proof for `htm` `htu` carrying `ath` of `token`, `iat` now and a `jti` never used
    /// before; `claims` override those (`null` removes one).
    pub fn proof(&self, htm: &str, htu: &str, token: &str, claims: &Value) -> Result<String> {
        self.proof_typed("dpop+jwt", htm, htu, token, claims)
    }

    /// [`Holder::proof`] with the JOSE `typ` as given.
    pub fn proof_typed(
        &self,
        typ: &str,
        htm: &str,
        htu: &str,
        token: &str,
        claims: &Value,
    ) -> Result<String> {
        let mut header = Header::new(self.alg);
        header.typ = Some(typ.into());
        header.jwk = Some(self.jwk.clone());
        let mut c = json!({
            "jti": fresh_jti(), "htm": htm, "htu": htu, "iat": now_s(), "ath": ath(token),
        });
        merge_claims(&mut c, claims);
        Ok(jsonwebtoken::encode(&header, &c, &self.key)?)
    }
}

/// RFC 9449 §4.2 `ath`: base64url SHA-256 of the access token.
pub fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A `jti` unique in this process and across runs.
fn fresh_jti() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("proof-{nanos}-{}", N.fetch_add(1, Ordering::Relaxed))
}

//! Verification keys from RFC 7517 JWK sets (and an explicit HMAC secret), each with the one
//! algorithm it may verify. The algorithm comes from the key, never from a token's header.
//!
//! jwt-simple verifies every signature except three kinds, whose arithmetic it does slowly in
//! wasm32 (issue 16): Ed25519, verified by `ed25519/` (ed25519-dalek's strict checks, 32-bit
//! limbs, the key's multiples tabulated when the key loads); RSA (RS* and PS*), verified by `rsa.rs` (32-bit-limb
//! Montgomery arithmetic, its constants computed when the key loads); and ES256, verified by
//! `es256/` (32-bit limbs, the key's multiples tabulated when the key loads). For those, the
//! header and the claims are checked as jwt-simple checks them (`jws::verify`).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jwt_simple::prelude::*;
use serde_json::Value;

use crate::error::{ConfigError, TokenError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    EdDSA,
    ES256,
    ES384,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    HS256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::HS256 => "HS256",
        }
    }

    fn from_name(name: &str) -> Option<Algorithm> {
        Some(match name {
            "EdDSA" | "Ed25519" => Algorithm::EdDSA,
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            "HS256" => Algorithm::HS256,
            _ => return None,
        })
    }

    /// Whether a token header's `alg` names this algorithm. `Ed25519` is the fully specified
    /// name for EdDSA over Ed25519 (RFC 9864).
    pub fn matches_header(self, alg: &str) -> bool {
        alg == self.name() || (self == Algorithm::EdDSA && alg == "Ed25519")
    }
}

/// A public key (or HMAC secret) bound to one algorithm.
pub enum Verifier {
    Ed25519(crate::ed25519::PublicKey),
    Es256(crate::es256::PublicKey),
    Es384(ES384PublicKey),
    /// RS256, RS384, RS512, PS256, PS384, PS512: the scheme is the algorithm's.
    Rsa(crate::rsa::PublicKey, crate::rsa::Scheme),
    Hs256(HS256Key),
}

pub struct Key {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub verifier: Verifier,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl Key {
    /// For the keys jwt-simple verifies: `token` verified by jwt-simple with `options` (signature
    /// and registered claims). `None` for the keys whose signatures Tessera verifies itself
    /// ([`Key::verify_signature`]; `jws::verify` checks the rest of such tokens).
    pub fn verify_with_jwt_simple(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> Option<Result<JWTClaims<serde_json::Map<String, Value>>, jwt_simple::Error>> {
        type C = serde_json::Map<String, Value>;
        let o = Some(options);
        match &self.verifier {
            Verifier::Es384(k) => Some(k.verify_token::<C>(token, o)),
            Verifier::Hs256(k) => Some(k.verify_token::<C>(token, o)),
            Verifier::Ed25519(_) | Verifier::Es256(_) | Verifier::Rsa(..) => None,
        }
    }

    /// For the keys Tessera verifies itself: whether `signature` signs `signed` (`BadSignature`,
    /// or, as jwt-simple has it, an Ed25519 signature of another length than 64 bytes is
    /// undecodable). `None` for the keys jwt-simple verifies (whole tokens only).
    pub fn verify_signature(
        &self,
        signed: &[u8],
        signature: &[u8],
    ) -> Option<Result<(), TokenError>> {
        let verified = match &self.verifier {
            Verifier::Ed25519(k) => {
                let Ok(s) = <&[u8; 64]>::try_from(signature) else {
                    return Some(Err(TokenError::Malformed("token could not be decoded")));
                };
                k.verify(signed, s)
            }
            // A signature of another length than 64 bytes is a bad signature, as in jwt-simple.
            Verifier::Es256(k) => k.verify(signed, signature),
            Verifier::Rsa(k, scheme) => k.verify(*scheme, signed, signature),
            Verifier::Es384(_) | Verifier::Hs256(_) => return None,
        };
        Some(if verified {
            Ok(())
        } else {
            Err(TokenError::BadSignature)
        })
    }
}

/// Parses a JWK set. `path` is the JSON path of the set in the configuration, for errors.
pub fn parse_jwks(jwks: &Value, path: &str) -> Result<Vec<Key>, ConfigError> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| ConfigError::new(path, "a JWK set needs a `keys` array"))?;
    let mut out = Vec::with_capacity(keys.len());
    for (i, jwk) in keys.iter().enumerate() {
        let p = format!("{path}.keys[{i}]");
        if let Some(key) = parse_jwk(jwk, &p)? {
            if key.kid.is_some() && out.iter().any(|k: &Key| k.kid == key.kid) {
                return Err(ConfigError::new(format!("{p}.kid"), "duplicate kid"));
            }
            out.push(key);
        }
    }
    Ok(out)
}

/// One JWK. Keys marked for encryption (`use: enc`) are skipped, as a JWKS may hold both kinds.
fn parse_jwk(jwk: &Value, path: &str) -> Result<Option<Key>, ConfigError> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let err = |name: &str, msg: &str| ConfigError::new(format!("{path}.{name}"), msg.to_string());
    if field("use") == Some("enc") {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops").and_then(Value::as_array) {
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Ok(None);
        }
    }
    let kty = field("kty").ok_or_else(|| err("kty", "missing"))?;
    let declared = match field("alg") {
        Some(a) => {
            Some(Algorithm::from_name(a).ok_or_else(|| err("alg", "unsupported algorithm"))?)
        }
        None => None,
    };
    let kid = field("kid").map(str::to_string);
    let b64 = |name: &str| -> Result<Vec<u8>, ConfigError> {
        let s = field(name).ok_or_else(|| err(name, "missing"))?;
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| err(name, "not base64url without padding"))
    };
    let bad_key = |e: jwt_simple::Error| ConfigError::new(path, format!("invalid key: {e}"));
    let (algorithm, verifier) = match kty {
        "OKP" => {
            if field("crv") != Some("Ed25519") {
                return Err(err("crv", "only Ed25519 is supported for OKP keys"));
            }
            let alg = declared.unwrap_or(Algorithm::EdDSA);
            if alg != Algorithm::EdDSA {
                return Err(err("alg", "an Ed25519 key verifies only EdDSA"));
            }
            let x: [u8; 32] = b64("x")?
                .try_into()
                .map_err(|_| err("x", "an Ed25519 key is 32 bytes"))?;
            // A point off the curve, or one of small order (any signature could verify), is no key.
            let key = crate::ed25519::PublicKey::from_bytes(&x)
                .ok_or_else(|| err("x", "not an Ed25519 public key"))?;
            (alg, Verifier::Ed25519(key))
        }
        "EC" => {
            let (alg, len) = match field("crv") {
                Some("P-256") => (Algorithm::ES256, 32),
                Some("P-384") => (Algorithm::ES384, 48),
                _ => return Err(err("crv", "only P-256 and P-384 are supported for EC keys")),
            };
            if declared.is_some_and(|d| d != alg) {
                return Err(err("alg", "does not match the curve"));
            }
            let (x, y) = (b64("x")?, b64("y")?);
            if x.len() != len || y.len() != len {
                return Err(ConfigError::new(
                    path,
                    "x and y must have the curve's length",
                ));
            }
            let mut sec1 = Vec::with_capacity(1 + 2 * len);
            sec1.push(0x04);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            let v = if alg == Algorithm::ES256 {
                // jwt-simple's rules decide which keys are acceptable; `es256/` verifies.
                ES256PublicKey::from_bytes(&sec1).map_err(bad_key)?;
                let coordinate = |c: &[u8]| <[u8; 32]>::try_from(c).ok();
                let key = coordinate(&x)
                    .zip(coordinate(&y))
                    .and_then(|(x, y)| crate::es256::PublicKey::from_coordinates(&x, &y))
                    .ok_or_else(|| err("x", "not a P-256 public key"))?;
                Verifier::Es256(key)
            } else {
                Verifier::Es384(ES384PublicKey::from_bytes(&sec1).map_err(bad_key)?)
            };
            (alg, v)
        }
        "RSA" => {
            let alg = declared.unwrap_or(Algorithm::RS256);
            let (n, e) = (b64("n")?, b64("e")?);
            // jwt-simple's rules decide which RSA keys are acceptable (2,048 to 4,096 bits, the
            // exponent, for RS* and PS* alike); `rsa.rs` verifies the signatures.
            let rsa = |scheme| {
                RS256PublicKey::from_components(&n, &e).map_err(bad_key)?;
                let key = crate::rsa::PublicKey::from_components(&n, &e)
                    .map_err(|m| ConfigError::new(path, format!("invalid key: {m}")))?;
                Ok::<_, ConfigError>(Verifier::Rsa(key, scheme))
            };
            use crate::rsa::{Hash, Scheme};
            let v = match alg {
                Algorithm::RS256 => rsa(Scheme::Pkcs1(Hash::Sha256))?,
                Algorithm::RS384 => rsa(Scheme::Pkcs1(Hash::Sha384))?,
                Algorithm::RS512 => rsa(Scheme::Pkcs1(Hash::Sha512))?,
                Algorithm::PS256 => rsa(Scheme::Pss(Hash::Sha256))?,
                Algorithm::PS384 => rsa(Scheme::Pss(Hash::Sha384))?,
                Algorithm::PS512 => rsa(Scheme::Pss(Hash::Sha512))?,
                _ => {
                    return Err(err(
                        "alg",
                        "an RSA key verifies only RS256/384/512 or PS256/384/512",
                    ))
                }
            };
            (alg, v)
        }
        "oct" => {
            return Err(err(
                "kty",
                "symmetric keys are not accepted in jwks; configure the issuer's hmac_secret",
            ))
        }
        _ => return Err(err("kty", "unsupported key type")),
    };
    Ok(Some(Key {
        kid,
        algorithm,
        verifier,
    }))
}

/// The HS256 key of an issuer's explicit `hmac_secret` (base64url or standard base64).
pub fn hmac_key(secret: &str, path: &str) -> Result<Key, ConfigError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(secret.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(secret))
        .map_err(|_| ConfigError::new(path, "not base64"))?;
    // RFC 7518 §3.2: the key must be at least as long as the hash output.
    if bytes.len() < 32 {
        return Err(ConfigError::new(
            path,
            "an HS256 secret needs at least 32 bytes",
        ));
    }
    Ok(Key {
        kid: None,
        algorithm: Algorithm::HS256,
        verifier: Verifier::Hs256(HS256Key::from_bytes(&bytes)),
    })
}

/// A JWK set fetched from an identity provider (`remote_jwks`). Unlike configuration, a provider
/// may publish keys Tessera cannot use (encryption keys, other curves, `oct`, weak RSA): those
/// are skipped, by the same rules as inline keys, and named in `skipped`. A document over
/// `max_keys` keys, or without one usable key, is refused whole.
pub fn parse_fetched_jwks(doc: &Value, max_keys: usize) -> Result<(Vec<Key>, Vec<String>), String> {
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("a JWK set needs a `keys` array")?;
    if keys.len() > max_keys {
        return Err(format!(
            "{} keys, more than limits.max_jwks_keys ({max_keys})",
            keys.len()
        ));
    }
    let mut out: Vec<Key> = Vec::with_capacity(keys.len());
    let mut skipped = Vec::new();
    for (i, jwk) in keys.iter().enumerate() {
        match parse_jwk(jwk, &format!("keys[{i}]")) {
            Ok(Some(key)) => out.push(key),
            Ok(None) => {}
            Err(e) => skipped.push(e.to_string()),
        }
    }
    // Which of two keys with one kid is meant cannot be known: none of them is used.
    let mut seen = std::collections::HashSet::new();
    let twice: std::collections::HashSet<String> = out
        .iter()
        .filter_map(|k| k.kid.clone())
        .filter(|kid| !seen.insert(kid.clone()))
        .collect();
    if !twice.is_empty() {
        out.retain(|k| k.kid.as_ref().is_none_or(|kid| !twice.contains(kid)));
        skipped.extend(twice.iter().map(|kid| format!("kid `{kid}` given twice")));
    }
    if out.is_empty() {
        return Err(format!("no usable key ({})", skipped.join("; ")));
    }
    Ok((out, skipped))
}

//! Bearer token verification: pick the issuer by `iss`, the key by `kid` (the algorithm is the
//! key's), verify with jwt-simple, then apply the checks jwt-simple leaves to us (`exp` required,
//! maximum lifetime, required claims). Time is the proxy's clock, passed in.

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{Duration, UnixTimeStamp, VerificationOptions};
use jwt_simple::JWTError;
use serde_json::{Map, Value};

pub use crate::claims::Claims;
use crate::config::IssuerConfig;
use crate::error::{ConfigError, TokenError};
use crate::jwks::{self, Key};

/// A configured, compiled issuer.
#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    audiences: HashSet<String>,
    keys: Vec<Key>,
    clock_skew_s: u64,
    max_ttl_s: Option<u64>,
    required_claims: Vec<String>,
    pub principal_type: String,
    pub principal_claim: String,
    pub groups_claim: Option<String>,
    pub principal_attributes: Vec<(String, String)>,
    pub claims: Vec<String>,
    /// Claim whose value `true` makes a token single-use (`approval::single_use`).
    pub single_use_claim: Option<String>,
    /// Delegation (`act`) and task settings.
    pub agent: crate::agent::AgentConfig,
    /// The one `typ` required (lowercase, without `application/`); `None`: absent, `jwt` or
    /// `at+jwt`.
    typ: Option<String>,
    /// The identity namespace of this issuer's entity ids (`identity.rs`).
    pub namespace: String,
}

/// A JOSE `typ` compared as RFC 7515 §4.1.9 says: case-insensitively, `application/` optional.
fn media_type(typ: &str) -> String {
    let t = typ.trim().to_ascii_lowercase();
    match t.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => t,
    }
}

impl Issuer {
    pub fn compile(c: &IssuerConfig, path: &str) -> Result<Issuer, ConfigError> {
        if c.issuer.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.issuer"),
                "must not be empty",
            ));
        }
        if c.audiences.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.audiences"),
                "needs at least one audience: a token for another service must not be accepted",
            ));
        }
        let mut keys = match &c.jwks {
            Some(j) => jwks::parse_jwks(j, &format!("{path}.jwks"))?,
            None => Vec::new(),
        };
        if let Some(secret) = &c.hmac_secret {
            keys.push(jwks::hmac_key(secret, &format!("{path}.hmac_secret"))?);
        }
        if keys.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.jwks"),
                "the issuer has no verification key (jwks or hmac_secret)",
            ));
        }
        let typ = match &c.typ {
            None => None,
            Some(t) if media_type(t).is_empty() || media_type(t).contains(char::is_whitespace) => {
                return Err(ConfigError::new(
                    format!("{path}.typ"),
                    "must be a media type such as `at+jwt`",
                ))
            }
            Some(t) => Some(media_type(t)),
        };
        let namespace = c
            .identity_namespace
            .clone()
            .unwrap_or_else(|| c.issuer.clone());
        crate::identity::check_namespace(&namespace)
            .map_err(|why| ConfigError::new(format!("{path}.identity_namespace"), why))?;
        if c.principal.claim.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.principal.claim"),
                "must not be empty",
            ));
        }
        Ok(Issuer {
            issuer: c.issuer.clone(),
            audiences: c.audiences.iter().cloned().collect(),
            keys,
            clock_skew_s: c.clock_skew_s,
            max_ttl_s: c.max_ttl_s,
            required_claims: c.required_claims.clone(),
            principal_type: c.principal.entity_type.clone(),
            principal_claim: c.principal.claim.clone(),
            groups_claim: c.principal.groups_claim.clone(),
            principal_attributes: c
                .principal
                .attributes
                .iter()
                .map(|(a, c)| (a.clone(), c.clone()))
                .collect(),
            claims: c.claims.clone(),
            single_use_claim: c.single_use_claim.clone(),
            agent: crate::agent::AgentConfig::compile(c.delegation.as_ref(), &c.task, path)?,
            typ,
            namespace,
        })
    }

    /// RFC 8725 §3.11: a token typed for another use (a logout token, a security event, a
    /// status list, a DPoP proof, an approval) is never taken for what this issuer's tokens are.
    fn check_typ(&self, header: &Map<String, Value>) -> Result<(), TokenError> {
        let typ = match header.get("typ") {
            None => None,
            Some(Value::String(t)) => Some(media_type(t)),
            Some(_) => return Err(TokenError::Malformed("typ is not a string")),
        };
        let ok = match (&self.typ, &typ) {
            (Some(required), Some(t)) => required == t,
            (Some(_), None) => false,
            (None, None) => true,
            (None, Some(t)) => t == "jwt" || t == "at+jwt",
        };
        if ok {
            return Ok(());
        }
        Err(TokenError::WrongType(
            typ.unwrap_or_else(|| "(none)".into()),
        ))
    }

    /// Tolerance for `exp`, `nbf`, `iat`: a token verifies until `exp` plus this.
    pub fn clock_skew_s(&self) -> u64 {
        self.clock_skew_s
    }
}

/// What a verified token says, in the shape the Cedar request needs.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// Index of the issuer in the engine's issuer list.
    pub issuer_index: usize,
    pub issuer: String,
    pub subject: Option<String>,
    pub audience: Vec<String>,
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    pub issued_at: Option<u64>,
    pub expires_at: u64,
    pub jti: Option<String>,
    /// The whole payload, for principal mapping and chosen claims.
    pub payload: Claims,
    /// `act` and the task claims, parsed and checked once, when the token was verified.
    pub agent: crate::agent::AgentClaims,
    /// What of the Cedar request built from this token is already known to fit the schema.
    pub checked: crate::authz::Checked,
}

impl VerifiedToken {
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.payload.get(name)
    }
}

fn decode_json_part(part: &str, what: &'static str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(what))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TokenError::Malformed(what)),
    }
}

/// Token-offered key material is never trusted (RFC 8725 §3.10 and the JWT attack catalogue).
const FORBIDDEN_HEADERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

pub fn verify(
    issuers: &[Issuer],
    token: &str,
    now_s: u64,
    max_token_bytes: usize,
) -> Result<VerifiedToken, TokenError> {
    if token.len() > max_token_bytes {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "not a compact JWS (three base64url parts)",
        ));
    };
    let header = decode_json_part(h, "header is not base64url JSON")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenError::Malformed("header has no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::AlgNone);
    }
    for name in FORBIDDEN_HEADERS {
        if header.contains_key(name) {
            return Err(TokenError::ForbiddenHeader(name));
        }
    }
    if header.contains_key("crit") {
        return Err(TokenError::CriticalHeader);
    }
    let payload = decode_json_part(p, "payload is not base64url JSON")?;
    let iss = payload
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(TokenError::UnknownIssuer)?;
    let (issuer_index, issuer) = issuers
        .iter()
        .enumerate()
        .find(|(_, i)| i.issuer == iss)
        .ok_or(TokenError::UnknownIssuer)?;
    issuer.check_typ(&header)?;

    let kid = header.get("kid").and_then(Value::as_str);
    let by_kid = kid.and_then(|k| issuer.keys.iter().find(|key| key.kid.as_deref() == Some(k)));
    let candidates: Vec<&Key> = match by_kid {
        Some(key) => {
            if !key.algorithm.matches_header(alg) {
                return Err(TokenError::AlgorithmMismatch {
                    expected: key.algorithm.name(),
                    found: alg.to_string(),
                });
            }
            vec![key]
        }
        None => {
            // A token without a kid is tried against every key of its algorithm (as Envoy's
            // jwt_authn does); a token naming a kid we do not have is only tried against keys
            // without a kid (the HMAC secret), never against a key that has another kid.
            let c: Vec<&Key> = issuer
                .keys
                .iter()
                .filter(|k| (kid.is_none() || k.kid.is_none()) && k.algorithm.matches_header(alg))
                .collect();
            if c.is_empty() {
                return Err(match kid {
                    Some(k) => TokenError::UnknownKid(k.to_string()),
                    None => TokenError::NoKeyForAlgorithm(alg.to_string()),
                });
            }
            c
        }
    };

    let options = VerificationOptions {
        accept_future: false,
        allowed_audiences: Some(issuer.audiences.clone()),
        time_tolerance: Some(Duration::from_secs(issuer.clock_skew_s)),
        max_token_length: Some(max_token_bytes),
        artificial_time: Some(UnixTimeStamp::from_secs(now_s)),
        ..VerificationOptions::default()
    };
    let mut last_err = TokenError::BadSignature;
    let mut verified = None;
    for key in candidates {
        match key.verify(token, options.clone()) {
            Ok(claims) => {
                verified = Some(claims);
                break;
            }
            Err(e) => {
                last_err = map_jwt_error(&e);
                if last_err != TokenError::BadSignature {
                    break;
                }
            }
        }
    }
    if verified.is_none() {
        return Err(last_err);
    }

    // What jwt-simple does not enforce.
    let exp = numeric(&payload, "exp")?.ok_or(TokenError::MissingExp)?;
    let iat = numeric(&payload, "iat")?;
    if let Some(max_ttl) = issuer.max_ttl_s {
        let lifetime = exp.saturating_sub(iat.unwrap_or(now_s));
        if lifetime > max_ttl {
            return Err(TokenError::LifetimeTooLong);
        }
    }
    for c in &issuer.required_claims {
        if payload.get(c).is_none_or(Value::is_null) {
            return Err(TokenError::MissingClaim(c.clone()));
        }
    }
    // A chain too deep or task claims the filter cannot judge: refused before Cedar sees them.
    let payload = Claims::from(payload);
    let agent = crate::agent::parse(&payload, &issuer.agent)?;
    let string = |name: &str| {
        payload
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let audience = match payload.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    Ok(VerifiedToken {
        issuer_index,
        issuer: issuer.issuer.clone(),
        subject: string("sub"),
        audience,
        scopes: scopes(&payload),
        client_id: string("client_id").or_else(|| string("azp")),
        issued_at: iat,
        expires_at: exp,
        jti: string("jti"),
        payload,
        agent,
        checked: crate::authz::Checked::default(),
    })
}

/// Scopes from `scope` (RFC 8693/9068: space-separated string) or `scp` (array or string).
fn scopes(payload: &Claims) -> Vec<String> {
    let from = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        }
    };
    payload
        .get("scope")
        .or_else(|| payload.get("scp"))
        .map(from)
        .unwrap_or_default()
}

fn numeric(payload: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, TokenError> {
    match payload.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(TokenError::BadClaim(name.to_string(), "not a NumericDate")),
    }
}

fn map_jwt_error(e: &jwt_simple::Error) -> TokenError {
    match e.downcast_ref::<JWTError>() {
        Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag) => {
            TokenError::BadSignature
        }
        Some(JWTError::TokenHasExpired) => TokenError::Expired,
        Some(JWTError::TokenNotValidYet) => TokenError::NotYetValid,
        Some(JWTError::ClockDrift) => TokenError::IssuedInFuture,
        Some(JWTError::RequiredAudienceMismatch | JWTError::RequiredAudienceMissing) => {
            TokenError::Audience
        }
        Some(JWTError::RequiredIssuerMismatch | JWTError::RequiredIssuerMissing) => {
            TokenError::UnknownIssuer
        }
        Some(JWTError::UnknownCriticalExtension) => TokenError::CriticalHeader,
        Some(JWTError::TokenTooLong | JWTError::HeaderTooLarge) => TokenError::TooLarge,
        Some(JWTError::NotJWT) => TokenError::Malformed("typ is not JWT"),
        Some(JWTError::CompactEncodingError) => TokenError::Malformed("not a compact JWS"),
        // Anything else (base64 of the signature, claims of the wrong JSON type, …) is a token we
        // cannot judge, and so a rejected one.
        _ => TokenError::Malformed("token could not be decoded"),
    }
}

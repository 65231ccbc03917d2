//! Bearer token verification: pick the issuer by `iss`, the key by `kid` (the algorithm is the
//! key's), verify with jwt-simple, then apply the checks jwt-simple leaves to us (`exp` required,
//! maximum lifetime, required claims). For an issuer whose tokens Envoy's `jwt_authn` verifies,
//! the payload it verified stands in for the signature (`jwt_authn.rs`) and the registered claims
//! are checked as jwt-simple checks them (`jws::check_registered`). Time is the proxy's clock,
//! passed in.

use std::collections::HashSet;

use serde_json::{Map, Value};

pub use crate::claims::Claims;
use crate::config::{IssuerConfig, Limits};
use crate::error::{ConfigError, TokenError};
use crate::jws::{self, media_type, numeric};
use crate::keys::IssuerKeys;

/// A configured, compiled issuer.
#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    audiences: HashSet<String>,
    /// Inline, or fetched from the identity provider (`keys.rs`).
    pub keys: IssuerKeys,
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
    /// Tokens must be bound (`cnf`) and proven (`proof_of_possession: required`).
    pub proof_required: bool,
    /// JWT-SVIDs: the principal claim is a SPIFFE ID in this trust domain.
    spiffe_trust_domain: Option<String>,
    /// The workload presenting a token is its outermost actor (`issuers[].workload_actor`).
    pub workload_actor: bool,
    /// `jwt_authn` verifies this issuer's tokens; its payloads are under this key
    /// (`jwt_authn.rs`).
    pub jwt_authn_payload: Option<String>,
    /// And its JOSE headers under this key (`header_in_metadata`).
    jwt_authn_header: Option<String>,
}

impl Issuer {
    pub fn compile(c: &IssuerConfig, path: &str, limits: &Limits) -> Result<Issuer, ConfigError> {
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
        if let Some(key) = &c.jwt_authn_payload {
            let keyed = c.jwks.is_some() || c.remote_jwks.is_some() || c.hmac_secret.is_some();
            if key.is_empty() || keyed {
                return Err(ConfigError::new(
                    format!("{path}.jwt_authn_payload"),
                    "names the `payload_in_metadata` of the jwt_authn provider that verifies this issuer's tokens (not empty); such an issuer takes no keys (jwks, remote_jwks, hmac_secret)",
                ));
            }
        }
        if let Some(h) = &c.jwt_authn_header {
            if h.is_empty() || c.jwt_authn_payload.is_none() {
                return Err(ConfigError::new(
                    format!("{path}.jwt_authn_header"),
                    "names the `header_in_metadata` of the jwt_authn provider (not empty), with `jwt_authn_payload`",
                ));
            }
        }
        let keys = IssuerKeys::compile(c, path, limits)?;
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
        // `Workload::"spiffe|…"` is an X.509-SVID's identity: only an issuer of JWT-SVIDs (whose
        // `sub` is checked as a SPIFFE ID of its trust domain), naming workloads, with no actors
        // of its own, may name the same entities.
        if namespace == crate::names::SPIFFE_NAMESPACE
            && (c.spiffe_trust_domain.is_none()
                || c.principal.entity_type != crate::names::WORKLOAD
                || c.delegation.is_some())
        {
            return Err(ConfigError::new(
                format!("{path}.identity_namespace"),
                "`spiffe` is the namespace of workloads' SPIFFE IDs: only an issuer with `spiffe_trust_domain`, principal type `Workload` and no `delegation` may use it",
            ));
        }
        if c.principal.claim.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.principal.claim"),
                "must not be empty",
            ));
        }
        let spiffe_trust_domain = match &c.spiffe_trust_domain {
            Some(td) if !crate::pop::connection::is_trust_domain(td) => {
                return Err(ConfigError::new(
                    format!("{path}.spiffe_trust_domain"),
                    "not a SPIFFE trust domain (lower-case letters, digits, `-`, `.`, `_`)",
                ))
            }
            td => td.clone(),
        };
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
            proof_required: c.proof_of_possession == crate::config::ProofOfPossession::Required,
            spiffe_trust_domain,
            workload_actor: c.workload_actor,
            jwt_authn_payload: c.jwt_authn_payload.clone(),
            jwt_authn_header: c.jwt_authn_header.clone(),
        })
    }

    /// RFC 8725 §3.11: a token typed for another use (a logout token, a security event, a
    /// status list, a DPoP proof, an approval) is never taken for what this issuer's tokens are.
    fn check_typ(&self, parts: &jws::Parts) -> Result<(), TokenError> {
        let typ = parts.typ()?;
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

    /// For an issuer whose tokens `jwt_authn` verifies: `Ok` when `payload` is the one it
    /// verified for this request (`metadata`: the request's dynamic metadata); `Ok` for any
    /// other issuer.
    pub fn verified_by_jwt_authn(
        &self,
        token: &str,
        payload: &dyn crate::jwt_authn::Payload,
        metadata: Option<&[u8]>,
    ) -> Result<(), TokenError> {
        let Some(key) = &self.jwt_authn_payload else {
            return Ok(());
        };
        let Some(metadata) = metadata else {
            return Err(TokenError::NotVerifiedByJwtAuthn);
        };
        // With `jwt_authn_header`, the JOSE header (its `typ`, `alg`, `kid`) is the verified
        // token's too, so that the token differs from the one verified by its signature only.
        let header_verified = self.jwt_authn_header.as_deref().is_none_or(|hkey| {
            jws::decode_header(token)
                .is_some_and(|h| crate::jwt_authn::is_verified(metadata, hkey, &h))
        });
        let by_jwt_authn = header_verified && crate::jwt_authn::is_verified(metadata, key, payload);
        if by_jwt_authn {
            Ok(())
        } else {
            Err(TokenError::NotVerifiedByJwtAuthn)
        }
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
    /// The generation of the issuer's keys this token was verified with (`keys.rs`): once the
    /// keys change, a cached verification is made again.
    pub key_generation: u64,
    /// The whole payload, for principal mapping and chosen claims.
    pub payload: Claims,
    /// `act` and the task claims, parsed and checked once, when the token was verified.
    pub agent: crate::agent::AgentClaims,
    /// The key or certificate the token is bound to (`cnf`): proven on every request.
    pub binding: crate::pop::Binding,
    /// What of the Cedar request built from this token is already known to fit the schema.
    pub checked: crate::authz::Checked,
    /// Who an MCP session of this token's requests is bound to (`Engine::session_owner`),
    /// once computed.
    pub session_owner: std::sync::OnceLock<String>,
}

impl VerifiedToken {
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.payload.get(name)
    }
}

/// The configured issuer a token names in `iss` (not verified yet), with its index.
pub fn issuer_of<'a>(
    issuers: &'a [Issuer],
    payload: &Map<String, Value>,
) -> Result<(usize, &'a Issuer), TokenError> {
    let iss = payload
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(TokenError::UnknownIssuer)?;
    issuers
        .iter()
        .enumerate()
        .find(|(_, i)| i.issuer == iss)
        .ok_or(TokenError::UnknownIssuer)
}

/// Verifies `token`: its signature with the issuer's keys, or, for an issuer whose tokens
/// `jwt_authn` verifies, that its payload is the one `jwt_authn` verified for this request
/// (`verified`: the request's dynamic metadata); then the claims.
pub fn verify(
    issuers: &[Issuer],
    token: &str,
    now_s: u64,
    max_token_bytes: usize,
    verified: Option<&[u8]>,
) -> Result<VerifiedToken, TokenError> {
    let parts = jws::decode(token, max_token_bytes)?;
    let (issuer_index, issuer) = issuer_of(issuers, &parts.payload)?;
    issuer.check_typ(&parts)?;
    let keys = issuer.keys.current(now_s)?;
    let checks = jws::Checks {
        now_s,
        clock_skew_s: issuer.clock_skew_s,
        audiences: Some(issuer.audiences.clone()),
        max_bytes: max_token_bytes,
    };
    if issuer.jwt_authn_payload.is_some() {
        issuer.verified_by_jwt_authn(token, &parts.payload, verified)?;
        jws::check_registered(&parts.payload, &checks)?;
    } else {
        jws::verify(&keys.keys, &parts, token, &checks)?;
    }
    let payload = parts.payload;

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
    if let Some(td) = &issuer.spiffe_trust_domain {
        // A JWT-SVID names a workload of its own trust domain (SPIFFE JWT-SVID §3: `sub`).
        let id = payload.get(&issuer.principal_claim).and_then(Value::as_str);
        let in_domain = id.is_some_and(|id| {
            crate::pop::connection::workload_trust_domain(id) == Some(td.as_str())
        });
        if !in_domain {
            return Err(TokenError::BadClaim(
                issuer.principal_claim.clone(),
                "not a workload's SPIFFE ID in the issuer's trust domain",
            ));
        }
    }
    // A chain too deep or task claims the filter cannot judge: refused before Cedar sees them.
    let payload = Claims::from(payload);
    let agent = crate::agent::parse(&payload, &issuer.agent)?;
    let binding = crate::pop::Binding::of(payload.get("cnf"))?;
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
        key_generation: keys.generation,
        payload,
        agent,
        binding,
        checked: crate::authz::Checked::default(),
        session_owner: Default::default(),
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

//! Errors of configuration and of requests, with short lowercase messages.

use std::fmt;

/// A configuration problem: the JSON path of the offending field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid configuration at `{}`: {}",
                self.path, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why a token was rejected. The message is the RFC 6750 `error_description` a client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token too large")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm none is not accepted")]
    AlgNone,
    #[error("token header parameter `{0}` is not accepted: keys come only from configuration")]
    ForbiddenHeader(&'static str),
    #[error("token header has critical extensions that are not understood")]
    CriticalHeader,
    #[error("unknown issuer")]
    UnknownIssuer,
    #[error("no key for kid `{0}`")]
    UnknownKid(String),
    #[error("no key of the issuer matches the token's algorithm `{0}`")]
    NoKeyForAlgorithm(String),
    #[error("algorithm `{found}` does not match the key's algorithm `{expected}`")]
    AlgorithmMismatch {
        expected: &'static str,
        found: String,
    },
    #[error("signature invalid")]
    BadSignature,
    /// The issuer's tokens are verified by Envoy's `jwt_authn`, and it verified no such token
    /// for this request (`jwt_authn.rs`).
    #[error("token not verified by jwt_authn")]
    NotVerifiedByJwtAuthn,
    #[error("token type `{0}` is not accepted here")]
    WrongType(String),
    #[error("token expired")]
    Expired,
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    #[error("token issued in the future (iat)")]
    IssuedInFuture,
    #[error("token has no exp claim")]
    MissingExp,
    #[error("audience not accepted")]
    Audience,
    #[error("token lifetime exceeds the issuer's max_ttl_s")]
    LifetimeTooLong,
    #[error("missing required claim `{0}`")]
    MissingClaim(String),
    #[error("claim `{0}` cannot be used: {1}")]
    BadClaim(String, &'static str),
    /// An `act` chain (RFC 8693) deeper than `limits.max_delegation_depth`.
    #[error("delegation chain deeper than {0} actors")]
    DelegationTooDeep(usize),
    /// `now - iat` over the route's `max_token_age_s` (or no `iat` on such a route).
    #[error("token older than this route accepts ({0} s)")]
    TooOldForRoute(u64),
    /// A single-use token (see `approval::single_use`) must carry a `jti` to be tracked.
    #[error("a single-use token needs a jti")]
    SingleUseWithoutJti,
    /// A single-use token presented again.
    #[error("token already used")]
    AlreadyUsed,
    /// The issuer's keys are not there (not fetched yet, or stale): the filter's problem, not
    /// the token's, so 503 rather than 401.
    #[error("keys unavailable: {0}")]
    KeysUnavailable(String),
    /// Revoked by a security event or by its status list (INVALID).
    #[error("token revoked")]
    Revoked,
    /// Its status list says SUSPENDED.
    #[error("token suspended")]
    Suspended,
    /// Its status list gives another status than VALID, INVALID or SUSPENDED.
    #[error("token status {0}")]
    Status(u8),
    #[error("token status index out of range")]
    StatusIndexOutOfRange,
    #[error("token status list not trusted")]
    StatusListNotTrusted,
    #[error("token status cannot be used: {0}")]
    StatusClaim(&'static str),
    /// The token's status list cannot be had: 503 (or a pass with `fail_open`).
    #[error("token status unavailable: {0}")]
    StatusUnavailable(String),
}

impl TokenError {
    /// The filter, not the token, is at fault: the request gets 503, never 401.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            TokenError::KeysUnavailable(_) | TokenError::StatusUnavailable(_)
        )
    }
}

/// Why a Cedar request could not be built for a verified token. Each failure keeps its own reply:
/// a claim the policies cannot use is the token's fault (401 `invalid_token` on HTTP routes); any
/// other failure is the filter's, and the request is denied as one it cannot judge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("claim `{0}` has no Cedar value")]
    Claim(String),
    #[error("the Cedar request could not be built: {0}")]
    Build(String),
}

impl RequestError {
    pub(crate) fn build(e: impl std::fmt::Display) -> RequestError {
        RequestError::Build(e.to_string())
    }
}

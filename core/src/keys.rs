//! An issuer's verification keys: inline (from the configuration) or fetched from its identity
//! provider — a JWKS, or an OpenID Connect discovery document and then its `jwks_uri` — through
//! an Envoy cluster, refreshed on the root's tick and when a token names a `kid` the keys lack.
//!
//! Until the first keys arrive the issuer is unavailable (its tokens get 503). A failed refresh
//! keeps the last good keys for `max_stale_s` past their refresh time; then the issuer is
//! unavailable again. Each worker fetches for itself: keys live in its engine.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::RemoteJwksConfig;
use crate::error::{ConfigError, TokenError};
use crate::jwks::{self, Key};
use crate::outcome::{Answer, Call, Callout, Purpose};

/// Keys as one verification sees them. `generation` changes only when the keys do, so that a
/// token verified with keys since removed is verified again (`cache.rs`).
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    pub generation: u64,
}

#[derive(Debug)]
pub enum IssuerKeys {
    Inline(Arc<KeySet>),
    Remote(Box<RemoteKeys>),
}

#[derive(Debug)]
pub struct RemoteKeys {
    cluster: String,
    authority: String,
    path: String,
    discovery: bool,
    refresh_s: u64,
    timeout_ms: u64,
    max_stale_s: u64,
    refetch_interval_s: u64,
    max_bytes: usize,
    max_keys: usize,
    /// The `issuer` a discovery document must name.
    issuer: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    /// SHA-256 of the usable keys' JWKs, to tell a rotation from the same keys again.
    fingerprint: [u8; 32],
    /// The last good fetch.
    fetched_at: u64,
    /// No new fetch starts before this (one in flight, or a failure's retry delay).
    next_attempt: u64,
    /// The last fetch for an unknown `kid`.
    last_refetch: Option<u64>,
    /// From discovery: the JWKS path and query.
    jwks_path: Option<String>,
    /// Why the last fetch failed, for the log and the 503's reason.
    last_error: Option<String>,
    /// A request's refetch went unanswered (its stream ended first): the tick fetches instead.
    want_refresh: bool,
}

/// How long after a failure a refresh is tried again (at most).
const RETRY_S: u64 = 5;

impl IssuerKeys {
    /// Keys of a configured issuer: `remote_jwks`, or the inline `jwks` and `hmac_secret`.
    pub fn compile(
        c: &crate::config::IssuerConfig,
        path: &str,
        limits: &crate::config::Limits,
    ) -> Result<IssuerKeys, ConfigError> {
        if c.jwt_authn_payload.is_some() {
            // jwt_authn checks the signatures (`jwt_authn.rs`).
            return Ok(IssuerKeys::Inline(Arc::new(KeySet {
                keys: Vec::new(),
                generation: 0,
            })));
        }
        let mut keys = match &c.jwks {
            Some(j) => jwks::parse_jwks(j, &format!("{path}.jwks"))?,
            None => Vec::new(),
        };
        if let Some(secret) = &c.hmac_secret {
            keys.push(jwks::hmac_key(secret, &format!("{path}.hmac_secret"))?);
        }
        let Some(r) = &c.remote_jwks else {
            if keys.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.jwks"),
                    "the issuer has no verification key (jwks, remote_jwks or hmac_secret)",
                ));
            }
            return Ok(IssuerKeys::Inline(Arc::new(KeySet {
                keys,
                generation: 0,
            })));
        };
        let p = format!("{path}.remote_jwks");
        if c.jwks.is_some() {
            return Err(ConfigError::new(
                format!("{path}.jwks"),
                "an issuer takes inline jwks or remote_jwks, not both",
            ));
        }
        if c.hmac_secret.is_some() {
            return Err(ConfigError::new(
                format!("{path}.hmac_secret"),
                "an issuer with remote_jwks verifies only the provider's public keys",
            ));
        }
        RemoteKeys::compile(r, &c.issuer, &p, limits).map(|r| IssuerKeys::Remote(Box::new(r)))
    }

    /// The keys to verify with now; `Err(KeysUnavailable)` before the first keys arrived or
    /// once the last good ones are too stale.
    pub fn current(&self, now_s: u64) -> Result<Arc<KeySet>, TokenError> {
        match self {
            IssuerKeys::Inline(k) => Ok(k.clone()),
            IssuerKeys::Remote(r) => r.current(now_s),
        }
    }

    /// The generation of the keys now (inline keys never change).
    pub fn generation(&self) -> u64 {
        match self {
            IssuerKeys::Inline(k) => k.generation,
            IssuerKeys::Remote(r) => r.lock().keys.as_ref().map_or(0, |k| k.generation),
        }
    }

    /// The fetch the root's tick starts for issuer `index`, if one is due.
    pub fn due(&self, index: usize, now_s: u64) -> Option<Call> {
        match self {
            IssuerKeys::Inline(_) => None,
            IssuerKeys::Remote(r) => r.due(index, now_s),
        }
    }

    /// A token named a `kid` the keys lack: the keys are fetched again, at most once per
    /// `refetch_interval_s`. `None`: not now (the token is refused).
    pub fn refetch(&self, index: usize, now_s: u64) -> Option<Call> {
        match self {
            IssuerKeys::Inline(_) => None,
            IssuerKeys::Remote(r) => r.refetch(index, now_s),
        }
    }

    /// A request's fetch of these keys will not be answered (its stream ended): the root's next
    /// tick fetches them, so that a client cannot use up the refetch of a rotation by leaving.
    pub fn abandoned(&self) {
        if let IssuerKeys::Remote(r) = self {
            let mut s = r.lock();
            s.want_refresh = true;
            s.next_attempt = 0;
        }
    }

    /// The answer to a fetch of this issuer's keys; `Ok(Some(call))` when discovery leads on to
    /// the JWKS. `Err`: why the answer was not taken (the last good keys stay).
    pub fn answered(
        &self,
        purpose: &Purpose,
        answer: &Answer,
        now_s: u64,
    ) -> Result<Option<Call>, String> {
        match self {
            IssuerKeys::Inline(_) => Ok(None),
            IssuerKeys::Remote(r) => r.answered(purpose, answer, now_s),
        }
    }
}

impl RemoteKeys {
    fn compile(
        r: &RemoteJwksConfig,
        issuer: &str,
        p: &str,
        limits: &crate::config::Limits,
    ) -> Result<RemoteKeys, ConfigError> {
        if r.cluster.is_empty() {
            return Err(ConfigError::new(
                format!("{p}.cluster"),
                "must not be empty",
            ));
        }
        let path = match (&r.path, r.discovery) {
            (Some(path), _) => path.clone(),
            (None, true) => "/.well-known/openid-configuration".to_string(),
            (None, false) => {
                return Err(ConfigError::new(
                    format!("{p}.path"),
                    "the JWKS path is needed (or `discovery: true`)",
                ))
            }
        };
        if !path.starts_with('/') {
            return Err(ConfigError::new(format!("{p}.path"), "must start with `/`"));
        }
        for (field, v) in [
            ("refresh_s", r.refresh_s),
            ("timeout_ms", r.timeout_ms),
            ("refetch_interval_s", r.refetch_interval_s),
        ] {
            if v == 0 {
                return Err(ConfigError::new(
                    format!("{p}.{field}"),
                    "must be at least 1",
                ));
            }
        }
        Ok(RemoteKeys {
            cluster: r.cluster.clone(),
            authority: r.authority.clone().unwrap_or_else(|| r.cluster.clone()),
            path,
            discovery: r.discovery,
            refresh_s: r.refresh_s,
            timeout_ms: r.timeout_ms,
            max_stale_s: r.max_stale_s,
            refetch_interval_s: r.refetch_interval_s,
            max_bytes: limits.max_jwks_bytes,
            max_keys: limits.max_jwks_keys,
            issuer: issuer.to_string(),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state is replaced whole on each
        // answer, so it is never half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self, now_s: u64) -> Result<Arc<KeySet>, TokenError> {
        let s = self.lock();
        let usable_until = s
            .fetched_at
            .saturating_add(self.refresh_s)
            .saturating_add(self.max_stale_s);
        match &s.keys {
            Some(k) if now_s < usable_until => Ok(k.clone()),
            Some(_) => Err(TokenError::KeysUnavailable(format!(
                "the issuer's keys are stale ({})",
                s.last_error.as_deref().unwrap_or("no refresh")
            ))),
            None => Err(TokenError::KeysUnavailable(match &s.last_error {
                Some(e) => format!("the issuer's keys could not be fetched ({e})"),
                None => "the issuer's keys are being fetched".into(),
            })),
        }
    }

    /// The first fetch: discovery, or the JWKS itself (the JWKS path found by discovery before).
    fn first_call(&self, index: usize, s: &State) -> Call {
        let (purpose, path, accept) = match (&s.jwks_path, self.discovery) {
            (Some(jwks), true) if s.keys.is_some() => {
                (Purpose::Jwks(index), jwks.as_str(), "application/json")
            }
            (_, true) => (
                Purpose::Discovery(index),
                self.path.as_str(),
                "application/json",
            ),
            (_, false) => (Purpose::Jwks(index), self.path.as_str(), "application/json"),
        };
        Call {
            purpose,
            callout: Callout::get(
                &self.cluster,
                &self.authority,
                path,
                accept,
                self.timeout_ms,
            ),
        }
    }

    fn due(&self, index: usize, now_s: u64) -> Option<Call> {
        let mut s = self.lock();
        let refresh_at = if s.keys.is_some() {
            s.fetched_at.saturating_add(self.refresh_s)
        } else {
            0
        };
        if now_s < refresh_at.max(s.next_attempt) && !(s.want_refresh && now_s >= s.next_attempt) {
            return None;
        }
        s.want_refresh = false;
        s.next_attempt = now_s.saturating_add(self.in_flight_s());
        Some(self.first_call(index, &s))
    }

    fn refetch(&self, index: usize, now_s: u64) -> Option<Call> {
        let mut s = self.lock();
        if s.last_refetch
            .is_some_and(|t| now_s < t.saturating_add(self.refetch_interval_s))
        {
            return None;
        }
        s.last_refetch = Some(now_s);
        s.next_attempt = now_s.saturating_add(self.in_flight_s());
        Some(self.first_call(index, &s))
    }

    /// While a fetch is in flight no other starts: its timeout, rounded up, and a second.
    fn in_flight_s(&self) -> u64 {
        self.timeout_ms.div_ceil(1000).saturating_add(1)
    }

    fn answered(
        &self,
        purpose: &Purpose,
        answer: &Answer,
        now_s: u64,
    ) -> Result<Option<Call>, String> {
        let result = self.take(purpose, answer, now_s);
        let mut s = self.lock();
        match &result {
            Ok(Some(_)) => {}
            Ok(None) => {
                s.last_error = None;
                s.next_attempt = 0;
            }
            Err(e) => {
                s.last_error = Some(e.clone());
                s.next_attempt = now_s.saturating_add(self.refresh_s.min(RETRY_S));
            }
        }
        result
    }

    fn take(&self, purpose: &Purpose, answer: &Answer, now_s: u64) -> Result<Option<Call>, String> {
        let body = answer.ok_body(self.max_bytes, "limits.max_jwks_bytes")?;
        let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        match purpose {
            Purpose::Discovery(index) => {
                // OpenID Connect Discovery 1.0 §4.3: the document names the issuer exactly.
                if doc.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
                    return Err("the discovery document names another issuer".into());
                }
                let uri = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or("the discovery document has no jwks_uri")?;
                let url = url::Url::parse(uri).map_err(|e| format!("jwks_uri: {e}"))?;
                let mut path = url.path().to_string();
                if let Some(q) = url.query() {
                    path.push('?');
                    path.push_str(q);
                }
                let mut s = self.lock();
                s.jwks_path = Some(path.clone());
                Ok(Some(Call {
                    purpose: Purpose::Jwks(*index),
                    callout: Callout::get(
                        &self.cluster,
                        &self.authority,
                        &path,
                        "application/json",
                        self.timeout_ms,
                    ),
                }))
            }
            Purpose::Jwks(_) => {
                let mut fingerprint = Sha256::new();
                let mut usable: Vec<String> = doc
                    .get("keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(Value::to_string)
                    .collect();
                usable.sort();
                for k in &usable {
                    fingerprint.update((k.len() as u64).to_be_bytes());
                    fingerprint.update(k.as_bytes());
                }
                let fingerprint: [u8; 32] = fingerprint.finalize().into();
                // The same keys as last time: nothing to parse (an ES256 key's table, `es256/`,
                // takes milliseconds to build in wasm).
                {
                    let mut s = self.lock();
                    if s.keys.is_some() && s.fingerprint == fingerprint {
                        s.fetched_at = now_s;
                        return Ok(None);
                    }
                }
                let (keys, _skipped) = jwks::parse_fetched_jwks(&doc, self.max_keys)?;
                let mut s = self.lock();
                s.fetched_at = now_s;
                let generation = s.keys.as_ref().map_or(1, |k| k.generation + 1);
                s.keys = Some(Arc::new(KeySet { keys, generation }));
                s.fingerprint = fingerprint;
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

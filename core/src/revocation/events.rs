//! Security Event Tokens (RFC 8417) that revoke tokens, from one configured transmitter: pushed
//! to a path the filter answers itself (RFC 8935) or polled for (RFC 8936). Each event becomes
//! [`Revocation`]s recorded in the store.
//!
//! Events understood (the subject is the SET's `sub_id`, as the Shared Signals Framework puts
//! it, or the event's own `subject`):
//! - CAEP `session-revoked` and `credential-change` of an `iss_sub` subject (or a complex
//!   subject whose `user` is one): the subject's tokens issued up to the event;
//! - `urn:tessera:secevent:revoked` of a `jwt_id` (one token), `iss_sub`, `tessera_actor` (an
//!   agent as subject or anywhere in a delegation chain), `tessera_client` or `tessera_task`.
//!
//! Other event types are accepted and ignored, as a receiver of a shared stream must.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use super::{record, Kind, RecordError, Retention, Revocation};
use crate::config::{EventsConfig, PollConfig};
use crate::error::{ConfigError, TokenError};
use crate::jwks::{self, Key};
use crate::jws;
use crate::outcome::{Answer, Call, Callout, Purpose};
use crate::reply::LocalReply;
use crate::store::Store;

pub const SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";
pub const REVOKED: &str = "urn:tessera:secevent:revoked";
/// The media type of a SET (its `typ`, and the content type of a push).
pub const TYP: &str = "secevent+jwt";
/// Largest SET accepted.
const MAX_SET_BYTES: usize = 64 * 1024;
/// Largest poll answer accepted.
const MAX_POLL_BYTES: usize = 4 * 1024 * 1024;

/// Why a SET was refused: an RFC 8935 §2.4 error code and a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetError {
    pub err: &'static str,
    pub description: String,
}

impl SetError {
    fn new(err: &'static str, description: impl Into<String>) -> SetError {
        SetError {
            err,
            description: description.into(),
        }
    }
}

#[derive(Debug)]
pub struct Events {
    issuer: String,
    audiences: HashSet<String>,
    keys: Vec<Key>,
    clock_skew_s: u64,
    receiver_path: Option<String>,
    poll: Option<PollConfig>,
    retention: Retention,
    polling: Mutex<Polling>,
}

/// What the next poll carries: acknowledgements and errors of the SETs the last one brought.
#[derive(Debug, Default)]
struct Polling {
    acks: Vec<String>,
    errors: BTreeMap<String, SetError>,
    next_at: u64,
}

impl Events {
    pub fn compile(c: &EventsConfig, retention: Retention) -> Result<Events, ConfigError> {
        let p = "revocation.events";
        if c.issuer.is_empty() {
            return Err(ConfigError::new(format!("{p}.issuer"), "must not be empty"));
        }
        if c.audiences.is_empty() {
            return Err(ConfigError::new(
                format!("{p}.audiences"),
                "needs at least one audience: a SET for another receiver must not be applied",
            ));
        }
        let keys = jwks::parse_jwks(&c.jwks, &format!("{p}.jwks"))?;
        if keys.is_empty() {
            return Err(ConfigError::new(format!("{p}.jwks"), "no key"));
        }
        if let Some(path) = &c.receiver_path {
            if !path.starts_with('/') || path.contains(['?', '#']) {
                return Err(ConfigError::new(
                    format!("{p}.receiver_path"),
                    "must be a path starting with `/`, without query",
                ));
            }
        }
        if let Some(poll) = &c.poll {
            if poll.cluster.is_empty() || !poll.path.starts_with('/') {
                return Err(ConfigError::new(
                    format!("{p}.poll"),
                    "needs a cluster and a path starting with `/`",
                ));
            }
            if poll.interval_s == 0 || poll.timeout_ms == 0 || poll.max_events == 0 {
                return Err(ConfigError::new(
                    format!("{p}.poll"),
                    "interval_s, timeout_ms and max_events must be at least 1",
                ));
            }
        }
        Ok(Events {
            issuer: c.issuer.clone(),
            audiences: c.audiences.iter().cloned().collect(),
            keys,
            clock_skew_s: c.clock_skew_s,
            receiver_path: c.receiver_path.clone(),
            poll: c.poll.clone(),
            retention,
            polling: Mutex::new(Polling::default()),
        })
    }

    /// The path pushed SETs come to, if the filter receives them.
    pub fn receiver_path(&self) -> Option<&str> {
        self.receiver_path.as_deref()
    }

    /// How long revocations are kept, and how many.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// A pushed SET (RFC 8935 §2): 202 when applied, 400 with the RFC's error code otherwise;
    /// and the revocations it recorded.
    pub fn receive(
        &self,
        method: &str,
        body: &[u8],
        store: &dyn Store,
        now_s: u64,
    ) -> (LocalReply, Vec<Revocation>) {
        if method != "POST" {
            let reply = LocalReply {
                status: 405,
                headers: vec![("allow".into(), "POST".into())],
                body: String::new(),
            };
            return (reply, vec![]);
        }
        let reply = match self.apply(body, store, now_s) {
            Ok(revocations) => {
                let reply = LocalReply {
                    status: 202,
                    headers: vec![],
                    body: String::new(),
                };
                return (reply, revocations);
            }
            Err(e) if e.err == "temporarily_unavailable" => LocalReply {
                status: 503,
                headers: vec![("retry-after".into(), "5".into())],
                body: json!({"err": e.err, "description": e.description}).to_string(),
            },
            Err(e) => LocalReply {
                status: 400,
                headers: vec![("content-type".into(), "application/json".into())],
                body: json!({"err": e.err, "description": e.description}).to_string(),
            },
        };
        (reply, vec![])
    }

    /// Verifies one SET and records the revocations it carries.
    pub fn apply(
        &self,
        set: &[u8],
        store: &dyn Store,
        now_s: u64,
    ) -> Result<Vec<Revocation>, SetError> {
        let revocations = self.revocations(set, now_s)?;
        for r in &revocations {
            record(store, r, self.retention, now_s).map_err(|e| match e {
                RecordError::Full(_) => SetError::new("temporarily_unavailable", e.to_string()),
                _ => SetError::new("temporarily_unavailable", e.to_string()),
            })?;
        }
        Ok(revocations)
    }

    /// What a SET revokes, once it is verified.
    pub fn revocations(&self, set: &[u8], now_s: u64) -> Result<Vec<Revocation>, SetError> {
        let invalid = |d: &str| SetError::new("invalid_request", d);
        let jwt = std::str::from_utf8(set)
            .map_err(|_| invalid("the SET is not text"))?
            .trim();
        let parts = jws::decode(jwt, MAX_SET_BYTES).map_err(|e| invalid(&e.to_string()))?;
        match parts.typ() {
            Ok(Some(t)) if t == TYP => {}
            _ => return Err(invalid("typ is not secevent+jwt")),
        }
        if parts.payload.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(SetError::new(
                "invalid_issuer",
                "the SET's issuer is not the transmitter",
            ));
        }
        let checks = jws::Checks {
            now_s,
            clock_skew_s: self.clock_skew_s,
            audiences: Some(self.audiences.clone()),
            max_bytes: MAX_SET_BYTES,
        };
        jws::verify(&self.keys, &parts, jwt, &checks).map_err(|e| match e {
            TokenError::Audience => SetError::new("invalid_audience", e.to_string()),
            TokenError::UnknownKid(_)
            | TokenError::NoKeyForAlgorithm(_)
            | TokenError::AlgorithmMismatch { .. }
            | TokenError::BadSignature => SetError::new("invalid_key", e.to_string()),
            e => invalid(&e.to_string()),
        })?;
        let p = &parts.payload;
        if p.get("aud").is_none() {
            return Err(SetError::new("invalid_audience", "the SET has no aud"));
        }
        if p.get("jti")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(invalid("the SET has no jti"));
        }
        let iat = jws::numeric(p, "iat")
            .map_err(|e| invalid(&e.to_string()))?
            .ok_or_else(|| invalid("the SET has no iat"))?;
        let events = p
            .get("events")
            .and_then(Value::as_object)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| invalid("the SET has no events"))?;
        let mut out = Vec::new();
        for (kind, event) in events {
            if ![SESSION_REVOKED, CREDENTIAL_CHANGE, REVOKED].contains(&kind.as_str()) {
                continue;
            }
            let subject = event
                .get("subject")
                .or_else(|| p.get("sub_id"))
                .and_then(Value::as_object)
                .ok_or_else(|| invalid(&format!("event {kind}: no subject")))?;
            let at = match event.get("event_timestamp") {
                None => iat,
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .ok_or_else(|| invalid("event_timestamp is not a NumericDate"))?,
            };
            let r = if kind == REVOKED {
                revocation(subject, at)
            } else {
                caep_subject(subject).map(|(iss, sub)| Revocation {
                    kind: Kind::Subject,
                    issuer: Some(iss),
                    value: sub,
                    issued_before: Some(at),
                })
            };
            out.push(r.ok_or_else(|| invalid(&format!("event {kind}: subject not supported")))?);
        }
        Ok(out)
    }

    /// The poll the root's tick starts, when one is due.
    pub fn poll_due(&self, now_s: u64) -> Option<Call> {
        let poll = self.poll.as_ref()?;
        let mut polling = self.polling.lock().unwrap_or_else(|p| p.into_inner());
        if now_s < polling.next_at {
            return None;
        }
        // No other poll while this one may be in flight; its answer sets the next time.
        polling.next_at = now_s
            .saturating_add(poll.timeout_ms.div_ceil(1000))
            .saturating_add(poll.interval_s);
        let errors: Map<String, Value> = polling
            .errors
            .iter()
            .map(|(jti, e)| {
                (
                    jti.clone(),
                    json!({"err": e.err, "description": e.description}),
                )
            })
            .collect();
        let body = json!({
            "ack": polling.acks,
            "setErrs": errors,
            "maxEvents": poll.max_events,
            "returnImmediately": true,
        });
        let authority = poll.authority.as_deref().unwrap_or(&poll.cluster);
        let callout =
            Callout::post_json(&poll.cluster, authority, &poll.path, &body, poll.timeout_ms);
        Some(Call {
            purpose: Purpose::Poll,
            callout,
        })
    }

    /// The transmitter's answer to a poll: each SET applied, acknowledged (or its error
    /// reported) in the next poll. `Ok`: the revocations recorded.
    pub fn polled(
        &self,
        answer: &Answer,
        store: &dyn Store,
        now_s: u64,
    ) -> Result<Vec<Revocation>, String> {
        let poll = self.poll.as_ref().ok_or("no poll configured")?;
        let mut polling = self.polling.lock().unwrap_or_else(|p| p.into_inner());
        polling.next_at = now_s.saturating_add(poll.interval_s);
        let body = answer.ok_body(MAX_POLL_BYTES, "the largest poll answer")?;
        let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let sets = doc
            .get("sets")
            .and_then(Value::as_object)
            .ok_or("no sets")?;
        // What the transmitter now has was acknowledged by the previous poll.
        polling.acks.clear();
        polling.errors.clear();
        let mut applied = Vec::new();
        for (jti, set) in sets {
            let result = match set.as_str() {
                Some(s) => self.apply(s.as_bytes(), store, now_s),
                None => Err(SetError::new("invalid_request", "not a compact JWS")),
            };
            match result {
                Ok(revocations) => {
                    applied.extend(revocations);
                    polling.acks.push(jti.clone());
                }
                // Not recorded: no acknowledgement, so that it comes again.
                Err(e) if e.err == "temporarily_unavailable" => {}
                Err(e) => {
                    polling.errors.insert(jti.clone(), e);
                }
            }
        }
        if doc.get("moreAvailable").and_then(Value::as_bool) == Some(true) {
            polling.next_at = now_s;
        }
        Ok(applied)
    }
}

/// An `iss_sub` subject, or a complex subject (SSF 1.0: `"format": "complex"`, or no format as
/// CAEP's examples write it) whose `user` is one.
fn caep_subject(subject: &Map<String, Value>) -> Option<(String, String)> {
    let s = match subject.get("format").and_then(Value::as_str) {
        None | Some("complex") => subject.get("user")?.as_object()?,
        Some(_) => subject,
    };
    if s.get("format")?.as_str()? != "iss_sub" {
        return None;
    }
    let iss = s.get("iss")?.as_str()?;
    let sub = s.get("sub")?.as_str()?;
    Some((iss.to_string(), sub.to_string()))
}

/// The subject of a `urn:tessera:secevent:revoked` event.
fn revocation(subject: &Map<String, Value>, at: u64) -> Option<Revocation> {
    let text = |name: &str| {
        subject
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let (kind, issuer, value, issued_before) = match subject.get("format")?.as_str()? {
        "jwt_id" => (Kind::Jti, Some(text("iss")?), text("jti")?, None),
        "iss_sub" => (Kind::Subject, Some(text("iss")?), text("sub")?, Some(at)),
        "tessera_actor" => (Kind::Actor, text("iss"), text("sub")?, Some(at)),
        "tessera_client" => (Kind::Client, text("iss"), text("client_id")?, Some(at)),
        "tessera_task" => (Kind::Task, text("iss"), text("task_id")?, Some(at)),
        _ => return None,
    };
    Some(Revocation {
        kind,
        issuer,
        value,
        issued_before,
    })
}

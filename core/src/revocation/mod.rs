//! Tokens cut off before they expire. Two sources:
//! - security events (`events.rs`): a transmitter pushes (RFC 8935) or is polled for (RFC 8936)
//!   SETs that revoke one token, a subject's tokens, an agent wherever it acts, a client, or a
//!   task; each becomes a [`Revocation`] recorded in the [`Store`], so every worker (and, with a
//!   shared store, every replica) sees it at once;
//! - OAuth Token Status Lists (`status_list.rs`): a token names its list and index; the list is
//!   fetched and cached.
//!
//! [`check`] runs on every request with a token, cached or not, before any decision.

pub mod events;
pub mod status_list;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::error::TokenError;
use crate::store::{Store, StoreError};
use crate::token::VerifiedToken;

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One token, by `iss` and `jti`.
    Jti,
    /// The tokens of one subject (`iss`, `sub`).
    Subject,
    /// Tokens whose subject is this agent or whose `act` chain names it.
    Actor,
    /// Tokens with this `client_id` (or `azp`).
    Client,
    /// Tokens of this task.
    Task,
}

impl Kind {
    fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "jti" => Kind::Jti,
            "sub" => Kind::Subject,
            "actor" => Kind::Actor,
            "client" => Kind::Client,
            "task" => Kind::Task,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Jti => "jti",
            Kind::Subject => "sub",
            Kind::Actor => "actor",
            Kind::Client => "client",
            Kind::Task => "task",
        }
    }
}

/// One revocation: tokens of `issuer` (any issuer when `None`, except for `Jti` and `Subject`,
/// which always name one) matching `value`, issued at or before `issued_before` (every such
/// token when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub kind: Kind,
    pub issuer: Option<String>,
    pub value: String,
    pub issued_before: Option<u64>,
}

impl Revocation {
    /// The revocation as the shared store keeps it (`store.etcd`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"kind": self.kind.name(), "issuer": self.issuer, "value": self.value,
                           "issued_before": self.issued_before})
    }

    /// The revocation a store value holds; `None` for a value of another shape (a field of the
    /// wrong type is never read as "any issuer" or "every token").
    pub fn from_json(v: &serde_json::Value) -> Option<Revocation> {
        use serde_json::Value;
        let issuer = match v.get("issuer") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return None,
        };
        let issued_before = match v.get("issued_before") {
            None | Some(Value::Null) => None,
            Some(n) => Some(n.as_u64()?),
        };
        Some(Revocation {
            kind: Kind::from_name(v.get("kind")?.as_str()?)?,
            issuer,
            value: v.get("value")?.as_str()?.to_string(),
            issued_before,
        })
    }

    /// A name for it, the same on every replica and for every event time: a digest of what it
    /// names, then `/` and `issued_before` (`*` for every token).
    pub fn id(&self) -> String {
        let k = key(self.kind, self.issuer.as_deref().unwrap_or(""), &self.value);
        let before = self
            .issued_before
            .map_or_else(|| "*".to_string(), |t| t.to_string());
        format!("{}/{before}", k.trim_start_matches(PREFIX))
    }
}

/// Live while any revocation is: a request checks the others only then.
const ANY_KEY: &str = "tessera/revoked/any";
const PREFIX: &str = "tessera/revoked/";

/// The store key of one revocation: a digest of its length-prefixed parts (the values come from
/// tokens and events, so they never shape the key).
fn key(kind: Kind, issuer: &str, value: &str) -> String {
    let mut h = Sha256::new();
    for part in [kind.name(), issuer, value] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(h.finalize()))
}

/// `issued_before` as stored: a number, or `*` for every token.
fn encode(issued_before: Option<u64>) -> Vec<u8> {
    issued_before.map_or_else(|| b"*".to_vec(), |t| t.to_string().into_bytes())
}

fn decode(payload: &[u8]) -> Option<Option<u64>> {
    if payload == b"*" {
        return Some(None);
    }
    std::str::from_utf8(payload).ok()?.parse().ok().map(Some)
}

/// Why a revocation could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("too many revocations ({0}); raise revocation.max_entries")]
    Full(usize),
    #[error("the store kept changing; try again")]
    Contended,
}

/// Limits of the revocations one worker records.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// How long a revocation is kept (at least the longest token lifetime).
    pub retain_s: u64,
    pub max_entries: usize,
}

/// Records `r` until `now_s + retain_s`. A revocation of the same tokens recorded before is
/// widened, never narrowed: the later `issued_before` wins, and "every token" over both.
pub fn record(
    store: &dyn Store,
    r: &Revocation,
    retention: Retention,
    now_s: u64,
) -> Result<(), RecordError> {
    let (live, _) = store.live(PREFIX, now_s, "");
    if live >= retention.max_entries {
        return Err(RecordError::Full(retention.max_entries));
    }
    let until = now_s.saturating_add(retention.retain_s);
    let k = key(r.kind, r.issuer.as_deref().unwrap_or(""), &r.value);
    write_widest(store, &k, r.issued_before, until, now_s)?;
    write_widest(store, ANY_KEY, None, until, now_s)
}

/// Compare-and-swap until the stored revocation covers `issued_before` and lives until `until`.
fn write_widest(
    store: &dyn Store,
    key: &str,
    issued_before: Option<u64>,
    until: u64,
    now_s: u64,
) -> Result<(), RecordError> {
    for _ in 0..8 {
        let read = store.get(key, now_s);
        let widest = match read.as_ref().and_then(|e| decode(&e.payload)) {
            None => issued_before,
            Some(None) => None,
            Some(Some(t)) => issued_before.map(|n| n.max(t)),
        };
        if let Some(e) = &read {
            if e.expires_at >= until && decode(&e.payload) == Some(widest) {
                return Ok(());
            }
        }
        let until = read.as_ref().map_or(until, |e| e.expires_at.max(until));
        if store.replace(key, read.as_ref(), &encode(widest), until, now_s)? {
            return Ok(());
        }
    }
    Err(RecordError::Contended)
}

/// `Err(Revoked)` when a recorded revocation covers `t`.
pub fn check(store: &dyn Store, t: &VerifiedToken, now_s: u64) -> Result<(), TokenError> {
    if store.get(ANY_KEY, now_s).is_none() {
        return Ok(());
    }
    let covers = |kind: Kind, issuer: &str, value: &str| {
        store
            .get(&key(kind, issuer, value), now_s)
            .and_then(|e| decode(&e.payload))
            .is_some_and(|before| match (before, t.issued_at) {
                (None, _) | (Some(_), None) => true,
                (Some(before), Some(iat)) => iat <= before,
            })
    };
    let iss = t.issuer.as_str();
    // Every revocation kind but `Jti` and `Subject` may name no issuer: look under both.
    let either = |kind: Kind, value: &str| covers(kind, iss, value) || covers(kind, "", value);
    let revoked = t.jti.as_deref().is_some_and(|j| covers(Kind::Jti, iss, j))
        || t.subject
            .as_deref()
            .is_some_and(|s| covers(Kind::Subject, iss, s) || either(Kind::Actor, s))
        || t.agent
            .delegation
            .actors
            .iter()
            .any(|a| either(Kind::Actor, a))
        || t.client_id
            .as_deref()
            .is_some_and(|c| either(Kind::Client, c))
        || t.agent
            .task
            .as_ref()
            .and_then(|task| task.id.as_deref())
            .is_some_and(|id| either(Kind::Task, id));
    if revoked {
        return Err(TokenError::Revoked);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{decode, key, record, write_widest, Kind, RecordError, Retention, Revocation};
    use crate::store::{MemoryStore, Store};

    const KEEP: Retention = Retention {
        retain_s: 100,
        max_entries: 3,
    };

    fn subject(before: Option<u64>) -> Revocation {
        Revocation {
            kind: Kind::Subject,
            issuer: Some("https://idp".into()),
            value: "alice".into(),
            issued_before: before,
        }
    }

    fn stored(store: &MemoryStore, now: u64) -> Option<Option<u64>> {
        let k = key(Kind::Subject, "https://idp", "alice");
        store.get(&k, now).and_then(|e| decode(&e.payload))
    }

    #[test]
    fn a_revocation_recorded_again_is_widened_never_narrowed() {
        let store = MemoryStore::new();
        record(&store, &subject(Some(100)), KEEP, 10).unwrap();
        assert_eq!(stored(&store, 10), Some(Some(100)));
        record(&store, &subject(Some(50)), KEEP, 20).unwrap();
        assert_eq!(
            stored(&store, 20),
            Some(Some(100)),
            "an earlier event narrows nothing"
        );
        record(&store, &subject(Some(150)), KEEP, 30).unwrap();
        assert_eq!(stored(&store, 30), Some(Some(150)));
        record(&store, &subject(None), KEEP, 40).unwrap();
        record(&store, &subject(Some(500)), KEEP, 50).unwrap();
        assert_eq!(
            stored(&store, 50),
            Some(None),
            "every token stays every token"
        );
        // Kept `retain_s` from the last record.
        assert_eq!(stored(&store, 149), Some(None));
        assert_eq!(stored(&store, 150), None);
    }

    #[test]
    fn a_store_value_of_another_shape_is_no_revocation() {
        use serde_json::json;
        let good = json!({"kind": "sub", "issuer": "i", "value": "a", "issued_before": 5});
        assert_eq!(
            Revocation::from_json(&good),
            Some(Revocation {
                kind: Kind::Subject,
                issuer: Some("i".into()),
                value: "a".into(),
                issued_before: Some(5)
            })
        );
        for bad in [
            json!({"kind": "sub", "issuer": "i", "value": "a", "issued_before": "5"}),
            json!({"kind": "sub", "issuer": "i", "value": "a", "issued_before": 5.5}),
            json!({"kind": "actor", "issuer": 7, "value": "a"}),
            json!({"kind": "nope", "value": "a"}),
        ] {
            assert_eq!(Revocation::from_json(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_expiry_of_a_revocation_only_moves_later() {
        let store = MemoryStore::new();
        let k = key(Kind::Jti, "i", "j");
        write_widest(&store, &k, None, 1000, 0).unwrap();
        write_widest(&store, &k, None, 500, 0).unwrap();
        assert_eq!(store.get(&k, 0).map(|e| e.expires_at), Some(1000));
    }

    #[test]
    fn past_max_entries_a_revocation_is_refused_not_dropped_silently() {
        let store = MemoryStore::new();
        for i in 0..2 {
            let r = Revocation {
                value: format!("u{i}"),
                ..subject(None)
            };
            record(&store, &r, KEEP, 0).unwrap();
        }
        // Two revocations and the marker fill the three entries.
        let r = Revocation {
            value: "u9".into(),
            ..subject(None)
        };
        assert_eq!(record(&store, &r, KEEP, 0), Err(RecordError::Full(3)));
    }
}

//! OAuth Token Status Lists (draft-ietf-oauth-status-list): a token names a list and its index in
//! `status.status_list {idx, uri}`; the list is a signed JWT (`typ: statuslist+jwt`) holding a
//! zlib-compressed array of 1, 2, 4 or 8-bit statuses. Lists are fetched through an Envoy cluster
//! (the first request that needs one waits for it), cached until their `ttl`/`exp`, refreshed on
//! the root's tick, and still used for `max_stale_s` when a refresh fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use crate::config::StatusListConfig;
use crate::error::{ConfigError, TokenError};
use crate::jwks::{self, Key};
use crate::jws;
use crate::outcome::{Answer, Call, Callout, Purpose};
use crate::token::VerifiedToken;

/// The media type of a status list token (its `typ`, and what a fetch accepts).
pub const TYP: &str = "statuslist+jwt";
const ACCEPT: &str = "application/statuslist+jwt";
/// Most lists one worker keeps; the least recently used goes first.
const MAX_LISTS: usize = 256;
/// How long after a failed fetch a list is fetched again (at most).
const RETRY_S: u64 = 5;
/// Skew allowed on a list's `iat`/`exp`.
const CLOCK_SKEW_S: u64 = 60;
/// Requests that fetch one list not yet held at the same time; more get 503 and try again.
const MAX_WAITING: u32 = 4;

/// Statuses the draft registers.
const VALID: u8 = 0;
const INVALID: u8 = 1;
const SUSPENDED: u8 = 2;

#[derive(Debug)]
struct Source {
    prefix: String,
    cluster: String,
    authority: Option<String>,
}

/// One decompressed list.
#[derive(Debug)]
pub struct List {
    bits: u8,
    bytes: Vec<u8>,
}

impl List {
    /// The status at `idx`; `None` past the end of the list.
    pub fn status(&self, idx: u64) -> Option<u8> {
        let bits = u64::from(self.bits);
        let bit = idx.checked_mul(bits)?;
        let byte = *self.bytes.get(usize::try_from(bit / 8).ok()?)?;
        let mask = ((1u16 << bits) - 1) as u8;
        Some((byte >> (bit % 8)) & mask)
    }
}

#[derive(Debug, Default)]
struct Cached {
    list: Option<Arc<List>>,
    /// The `iat` of the list held: an older one is never taken in its place.
    issued_at: u64,
    fresh_until: u64,
    /// Fetches in flight for requests waiting for this list (until `next_attempt`).
    waiting: u32,
    /// No background refresh starts before this (one in flight, or a failure's delay).
    next_attempt: u64,
    last_used: u64,
    last_error: Option<String>,
}

#[derive(Debug)]
pub struct StatusLists {
    signers: Vec<(String, Vec<Key>)>,
    sources: Vec<Source>,
    timeout_ms: u64,
    default_ttl_s: u64,
    max_stale_s: u64,
    pub fail_open: bool,
    max_bytes: usize,
    cache: Mutex<HashMap<String, Cached>>,
}

/// The status list reference of a token: `(idx, uri)`, or `None` when it names no status list.
pub fn reference(t: &VerifiedToken) -> Result<Option<(u64, &str)>, TokenError> {
    let Some(status) = t.claim("status") else {
        return Ok(None);
    };
    let Some(list) = status.get("status_list") else {
        // Another status mechanism, which Tessera does not know: nothing to check here.
        return Ok(None);
    };
    let idx = list
        .get("idx")
        .and_then(Value::as_u64)
        .ok_or(TokenError::StatusClaim(
            "status_list.idx is not a non-negative integer",
        ))?;
    let uri = list
        .get("uri")
        .and_then(Value::as_str)
        .ok_or(TokenError::StatusClaim("status_list.uri is not a string"))?;
    Ok(Some((idx, uri)))
}

impl StatusLists {
    pub fn compile(c: &StatusListConfig) -> Result<StatusLists, ConfigError> {
        let p = "revocation.status_list";
        if c.signers.is_empty() {
            return Err(ConfigError::new(
                format!("{p}.signers"),
                "at least one signer is needed",
            ));
        }
        let mut signers = Vec::with_capacity(c.signers.len());
        for (i, s) in c.signers.iter().enumerate() {
            if s.issuer.is_empty() {
                return Err(ConfigError::new(
                    format!("{p}.signers[{i}].issuer"),
                    "must not be empty",
                ));
            }
            let keys = jwks::parse_jwks(&s.jwks, &format!("{p}.signers[{i}].jwks"))?;
            signers.push((s.issuer.clone(), keys));
        }
        if c.sources.is_empty() {
            return Err(ConfigError::new(
                format!("{p}.sources"),
                "at least one source is needed",
            ));
        }
        let mut sources = Vec::with_capacity(c.sources.len());
        for (i, s) in c.sources.iter().enumerate() {
            let url = url::Url::parse(&s.uri_prefix).map_err(|e| {
                ConfigError::new(format!("{p}.sources[{i}].uri_prefix"), e.to_string())
            })?;
            // A prefix that ends inside the host (`https://status.example`) would also match
            // `https://status.example.evil`.
            if !matches!(url.scheme(), "https" | "http") || !s.uri_prefix.ends_with('/') {
                return Err(ConfigError::new(
                    format!("{p}.sources[{i}].uri_prefix"),
                    "must be an http(s) URI ending in `/`",
                ));
            }
            if s.cluster.is_empty() {
                return Err(ConfigError::new(
                    format!("{p}.sources[{i}].cluster"),
                    "must not be empty",
                ));
            }
            sources.push(Source {
                prefix: s.uri_prefix.clone(),
                cluster: s.cluster.clone(),
                authority: s.authority.clone(),
            });
        }
        if c.timeout_ms == 0 || c.default_ttl_s == 0 {
            return Err(ConfigError::new(
                p,
                "timeout_ms and default_ttl_s must be at least 1",
            ));
        }
        Ok(StatusLists {
            signers,
            sources,
            timeout_ms: c.timeout_ms,
            default_ttl_s: c.default_ttl_s,
            max_stale_s: c.max_stale_s,
            fail_open: c.fail_open,
            max_bytes: c.max_bytes,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        // Entries are replaced whole: a panic elsewhere cannot leave one half-written.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token's status at `idx` of the list at `uri`: `Ok(None)` VALID, `Ok(Some(call))` when
    /// the list must be fetched first (the request waits for it), `Err` refused or unavailable.
    pub fn check(&self, idx: u64, uri: &str, now_s: u64) -> Result<Option<Call>, TokenError> {
        // Only a URI in its one canonical form is compared with the prefixes: a token signed with
        // `…/lists/../admin` must not fetch another path of the cluster.
        if url::Url::parse(uri).ok().is_none_or(|u| u.as_str() != uri) {
            return Err(TokenError::StatusListNotTrusted);
        }
        let source = self
            .sources
            .iter()
            .find(|s| uri.starts_with(&s.prefix))
            .ok_or(TokenError::StatusListNotTrusted)?;
        let mut cache = self.lock();
        let usable = cache.get_mut(uri).and_then(|c| {
            c.last_used = now_s;
            let until = c.fresh_until.saturating_add(self.max_stale_s);
            c.list.clone().filter(|_| now_s < until)
        });
        if let Some(list) = usable {
            return match list.status(idx) {
                None => Err(TokenError::StatusIndexOutOfRange),
                Some(VALID) => Ok(None),
                Some(INVALID) => Err(TokenError::Revoked),
                Some(SUSPENDED) => Err(TokenError::Suspended),
                Some(s) => Err(TokenError::Status(s)),
            };
        }
        if let Some(c) = cache.get(uri) {
            if let (Some(e), true) = (&c.last_error, now_s < c.next_attempt) {
                return Err(TokenError::StatusUnavailable(e.clone()));
            }
        }
        if cache.len() >= MAX_LISTS && !cache.contains_key(uri) {
            let oldest = cache
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                cache.remove(&k);
            }
        }
        let c = cache.entry(uri.to_string()).or_default();
        c.last_used = now_s;
        if now_s >= c.next_attempt {
            c.waiting = 0;
        }
        if c.waiting >= MAX_WAITING {
            return Err(TokenError::StatusUnavailable(
                "the list is being fetched".into(),
            ));
        }
        c.waiting += 1;
        c.next_attempt = now_s.saturating_add(self.in_flight_s());
        Ok(Some(self.call(source, uri)))
    }

    /// A request's fetch of the list at `uri` will not be answered (its stream ended).
    pub fn abandoned(&self, uri: &str) {
        if let Some(c) = self.lock().get_mut(uri) {
            c.waiting = c.waiting.saturating_sub(1);
        }
    }

    fn in_flight_s(&self) -> u64 {
        self.timeout_ms.div_ceil(1000).saturating_add(1)
    }

    fn call(&self, source: &Source, uri: &str) -> Call {
        let url = url::Url::parse(uri).ok();
        let mut path = url.as_ref().map_or("/".into(), |u| u.path().to_string());
        if let Some(q) = url.as_ref().and_then(url::Url::query) {
            path.push('?');
            path.push_str(q);
        }
        let host = url.as_ref().and_then(|u| {
            u.host_str()
                .map(|h| u.port().map_or(h.to_string(), |p| format!("{h}:{p}")))
        });
        let authority = source
            .authority
            .clone()
            .or(host)
            .unwrap_or_else(|| source.cluster.clone());
        Call {
            purpose: Purpose::StatusList(uri.to_string()),
            callout: Callout::get(&source.cluster, &authority, &path, ACCEPT, self.timeout_ms),
        }
    }

    /// Refreshes the root's tick starts: lists in use whose freshness has run out.
    pub fn due(&self, now_s: u64) -> Vec<Call> {
        let mut cache = self.lock();
        let mut calls = Vec::new();
        for (uri, c) in cache.iter_mut() {
            // A list nobody asked for since it went stale is left to expire.
            let wanted = c.last_used.saturating_add(self.max_stale_s) >= c.fresh_until;
            if c.list.is_some() && now_s >= c.fresh_until && now_s >= c.next_attempt && wanted {
                if let Some(source) = self.sources.iter().find(|s| uri.starts_with(&s.prefix)) {
                    c.next_attempt = now_s.saturating_add(self.in_flight_s());
                    calls.push(self.call(source, uri));
                }
            }
        }
        calls
    }

    /// Takes the answer to a fetch of the list at `uri`. `Err`: why it was not taken (the list
    /// cached before, if any, stays until its staleness runs out).
    pub fn answered(&self, uri: &str, answer: &Answer, now_s: u64) -> Result<(), String> {
        let parsed = self.parse(uri, answer, now_s);
        let mut cache = self.lock();
        let c = cache.entry(uri.to_string()).or_default();
        c.waiting = c.waiting.saturating_sub(1);
        let parsed = parsed.and_then(|p| {
            // A list older than the one held (replayed, or from a stale mirror) would bring back
            // tokens revoked since.
            if c.list.is_some() && p.1 < c.issued_at {
                return Err("older than the list held (iat)".to_string());
            }
            Ok(p)
        });
        match parsed {
            Ok((list, issued_at, fresh_until)) => {
                c.list = Some(Arc::new(list));
                c.issued_at = issued_at;
                c.fresh_until = fresh_until;
                c.next_attempt = fresh_until.max(now_s.saturating_add(RETRY_S));
                c.last_error = None;
                Ok(())
            }
            Err(e) => {
                c.last_error = Some(e.clone());
                c.next_attempt = now_s.saturating_add(RETRY_S);
                Err(e)
            }
        }
    }

    /// The list in an answer, its `iat` and until when it is fresh.
    fn parse(&self, uri: &str, answer: &Answer, now_s: u64) -> Result<(List, u64, u64), String> {
        let body = answer.ok_body(self.max_bytes, "max_bytes")?;
        let jwt = std::str::from_utf8(body).map_err(|_| "not text")?.trim();
        let parts = jws::decode(jwt, self.max_bytes).map_err(|e| e.to_string())?;
        if parts.typ().map_err(|e| e.to_string())?.as_deref() != Some(TYP) {
            return Err(format!("typ is not {TYP}"));
        }
        let iss = parts.payload.get("iss").and_then(Value::as_str);
        let (_, keys) = self
            .signers
            .iter()
            .find(|(s, _)| Some(s.as_str()) == iss)
            .ok_or("not signed by a configured signer (iss)")?;
        let checks = jws::Checks {
            now_s,
            clock_skew_s: CLOCK_SKEW_S,
            audiences: None,
            max_bytes: self.max_bytes,
        };
        jws::verify(keys, &parts, jwt, &checks).map_err(|e| e.to_string())?;
        let p = &parts.payload;
        if p.get("sub").and_then(Value::as_str) != Some(uri) {
            return Err("its sub is not the uri it was fetched from".into());
        }
        let list = p
            .get("status_list")
            .and_then(Value::as_object)
            .ok_or("no status_list")?;
        let bits = match list.get("bits").and_then(Value::as_u64) {
            Some(b @ (1 | 2 | 4 | 8)) => b as u8,
            _ => return Err("bits is not 1, 2, 4 or 8".into()),
        };
        let lst = list.get("lst").and_then(Value::as_str).ok_or("no lst")?;
        let compressed = URL_SAFE_NO_PAD
            .decode(lst)
            .map_err(|_| "lst is not base64url")?;
        let limit = self.max_bytes.saturating_mul(16);
        let bytes = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&compressed, limit)
            .map_err(|e| format!("lst is not zlib within {limit} bytes: {:?}", e.status))?;
        let iat = jws::numeric(p, "iat")
            .map_err(|e| e.to_string())?
            .ok_or("no iat")?;
        let exp = jws::numeric(p, "exp").map_err(|e| e.to_string())?;
        let ttl = jws::numeric(p, "ttl").map_err(|e| e.to_string())?;
        // `ttl` is how long a consumer may cache the list once fetched (the draft); `exp` bounds
        // it, and a list older than the one held is refused (`answered`).
        let mut fresh_until = now_s.saturating_add(ttl.unwrap_or(self.default_ttl_s));
        if let Some(exp) = exp {
            fresh_until = fresh_until.min(exp);
        }
        Ok((List { bits, bytes }, iat, fresh_until))
    }
}

#[cfg(test)]
mod tests {
    use super::List;

    #[test]
    fn statuses_are_read_from_the_least_significant_bit() {
        // The draft's example: 1-bit list [1,0,0,1,1,1,0,1, 1,1,0,0,0,1,0,1] = b9 a3.
        let one = List {
            bits: 1,
            bytes: vec![0xb9, 0xa3],
        };
        let got: Vec<u8> = (0..16).filter_map(|i| one.status(i)).collect();
        assert_eq!(got, [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]);
        assert_eq!(one.status(16), None);
        // 2-bit list [1,2,0,3, 0,1,0,1, 1,2,3,3] = c9 44 f9.
        let two = List {
            bits: 2,
            bytes: vec![0xc9, 0x44, 0xf9],
        };
        let got: Vec<u8> = (0..12).filter_map(|i| two.status(i)).collect();
        assert_eq!(got, [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3]);
        assert_eq!(two.status(12), None);
        assert_eq!(two.status(u64::MAX), None);
    }
}

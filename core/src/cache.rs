//! The verified-token cache: signature verification costs 0.3–1.5 ms inside wasm, so a token is
//! verified once and then found by the SHA-256 of its exact bytes until its `exp`.
//!
//! Keyed by the full digest, so a different token can only hit an entry through a SHA-256
//! collision. Bounded in entries and (estimated) bytes; evicts expired entries first, then the
//! oldest. Lives inside the engine, so new keys (a new configuration) start with an empty cache.
//!
//! A full cache looks for expired entries at most once a second: a scan of every entry on each
//! insert made a new token cost a walk over 10,000 entries under token churn (issue 16).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::token::VerifiedToken;

pub type TokenDigest = [u8; 32];

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    token: Arc<VerifiedToken>,
    size: usize,
}

pub struct TokenCache {
    entries: HashMap<TokenDigest, Entry>,
    /// Insertion order, for eviction of the oldest.
    order: VecDeque<TokenDigest>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    /// The second of the last look for expired entries (`None`: never).
    swept_s: Option<u64>,
    /// How many looks for expired entries were made.
    sweeps: u64,
}

impl TokenCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> TokenCache {
        TokenCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
            swept_s: None,
            sweeps: 0,
        }
    }

    /// How many times a full cache looked through every entry for expired ones.
    pub fn sweeps(&self) -> u64 {
        self.sweeps
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached verification of this token, if it has not expired by `now_s`.
    pub fn get(&mut self, key: &TokenDigest, now_s: u64) -> Option<Arc<VerifiedToken>> {
        let entry = self.entries.get(key)?;
        if now_s >= entry.token.expires_at {
            self.remove(key);
            return None;
        }
        Some(entry.token.clone())
    }

    pub fn insert(
        &mut self,
        key: TokenDigest,
        token: Arc<VerifiedToken>,
        token_len: usize,
        now_s: u64,
    ) {
        if self.max_entries == 0 || now_s >= token.expires_at {
            return;
        }
        // The payload is held decoded: about twice its encoded size, plus the fixed fields.
        let size = token_len * 2 + 256;
        if size > self.max_bytes {
            return;
        }
        if self.entries.contains_key(&key) {
            return;
        }
        let full = self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes;
        if full && self.swept_s != Some(now_s) {
            self.entries_expired(now_s);
        }
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.size;
            }
        }
        self.entries.insert(key, Entry { token, size });
        self.order.push_back(key);
        self.bytes += size;
    }

    pub fn remove(&mut self, key: &TokenDigest) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= e.size;
            self.order.retain(|k| k != key);
        }
    }

    fn entries_expired(&mut self, now_s: u64) {
        self.swept_s = Some(now_s);
        self.sweeps += 1;
        let bytes = &mut self.bytes;
        self.entries.retain(|_, e| {
            let keep = now_s < e.token.expires_at;
            if !keep {
                *bytes -= e.size;
            }
            keep
        });
        let entries = &self.entries;
        self.order.retain(|k| entries.contains_key(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: u64) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            issuer_index: 0,
            issuer: "i".into(),
            subject: None,
            audience: Vec::new(),
            scopes: Vec::new(),
            client_id: None,
            issued_at: None,
            expires_at,
            jti: None,
            key_generation: 0,
            payload: Default::default(),
            agent: Default::default(),
            binding: Default::default(),
            checked: Default::default(),
            session_owner: Default::default(),
        })
    }

    fn key(i: usize) -> TokenDigest {
        digest(&format!("token-{i}"))
    }

    #[test]
    fn a_full_cache_looks_for_expired_entries_once_a_second() {
        let mut c = TokenCache::new(100, 1 << 20);
        for i in 0..100 {
            c.insert(key(i), token(1_000 + (i % 2) as u64), 10, 900);
        }
        assert_eq!((c.len(), c.sweeps()), (100, 0));
        // Token churn within one second: one look, then the oldest make room.
        for i in 100..1_100 {
            c.insert(key(i), token(5_000), 10, 950);
        }
        assert_eq!((c.len(), c.sweeps()), (100, 1));
        assert!(c.get(&key(1_099), 950).is_some() && c.get(&key(999), 950).is_none());
        // Expired entries still go before any live one, at the next second's look.
        let mut c = TokenCache::new(3, 1 << 20);
        c.insert(key(0), token(2_000), 10, 900);
        c.insert(key(1), token(1_000), 10, 900);
        c.insert(key(2), token(2_000), 10, 900);
        c.insert(key(3), token(2_000), 10, 1_500);
        assert_eq!(c.sweeps(), 1);
        assert!(
            c.get(&key(0), 1_500).is_some(),
            "the oldest live entry stays"
        );
        assert!(c.get(&key(1), 1_500).is_none());
        assert!(c.get(&key(3), 1_500).is_some());
    }
}

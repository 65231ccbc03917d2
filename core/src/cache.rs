//! The verified-token cache: signature verification costs 0.3–1.5 ms inside wasm, so a token is
//! verified once and then found by the SHA-256 of its exact bytes until its `exp`.
//!
//! Keyed by the full digest, so a different token can only hit an entry through a SHA-256
//! collision. Bounded in entries and (estimated) bytes; evicts expired entries first, then the
//! oldest. Lives inside the engine, so new keys (a new configuration) start with an empty cache.

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
}

impl TokenCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> TokenCache {
        TokenCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
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
        if self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
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

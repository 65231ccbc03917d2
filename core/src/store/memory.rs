//! A [`Store`] in one map, for native tests and benchmarks.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use super::{Entry, Store, StoreError};

/// A [`Store`] in memory, for native tests and benchmarks (one thread, like a proxy worker).
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: RefCell<BTreeMap<String, (Entry, String)>>,
    versions: Cell<u32>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn next_version(&self) -> u32 {
        let v = self.versions.get().wrapping_add(1);
        self.versions.set(v);
        v
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str, now_s: u64) -> Option<Entry> {
        let entries = self.entries.borrow();
        let (entry, _) = entries.get(key)?;
        (now_s < entry.expires_at).then(|| entry.clone())
    }

    fn create(
        &self,
        key: &str,
        payload: &[u8],
        expires_at: u64,
        now_s: u64,
        owner: &str,
    ) -> Result<bool, StoreError> {
        if self.get(key, now_s).is_some() {
            return Ok(false);
        }
        let entry = Entry {
            expires_at,
            payload: payload.to_vec(),
            version: self.next_version(),
        };
        self.entries
            .borrow_mut()
            .insert(key.to_string(), (entry, owner.to_string()));
        Ok(true)
    }

    fn replace(
        &self,
        key: &str,
        read: Option<&Entry>,
        payload: &[u8],
        expires_at: u64,
        now_s: u64,
    ) -> Result<bool, StoreError> {
        let Some(read) = read else {
            return self.create(key, payload, expires_at, now_s, "");
        };
        let version = self.next_version();
        let mut entries = self.entries.borrow_mut();
        match entries.get_mut(key) {
            Some((stored, _)) if stored.version == read.version => {
                *stored = Entry {
                    expires_at,
                    payload: payload.to_vec(),
                    version,
                };
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn extend(&self, key: &str, entry: &Entry, expires_at: u64, _now_s: u64) {
        let version = self.next_version();
        if let Some((stored, _)) = self.entries.borrow_mut().get_mut(key) {
            if stored.version == entry.version {
                stored.expires_at = expires_at;
                stored.version = version;
            }
        }
    }

    fn clear(&self, key: &str) {
        self.entries.borrow_mut().remove(key);
    }

    fn live(&self, prefix: &str, now_s: u64, owner: &str) -> (usize, usize) {
        let entries = self.entries.borrow();
        let live = entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, (e, _))| now_s < e.expires_at);
        live.fold((0, 0), |(all, theirs), (_, (_, o))| {
            (all + 1, theirs + usize::from(o == owner))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_writer_wins_until_the_entry_expires() {
        let s = MemoryStore::new();
        assert_eq!(s.create("k", b"a", 10, 0, ""), Ok(true));
        assert_eq!(s.create("k", b"b", 10, 5, ""), Ok(false));
        assert_eq!(s.get("k", 9).map(|e| e.payload), Some(b"a".to_vec()));
        assert_eq!(s.get("k", 10), None, "expired");
        assert_eq!(s.create("k", b"c", 20, 10, ""), Ok(true));
    }

    #[test]
    fn an_extension_of_a_stale_read_is_lost() {
        let s = MemoryStore::new();
        s.create("k", b"a", 10, 0, "").expect("created");
        let read = s.get("k", 1).expect("live");
        s.extend("k", &read, 20, 1);
        assert_eq!(s.get("k", 15).map(|e| e.expires_at), Some(20));
        s.extend("k", &read, 30, 2);
        assert_eq!(s.get("k", 15).map(|e| e.expires_at), Some(20), "stale");
    }

    #[test]
    fn live_entries_are_counted_by_prefix_and_owner() {
        let s = MemoryStore::new();
        for (k, owner, until) in [("s.1", "a", 10), ("s.2", "a", 10), ("s.3", "b", 10)] {
            s.create(k, b"", until, 0, owner).expect("created");
        }
        s.create("s.4", b"", 3, 0, "a").expect("created");
        s.create("t.1", b"", 10, 0, "a").expect("created");
        assert_eq!(s.live("s.", 5, "a"), (3, 2));
        assert_eq!(s.live("s.", 5, "c"), (3, 0));
        s.clear("s.1");
        assert_eq!(s.live("s.", 5, "a"), (2, 1));
        assert_eq!(s.get("s.1", 5), None);
    }
}

//! [`Store`] on the proxy's shared data: consumed single-use tokens and approvals, and MCP
//! session bindings. The plugin gives the map ([`SharedMap`] over its host calls); everything
//! else is here, so that it runs natively in tests.
//!
//! Shared data is one key-value map per VM id that all of Envoy's worker threads see, with get,
//! set and compare-and-swap, but no delete and no listing (proxy-wasm ABI 0.2.1). So:
//! - every value carries its own expiry (`<expires_at>|<nonce>|<payload>`), and a reader treats
//!   an expired or empty value as absent;
//! - an entry is created once: the first writer wins across threads (see [`Store::create`]);
//! - memory stays bounded: each worker remembers the keys it created, and its tick
//!   ([`SharedStore::sweep`]) overwrites the expired ones with an empty value. The key itself
//!   stays (the ABI cannot delete it), its value does not; keys are fixed-length digests where
//!   they come from clients (`approval::once_key`).

use std::cell::{Cell, RefCell};

use super::{Entry, Store, StoreError};

/// The proxy's shared data, as the ABI offers it.
pub trait SharedMap {
    /// The value under `key` and its version (`(None, None)`: absent).
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Sets `key`, if `cas` is `None` or equals the stored version. A host applies a CAS only to
    /// an existing key: an absent key is created whatever `cas` says.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
    /// The proxy's clock in nanoseconds (makes the values a writer writes unique).
    fn now_nanos(&self) -> u64;
}

/// Why a [`SharedMap::set`] did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    /// Another writer wrote the key since it was read.
    CasMismatch,
    Other(String),
}

/// CAS version given when creating a key that does not exist yet. A host applies a non-zero CAS
/// only to an existing key, so of two threads that both saw the key absent, the first creates it
/// and the second gets `CasMismatch` — unless the stored version happens to equal this value (one
/// write in 2^32); the read-back of the writer's nonce in `create` covers that case too.
const CREATE_CAS: u32 = u32::MAX;

#[derive(Debug)]
struct Created {
    key: String,
    expires_at: u64,
    /// Who the entry counts against (an MCP session's caller); empty for none.
    owner: String,
}

/// One worker's view of the shared data.
#[derive(Debug, Default)]
pub struct SharedStore<M> {
    map: M,
    /// Keys this worker created, the expiry it last saw and the owner they were created for;
    /// the tick clears them once expired.
    created: RefCell<Vec<Created>>,
    /// Makes each value this worker writes unique, so that a writer recognises its own write.
    writes: Cell<u64>,
}

/// `(expires_at, nonce, payload)` of a stored value; `None` when empty (cleared) or not ours.
fn decode(value: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let mut parts = value.splitn(3, |b| *b == b'|');
    let expires_at = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    Some((expires_at, parts.next()?, parts.next()?))
}

impl<M: SharedMap> Store for SharedStore<M> {
    /// The live entry under `key`: present, not cleared, not expired at `now_s`.
    fn get(&self, key: &str, now_s: u64) -> Option<Entry> {
        let (Some(value), Some(cas)) = self.map.get(key).ok()? else {
            return None;
        };
        let (expires_at, _, payload) = decode(&value)?;
        (now_s < expires_at).then(|| Entry {
            expires_at,
            payload: payload.to_vec(),
            version: cas,
        })
    }

    /// First writer wins across worker threads: see [`CREATE_CAS`] and the read-back below.
    /// `Err`: the host refused the write; callers fail closed.
    fn create(
        &self,
        key: &str,
        payload: &[u8],
        expires_at: u64,
        now_s: u64,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let (value, cas) = self.map.get(key)?;
        let live = value
            .as_deref()
            .and_then(decode)
            .is_some_and(|(e, _, _)| now_s < e);
        if live {
            return Ok(false);
        }
        // Expired or cleared: replace it only if nobody else did since we read it. Absent: create.
        let ours = self.encode(expires_at, payload);
        match self.map.set(key, &ours, Some(cas.unwrap_or(CREATE_CAS))) {
            Ok(()) => {}
            Err(SetError::CasMismatch) => return Ok(false),
            Err(SetError::Other(e)) => return Err(StoreError(e)),
        }
        // Read back: a value that is not ours means another writer replaced it in between.
        if self.map.get(key)?.0.as_deref() != Some(ours.as_slice()) {
            return Ok(false);
        }
        let mut created = self.created.borrow_mut();
        // A key created again (after it expired or was cleared) is remembered once.
        created.retain(|c| c.key != key);
        created.push(Created {
            key: key.to_string(),
            expires_at,
            owner: owner.to_string(),
        });
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
        let ours = self.encode(expires_at, payload);
        match self.map.set(key, &ours, Some(read.version)) {
            Ok(()) => {}
            Err(SetError::CasMismatch) => return Ok(false),
            Err(SetError::Other(e)) => return Err(StoreError(e)),
        }
        let mut created = self.created.borrow_mut();
        match created.iter_mut().find(|c| c.key == key) {
            Some(c) => c.expires_at = c.expires_at.max(expires_at),
            None => created.push(Created {
                key: key.to_string(),
                expires_at,
                owner: String::new(),
            }),
        }
        Ok(true)
    }

    fn extend(&self, key: &str, entry: &Entry, expires_at: u64, _now_s: u64) {
        let value = self.encode(expires_at, &entry.payload);
        let _ = self.map.set(key, &value, Some(entry.version));
    }

    /// Empties the value (the ABI cannot delete a key) and stops counting it.
    fn clear(&self, key: &str) {
        let _ = self.map.set(key, &[], None);
        self.created.borrow_mut().retain(|c| c.key != key);
    }

    /// Entries this worker created that have not expired at `now_s`, as far as this worker
    /// knows (another worker may have extended one).
    fn live(&self, prefix: &str, now_s: u64, owner: &str) -> (usize, usize) {
        let created = self.created.borrow();
        let live = created
            .iter()
            .filter(|c| now_s < c.expires_at && c.key.starts_with(prefix));
        live.fold((0, 0), |(all, theirs), c| {
            (all + 1, theirs + usize::from(c.owner == owner))
        })
    }
}

impl<M: SharedMap> SharedStore<M> {
    pub fn new(map: M) -> SharedStore<M> {
        SharedStore {
            map,
            created: RefCell::default(),
            writes: Cell::default(),
        }
    }

    /// Clears the expired entries this worker created (value set to empty). Entries another
    /// worker extended are kept with their new expiry. Returns how many were cleared.
    pub fn sweep(&self, now_s: u64) -> usize {
        let mut cleared = 0;
        self.created.borrow_mut().retain_mut(|c| {
            let (key, expires_at) = (&c.key, &mut c.expires_at);
            if now_s < *expires_at {
                return true;
            }
            let Ok((value, cas)) = self.map.get(key) else {
                return true;
            };
            match value.as_deref().and_then(decode) {
                // Already cleared, or replaced by something that is not an entry.
                None => false,
                Some((e, _, _)) if now_s < e => {
                    *expires_at = e;
                    true
                }
                Some(_) => match self.map.set(key, &[], cas) {
                    Ok(()) => {
                        cleared += 1;
                        false
                    }
                    // Someone wrote it since: look again on the next tick.
                    Err(_) => true,
                },
            }
        });
        cleared
    }

    fn encode(&self, expires_at: u64, payload: &[u8]) -> Vec<u8> {
        let n = self.writes.get().wrapping_add(1);
        self.writes.set(n);
        let nanos = self.map.now_nanos();
        let mut v = format!("{expires_at}|{nanos:x}.{n:x}|").into_bytes();
        v.extend_from_slice(payload);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::rc::Rc;

    /// Shared data with the host's semantics (Envoy's `SharedData::set`): a CAS is checked only
    /// against an existing key; every write gets a new version.
    #[derive(Default)]
    struct Host {
        map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        versions: Cell<u32>,
    }

    struct Worker(Rc<Host>);

    impl SharedMap for Worker {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            Ok(match self.0.map.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            })
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            let mut map = self.0.map.borrow_mut();
            if let (Some((_, stored)), Some(cas)) = (map.get(key), cas) {
                if *stored != cas {
                    return Err(SetError::CasMismatch);
                }
            }
            let v = self.0.versions.get() + 1;
            self.0.versions.set(v);
            map.insert(key.to_string(), (value.to_vec(), v));
            Ok(())
        }
        fn now_nanos(&self) -> u64 {
            0
        }
    }

    fn two_workers() -> (SharedStore<Worker>, SharedStore<Worker>) {
        let host = Rc::new(Host::default());
        (
            SharedStore::new(Worker(host.clone())),
            SharedStore::new(Worker(host)),
        )
    }

    #[test]
    fn of_two_workers_the_first_writer_wins() {
        let (a, b) = two_workers();
        assert_eq!(a.create("k", b"a", 10, 0, ""), Ok(true));
        assert_eq!(b.create("k", b"b", 10, 1, ""), Ok(false));
        assert_eq!(b.get("k", 2).map(|e| e.payload), Some(b"a".to_vec()));
        assert_eq!(b.get("k", 10), None, "expired for every worker");
        assert_eq!(
            b.create("k", b"c", 20, 10, ""),
            Ok(true),
            "expired: free again"
        );
    }

    #[test]
    fn a_stale_read_cannot_replace_an_entry() {
        let (a, b) = two_workers();
        a.create("k", b"a", 10, 0, "").expect("created");
        let stale = a.get("k", 1).expect("live");
        b.extend("k", &stale, 30, 1);
        a.extend("k", &stale, 20, 1);
        assert_eq!(
            a.get("k", 25).map(|e| e.expires_at),
            Some(30),
            "first extension won"
        );
    }

    #[test]
    fn the_sweep_clears_what_expired_and_keeps_what_another_worker_extended() {
        let (a, b) = two_workers();
        a.create("gone", b"", 10, 0, "x").expect("created");
        a.create("kept", b"", 10, 0, "x").expect("created");
        let kept = b.get("kept", 5).expect("live");
        b.extend("kept", &kept, 100, 5);
        assert_eq!(a.live("", 5, "x"), (2, 2));
        assert_eq!(a.sweep(11), 1);
        assert_eq!(a.map.get("gone").expect("read").0, Some(vec![]), "emptied");
        assert!(a.get("kept", 50).is_some());
        assert_eq!(a.live("", 50, "x"), (1, 1), "counted with its new expiry");
    }

    #[test]
    fn a_cleared_entry_is_gone_for_every_worker_and_no_longer_counted() {
        let (a, b) = two_workers();
        a.create("s.1", b"", 10, 0, "x").expect("created");
        a.clear("s.1");
        assert_eq!(b.get("s.1", 1), None);
        assert_eq!(a.live("s.", 1, "x"), (0, 0));
        assert_eq!(b.create("s.1", b"", 10, 1, ""), Ok(true));
    }
}

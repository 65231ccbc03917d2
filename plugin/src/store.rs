//! [`tessera_core::store::Store`] on the proxy's shared data: consumed single-use tokens and
//! approvals, and MCP session bindings.
//!
//! Shared data is one key-value map per VM id that all of Envoy's worker threads see, with get,
//! set and compare-and-swap, but no delete and no listing (proxy-wasm ABI 0.2.1). So:
//! - every value carries its own expiry (`<expires_at>|<nonce>|<payload>`), and a reader treats
//!   an expired or empty value as absent;
//! - an entry is created once: the first writer wins across threads (see [`Store::create`]);
//! - memory stays bounded: each worker remembers the keys it created, and its tick
//!   ([`Store::sweep`]) overwrites the expired ones with an empty value. The key itself stays (the
//!   ABI cannot delete it), its value does not; keys are fixed-length digests where they come from
//!   clients (`approval::once_key`).

use std::cell::{Cell, RefCell};

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use tessera_core::store::{Entry, Store, StoreError};

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

#[derive(Default)]
pub struct SharedData {
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

impl Store for SharedData {
    /// The live entry under `key`: present, not cleared, not expired at `now_s`.
    fn get(&self, key: &str, now_s: u64) -> Option<Entry> {
        let (Some(value), Some(cas)) = hostcalls::get_shared_data(key).ok()? else {
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
        let err = |e: Status| StoreError(format!("{e:?}"));
        let (value, cas) = hostcalls::get_shared_data(key).map_err(err)?;
        let live = value
            .as_deref()
            .and_then(decode)
            .is_some_and(|(e, _, _)| now_s < e);
        if live {
            return Ok(false);
        }
        // Expired or cleared: replace it only if nobody else did since we read it. Absent: create.
        let cas = cas.unwrap_or(CREATE_CAS);
        let ours = self.encode(expires_at, payload, now_s);
        match hostcalls::set_shared_data(key, Some(&ours), Some(cas)) {
            Ok(()) => {}
            Err(Status::CasMismatch) => return Ok(false),
            Err(e) => return Err(err(e)),
        }
        // Read back: a value that is not ours means another writer replaced it in between.
        if hostcalls::get_shared_data(key).map_err(err)?.0.as_deref() != Some(ours.as_slice()) {
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

    fn extend(&self, key: &str, entry: &Entry, expires_at: u64, now_s: u64) {
        let value = self.encode(expires_at, &entry.payload, now_s);
        let _ = hostcalls::set_shared_data(key, Some(&value), Some(entry.version));
    }

    /// Empties the value (the ABI cannot delete a key) and stops counting it.
    fn clear(&self, key: &str) {
        let _ = hostcalls::set_shared_data(key, Some(&[]), None);
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

impl SharedData {
    /// Clears the expired entries this worker created (value set to empty). Entries another worker
    /// extended are kept with their new expiry. Returns how many were cleared.
    pub fn sweep(&self, now_s: u64) -> usize {
        let mut cleared = 0;
        self.created.borrow_mut().retain_mut(|c| {
            let (key, expires_at) = (&c.key, &mut c.expires_at);
            if now_s < *expires_at {
                return true;
            }
            let Ok((value, cas)) = hostcalls::get_shared_data(key) else {
                return true;
            };
            match value.as_deref().and_then(decode) {
                // Already cleared, or replaced by something that is not an entry.
                None => false,
                Some((e, _, _)) if now_s < e => {
                    *expires_at = e;
                    true
                }
                Some(_) => match hostcalls::set_shared_data(key, Some(&[]), cas) {
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

    fn encode(&self, expires_at: u64, payload: &[u8], now_s: u64) -> Vec<u8> {
        let n = self.writes.get().wrapping_add(1);
        self.writes.set(n);
        let nanos = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(now_s, |d| d.as_nanos() as u64);
        let mut v = format!("{expires_at}|{nanos:x}.{n:x}|").into_bytes();
        v.extend_from_slice(payload);
        v
    }
}

//! What outlives a request: consumed single-use tokens and approvals, MCP session bindings (and
//! soon revocations). The pipeline reads and writes them through [`Store`]; the proxy backs it
//! with its shared data ([`SharedStore`] over the plugin's [`SharedMap`]), native tests and
//! benchmarks with [`MemoryStore`].
//!
//! Every entry expires (`expires_at`, Unix seconds): a reader treats an expired entry as absent.
//! An entry is created once — the first writer wins, also across the proxy's worker threads — so
//! a single-use credential is used once however many requests race for it.
//!
//! Operations answer at once: both backends today are in-process. A distributed backend (an HTTP
//! callout to a store every replica shares) answers later; it will get its own `Pending` outcome
//! in the pipeline, not a blocking call here.

pub mod etcd;
mod memory;
mod shared;
pub use memory::MemoryStore;
pub use shared::{SetError, SharedMap, SharedStore};

/// A live entry: its expiry, its payload, and the version a later [`Store::extend`] must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub expires_at: u64,
    pub payload: Vec<u8>,
    pub version: u32,
}

/// Why a store could not do what was asked; callers fail closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the store refused the write: {0}")]
pub struct StoreError(pub String);

pub trait Store {
    /// The live entry under `key`: present and not expired at `now_s`.
    fn get(&self, key: &str, now_s: u64) -> Option<Entry>;

    /// Creates `key` with `payload` until `expires_at`, unless a live entry holds it, counted
    /// against `owner` ("" for none) by [`Store::live`].  `Ok(true)`: this call created it (first
    /// writer wins); `Ok(false)`: it exists.
    fn create(
        &self,
        key: &str,
        payload: &[u8],
        expires_at: u64,
        now_s: u64,
        owner: &str,
    ) -> Result<bool, StoreError>;

    /// Writes `payload` under `key` until `expires_at`, if the entry is still `read` (the
    /// version [`Store::get`] gave; `None`: it was absent). `Ok(false)`: another writer came
    /// first; read again and retry.
    fn replace(
        &self,
        key: &str,
        read: Option<&Entry>,
        payload: &[u8],
        expires_at: u64,
        now_s: u64,
    ) -> Result<bool, StoreError>;

    /// Moves a live entry's expiry, if it is still the version read. Loses quietly to a
    /// concurrent writer: its write is as recent.
    fn extend(&self, key: &str, entry: &Entry, expires_at: u64, now_s: u64);

    /// Ends an entry before its expiry (an MCP session its client ended). Gone for every
    /// reader at once.
    fn clear(&self, key: &str);

    /// How many live entries under `prefix` this store holds (a shared-data store: that this
    /// worker created), in all and for `owner`. Bounds are per worker: counting every worker's
    /// entries would need a listing the proxy does not offer.
    fn live(&self, prefix: &str, now_s: u64, owner: &str) -> (usize, usize);
}

//! The proxy's shared data under `tessera_core::store::SharedStore`: the host calls, nothing
//! else (expiry, first-writer-wins and the sweep are in core, with native tests).

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use tessera_core::store::{SetError, SharedMap, SharedStore, StoreError};

/// Consumed single-use tokens and approvals, and MCP session bindings, for this worker.
pub type SharedData = SharedStore<Host>;

#[derive(Default)]
pub struct Host;

impl SharedMap for Host {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        hostcalls::get_shared_data(key).map_err(|e| StoreError(format!("{e:?}")))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|e| match e {
            Status::CasMismatch => SetError::CasMismatch,
            e => SetError::Other(format!("{e:?}")),
        })
    }

    fn now_nanos(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

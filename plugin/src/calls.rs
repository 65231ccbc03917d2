//! HTTP calls through the proxy's clusters, for the HTTP contexts (a request waiting for keys or
//! a status list) and the root (refreshes, polls): sending one, and reading its answer.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::Context;
use proxy_wasm::types::{BufferType, MapType, Status};
use tessera_core::outcome::{Answer, Callout};

use crate::log;
use proxy_wasm::types::LogLevel;

/// Largest answer read into the module: every document Tessera fetches has a smaller limit of
/// its own, which a longer read then fails.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Sends `c` from `context` (its answer comes back to that context); a failure to send is
/// logged (the caller decides what it means).
pub(crate) fn dispatch(context: &impl Context, c: &Callout) -> Result<u32, Status> {
    let headers = c.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    context
        .dispatch_http_call(
            &c.cluster,
            headers.collect(),
            Some(&c.body),
            vec![],
            Duration::from_millis(c.timeout_ms),
        )
        .inspect_err(|e| {
            log(
                LogLevel::Warn,
                &format!("tessera: cannot call cluster {}: {e:?}", c.cluster),
            )
        })
}

/// The answer of the call whose response callback runs now (`body_size` as the proxy said).
pub(crate) fn answer(body_size: usize) -> Answer {
    let header = |name: &str| {
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok())
    };
    let status = header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = if body_size == 0 {
        Vec::new()
    } else {
        hostcalls::get_buffer(
            BufferType::HttpCallResponseBody,
            0,
            body_size.min(MAX_ANSWER_BYTES.saturating_add(1)),
        )
        .ok()
        .flatten()
        .unwrap_or_default()
    };
    Answer {
        status,
        content_type: header("content-type"),
        body,
    }
}

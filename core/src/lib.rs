//! Tessera's decision logic, with no proxy-wasm dependency: configuration, token verification,
//! Cedar evaluation and the replies a client sees. The plugin crate is thin glue over this; tests
//! and benchmarks run it natively.

// Indexing panics on a bad index, and a panic aborts the VM for every later request.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod agent;
pub mod approval;
pub mod authz;
pub mod cache;
pub mod claims;
pub mod config;
pub mod ed25519;
pub mod engine;
pub mod error;
pub mod es256;
pub mod exchange;
pub mod formats;
pub mod identity;
pub mod input_required;
pub mod json;
pub mod jwks;
pub mod jws;
pub mod jwt_authn;
pub mod keys;
pub mod listing;
pub mod mcp;
pub mod mcp_revision;
pub mod names;
pub mod obligations;
pub mod outcome;
pub mod path;
pub mod pop;
pub mod reply;
pub mod revocation;
pub mod rsa;
pub mod sealed;
pub mod session;
pub mod store;
pub mod token;
pub mod verdict;

/// Bytes written in hex (test vectors: `jwt_authn`, `es256`, `ed25519`).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub use config::Mode;
pub use engine::{Decision, Engine, HttpRequest, Pending, Verdict};
pub use error::{ConfigError, RequestError, TokenError};
pub use reply::LocalReply;

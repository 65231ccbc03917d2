//! What one hook of the request path tells the proxy to do: the only thing the plugin reads from
//! core, and it executes it as it is. Made by [`crate::exchange::Exchange`].
//!
//! In order: header edits, then counters and log lines, then callouts, then what comes next —
//! forward, a local reply, or wait for more of the body.

use crate::reply::LocalReply;

/// One header edit: set `name` to `value`, or remove it (`None`).
pub type Edit = (String, Option<String>);

/// What comes after the edits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Next {
    /// Go on: forward the request (or pass the answer) with the edits made.
    #[default]
    Forward,
    /// Forward nothing: send this reply instead.
    Reply(LocalReply),
    /// Hold the message until more of its body has arrived (the proxy buffers it).
    WaitForBody,
    /// Hold the request until this call is answered; its answer goes back to the exchange
    /// (`Exchange::on_call_answer`), which decides again.
    Call(Call),
}

/// The filter's counters (`tessera.decisions.*`, `tessera.mcp.list_items_hidden`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Allow,
    Public,
    Deny,
    Unauthenticated,
    Error,
    /// No configuration compiled: the request got 503.
    Unavailable,
    /// Items hidden from MCP list answers.
    ListItemsHidden,
}

impl Counter {
    /// Every counter, with the name the proxy shows it under.
    pub const ALL: [(Counter, &'static str); 7] = [
        (Counter::Allow, "tessera.decisions.allow"),
        (Counter::Public, "tessera.decisions.public"),
        (Counter::Deny, "tessera.decisions.deny"),
        (
            Counter::Unauthenticated,
            "tessera.decisions.unauthenticated",
        ),
        (Counter::Error, "tessera.decisions.error"),
        (Counter::Unavailable, "tessera.decisions.unavailable"),
        (Counter::ListItemsHidden, "tessera.mcp.list_items_hidden"),
    ];

    /// Position in [`Counter::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Log levels, as the proxy has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// An HTTP call the proxy makes to a cluster, not waited for (the approval webhook): a failure
/// to send it is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub cluster: String,
    /// `:method`, `:path`, `:authority` and the rest, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

/// What a call whose answer Tessera waits for fetches: where the answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// An issuer's OIDC discovery document (index in the configuration's issuers).
    Discovery(usize),
    /// An issuer's JWKS.
    Jwks(usize),
    /// A status list, by its uri.
    StatusList(String),
    /// An RFC 8936 poll of the security event transmitter.
    Poll,
    /// A lease of the shared store for records ending in this bucket (its end, Unix seconds).
    StoreLease(u64),
    /// The shared store's first-writer-wins creation of this key.
    StoreCreate(String),
    /// Records written to the shared store for the other replicas (revocations).
    StorePublish,
    /// What the other replicas wrote to the shared store since the last look.
    StoreFollow,
    /// An approval request announced to the approvers (`approval.webhook`): the reply that asks
    /// for approval waits for it, so that a page the client is sent to knows the request.
    Announce,
}

/// A call whose answer Tessera needs: the request paused on it (`Next::Call`), or the root's
/// own (refreshing keys and lists, polling events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub purpose: Purpose,
    pub callout: Callout,
}

/// What came back from a [`Call`]: `status` 0 when nothing did (a timeout, a reset, a cluster
/// that could not be reached).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    pub status: u32,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body of a successful answer: status 200, at most `max_bytes` (`limit` names that
    /// bound in the error). `Err`: why the answer is not taken.
    pub fn ok_body(&self, max_bytes: usize, limit: &str) -> Result<&[u8], String> {
        match self.status {
            0 => return Err("no answer (timeout or connection failure)".into()),
            200 => {}
            other => return Err(format!("status {other}")),
        }
        if self.body.len() > max_bytes {
            return Err(format!(
                "{} bytes, more than {limit} ({max_bytes})",
                self.body.len()
            ));
        }
        Ok(&self.body)
    }
}

impl Callout {
    /// A POST of the JSON `body` to `path` through `cluster`, accepting JSON.
    pub fn post_json(
        cluster: &str,
        authority: &str,
        path: &str,
        body: &serde_json::Value,
        timeout_ms: u64,
    ) -> Callout {
        let mut c = Callout::get(cluster, authority, path, "application/json", timeout_ms);
        for (k, v) in &mut c.headers {
            if k == ":method" {
                *v = "POST".into();
            }
        }
        c.headers
            .push(("content-type".into(), "application/json".into()));
        c.body = body.to_string().into_bytes();
        c
    }

    /// A GET of `path` through `cluster`, accepting `accept`.
    pub fn get(
        cluster: &str,
        authority: &str,
        path: &str,
        accept: &str,
        timeout_ms: u64,
    ) -> Callout {
        Callout {
            cluster: cluster.to_string(),
            headers: [
                (":method", "GET"),
                (":path", path),
                (":authority", authority),
                ("accept", accept),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec(),
            body: Vec::new(),
            timeout_ms,
        }
    }
}

/// What the proxy does after one hook.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Edits to the headers of the request (on request hooks) or of the answer (on response
    /// hooks), in order.
    pub headers: Vec<Edit>,
    /// Edits to the request's trailers (on the request-trailers hook).
    pub trailers: Vec<Edit>,
    /// Replaces the body this hook read (response hooks: a filtered list answer).
    pub body: Option<Vec<u8>>,
    pub counters: Vec<(Counter, u64)>,
    pub logs: Vec<(Level, String)>,
    pub callouts: Vec<Callout>,
    pub next: Next,
}

impl Outcome {
    /// Nothing to do: go on.
    pub fn forward() -> Outcome {
        Outcome::default()
    }

    /// Hold the message until more of its body has arrived.
    pub fn wait_for_body() -> Outcome {
        Outcome {
            next: Next::WaitForBody,
            ..Outcome::default()
        }
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.headers
            .push((name.to_string(), Some(value.to_string())));
    }

    pub fn remove(&mut self, name: &str) {
        self.headers.push((name.to_string(), None));
    }

    pub fn count(&mut self, counter: Counter, n: u64) {
        self.counters.push((counter, n));
    }

    pub fn log(&mut self, level: Level, line: String) {
        self.logs.push((level, line));
    }
}

#[cfg(test)]
mod tests {
    use super::Counter;

    /// The plugin keeps one metric id per counter, found by `index`: `ALL` must be in the
    /// enum's order.
    #[test]
    fn every_counter_is_at_its_index_in_all() {
        for (i, (counter, _)) in Counter::ALL.iter().enumerate() {
            assert_eq!(counter.index(), i, "{counter:?}");
        }
    }
}

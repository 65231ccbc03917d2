//! The calls Tessera makes through the proxy's clusters and what comes back: the root's tick
//! starts the due ones (keys to refresh, status lists to refresh, the event transmitter to
//! poll), a waiting request starts its own (`credential.rs`), and every answer comes here.
//! Security events pushed to the filter are taken here too.

use super::Engine;
use crate::outcome::{Answer, Call, Purpose};
use crate::reply::LocalReply;
use crate::store::Store;

impl Engine {
    /// The calls due at `now_s`, for the root's tick.
    pub fn due_calls(&self, now_s: u64) -> Vec<Call> {
        let mut calls: Vec<Call> = self
            .issuers
            .iter()
            .enumerate()
            .filter_map(|(i, issuer)| issuer.keys.due(i, now_s))
            .collect();
        if let Some(lists) = &self.status_lists {
            calls.extend(lists.due(now_s));
        }
        if let Some(call) = self.events.as_ref().and_then(|e| e.poll_due(now_s)) {
            calls.push(call);
        }
        calls
    }

    /// Takes the answer to a call: the calls it leads to (discovery leads to the JWKS), and a
    /// line for the log when the answer was not taken.
    pub fn answered(
        &self,
        purpose: &Purpose,
        answer: &Answer,
        store: &dyn Store,
        now_s: u64,
    ) -> (Vec<Call>, Option<String>) {
        let failed = |what: &str, e: String| Some(format!("tessera: {what}: {e}"));
        match purpose {
            Purpose::Discovery(i) | Purpose::Jwks(i) => {
                let Some(issuer) = self.issuers.get(*i) else {
                    return (vec![], None);
                };
                match issuer.keys.answered(purpose, answer, now_s) {
                    Ok(next) => (next.into_iter().collect(), None),
                    Err(e) => (vec![], failed(&format!("keys of {}", issuer.issuer), e)),
                }
            }
            Purpose::StatusList(uri) => match &self.status_lists {
                Some(lists) => match lists.answered(uri, answer, now_s) {
                    Ok(()) => (vec![], None),
                    Err(e) => (vec![], failed(&format!("status list {uri}"), e)),
                },
                None => (vec![], None),
            },
            Purpose::Poll => match &self.events {
                Some(events) => match events.polled(answer, store, now_s) {
                    Ok(_) => (vec![], None),
                    Err(e) => (vec![], failed("security event poll", e)),
                },
                None => (vec![], None),
            },
            // Single-use redemption: its answers go to `Engine::redeem_answered`.
            Purpose::StoreLease(_) | Purpose::StoreCreate(_) => (vec![], None),
        }
    }

    /// A request's call will not be answered (its stream ended while it waited): what it was
    /// fetching is left for another to fetch, and its place among the pending calls is freed.
    pub fn abandoned(&self, purpose: &Purpose) {
        match purpose {
            Purpose::Discovery(i) | Purpose::Jwks(i) => {
                if let Some(issuer) = self.issuers.get(*i) {
                    issuer.keys.abandoned();
                }
            }
            Purpose::StatusList(uri) => {
                if let Some(lists) = &self.status_lists {
                    lists.abandoned(uri);
                }
            }
            Purpose::Poll | Purpose::StoreLease(_) | Purpose::StoreCreate(_) => {}
        }
        self.call_ended();
    }

    /// A security event pushed to the receiver path (RFC 8935): the reply to send.
    pub fn receive_events(
        &self,
        method: &str,
        body: &[u8],
        store: &dyn Store,
        now_s: u64,
    ) -> LocalReply {
        match &self.events {
            Some(events) => events.receive(method, body, store, now_s),
            None => LocalReply::unavailable(""),
        }
    }
}

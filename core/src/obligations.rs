//! What an allowed decision obliges before the request is forwarded, kept in the [`Store`]
//! (`store/`): **single-use credentials** (single-use tokens, approvals) are recorded when first
//! used, first writer wins — across worker threads, and with `store.etcd` across every replica; a
//! credential recorded already turns the decision into its refusal. (MCP session bindings, the
//! other obligation a decision carries, are `session/`.)
//!
//! Shadow mode never refuses: what enforce would refuse is counted and logged, then forwarded.

use crate::config::Mode;
use crate::engine::{Decision, Engine};
use crate::outcome::{Answer, Call, Purpose};
use crate::reply::LocalReply;
use crate::store::Store;
use crate::verdict::Verdict;

/// Where the redemption of a decision's single-use credentials stands.
#[derive(Debug)]
pub enum Redeemed {
    /// Every credential is recorded (or there is none): the decision stands.
    Stands,
    /// Refused after all: this decision instead.
    Refused(Box<Decision>),
    /// The shared store (`store.etcd`) must answer `call` about credential `index` first; its
    /// answer goes to [`Engine::redeem_answered`].
    Wait { call: Call, index: usize },
}

impl Engine {
    /// Records the single-use credentials a forwarded request uses, from credential `from` on:
    /// first writer wins across worker threads, and with `store.etcd` across every replica (the
    /// proxy's shared data then caches what is known used). A credential recorded already — a
    /// replay, or a concurrent use that won the race — turns the decision into the refusal its
    /// obligation carries; one the store cannot record, into a 503.
    pub fn redeem(
        &self,
        store: &dyn Store,
        decision: &Decision,
        from: usize,
        request_id: &str,
        now_s: u64,
    ) -> Redeemed {
        if decision.once.is_empty() || decision.reply.is_some() {
            return Redeemed::Stands;
        }
        for (index, once) in decision.once.iter().enumerate().skip(from) {
            let Some(etcd) = &self.etcd else {
                match store.create(&once.key, b"", once.until, now_s, "") {
                    Ok(true) => continue,
                    Ok(false) => return self.refused(decision, index, None, request_id),
                    Err(e) => {
                        return self.refused(decision, index, Some(e.to_string()), request_id)
                    }
                }
            };
            if store.get(&once.key, now_s).is_some() {
                // Known used on this proxy: no need to ask the fleet.
                return self.refused(decision, index, None, request_id);
            }
            return Redeemed::Wait {
                call: etcd.create(&once.key, once.until, now_s),
                index,
            };
        }
        Redeemed::Stands
    }

    /// The shared store answered the call about credential `index` (a lease, or the record).
    #[allow(clippy::too_many_arguments)]
    pub fn redeem_answered(
        &self,
        store: &dyn Store,
        decision: &Decision,
        index: usize,
        purpose: &Purpose,
        answer: &Answer,
        request_id: &str,
        now_s: u64,
    ) -> Redeemed {
        let (Some(etcd), Some(once)) = (&self.etcd, decision.once.get(index)) else {
            // Not reachable: an answer about a credential that is not there. Never a pass.
            return self.refused(
                decision,
                0,
                Some("an answer about no credential".into()),
                request_id,
            );
        };
        match purpose {
            Purpose::StoreLease(bucket) => match etcd.lease_granted(*bucket, answer, now_s) {
                Ok(()) => Redeemed::Wait {
                    call: etcd.create(&once.key, once.until, now_s),
                    index,
                },
                Err(e) => self.refused(decision, index, Some(e), request_id),
            },
            Purpose::StoreCreate(_) => match etcd.created(answer) {
                Ok(first) => {
                    // Remembered on this proxy either way: a replay here needs no call.
                    let _ = store.create(&once.key, b"", once.until, now_s, "");
                    if first {
                        self.redeem(store, decision, index + 1, request_id, now_s)
                    } else {
                        self.refused(decision, index, None, request_id)
                    }
                }
                Err(e) => self.refused(decision, index, Some(e), request_id),
            },
            _ => self.refused(
                decision,
                index,
                Some("an unexpected answer".into()),
                request_id,
            ),
        }
    }

    /// The refusal of credential `index`: used already (its obligation's reply), or not
    /// recorded because the store failed (`failure`: 503, the request can be tried again).
    fn refused(
        &self,
        decision: &Decision,
        index: usize,
        failure: Option<String>,
        request_id: &str,
    ) -> Redeemed {
        let mut d = decision.clone();
        let Some(once) = decision.once.get(index) else {
            // Not reachable (an index past the credentials): refused all the same.
            d.verdict = Verdict::Error;
            d.reason = "cannot record a single-use credential".into();
            d.reply = Some(LocalReply::retry_later(&d.reason, request_id));
            return Redeemed::Refused(Box::new(d));
        };
        d.verdict = once.verdict;
        let reply = match failure {
            None => {
                d.reason = once.reason.clone();
                once.reply.clone()
            }
            Some(e) => {
                d.verdict = Verdict::Error;
                d.reason = format!("cannot record a single-use credential: {e}");
                LocalReply::retry_later(&d.reason, request_id)
            }
        };
        d.set_headers.clear();
        d.once.clear();
        d.mcp_lists = None;
        if self.mode() == Mode::Enforce {
            d.reply = Some(reply);
        }
        Redeemed::Refused(Box::new(d))
    }
}

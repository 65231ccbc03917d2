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
    /// obligation carries; one the store cannot record, into a 503. With `store.etcd` a request's
    /// credentials (a single-use token and an approval) are recorded in one transaction: a used
    /// approval does not use the token up.
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
        // Known used on this proxy: refused, no need to ask the fleet.
        if let Some(index) = (from..decision.once.len()).find(|&i| {
            decision
                .once
                .get(i)
                .is_some_and(|once| store.get(&once.key, now_s).is_some())
        }) {
            return self.refused(decision, index, None, request_id);
        }
        if let Some(etcd) = &self.etcd {
            return Redeemed::Wait {
                call: etcd.create(&Self::credential_records(decision), now_s),
                index: 0,
            };
        }
        for (index, once) in decision.once.iter().enumerate().skip(from) {
            match store.create(&once.key, b"", once.until, now_s, "") {
                Ok(true) => continue,
                Ok(false) => return self.refused(decision, index, None, request_id),
                Err(e) => return self.refused(decision, index, Some(e.to_string()), request_id),
            }
        }
        Redeemed::Stands
    }

    /// The records of `decision`'s single-use credentials: (key, kept until).
    fn credential_records(decision: &Decision) -> Vec<(&str, u64)> {
        decision
            .once
            .iter()
            .map(|o| (o.key.as_str(), o.until))
            .collect()
    }

    /// The shared store answered a call about the decision's credentials (a lease, or the
    /// transaction that records them all).
    #[allow(clippy::too_many_arguments)]
    pub fn redeem_answered(
        &self,
        store: &dyn Store,
        decision: &Decision,
        _index: usize,
        purpose: &Purpose,
        answer: &Answer,
        request_id: &str,
        now_s: u64,
    ) -> Redeemed {
        let Some(etcd) = &self.etcd else {
            // Not reachable: a store answer without a store. Never a pass.
            return self.refused(
                decision,
                0,
                Some("an answer from no store".into()),
                request_id,
            );
        };
        let remember = |once: &crate::approval::Once| {
            // Remembered on this proxy: a replay here needs no call.
            let _ = store.create(&once.key, b"", once.until, now_s, "");
        };
        match purpose {
            Purpose::StoreLease(bucket) => match etcd.lease_granted(*bucket, answer, now_s) {
                Ok(()) => Redeemed::Wait {
                    call: etcd.create(&Self::credential_records(decision), now_s),
                    index: 0,
                },
                Err(e) => self.refused(decision, 0, Some(e), request_id),
            },
            Purpose::StoreCreate(_) => match etcd.created(answer, decision.once.len()) {
                Ok(None) => {
                    decision.once.iter().for_each(remember);
                    Redeemed::Stands
                }
                Ok(Some(used)) => {
                    // Only the one used is known used: the others were not recorded.
                    decision.once.get(used).into_iter().for_each(remember);
                    self.refused(decision, used, None, request_id)
                }
                Err(e) => self.refused(decision, 0, Some(e), request_id),
            },
            _ => self.refused(decision, 0, Some("an unexpected answer".into()), request_id),
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

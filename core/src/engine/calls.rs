//! The calls Tessera makes through the proxy's clusters and what comes back: the root's tick
//! starts the due ones (keys to refresh, status lists to refresh, the event transmitter to
//! poll), a waiting request starts its own (`credential.rs`), and every answer comes here.
//! Security events pushed to the filter are taken here too.

use super::Engine;
use crate::outcome::{Answer, Call, Purpose};
use crate::reply::LocalReply;
use crate::revocation::{record, Revocation};
use crate::store::etcd::REVOKED;
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
        if let Some(etcd) = &self.etcd {
            calls.extend(etcd.flush(now_s));
            // Revocations the other replicas recorded, when there are events to revoke by.
            if self.events.is_some() {
                calls.extend(etcd.follow(now_s));
            }
        }
        calls
    }

    /// Revocations as records of the shared store (key under its prefix, value, kept until).
    fn records(&self, revocations: &[Revocation], now_s: u64) -> Vec<(String, String, u64)> {
        let retain = self.events.as_ref().map_or(0, |e| e.retention().retain_s);
        let until = now_s.saturating_add(retain);
        revocations
            .iter()
            .map(|r| {
                (
                    format!("{REVOKED}{}", r.id()),
                    r.to_json().to_string(),
                    until,
                )
            })
            .collect()
    }

    /// Polled revocations recorded here, queued for the other replicas (`store.etcd`): the
    /// write, and a line for the log when the queue is full.
    fn publish(&self, revocations: &[Revocation], now_s: u64) -> (Option<Call>, Option<String>) {
        let Some(etcd) = &self.etcd else {
            return (None, None);
        };
        if revocations.is_empty() {
            return (None, None);
        }
        let full = etcd.publish(self.records(revocations, now_s)).err().map(|n| {
            format!("tessera: {n} revocations not shared with the other replicas: the queue is full")
        });
        (etcd.flush(now_s), full)
    }

    /// A write of a pushed event's revocations answered: the next call (the write after its
    /// lease), or `Err` when etcd does not hold them.
    pub fn push_written(
        &self,
        revocations: &[Revocation],
        purpose: &Purpose,
        answer: &Answer,
        now_s: u64,
    ) -> Result<Option<Call>, String> {
        let etcd = self.etcd.as_ref().ok_or("no store")?;
        match purpose {
            Purpose::StoreLease(bucket) => {
                etcd.lease_granted(*bucket, answer, now_s)?;
                Ok(Some(etcd.write(&self.records(revocations, now_s), now_s)))
            }
            Purpose::StorePublish => etcd.applied(answer).map(|()| None),
            _ => Err("an unexpected answer".into()),
        }
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
                    Ok(revocations) => {
                        let (call, full) = self.publish(&revocations, now_s);
                        (call.into_iter().collect(), full)
                    }
                    Err(e) => (vec![], failed("security event poll", e)),
                },
                None => (vec![], None),
            },
            // A lease for the queue of records for the other replicas (a redemption's lease
            // goes to `Engine::redeem_answered`).
            Purpose::StoreLease(bucket) => match &self.etcd {
                Some(etcd) => match etcd.lease_granted(*bucket, answer, now_s) {
                    Ok(()) => (etcd.lease_for_outbox(now_s).into_iter().collect(), None),
                    Err(e) => {
                        let _ = etcd.published(&Answer::default());
                        (vec![], failed("store lease", e))
                    }
                },
                None => (vec![], None),
            },
            Purpose::StorePublish => match &self.etcd {
                Some(etcd) => match etcd.published(answer) {
                    Ok(()) => (vec![], None),
                    Err(e) => (vec![], failed("store write", e)),
                },
                None => (vec![], None),
            },
            Purpose::StoreFollow => match (&self.etcd, &self.events) {
                (Some(etcd), Some(events)) => match etcd.followed(answer, now_s) {
                    Ok(values) => {
                        for (revision, value) in values {
                            let Some(r) = Revocation::from_json(&value) else {
                                continue;
                            };
                            if let Err(e) = record(store, &r, events.retention(), now_s) {
                                // Not recorded here: read again from it next time.
                                etcd.reread_from(revision);
                                let line = format!("tessera: revocations of other replicas: {e}");
                                return (vec![], Some(line));
                            }
                        }
                        (vec![], None)
                    }
                    Err(e) => (vec![], failed("store read", e)),
                },
                _ => (vec![], None),
            },
            // Single-use redemption: its answers go to `Engine::redeem_answered`; an
            // announcement's to the exchange that waits for it.
            Purpose::StoreCreate(_) | Purpose::Announce => (vec![], None),
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
            Purpose::Poll
            | Purpose::StoreLease(_)
            | Purpose::StoreCreate(_)
            | Purpose::StorePublish
            | Purpose::StoreFollow
            | Purpose::Announce => {}
        }
        self.call_ended();
    }

    /// A security event pushed to the receiver path (RFC 8935): the reply to send, the
    /// revocations it recorded, and with `store.etcd` the write of exactly those revocations
    /// for the other replicas, which the reply waits for (`Engine::push_written`).
    pub fn receive_pushed(
        &self,
        path: &str,
        method: &str,
        body: &[u8],
        store: &dyn Store,
        now_s: u64,
    ) -> (LocalReply, Vec<Revocation>, Option<Call>) {
        if self.approval_receiver() == Some(path) {
            return (
                self.receive_approval(method, body, store, now_s),
                vec![],
                None,
            );
        }
        let Some(events) = &self.events else {
            return (LocalReply::unavailable(""), vec![], None);
        };
        let (reply, revocations) = events.receive(method, body, store, now_s);
        let write = match (&self.etcd, revocations.is_empty()) {
            (Some(etcd), false) => Some(etcd.write(&self.records(&revocations, now_s), now_s)),
            _ => None,
        };
        (reply, revocations, write)
    }
}

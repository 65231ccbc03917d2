//! What an allowed decision obliges before the request is forwarded and after the server answers,
//! kept in the [`Store`] (`store.rs`):
//! - **single-use credentials** (single-use tokens, approvals): recorded when first used, first
//!   writer wins; a credential recorded already turns the decision into its refusal;
//! - **MCP session bindings**: an `Mcp-Session-Id` belongs to the identity whose `initialize`
//!   created it (`Decision::session_owner`); any other identity presenting it gets 403, an id
//!   never seen created — or whose binding expired — 404, which tells an MCP client to start a
//!   new session. A DELETE of the session that the server answers with 2xx ends the binding.
//!   Live bindings are bounded per worker and per principal.
//!
//! Shadow mode never refuses: what enforce would refuse is counted and logged, then forwarded.

use crate::config::Mode;
use crate::engine::{Decision, Engine};
use crate::outcome::{Answer, Call, Purpose};
use crate::reply::LocalReply;
use crate::store::{Entry, Store};
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

/// Store keys of MCP session bindings start with this.
pub const SESSION_PREFIX: &str = "tessera.mcp.session.";

/// Store key of the MCP session `session` on route `route`. The route name is length-prefixed:
/// route `mcp` with session `v2.x` and route `mcp.v2` with session `x` are two keys.
pub fn session_key(route: &str, session: &str) -> String {
    format!("{SESSION_PREFIX}{}.{route}.{session}", route.len())
}

/// `(absolute expiry, owner)` of a session binding's payload (`"<absolute> <owner>"`).
fn session_binding(payload: &[u8]) -> Option<(u64, &[u8])> {
    let space = payload.iter().position(|b| *b == b' ')?;
    let absolute = std::str::from_utf8(payload.get(..space)?)
        .ok()?
        .parse()
        .ok()?;
    Some((absolute, payload.get(space + 1..)?))
}

/// An allowed request on an MCP route: a session the server creates in its answer is bound to
/// `owner` ([`Engine::bind_session`]), counted against `principal`; a DELETE of the caller's
/// session (`ending`) unbinds it once the server agrees ([`Engine::end_session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCaller {
    route: String,
    owner: String,
    principal: String,
    ending: Option<String>,
}

impl SessionCaller {
    /// The request ends the caller's session (a DELETE of it): its answer binds nothing.
    pub fn ends_session(&self) -> bool {
        self.ending.is_some()
    }
}

/// What binding a session the server created came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Bound now, or bound already (servers repeat the id on every answer of the session).
    Bound,
    /// Not bound: a limit is reached (`limits.…`, named). In enforce mode the answer must become
    /// 503 with `retry-after` and without its session id, so that the client tries again later.
    Refused { limit: &'static str, enforce: bool },
    /// The store refused the write: the session stays unbound (its next use gets 404).
    Failed(String),
}

impl Engine {
    /// Checks the `Mcp-Session-Id` an allowed MCP request (`method`) presents (`session`;
    /// `None` when it has none), refusing it in `decision` when it is not the caller's. Returns
    /// the caller, whose session the answer may create or end.
    pub fn check_session(
        &self,
        store: &dyn Store,
        decision: &mut Decision,
        method: &str,
        session: Option<&[u8]>,
        request_id: &str,
        now_s: u64,
    ) -> Option<SessionCaller> {
        let (Some(route), Some(owner), Some(principal)) = (
            &decision.route,
            &decision.session_owner,
            &decision.principal,
        ) else {
            return None;
        };
        if decision.reply.is_some() || !self.is_mcp_route(route) {
            return None;
        }
        let mut caller = SessionCaller {
            route: route.clone(),
            owner: owner.clone(),
            principal: principal.clone(),
            ending: None,
        };
        // Lossy: a session id that is not UTF-8 matches no binding (404), it is never "absent".
        let Some(session) = session.map(String::from_utf8_lossy) else {
            return Some(caller);
        };
        let key = session_key(route, &session);
        let (status, error, reason) = match store.get(&key, now_s) {
            Some(entry) => match session_binding(&entry.payload) {
                Some((absolute, bound)) if bound == owner.as_bytes() => {
                    self.keep_session(store, &key, &entry, absolute, now_s);
                    if method == "DELETE" {
                        caller.ending = Some(key);
                    }
                    return Some(caller);
                }
                _ => (
                    403,
                    "forbidden",
                    "the MCP session belongs to another identity",
                ),
            },
            None => (404, "not_found", "unknown MCP session"),
        };
        decision.verdict = Verdict::Deny;
        decision.reason = reason.to_string();
        if self.mode() == Mode::Shadow {
            return Some(caller);
        }
        decision.set_headers.clear();
        decision.reply = Some(LocalReply::json_error(
            status,
            error,
            Some(reason),
            &[],
            request_id,
        ));
        None
    }

    /// Binds the session `session` the server just created to `caller`, until it idles out or
    /// reaches its absolute lifetime (`limits.session_idle_s`, `limits.session_ttl_s`). An
    /// existing live binding is left alone (first creator wins). Past `limits.max_sessions` live
    /// bindings of this worker, or `limits.max_sessions_per_principal` of this caller, it is not
    /// bound: memory stays bounded under a flood of `initialize`, and one caller cannot take
    /// every session.
    pub fn bind_session(
        &self,
        store: &dyn Store,
        caller: &SessionCaller,
        session: &str,
        now_s: u64,
    ) -> Binding {
        let (idle, ttl) = self.session_expiry();
        let key = session_key(&caller.route, session);
        if store.get(&key, now_s).is_some() {
            return Binding::Bound;
        }
        let (all, theirs) = store.live(SESSION_PREFIX, now_s, &caller.principal);
        let limit = if all >= self.max_sessions() {
            Some("limits.max_sessions live sessions on this worker")
        } else if theirs >= self.max_sessions_per_principal() {
            Some("limits.max_sessions_per_principal live sessions of this caller on this worker")
        } else {
            None
        };
        if let Some(limit) = limit {
            return Binding::Refused {
                limit,
                enforce: self.mode() == Mode::Enforce,
            };
        }
        let absolute = now_s.saturating_add(ttl);
        let payload = format!("{absolute} {}", caller.owner);
        let expires_at = now_s.saturating_add(idle).min(absolute);
        match store.create(
            &key,
            payload.as_bytes(),
            expires_at,
            now_s,
            &caller.principal,
        ) {
            Ok(_) => Binding::Bound,
            Err(e) => Binding::Failed(e.to_string()),
        }
    }

    /// The server answered the DELETE of the caller's session with `status`: a 2xx ends the
    /// binding (the session id is unknown from now on), so that a client opening many short
    /// sessions does not run into the limits.
    pub fn end_session(&self, store: &dyn Store, caller: &SessionCaller, status: u32) {
        if let (Some(key), 200..=299) = (&caller.ending, status) {
            store.clear(key);
        }
    }

    /// A session in use stays bound for another idle period (never past its absolute lifetime).
    /// Written only once a quarter of the idle period has passed, not on every request.
    fn keep_session(&self, store: &dyn Store, key: &str, entry: &Entry, absolute: u64, now: u64) {
        let (idle, _) = self.session_expiry();
        let next = now.saturating_add(idle).min(absolute);
        let due = entry
            .expires_at
            .saturating_add(idle / 4)
            .max(entry.expires_at.saturating_add(1));
        if next >= due {
            store.extend(key, entry, next, now);
        }
    }

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

#[cfg(test)]
mod tests {
    use super::session_key;

    #[test]
    fn session_keys_of_two_routes_never_meet() {
        assert_ne!(session_key("mcp", "v2.x"), session_key("mcp.v2", "x"));
    }
}

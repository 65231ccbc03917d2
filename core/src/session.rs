//! MCP session bindings: an `Mcp-Session-Id` belongs to the identity whose request created it
//! (`Decision::session_owner`); any other identity presenting it gets 403, an id never seen
//! created — or whose binding expired — 404, which tells an MCP client to start a new session.
//!
//! Two ways to keep them, chosen by the configuration:
//! - **sealed handles** (`sessions.seal_keys`, `sealed.rs`): the client sees the server's id
//!   sealed for its owner; the filter opens it on every request and forwards the server's id.
//!   Nothing is stored, so every replica holding the keys knows every session, and a restart
//!   forgets none. The absolute lifetime (`limits.session_ttl_s`) is in the handle; idle expiry
//!   and ending a session are the server's (it forgets the id; its handle then leads nowhere).
//! - **bindings in the [`Store`]** (no `sessions`): one process's shared data. A DELETE of the
//!   session that the server answers with 2xx ends the binding; bindings idle out
//!   (`limits.session_idle_s`); live bindings are bounded per worker and per principal.
//!
//! Why sealing rather than bindings in etcd for a fleet: a binding in etcd would hold every
//! `initialize` answer until etcd confirms the write, and add an etcd read to the first request of
//! a session on each other replica; a sealed handle costs two HMACs per request and no call, and
//! cannot be lost with the store. What it gives up — ending a binding before its lifetime — the
//! MCP server does for its own ids.
//!
//! Shadow mode never refuses: what enforce would refuse is counted and logged, then forwarded.

use crate::config::Mode;
use crate::engine::{Decision, Engine};
use crate::reply::LocalReply;
use crate::sealed::{self, Closed};
use crate::store::{Entry, Store};
use crate::verdict::Verdict;

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
    /// Sealed handles: the handle the request presented and the server's id it opened to.
    presented: Option<(String, String)>,
    /// Sealed handles: the request presented a session that did not open (forwarded only in
    /// shadow mode). Its answer's id is never sealed for this caller.
    refused: bool,
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
    /// Sealed handles: the answer must carry this handle in place of the server's id.
    Sealed(String),
    /// Sealed handles: the answer's id is not sealed for this caller and must be removed (why).
    Withheld(&'static str),
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
            presented: None,
            refused: false,
        };
        // Lossy: a session id that is not UTF-8 matches no binding (404), it is never "absent".
        let Some(session) = session.map(String::from_utf8_lossy) else {
            return Some(caller);
        };
        if let Some(sealer) = &self.sealer {
            caller.refused = true;
            let (_, ttl) = self.session_expiry();
            let (status, error, reason) = match sealer.open(route, owner, &session, now_s, ttl) {
                Ok(id) => {
                    // The server sees its own id (replacing every copy the client sent).
                    decision
                        .set_headers
                        .push(("mcp-session-id".into(), id.clone()));
                    caller.presented = Some((session.into_owned(), id));
                    caller.refused = false;
                    return Some(caller);
                }
                Err(Closed::NotYours) => (
                    403,
                    "forbidden",
                    "the MCP session belongs to another identity",
                ),
                Err(Closed::Expired) => (404, "not_found", "the MCP session expired"),
                Err(Closed::Unknown) => (404, "not_found", "unknown MCP session"),
            };
            return self.session_refused(decision, caller, status, error, reason, request_id);
        }
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
        self.session_refused(decision, caller, status, error, reason, request_id)
    }

    /// A presented session that is not the caller's: refused in enforce mode (`None`: no session
    /// to bind or end); in shadow mode only the decision says so.
    fn session_refused(
        &self,
        decision: &mut Decision,
        caller: SessionCaller,
        status: u32,
        error: &str,
        reason: &str,
        request_id: &str,
    ) -> Option<SessionCaller> {
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
        if let Some(sealer) = &self.sealer {
            return match &caller.presented {
                // The server repeats the id of the session the request presented.
                Some((handle, id)) if id == session => Binding::Sealed(handle.clone()),
                // An answer in a session naming another one: not this caller's to hold.
                Some(_) => Binding::Withheld("the answer names another session than the request"),
                // A session the request could not open (shadow mode forwarded it): its id is
                // someone else's, never sealed for this caller.
                None if caller.refused => {
                    Binding::Withheld("the request presented a session that is not the caller's")
                }
                None if session.len() > sealed::MAX_SERVER_ID_BYTES => {
                    Binding::Withheld("the server's session id is too long to seal")
                }
                None => Binding::Sealed(sealer.seal(
                    &caller.route,
                    &caller.owner,
                    session,
                    now_s.saturating_add(ttl),
                )),
            };
        }
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
}

#[cfg(test)]
mod tests {
    use super::session_key;

    #[test]
    fn session_keys_of_two_routes_never_meet() {
        assert_ne!(session_key("mcp", "v2.x"), session_key("mcp.v2", "x"));
    }
}

//! The second stage: the credential — the bearer token taken from the request, verified with its
//! issuer's keys (or found verified in the cache), its age checked for the route, whether it is
//! revoked (security events, status list), and whether it is single-use.
//!
//! Two checks may need a call first: keys fetched again for a `kid` they lack, a status list
//! not fetched yet. The request then waits for the call (`Decision::call`) and is decided again.

use std::sync::Arc;

use super::{unauthenticated, wait_for, Decision, Engine, HttpRequest, Route};
use crate::cache;
use crate::error::TokenError;
use crate::outcome::Call;
use crate::reply::LocalReply;
use crate::revocation::{self, status_list};
use crate::store::Store;
use crate::token::{self, VerifiedToken};
use crate::verdict::Verdict;

impl Engine {
    /// The credential of a request on a protected `route`; `Err`: the 401 it gets instead.
    #[allow(clippy::result_large_err)] // as `Engine::stages`
    pub(super) fn credential(
        &self,
        route: &Route,
        req: &HttpRequest<'_>,
        store: &dyn Store,
        now_s: u64,
    ) -> Result<Arc<VerifiedToken>, Decision> {
        let Some(token) = req.authorization.and_then(bearer) else {
            let reason = if req.authorization.is_some() {
                "authorization is not a bearer token"
            } else {
                "no token"
            };
            return Err(Decision {
                reason: reason.into(),
                reply: Some(LocalReply::missing_token(req.request_id)),
                ..Decision::new(Verdict::Unauthenticated, Some(route.name.clone()), None)
            });
        };
        let refused = |e: TokenError| unauthenticated(route, &e, req.request_id);
        let verified = match self.verify_cached(token, now_s) {
            Ok(v) => v,
            Err(TokenError::UnknownKid(kid)) => {
                // The issuer may have rotated its keys: fetch them again (rate-limited) and
                // decide once they are in.
                return Err(match self.refetch_keys(token, now_s) {
                    Some(call) => self.wait(route, call, req.request_id, now_s),
                    None => refused(TokenError::UnknownKid(kid)),
                });
            }
            Err(e) => return Err(refused(e)),
        };
        crate::agent::check_token_age(route.max_token_age_s, verified.issued_at, now_s)
            .map_err(refused)?;
        revocation::check(store, &verified, now_s).map_err(refused)?;
        if let Some(call) = self.token_status(&verified, now_s).map_err(refused)? {
            return Err(self.wait(route, call, req.request_id, now_s));
        }
        Ok(verified)
    }

    /// The token's status list says VALID (`Ok(None)`), or must be fetched first.
    fn token_status(&self, t: &VerifiedToken, now_s: u64) -> Result<Option<Call>, TokenError> {
        let Some(lists) = &self.status_lists else {
            return Ok(None);
        };
        let Some((idx, uri)) = status_list::reference(t)? else {
            return Ok(None);
        };
        match lists.check(idx, uri, now_s) {
            Err(e) if e.is_unavailable() && lists.fail_open => Ok(None),
            other => other,
        }
    }

    /// The keys of the token's issuer fetched again, if its issuer's keys are remote and were
    /// not fetched for this reason lately.
    fn refetch_keys(&self, token: &str, now_s: u64) -> Option<Call> {
        let parts = crate::jws::decode(token, self.max_token_bytes).ok()?;
        let (index, issuer) = token::issuer_of(&self.issuers, &parts.payload).ok()?;
        issuer.keys.refetch(index, now_s)
    }

    /// The request waits for `call`, if fewer than `limits.max_pending_calls` calls are in
    /// flight for requests; else it gets 503 and may try again.
    fn wait(&self, route: &Route, call: Call, request_id: &str, now_s: u64) -> Decision {
        if !self.try_hold_call(&call, now_s) {
            let why = "too many calls in flight (limits.max_pending_calls)";
            return Decision {
                reason: why.into(),
                reply: Some(LocalReply::retry_later(why, request_id)),
                ..Decision::new(Verdict::Error, Some(route.name.clone()), None)
            };
        }
        wait_for(route, call)
    }

    /// Counts `call` among the pending calls, until it is answered or its timeout.
    pub(crate) fn hold_call(&self, call: &Call, now_s: u64) {
        let mut pending = self.pending_calls.lock().unwrap_or_else(|p| p.into_inner());
        pending.push(now_s.saturating_add(call.callout.timeout_ms.div_ceil(1000)));
    }

    /// Counts `call` among the pending calls if there is room (`limits.max_pending_calls`).
    pub(crate) fn try_hold_call(&self, call: &Call, now_s: u64) -> bool {
        let mut pending = self.pending_calls.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|until| *until > now_s);
        if pending.len() >= self.max_pending_calls {
            return false;
        }
        pending.push(now_s.saturating_add(call.callout.timeout_ms.div_ceil(1000)));
        true
    }

    /// A call a request waited for was answered or abandoned: its place is free.
    pub(crate) fn call_ended(&self) {
        let mut pending = self.pending_calls.lock().unwrap_or_else(|p| p.into_inner());
        // The places are alike (each a deadline): the one nearest its deadline goes.
        if let Some(i) = pending
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .map(|(i, _)| i)
        {
            pending.swap_remove(i);
        }
    }

    /// Verifies a token, or finds its earlier verification in the cache.
    pub(super) fn verify_cached(
        &self,
        token: &str,
        now_s: u64,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        if token.len() > self.max_token_bytes {
            return Err(TokenError::TooLarge);
        }
        let key = cache::digest(token);
        // A poisoned lock only means a panic elsewhere; the cache holds no invariant a panic can
        // break that matters for safety (entries are immutable verifications), so keep using it.
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = c.get(&key, now_s) {
            // Verified with the keys the issuer has now: good. Keys changed since (rotated or
            // removed): verified again. No keys now (stale): refused like a new token.
            let issuer = self.issuer_of(&hit)?;
            if issuer.keys.current(now_s)?.generation == hit.key_generation {
                return Ok(hit);
            }
            c.remove(&key);
        }
        drop(c);
        let verified = Arc::new(token::verify(
            &self.issuers,
            token,
            now_s,
            self.max_token_bytes,
        )?);
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.insert(key, verified.clone(), token.len(), now_s);
        Ok(verified)
    }

    /// The obligation to record a single-use token's first use (`approval::single_use`); a
    /// replay gets 401 `invalid_token` "token already used".
    pub(super) fn single_use(
        &self,
        t: &VerifiedToken,
        request_id: &str,
    ) -> Result<Option<crate::approval::Once>, TokenError> {
        let issuer = self.issuer_of(t)?;
        let claim = issuer.single_use_claim.as_deref();
        let Some((key, until)) = crate::approval::single_use(claim, issuer.clock_skew_s(), t)?
        else {
            return Ok(None);
        };
        let used = TokenError::AlreadyUsed.to_string();
        let url = self.resource_metadata.as_ref().map(|(u, _, _)| u.as_str());
        Ok(Some(crate::approval::Once {
            key,
            until,
            verdict: Verdict::Unauthenticated,
            reply: LocalReply::invalid_token(&used, request_id).with_resource_metadata(url),
            reason: used,
        }))
    }
}

/// `Authorization: Bearer <token>` (scheme case-insensitive, RFC 7235 §2.1).
fn bearer(h: &str) -> Option<&str> {
    let (scheme, rest) = h.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

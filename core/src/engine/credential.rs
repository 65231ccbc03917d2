//! The second stage: the credential — the token taken from the request (`Bearer` or `DPoP`
//! scheme), verified with its issuer's keys (or found verified in the cache), its age checked
//! for the route, whether it is revoked (security events, status list), whether the key or
//! certificate it is bound to was proven (`pop/`), and whether it is single-use.
//!
//! Two checks may need a call first: keys fetched again for a `kid` they lack, a status list
//! not fetched yet. The request then waits for the call (`Decision::call`) and is decided again.

use std::sync::Arc;

use super::{unauthenticated, wait_for, Decision, Engine, HttpRequest, Route};
use crate::cache;
use crate::error::TokenError;
use crate::outcome::Call;
use crate::pop::dpop::ProofError;
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
    ) -> Result<(Arc<VerifiedToken>, Option<crate::approval::Once>), Decision> {
        let Some((scheme, token)) = req.authorization.and_then(credential_of) else {
            let reason = if req.authorization.is_some() {
                "authorization is not a Bearer or DPoP token"
            } else {
                "no token"
            };
            let mut reply = LocalReply::missing_token(req.request_id);
            if let Some(d) = &self.dpop {
                reply = reply.with_dpop_offer(d.algs());
            }
            return Err(Decision {
                reason: reason.into(),
                reply: Some(reply),
                ..Decision::new(Verdict::Unauthenticated, Some(route.name.clone()), None)
            });
        };
        // A client that used the DPoP scheme gets DPoP challenges.
        let as_scheme = |mut d: Decision| {
            if let (Scheme::Dpop, Some(dpop)) = (scheme, &self.dpop) {
                d.reply = d.reply.map(|r| r.as_dpop(dpop.algs()));
            }
            d
        };
        let refused = |e: TokenError| as_scheme(unauthenticated(route, &e, req.request_id));
        let by_jwt_authn = req.facts.and_then(|f| f.jwt_authn.as_deref());
        let verified = match self.verify_cached(token, now_s, by_jwt_authn) {
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
        let proof = self
            .possession(route, &verified, (scheme, token), req, store, now_s)
            .map_err(as_scheme)?;
        Ok((verified, proof))
    }

    /// The token's binding (`cnf`), proven by this request (the `Authorization` scheme and
    /// token as sent): a DPoP proof for `cnf.jkt` (spent on this proxy at once; the `Ok` is its
    /// record for the fleet, with `store.etcd`), the connection's client certificate for
    /// `cnf.x5t#S256`.
    /// An unbound token passes where neither its issuer nor the route requires proof.
    #[allow(clippy::result_large_err)] // as `Engine::stages`
    fn possession(
        &self,
        route: &Route,
        t: &VerifiedToken,
        (scheme, token): (Scheme, &str),
        req: &HttpRequest<'_>,
        store: &dyn Store,
        now_s: u64,
    ) -> Result<Option<crate::approval::Once>, Decision> {
        let refused = |why: &str| Decision {
            reason: why.to_string(),
            reply: Some(LocalReply::invalid_token(why, req.request_id)),
            ..Decision::new(Verdict::Unauthenticated, Some(route.name.clone()), None)
        };
        let b = &t.binding;
        let issuer_requires = self.issuer_of(t).is_ok_and(|i| i.proof_required);
        if !b.is_bound() && (route.proof_required || issuer_requires) {
            return Err(refused(
                "proof of possession required: the token is not bound to a key or certificate (cnf)",
            ));
        }
        if let Some(x5t) = &b.x5t {
            let presented = req
                .facts
                .and_then(|f| f.connection.tls.as_ref())
                .map(|tls| tls.certificate_sha256.as_str());
            match presented {
                None => {
                    return Err(refused(
                        "the token is bound to a client certificate (cnf x5t#S256) and the connection presented none",
                    ))
                }
                Some(h) if h != x5t => {
                    return Err(refused(
                        "the connection's client certificate is not the one the token is bound to (cnf x5t#S256)",
                    ))
                }
                Some(_) => {}
            }
        }
        let Some(jkt) = &b.jkt else {
            if scheme == Scheme::Dpop {
                return Err(refused(
                    "the token is not DPoP-bound (no cnf.jkt): use the Bearer scheme",
                ));
            }
            return Ok(None);
        };
        let Some(dpop) = &self.dpop else {
            return Err(refused(
                "DPoP-bound tokens are not accepted here (no dpop configuration)",
            ));
        };
        let challenge = |error: &str, why: &str| Decision {
            reason: format!("DPoP proof: {why}"),
            reply: Some(LocalReply::dpop_challenge(
                error,
                why,
                dpop.algs(),
                req.request_id,
            )),
            ..Decision::new(Verdict::Unauthenticated, Some(route.name.clone()), None)
        };
        if scheme != Scheme::Dpop {
            // RFC 9449 §7.1: a bound token used as a bearer token; the challenge names the
            // scheme it needs.
            return Err(challenge(
                "invalid_token",
                "the token is DPoP-bound: send it with the DPoP scheme and a DPoP proof",
            ));
        }
        let Some(proof) = req.dpop else {
            return Err(challenge("invalid_dpop_proof", "no DPoP proof"));
        };
        let target = crate::pop::dpop::Target {
            method: req.method,
            scheme: req.scheme,
            authority: req.host,
            path: req.sent_path.unwrap_or(req.path),
        };
        match dpop.check(proof, target, token, jkt, now_s) {
            Ok(p) => {
                let used = "DPoP proof already used (jti)";
                // Spent on this proxy as soon as it verifies, whatever the decision: a proof
                // does not cover the body, so the proof of a refused request (an MCP call
                // refused by policy) must not carry another body later. Across the fleet
                // (`store.etcd`) the proof of a forwarded request is recorded as its
                // obligation (the `Once` below); without etcd this record is all there is.
                let seen = crate::approval::once_key("dpop-seen", jkt, &p.jti);
                match store.create(&seen, b"", p.until, now_s, "") {
                    Ok(true) => {}
                    Ok(false) => return Err(challenge("invalid_dpop_proof", used)),
                    Err(e) => {
                        let why = format!("cannot record the DPoP proof: {e}");
                        return Err(Decision {
                            reply: Some(LocalReply::retry_later(&why, req.request_id)),
                            reason: why,
                            ..Decision::new(Verdict::Error, Some(route.name.clone()), None)
                        });
                    }
                }
                if self.etcd.is_none() {
                    return Ok(None);
                }
                Ok(Some(crate::approval::Once {
                    key: crate::approval::once_key("dpop", jkt, &p.jti),
                    until: p.until,
                    verdict: Verdict::Unauthenticated,
                    reason: used.into(),
                    reply: LocalReply::dpop_challenge(
                        "invalid_dpop_proof",
                        used,
                        dpop.algs(),
                        req.request_id,
                    ),
                }))
            }
            Err(ProofError::Invalid(why)) => Err(challenge("invalid_dpop_proof", &why)),
            Err(ProofError::UseNonce(why)) => {
                let mut d = challenge("use_dpop_nonce", why);
                d.reply = d.reply.map(|r| r.with_dpop_nonce(dpop.fresh_nonce(now_s)));
                Err(d)
            }
        }
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

    /// Verifies a token, or finds its earlier verification in the cache. `verified`: the
    /// request's dynamic metadata, where Envoy's `jwt_authn` put the payloads it verified
    /// (`jwt_authn.rs`): a token of an issuer relying on it must be there, cached or not.
    pub(super) fn verify_cached(
        &self,
        token: &str,
        now_s: u64,
        verified: Option<&[u8]>,
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
            issuer.verified_by_jwt_authn(token, &hit.payload, verified)?;
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
            verified,
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

/// How the client presented its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    Bearer,
    /// RFC 9449 §7.1: with a `DPoP` proof header.
    Dpop,
}

/// `Authorization: Bearer <token>` or `DPoP <token>` (scheme case-insensitive, RFC 7235 §2.1).
fn credential_of(h: &str) -> Option<(Scheme, &str)> {
    let (scheme, rest) = h.trim().split_once(' ')?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return None;
    };
    let token = rest.trim();
    (!token.is_empty()).then_some((scheme, token))
}

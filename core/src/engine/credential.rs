//! The second stage: the credential — the bearer token taken from the request, verified (or
//! found verified in the cache), its age checked for the route, and whether it is single-use.

use std::sync::Arc;

use super::{unauthenticated, Decision, Engine, HttpRequest, Route};
use crate::cache;
use crate::error::TokenError;
use crate::reply::LocalReply;
use crate::token::{self, VerifiedToken};
use crate::verdict::Verdict;

impl Engine {
    /// The credential of a request on a protected `route`; `Err`: the 401 it gets instead.
    #[allow(clippy::result_large_err)] // as `Engine::stages`
    pub(super) fn credential(
        &self,
        route: &Route,
        req: &HttpRequest<'_>,
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
        let verified = self.verify_cached(token, now_s).map_err(refused)?;
        crate::agent::check_token_age(route.max_token_age_s, verified.issued_at, now_s)
            .map_err(refused)?;
        Ok(verified)
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
            return Ok(hit);
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

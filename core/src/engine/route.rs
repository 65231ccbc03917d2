//! The first stage: which route a request is on, with its path in the canonical form
//! (`path.rs`) that every later stage and every policy sees.

use super::{deny_reply, Decision, Engine, HttpRequest};
use crate::config::{Auth, RouteKind};
use crate::verdict::Verdict;

#[derive(Debug)]
pub(super) struct Route {
    pub(super) name: String,
    pub(super) prefix: String,
    pub(super) host: Option<String>,
    /// `false`: policies see the path lower-cased (`RouteConfig::case_sensitive`).
    pub(super) case_sensitive: bool,
    pub(super) auth: Auth,
    pub(super) kind: RouteKind,
    /// Sensitive routes: the oldest `iat` accepted, in seconds before now.
    pub(super) max_token_age_s: Option<u64>,
    /// Only bound tokens, proven (`proof_of_possession: required`).
    pub(super) proof_required: bool,
}

impl Route {
    pub(super) fn matches(&self, host: &str, path: &str) -> bool {
        if let Some(h) = &self.host {
            // Compare without a port or a trailing dot, case-insensitively, as hosts are.
            if !h.eq_ignore_ascii_case(crate::path::host_name(host)) {
                return false;
            }
        }
        crate::path::under(path, &self.prefix)
    }

    /// `path` as policies see it on this route, when that is not as sent: lower-cased on a
    /// route whose upstream ignores case (`case_sensitive: false`).
    pub(super) fn fold(&self, path: &str) -> Option<String> {
        (!self.case_sensitive).then(|| crate::path::fold_case(path))
    }
}

impl Engine {
    /// The first route that matches the request's host and `path` (its query cut off).
    pub(super) fn route_for(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(host, path))
    }

    pub(super) fn route_index(&self, route: &Route) -> usize {
        self.routes
            .iter()
            .position(|r| std::ptr::eq(r, route))
            .unwrap_or(0)
    }
}

/// Runs `decide` on `req` with its path in the canonical form (`path.rs`), the query kept as
/// sent; a path that has none is refused (400) before anything else.
pub(super) fn canonical_path(
    req: &HttpRequest<'_>,
    decide: impl FnOnce(&HttpRequest<'_>) -> Decision,
) -> Decision {
    match crate::path::canonical(req.path) {
        Err(why) => deny_reply(Verdict::Deny, None, why, req.request_id, 400),
        Ok(std::borrow::Cow::Borrowed(_)) => decide(req),
        Ok(std::borrow::Cow::Owned(path)) => {
            let rest = req.path.find(['?', '#']).map_or("", |i| &req.path[i..]);
            let full = format!("{path}{rest}");
            decide(&req.with_path(Some(&full)))
        }
    }
}

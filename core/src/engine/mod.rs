//! The compiled configuration and the request path, top-down: `Engine::check` (headers) →
//! route → credential → verify (cached) → identity → Cedar → act, and `Engine::check_mcp` for an
//! MCP body. By responsibility:
//! - `compile.rs`: configuration → `Engine` (every check that can be made before a request);
//! - `cedar.rs`: the Cedar request — principal, entities, context — built from a token and a
//!   request, and evaluated (the one place that names the entity types built from tokens);
//! - `mcp_body.rs`: an MCP POST body, message by message;
//! - `approve.rs`: human approval on the HTTP and MCP paths;
//! - `lists.rs`: the list requests whose answers must be filtered (`listing.rs` filters them).
//!
//! After the decision, `obligations.rs` (single-use, sessions) runs over the `Store`.
//!
//! Built once per configuration; every request only reads it. (Slightly over 600 lines: the
//! request path stays in one file so that it reads top-down.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use cedar_policy::RestrictedExpression;
use serde_json::Value;

use crate::authz::{uid, Evaluation, Policies};
use crate::cache::{self, TokenCache};
use crate::config::{Auth, Mode, RouteKind};
use crate::error::{RequestError, TokenError};
use crate::reply::LocalReply;
use crate::token::{self, Issuer, VerifiedToken};
pub use crate::verdict::Verdict;

mod approve;
mod cedar;
mod compile;
pub mod lists;
mod mcp_body;
pub(crate) use cedar::RequestParts;

use mcp_body::Refusal;

#[derive(Debug)]
struct Route {
    name: String,
    prefix: String,
    host: Option<String>,
    /// `false`: policies see the path lower-cased (`RouteConfig::case_sensitive`).
    case_sensitive: bool,
    auth: Auth,
    kind: RouteKind,
    /// Sensitive routes: the oldest `iat` accepted, in seconds before now.
    max_token_age_s: Option<u64>,
}

impl Route {
    fn matches(&self, host: &str, path: &str) -> bool {
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
    fn fold(&self, path: &str) -> Option<String> {
        (!self.case_sensitive).then(|| crate::path::fold_case(path))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderSource {
    Principal,
    PrincipalId,
    PrincipalType,
    Issuer,
    Subject,
    Scopes,
    Claim(String),
}

/// What the proxy tells the engine about one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// `:path` as the proxy has it, query included.
    pub path: &'a str,
    pub host: &'a str,
    pub authorization: Option<&'a str>,
    pub request_id: &'a str,
    pub content_type: Option<&'a str>,
    /// The approval header (`approval.header`), when approval is configured and sent.
    pub approval: Option<&'a str>,
    /// A header that must appear at most once and appeared more often (`authorization`,
    /// `mcp-session-id`, the approval header): the request is refused (400), because the filter
    /// and the upstream could each read a different copy.
    pub repeated: Option<&'a str>,
}

impl<'a> HttpRequest<'a> {
    /// This request with `path` instead of its own (`None`: as it is).
    fn with_path<'b>(&self, path: Option<&'b str>) -> HttpRequest<'b>
    where
        'a: 'b,
    {
        HttpRequest {
            path: path.unwrap_or(self.path),
            ..*self
        }
    }
}

/// Headers a request may carry at most once.
pub const SINGLE_HEADERS: [&str; 2] = ["authorization", "mcp-session-id"];

#[derive(Debug, Clone)]
pub struct Decision {
    pub verdict: Verdict,
    pub route: Option<String>,
    pub principal: Option<String>,
    pub policies: Vec<String>,
    /// Why (for the log line); empty on allow.
    pub reason: String,
    /// The reply to send instead of forwarding; `None` forwards (always `None` in shadow mode).
    pub reply: Option<LocalReply>,
    /// Headers to set on the forwarded request.
    pub set_headers: Vec<(String, String)>,
    /// Set on an MCP POST whose token verified: the body decides (`Engine::check_mcp`). The
    /// proxy buffers the body and forwards nothing until then.
    pub pending: Option<Pending>,
    /// Set on an allowed MCP POST with `tools/list`, `resources/list` or `prompts/list`
    /// requests: the proxy filters their answers (`Engine::filter_list_json`, `listing.rs`).
    pub mcp_lists: Option<lists::ListRequests>,
    /// Credentials to record as used before forwarding (single-use tokens, approvals): the
    /// proxy records each in its shared data, first writer wins, and sends the obligation's
    /// refusal instead when it was recorded already (`approval::Once`).
    pub once: Vec<crate::approval::Once>,
    /// An approval request to POST to the approval webhook (`approval.webhook`) with the reply.
    pub notify: Option<String>,
    /// On an MCP route: who an MCP session is bound to — a digest of the principal, on whose
    /// behalf, the actor chain and the task (as an approval binds them). A session is used only
    /// by the identity that created it.
    pub session_owner: Option<String>,
}

/// An authenticated MCP request waiting for its body.
#[derive(Debug, Clone)]
pub struct Pending {
    route: usize,
    token: Arc<VerifiedToken>,
    principal: String,
    /// The token is single-use: recorded if the body is forwarded.
    once: Option<crate::approval::Once>,
    /// The approval header, for a call that needs one.
    approval: Option<String>,
}

impl Decision {
    /// A decision with nothing to send and no headers to set yet.
    fn new(verdict: Verdict, route: Option<String>, principal: Option<String>) -> Decision {
        Decision {
            verdict,
            route,
            principal,
            policies: vec![],
            reason: String::new(),
            reply: None,
            set_headers: vec![],
            pending: None,
            mcp_lists: None,
            once: vec![],
            notify: None,
            session_owner: None,
        }
    }

    /// One line for the proxy's debug log. Every value that can come from a request or a token
    /// is escaped (`crate::reply::log_safe`), so that nothing a client sends starts a line.
    pub fn log_line(&self, method: &str, path: &str, request_id: &str) -> String {
        use crate::reply::log_safe as e;
        format!(
            "tessera decision={} route={} principal={} method={} path={} policies=[{}] request_id={}{}",
            self.verdict.name(),
            e(self.route.as_deref().unwrap_or("-")),
            e(self.principal.as_deref().unwrap_or("-")),
            e(method),
            e(path),
            e(&self.policies.join(",")),
            e(request_id),
            if self.reason.is_empty() { String::new() } else { format!(" reason=\"{}\"", crate::reply::log_quoted(&self.reason)) }
        )
    }
}

pub struct Engine {
    mode: Mode,
    issuers: Vec<Issuer>,
    policies: Policies,
    routes: Vec<Route>,
    forward: Vec<(String, HeaderSource)>,
    /// Every header name the filter owns: removed from client requests before any is set.
    owned_headers: Vec<String>,
    drop_authorization: bool,
    max_token_bytes: usize,
    max_body_bytes: usize,
    max_json_depth: usize,
    max_batch_messages: usize,
    max_sessions: usize,
    max_sessions_per_principal: usize,
    formats: crate::formats::ArgumentFormats,
    cache: Mutex<TokenCache>,
    /// RFC 9728: (metadata URL, well-known paths served, the JSON document).
    resource_metadata: Option<(String, Vec<String>, String)>,
    /// MCP session bindings expire: (idle, absolute) seconds.
    session_expiry: (u64, u64),
    /// Human approval: the approval issuer (none: `@approval` forbids are plain forbids), and the
    /// ids of the policies an approval can satisfy.
    approval: Option<crate::approval::Approval>,
    approvable: HashSet<String>,
}

impl Engine {
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Header names the filter owns; the proxy removes client-sent copies on every request.
    pub fn owned_headers(&self) -> &[String] {
        &self.owned_headers
    }

    pub fn drop_authorization(&self) -> bool {
        self.drop_authorization
    }
    /// Whether `route` (a route name from a decision) is an MCP endpoint.
    pub fn is_mcp_route(&self, route: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.kind == RouteKind::Mcp && r.name == route)
    }

    /// Largest MCP body buffered.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Where approval requests are announced (`approval.webhook`), if configured.
    pub fn approval_webhook(&self) -> Option<&crate::approval::Webhook> {
        self.approval
            .as_ref()
            .and_then(crate::approval::Approval::webhook)
    }

    /// The request header carrying a human approval, when approval is configured.
    pub fn approval_header(&self) -> Option<&str> {
        self.approval
            .as_ref()
            .map(crate::approval::Approval::header)
    }

    /// How long an MCP session binding lives: (idle, absolute) seconds.
    /// Most live MCP session bindings per worker thread (`limits.max_sessions`).
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// Most live MCP session bindings of one identity per worker thread
    /// (`limits.max_sessions_per_principal`): one caller cannot take every session.
    pub fn max_sessions_per_principal(&self) -> usize {
        self.max_sessions_per_principal
    }

    pub fn session_expiry(&self) -> (u64, u64) {
        self.session_expiry
    }

    pub fn policy_count(&self) -> usize {
        self.policies.policy_count()
    }

    /// Decides one request. `now_s` is the proxy's clock in Unix seconds.
    pub fn check(&self, req: &HttpRequest<'_>, now_s: u64) -> Decision {
        self.in_mode(canonical_path(req, |req| self.decide(req, now_s)))
    }

    /// Shadow mode: the decision is made, counted and logged, but nothing is sent.
    fn in_mode(&self, d: Decision) -> Decision {
        match self.mode {
            Mode::Shadow => Decision { reply: None, ..d },
            Mode::Enforce => d,
        }
    }
    fn decide(&self, req: &HttpRequest<'_>, now_s: u64) -> Decision {
        let mut d = self.decide_inner(req, now_s);
        if d.verdict == Verdict::Unauthenticated {
            let url = self.resource_metadata.as_ref().map(|(u, _, _)| u.as_str());
            d.reply = d.reply.map(|r| r.with_resource_metadata(url));
        }
        // Denied only by forbids that name a scope the token lacks: a step-up challenge.
        if d.verdict == Verdict::Deny && d.reply.is_some() && !d.policies.is_empty() {
            if let Some(reply) = self.step_up_for(&d.policies, req.request_id) {
                d.reason = "insufficient scope".into();
                d.reply = Some(reply);
            }
        }
        d
    }

    fn decide_inner(&self, req: &HttpRequest<'_>, now_s: u64) -> Decision {
        let path = req.path.split(['?', '#']).next().unwrap_or("");
        if let Some((_, paths, doc)) = &self.resource_metadata {
            if (req.method == "GET" || req.method == "HEAD") && paths.iter().any(|p| p == path) {
                return Decision {
                    reply: Some(LocalReply::metadata(doc)),
                    ..Decision::new(
                        Verdict::Public,
                        Some("oauth-protected-resource".into()),
                        None,
                    )
                };
            }
        }
        if let Some(name) = req.repeated {
            return deny_reply(
                Verdict::Deny,
                None,
                &format!("header `{name}` appears more than once"),
                req.request_id,
                400,
            );
        }
        let Some(route) = self.routes.iter().find(|r| r.matches(req.host, path)) else {
            return deny_reply(Verdict::Deny, None, "no route", req.request_id, 403);
        };
        if route.auth == Auth::None {
            return Decision::new(Verdict::Public, Some(route.name.clone()), None);
        }
        let folded = route.fold(req.path);
        let req = &req.with_path(folded.as_deref());
        let Some(token) = req.authorization.and_then(bearer) else {
            let reason = if req.authorization.is_some() {
                "authorization is not a bearer token"
            } else {
                "no token"
            };
            return Decision {
                reason: reason.into(),
                reply: Some(LocalReply::missing_token(req.request_id)),
                ..Decision::new(Verdict::Unauthenticated, Some(route.name.clone()), None)
            };
        };
        let verified = match self.verify_cached(token, now_s) {
            Ok(v) => v,
            Err(e) => return unauthenticated(route, &e, req.request_id),
        };
        if let Err(e) =
            crate::agent::check_token_age(route.max_token_age_s, verified.issued_at, now_s)
        {
            return unauthenticated(route, &e, req.request_id);
        }
        let principal = match self.principal_uid(&verified) {
            Ok(p) => p,
            Err(e) => return unauthenticated(route, &e, req.request_id),
        };
        let once = match self.single_use(&verified, req.request_id) {
            Ok(o) => o,
            Err(e) => return unauthenticated(route, &e, req.request_id),
        };
        if route.kind == RouteKind::Mcp && req.method == "POST" {
            let mut d = self.await_mcp_body(route, verified, principal, req);
            if let Some(p) = d.pending.as_mut() {
                p.once = once;
            }
            return d;
        }
        // A GET (the server's stream) or DELETE (the end) of an MCP session: whose it is.
        let session_owner =
            (route.kind == RouteKind::Mcp).then(|| self.session_owner(&verified, &principal));
        let resource = match uid("Route", &route.name) {
            Ok(r) => r,
            Err(reason) => return cannot_judge(route, reason, req.request_id),
        };
        let evaluation =
            match self.evaluate(&verified, req.method, resource, req, now_s, None, None) {
                Ok(e) => e,
                Err(RequestError::Claim(claim)) => {
                    return unauthenticated(
                        route,
                        &TokenError::BadClaim(claim, "has no Cedar value"),
                        req.request_id,
                    )
                }
                Err(e @ RequestError::Build(_)) => {
                    return cannot_judge(route, e.to_string(), req.request_id)
                }
            };
        let mut d = Decision::new(
            Verdict::Allow,
            Some(route.name.clone()),
            Some(principal.clone()),
        );
        d.session_owner = session_owner;
        match evaluation {
            Evaluation::Allow { policies } => {
                d.policies = policies;
                d.set_headers = self.identity_headers(&verified, &principal);
                d.once.extend(once);
                if route.kind == RouteKind::Mcp && req.method == "GET" && self.mode == Mode::Enforce
                {
                    // The server's SSE stream can carry list answers again (a resumed stream).
                    let pending = Pending {
                        route: self.route_index(route),
                        token: verified.clone(),
                        principal: principal.clone(),
                        once: None,
                        approval: None,
                    };
                    d.mcp_lists = Some(lists::ListRequests::stream(pending, req));
                }
            }
            Evaluation::Deny { policies } => {
                d.verdict = Verdict::Deny;
                d.reason = if policies.is_empty() {
                    "no permit".into()
                } else {
                    "forbidden by policy".into()
                };
                d.reply = Some(LocalReply::forbidden(&policies, req.request_id));
                d.policies = policies;
                self.approve_http(&mut d, &verified, route, req, now_s, once);
            }
            Evaluation::Error { reason } => {
                d.verdict = Verdict::Error;
                d.reply = Some(LocalReply::cannot_judge(req.request_id));
                d.reason = reason;
            }
        }
        d
    }
    fn route_index(&self, route: &Route) -> usize {
        self.routes
            .iter()
            .position(|r| std::ptr::eq(r, route))
            .unwrap_or(0)
    }

    /// An MCP POST: JSON content is required; the body decides.
    fn await_mcp_body(
        &self,
        route: &Route,
        token: Arc<VerifiedToken>,
        principal: String,
        req: &HttpRequest<'_>,
    ) -> Decision {
        let json = req.content_type.is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            let mut d = deny_reply(
                Verdict::Deny,
                Some(route.name.clone()),
                "an MCP POST must be application/json",
                req.request_id,
                415,
            );
            d.principal = Some(principal);
            return d;
        }
        let mut d = Decision::new(
            Verdict::Allow,
            Some(route.name.clone()),
            Some(principal.clone()),
        );
        d.pending = Some(Pending {
            route: self.route_index(route),
            token,
            principal,
            once: None,
            approval: self.approval.as_ref().and(req.approval).map(str::to_string),
        });
        d
    }

    /// Decides an MCP POST body: every JSON-RPC message on its own. All allowed: forward. Any
    /// refused: nothing is forwarded, and each request in the body gets a JSON-RPC error (a
    /// batch is refused whole, so that the server never sees part of it).
    pub fn check_mcp(
        &self,
        pending: &Pending,
        req: &HttpRequest<'_>,
        body: &[u8],
        now_s: u64,
    ) -> Decision {
        self.in_mode(canonical_path(req, |req| {
            self.decide_mcp(pending, req, body, now_s)
        }))
    }

    /// Verifies a token, or finds its earlier verification in the cache.
    fn verify_cached(&self, token: &str, now_s: u64) -> Result<Arc<VerifiedToken>, TokenError> {
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
    fn single_use(
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

    /// Number of verified tokens in the cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.len())
    }
}

/// A Cedar `Long` from a clock or token time (saturating: Cedar longs are signed 64-bit).
fn long(n: u64) -> RestrictedExpression {
    RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX))
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

/// Groups may come as an array of strings or one space-separated string.
fn string_list(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => s.split_whitespace().collect(),
        _ => Vec::new(),
    }
}

/// Runs `decide` on `req` with its path in the canonical form (`path.rs`), the query kept as
/// sent; a path that has none is refused (400) before anything else.
fn canonical_path(
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

fn cannot_judge(route: &Route, reason: String, request_id: &str) -> Decision {
    Decision {
        reason,
        reply: Some(LocalReply::cannot_judge(request_id)),
        ..Decision::new(Verdict::Error, Some(route.name.clone()), None)
    }
}

fn unauthenticated(route: &Route, e: &TokenError, request_id: &str) -> Decision {
    Decision {
        reason: e.to_string(),
        reply: Some(LocalReply::invalid_token(&e.to_string(), request_id)),
        ..Decision::new(Verdict::Unauthenticated, Some(route.name.clone()), None)
    }
}

fn deny_reply(
    verdict: Verdict,
    route: Option<String>,
    reason: &str,
    request_id: &str,
    status: u32,
) -> Decision {
    Decision {
        reason: reason.to_string(),
        reply: Some(LocalReply::json_error(
            status,
            "forbidden",
            Some(reason),
            &[],
            request_id,
        )),
        ..Decision::new(verdict, route, None)
    }
}

impl Pending {
    pub(crate) fn token(&self) -> &VerifiedToken {
        &self.token
    }
}

//! The compiled configuration and the decision stages, top-down in `Engine::stages`:
//! 1. `route.rs` — the route, with the path in its canonical form;
//! 2. `credential.rs` — the bearer token, verified (cached) with the issuer's keys (`keys.rs`)
//!    or found verified by Envoy's `jwt_authn` for this request (`jwt_authn.rs`),
//!    its age, whether it is revoked (`revocation/`), whether it is single-use;
//! 3. `identity.rs` — the principal, on whose behalf, the identity headers;
//! 4. `cedar.rs` — the Cedar request (the one place that names entity types and actions and
//!    builds context records; list filtering builds its requests with it too) and evaluation;
//! 5. `decision.rs` — what the decision says; `approve.rs` lifts an `@approval` forbid.
//!
//! A route whose peers authenticate by their X.509-SVID (`auth: workload`) takes stages 2–5 in
//! `workload.rs` instead: no token, the workload is the principal.
//!
//! An MCP POST waits for its body: `Engine::check_mcp` (`mcp_body.rs`) decides each message;
//! `lists.rs` keeps the list requests whose answers must be filtered (`listing/`).
//! `calls.rs` takes the answers of the calls Tessera makes (keys, status lists, event polls) and
//! the security events pushed to it. `compile.rs` turns a configuration into an `Engine` (every check that can be made before a
//! request). The obligations (`obligations.rs`) and the outcome (`exchange.rs`) come after.
//!
//! Built once per configuration; every request only reads it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::authz::{uid, Evaluation, Policies};
use crate::cache::TokenCache;
use crate::config::{Auth, Mode, RouteKind};
use crate::error::{RequestError, TokenError};
use crate::names;
use crate::reply::LocalReply;
use crate::store::Store;
use crate::token::{Issuer, VerifiedToken};
pub use crate::verdict::Verdict;

mod approve;
mod calls;
mod cedar;
mod compile;
mod credential;
mod decision;
mod identity;
pub mod lists;
mod mcp_body;
mod route;
mod workload;
pub(crate) use cedar::{RequestLine, RequestParts};
use decision::{cannot_judge, deny_reply, unauthenticated, wait_for};
pub use decision::{Decision, Pending};
use identity::HeaderSource;
use route::{canonical_path, Route};

use mcp_body::Refusal;

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
    /// The MCP headers that mirror the body (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`).
    pub mirrored: Option<&'a crate::mcp_revision::Mirrored>,
    /// `:scheme` (`http` or `https`): with `:authority` and `:path`, the URI a DPoP proof names.
    pub scheme: &'a str,
    /// The `DPoP` header: a proof of possession (RFC 9449).
    pub dpop: Option<&'a str>,
    /// The connection and the listed headers (`pop/connection.rs`).
    pub facts: Option<&'a crate::pop::connection::RequestFacts>,
    /// `:path` as the client sent it, once `path` is folded for a route that ignores case
    /// (`with_path`): what a DPoP proof's `htu` names.
    pub sent_path: Option<&'a str>,
}

impl<'a> HttpRequest<'a> {
    /// This request with `path` instead of its own (`None`: as it is).
    fn with_path<'b>(&self, path: Option<&'b str>) -> HttpRequest<'b>
    where
        'a: 'b,
    {
        HttpRequest {
            path: path.unwrap_or(self.path),
            sent_path: Some(self.sent_path.unwrap_or(self.path)),
            ..*self
        }
    }
}

// The request headers the filter reads (`exchange.rs`), in three lists kept together: a
// header the exchange starts reading belongs in `READ_HEADERS`, and in the others if they apply.

/// Headers a request may carry at most once.
pub const SINGLE_HEADERS: [&str; 6] = [
    "authorization",
    "dpop",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
];

/// Request headers whose values the engine reads as text: each must be UTF-8, or the request is
/// refused (400), as is the approval header.
pub const UTF8_HEADERS: [&str; 10] = [
    ":method",
    ":path",
    ":authority",
    ":scheme",
    "authorization",
    "dpop",
    "content-type",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
];

/// Request headers the filter reads, or sets for its own use (`accept-encoding` on list
/// requests), besides the pseudo-headers and the approval header: never the name of a
/// forwarded identity header (`forward.headers`), or the client's copy would be read as the
/// filter's.
pub const READ_HEADERS: [&str; 11] = [
    "authorization",
    "dpop",
    "host",
    "content-type",
    "content-length",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "x-request-id",
    "accept-encoding",
];

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
    /// Status lists checked per token (`revocation/status_list.rs`).
    status_lists: Option<crate::revocation::status_list::StatusLists>,
    /// Security events that revoke tokens (`revocation/events.rs`).
    events: Option<crate::revocation::events::Events>,
    /// The store every replica shares (`store.etcd`), for single-use credentials.
    pub(crate) etcd: Option<crate::store::etcd::Etcd>,
    /// MCP session handles sealed for their owner (`sessions.seal_keys`); none: bindings in the
    /// Store.
    pub(crate) sealer: Option<crate::sealed::Sealer>,
    /// DPoP proofs (RFC 9449), when configured (`pop/dpop.rs`).
    dpop: Option<crate::pop::dpop::Dpop>,
    /// What Cedar sees of the connection and the listed headers (`pop/connection.rs`).
    connection: crate::pop::connection::ConnectionFacts,
    /// Calls requests wait for: when each started one times out. At most `max_pending_calls`.
    pending_calls: Mutex<Vec<u64>>,
    max_pending_calls: usize,
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

    /// Decides one request. `now_s` is the proxy's clock in Unix seconds; `store` holds what
    /// outlives requests (revocations).
    pub fn check(&self, req: &HttpRequest<'_>, store: &dyn Store, now_s: u64) -> Decision {
        self.in_mode(canonical_path(req, |req| self.decide(req, store, now_s)))
    }

    /// Shadow mode: the decision is made, counted and logged, but nothing is sent.
    fn in_mode(&self, d: Decision) -> Decision {
        match self.mode {
            Mode::Shadow => Decision { reply: None, ..d },
            Mode::Enforce => d,
        }
    }
    fn decide(&self, req: &HttpRequest<'_>, store: &dyn Store, now_s: u64) -> Decision {
        let mut d = self.decide_inner(req, store, now_s);
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

    /// The stages, top-down. Each returns what the next needs, or (`Err`) the decision that
    /// ends the request there.
    fn decide_inner(&self, req: &HttpRequest<'_>, store: &dyn Store, now_s: u64) -> Decision {
        match self.stages(req, store, now_s) {
            Ok(d) | Err(d) => d,
        }
    }

    // The `Err` is the decision itself, returned at once, never stored: boxing it would only
    // add an allocation to every refusal.
    #[allow(clippy::result_large_err)]
    fn stages(
        &self,
        req: &HttpRequest<'_>,
        store: &dyn Store,
        now_s: u64,
    ) -> Result<Decision, Decision> {
        let path = req.path.split(['?', '#']).next().unwrap_or("");
        if let Some((_, paths, doc)) = &self.resource_metadata {
            if (req.method == "GET" || req.method == "HEAD") && paths.iter().any(|p| p == path) {
                return Ok(Decision {
                    reply: Some(LocalReply::metadata(doc)),
                    ..Decision::new(
                        Verdict::Public,
                        Some("oauth-protected-resource".into()),
                        None,
                    )
                });
            }
        }
        // Security events pushed to the filter (RFC 8935), and approvals the approval page
        // posts: answered here, never forwarded.
        if self.events.as_ref().and_then(|e| e.receiver_path()) == Some(path) {
            return Ok(Decision {
                receive_pushed: true,
                ..Decision::new(Verdict::Public, Some("security-events".into()), None)
            });
        }
        if self.approval_receiver() == Some(path) {
            return Ok(Decision {
                receive_pushed: true,
                ..Decision::new(Verdict::Public, Some("approvals".into()), None)
            });
        }
        if let Some(name) = req.repeated {
            return Err(deny_reply(
                Verdict::Deny,
                None,
                &format!("header `{name}` appears more than once"),
                req.request_id,
                400,
            ));
        }
        // 1. Route (route.rs).
        let route = self
            .route_for(req.host, path)
            .ok_or_else(|| deny_reply(Verdict::Deny, None, "no route", req.request_id, 403))?;
        if route.auth == Auth::None {
            return Ok(Decision::new(
                Verdict::Public,
                Some(route.name.clone()),
                None,
            ));
        }
        let folded = route.fold(req.path);
        let req = &req.with_path(folded.as_deref());
        // A workload's X.509-SVID in place of a token: stages 2–5 in workload.rs.
        if route.auth == Auth::Workload {
            return Ok(self.decide_workload(route, req, now_s));
        }
        // 2. Credential (credential.rs).
        let (verified, proof) = self.credential(route, req, store, now_s)?;
        // A workload presenting the token may be its outermost actor (workload.rs).
        let verified = self
            .presented(verified, req)
            .map_err(|e| unauthenticated(route, &e, req.request_id))?;
        let refused = |e: TokenError| unauthenticated(route, &e, req.request_id);
        // 3. Identity (identity.rs).
        let principal = self.principal_uid(&verified).map_err(refused)?;
        // A single-use credential, a DPoP proof: the first use is recorded before forwarding
        // (credential.rs).
        let once: Vec<_> = self
            .single_use(&verified, req.request_id)
            .map_err(refused)?
            .into_iter()
            .chain(proof)
            .collect();
        // An MCP POST: the body decides (mcp_body.rs).
        if route.kind == RouteKind::Mcp && req.method == "POST" {
            let mut d = self.await_mcp_body(route, verified, principal, req);
            if let Some(p) = d.pending.as_mut() {
                p.once = once;
            }
            return Ok(d);
        }
        Ok(self.decide_http(route, verified, principal, once, req, now_s))
    }

    /// Stages 4 (the Cedar request, `cedar.rs`) and 5 (the decision) of a request without a
    /// body to judge.
    fn decide_http(
        &self,
        route: &Route,
        verified: Arc<VerifiedToken>,
        principal: String,
        once: Vec<crate::approval::Once>,
        req: &HttpRequest<'_>,
        now_s: u64,
    ) -> Decision {
        // A GET (the server's stream) or DELETE (the end) of an MCP session: whose it is.
        let session_owner = (route.kind == RouteKind::Mcp).then(|| self.session_owner(&verified));
        let resource = match uid(names::ROUTE, &route.name) {
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
                        once: vec![],
                        approval: None,
                    };
                    d.mcp_lists = Some(lists::ListRequests::stream(pending, req));
                }
            }
            Evaluation::Deny { policies } => {
                d.denied(policies, req.request_id);
                self.approve_http(&mut d, &verified, route, req, now_s, once);
            }
            Evaluation::Error { reason } => d.cannot_judge(reason, req.request_id),
        }
        d
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
            once: vec![],
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
        store: &dyn Store,
        now_s: u64,
    ) -> Decision {
        self.in_mode(canonical_path(req, |req| {
            self.decide_mcp(pending, req, body, store, now_s)
        }))
    }

    /// Whether MCP session ids are sealed (`sessions.seal_keys`): no raw server id may reach a
    /// client.
    pub fn seals_sessions(&self) -> bool {
        self.sealer.is_some()
    }

    /// Where the approval page posts approvals (`approval.receiver_path`, with `approval.page`).
    pub fn approval_receiver(&self) -> Option<&str> {
        self.approval.as_ref().and_then(|a| a.receiver_path())
    }

    /// The request headers copied into `context.request.headers` (`connection.request_headers`):
    /// each is read as one UTF-8 value, like the headers in [`SINGLE_HEADERS`].
    pub fn listed_headers(&self) -> &[String] {
        &self.connection.request_headers
    }

    /// Whether some policy may read the source address: the proxy reads it only then.
    pub fn reads_source_address(&self) -> bool {
        self.policies.declared_anywhere("request/source_ip")
            || self.policies.declared_anywhere("request/source_port")
    }

    /// Whether an issuer's tokens are verified by Envoy's `jwt_authn`: the proxy then reads
    /// the request's dynamic metadata (`jwt_authn::ATTRIBUTE`) with the request headers.
    pub fn reads_jwt_authn(&self) -> bool {
        self.issuers.iter().any(|i| i.jwt_authn_payload.is_some())
    }

    /// Number of verified tokens in the cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.len())
    }
}

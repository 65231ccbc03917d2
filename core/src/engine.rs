//! The compiled configuration and the request path: route → credential → verify → Cedar → act.
//! Built once per configuration; every request only reads it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use cedar_policy::{Entity, RestrictedExpression};
use serde_json::{json, Value};

use crate::authz::{json_to_cedar, uid, Evaluation, Policies};
use crate::cache::{self, TokenCache};
use crate::config::{Auth, Config, Mode, RouteKind};
use crate::error::{ConfigError, TokenError};
use crate::mcp;
use crate::reply::LocalReply;
use crate::token::{self, Issuer, VerifiedToken};

#[derive(Debug)]
struct Route {
    name: String,
    prefix: String,
    host: Option<String>,
    auth: Auth,
    kind: RouteKind,
    /// Sensitive routes: the oldest `iat` accepted, in seconds before now.
    max_token_age_s: Option<u64>,
}

impl Route {
    fn matches(&self, host: &str, path: &str) -> bool {
        if let Some(h) = &self.host {
            // Compare without a port, case-insensitively, as hosts are.
            let host = host
                .rsplit_once(':')
                .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                .map_or(host, |(h, _)| h);
            if !h.eq_ignore_ascii_case(host) {
                return false;
            }
        }
        crate::path::under(path, &self.prefix)
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

/// Headers a request may carry at most once.
pub const SINGLE_HEADERS: [&str; 2] = ["authorization", "mcp-session-id"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A Cedar permit, no forbid.
    Allow,
    /// A public route (`auth: none`).
    Public,
    /// Cedar denied, or no route matched.
    Deny,
    /// No token, or a token that did not verify.
    Unauthenticated,
    /// The filter could not judge the request (schema mismatch, evaluation error): denied.
    Error,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Public => "public",
            Verdict::Deny => "deny",
            Verdict::Unauthenticated => "unauthenticated",
            Verdict::Error => "error",
        }
    }
}

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
    pub mcp_lists: Option<crate::listing::ListRequests>,
    /// Credentials to record as used before forwarding (single-use tokens, approvals): the
    /// proxy records each in its shared data, first writer wins, and sends the obligation's
    /// refusal instead when it was recorded already (`approval::Once`).
    pub once: Vec<crate::approval::Once>,
    /// An approval request to POST to the approval webhook (`approval.webhook`) with the reply.
    pub notify: Option<String>,
}

/// Why one MCP message is refused: its JSON-RPC error and how it is counted.
#[derive(Debug)]
struct Refusal {
    code: i64,
    /// What the client reads.
    message: String,
    /// What the log says, when more than `message`.
    detail: String,
    policies: Vec<String>,
    verdict: Verdict,
    /// The approval request, when a human approval can lift the refusal (`approval.rs`). Boxed:
    /// rare, and `Refusal` travels in `Result`s.
    approval: Option<Box<Value>>,
}

impl Refusal {
    /// Not a valid message (the client's error).
    fn invalid(code: i64, message: String) -> Refusal {
        Refusal {
            code,
            message,
            detail: String::new(),
            policies: vec![],
            verdict: Verdict::Deny,
            approval: None,
        }
    }

    /// The filter cannot judge the message: refused (fail closed).
    fn cannot_judge(message: String) -> Refusal {
        Refusal {
            code: mcp::FORBIDDEN,
            message,
            detail: String::new(),
            policies: vec![],
            verdict: Verdict::Error,
            approval: None,
        }
    }
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
    pub fn from_json(json: &[u8]) -> Result<Engine, ConfigError> {
        Engine::compile(Config::parse(json)?)
    }

    pub fn compile(c: Config) -> Result<Engine, ConfigError> {
        let policies = Policies::compile(&c.schema, &c.policies)?;
        if c.issuers.is_empty() {
            return Err(ConfigError::new("issuers", "at least one issuer is needed"));
        }
        let mut issuers = Vec::with_capacity(c.issuers.len());
        let mut seen = HashSet::new();
        for (i, ic) in c.issuers.iter().enumerate() {
            let path = format!("issuers[{i}]");
            if !seen.insert(ic.issuer.clone()) {
                return Err(ConfigError::new(
                    format!("{path}.issuer"),
                    "duplicate issuer",
                ));
            }
            let mut issuer = Issuer::compile(ic, &path)?;
            issuer.agent.max_delegation_depth = c.limits.max_delegation_depth;
            crate::agent::check_schema(&issuer.agent, &path, |t| policies.has_entity_type(t))?;
            if !policies.has_entity_type(&issuer.principal_type) {
                return Err(ConfigError::new(
                    format!("{path}.principal.type"),
                    format!("the schema has no entity type `{}`", issuer.principal_type),
                ));
            }
            if issuer.groups_claim.is_some() && !policies.has_entity_type("Group") {
                return Err(ConfigError::new(
                    format!("{path}.principal.groups_claim"),
                    "the schema has no entity type `Group`",
                ));
            }
            issuers.push(issuer);
        }
        if c.routes.is_empty() {
            return Err(ConfigError::new("routes", "at least one route is needed"));
        }
        let mut routes = Vec::with_capacity(c.routes.len());
        for (i, r) in c.routes.iter().enumerate() {
            if !r.prefix.starts_with('/') {
                return Err(ConfigError::new(
                    format!("routes[{i}].prefix"),
                    "must start with `/`",
                ));
            }
            if r.name.is_empty() {
                return Err(ConfigError::new(
                    format!("routes[{i}].name"),
                    "must not be empty",
                ));
            }
            if r.kind == RouteKind::Mcp && r.auth == Auth::None {
                // A public MCP route would forward every tool call undecided.
                return Err(ConfigError::new(
                    format!("routes[{i}].auth"),
                    "an mcp route cannot be public (auth \"none\"): its calls are decided by policy",
                ));
            }
            routes.push(Route {
                name: r.name.clone(),
                prefix: r.prefix.clone(),
                host: r.host.clone(),
                auth: r.auth,
                kind: r.kind,
                max_token_age_s: r.max_token_age_s,
            });
        }
        if routes.iter().any(|r| r.kind == RouteKind::Mcp) {
            for t in ["McpServer", "Tool", "Resource", "Prompt"] {
                if !policies.has_entity_type(t) {
                    return Err(ConfigError::new(
                        "schema",
                        format!("an mcp route needs entity type `{t}` in the schema"),
                    ));
                }
            }
        }
        if routes.iter().any(|r| r.auth == Auth::Required) && !policies.has_entity_type("Route") {
            return Err(ConfigError::new(
                "schema",
                "the schema has no entity type `Route`",
            ));
        }
        let mut forward = Vec::new();
        for (name, source) in &c.forward.headers {
            let path = format!("forward.headers.{name}");
            let lower = name.to_ascii_lowercase();
            if lower.is_empty()
                || lower.starts_with(':')
                || !lower
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::new(path, "not a valid header name"));
            }
            if lower == "authorization" || lower == "host" {
                return Err(ConfigError::new(
                    path,
                    "this header cannot be set by the filter",
                ));
            }
            let s = match source.as_str() {
                "principal" => HeaderSource::Principal,
                "principal_id" => HeaderSource::PrincipalId,
                "principal_type" => HeaderSource::PrincipalType,
                "issuer" => HeaderSource::Issuer,
                "subject" => HeaderSource::Subject,
                "scopes" => HeaderSource::Scopes,
                other => match other.strip_prefix("claim:") {
                    Some(claim) if !claim.is_empty() => HeaderSource::Claim(claim.to_string()),
                    _ => {
                        return Err(ConfigError::new(
                            path,
                            "unknown source: use principal, principal_id, principal_type, issuer, subject, scopes or claim:<name>",
                        ))
                    }
                },
            };
            forward.push((lower, s));
        }
        let owned_headers = forward.iter().map(|(n, _)| n.clone()).collect();
        if c.limits.max_token_bytes < 256 {
            return Err(ConfigError::new(
                "limits.max_token_bytes",
                "must be at least 256",
            ));
        }
        let resource_metadata = match &c.resource_metadata {
            None => None,
            Some(m) => Some(compile_resource_metadata(m)?),
        };
        let approvable = crate::approval::approval_policies(&policies.set)?;
        let approval = match &c.approval {
            None => None,
            Some(a) => Some(crate::approval::Approval::compile(
                a,
                c.limits.max_token_bytes,
            )?),
        };
        for (field, v) in [
            ("max_batch_messages", c.limits.max_batch_messages),
            ("max_sessions", c.limits.max_sessions),
        ] {
            if v == 0 {
                return Err(ConfigError::new(
                    format!("limits.{field}"),
                    "must be at least 1",
                ));
            }
        }
        if c.limits.session_idle_s == 0 || c.limits.session_ttl_s == 0 {
            return Err(ConfigError::new(
                "limits.session_idle_s",
                "session lifetimes must be at least 1 second",
            ));
        }
        let engine = Engine {
            mode: c.mode,
            issuers,
            policies,
            routes,
            forward,
            owned_headers,
            drop_authorization: c.forward.drop_authorization,
            max_token_bytes: c.limits.max_token_bytes,
            max_body_bytes: c.limits.max_body_bytes,
            max_json_depth: c.limits.max_json_depth.max(2),
            max_batch_messages: c.limits.max_batch_messages,
            max_sessions: c.limits.max_sessions,
            formats: crate::formats::ArgumentFormats::compile(&c.argument_formats)?,
            resource_metadata,
            session_expiry: (c.limits.session_idle_s, c.limits.session_ttl_s),
            approval,
            approvable,
            cache: Mutex::new(TokenCache::new(
                c.limits.token_cache_entries,
                c.limits.token_cache_bytes,
            )),
        };
        engine.check_schema_accepts_requests()?;
        Ok(engine)
    }

    /// Builds one request per issuer and evaluates it, so that (a) a schema whose context types do
    /// not accept what Tessera builds is a configuration error, not a denial per request, and (b)
    /// Cedar's lazy initialisation is paid at configure time, not by the first request.
    fn check_schema_accepts_requests(&self) -> Result<(), ConfigError> {
        let Some(route) = self.routes.iter().find(|r| r.auth == Auth::Required) else {
            return Ok(());
        };
        let Some(method) = ["GET", "POST"]
            .into_iter()
            .find(|m| self.policies.has_action(m))
        else {
            return Err(ConfigError::new(
                "schema",
                "the schema declares no HTTP method actions (e.g. `action \"GET\"`)",
            ));
        };
        // Per issuer: a token as it comes, and one delegated and task-scoped (agent.rs), so that a
        // schema without `context.delegation` or `context.task` is refused here.
        let checks = self.issuers.iter().enumerate().flat_map(|(i, issuer)| {
            [vec![], crate::agent::sample_claims(&issuer.agent)]
                .into_iter()
                .map(move |extra| (i, issuer, extra))
        });
        for (i, issuer, extra) in checks {
            let delegated = !extra.is_empty();
            let mut payload: serde_json::Map<String, Value> = extra.into_iter().collect();
            payload.insert(
                issuer.principal_claim.clone(),
                json!("tessera-configure-check"),
            );
            let token = VerifiedToken {
                issuer_index: i,
                issuer: issuer.issuer.clone(),
                subject: Some("tessera-configure-check".into()),
                audience: vec![],
                scopes: vec![],
                client_id: None,
                issued_at: Some(0),
                expires_at: 0,
                jti: None,
                agent: crate::agent::parse(&payload.clone().into(), &issuer.agent).map_err(
                    |e| ConfigError::new(format!("issuers[{i}]"), format!("sample token: {e}")),
                )?,
                payload: payload.into(),
                checked: crate::authz::Checked::default(),
            };
            let req = HttpRequest {
                method,
                path: &route.prefix,
                ..HttpRequest::default()
            };
            let resource = uid("Route", &route.name).map_err(|e| ConfigError::new("routes", e))?;
            match self.evaluate(&token, method, resource, &req, 0, None, None) {
                Ok(Evaluation::Error { reason }) | Err(reason) => {
                    return Err(ConfigError::new(
                        format!("issuers[{i}]"),
                        format!(
                        "the schema does not accept Tessera's request for this issuer: {reason}"
                    ),
                    ))
                }
                Ok(_) => {}
            }
            let tool_calls = self.routes.iter().any(|r| r.kind == RouteKind::Mcp)
                && self.policies.has_action("tools/call");
            if delegated && tool_calls {
                self.check_task_detail(&token).map_err(|reason| {
                    ConfigError::new(
                        format!("issuers[{i}].task.detail_fields"),
                        format!(
                            "the schema does not accept the task detail of a tool call: {reason}"
                        ),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// A `tools/call` by a token whose task has a detail for the tool (`agent::sample_claims`), as
    /// `evaluate_mcp` builds it: the configured `detail_fields` fit the schema's task type.
    fn check_task_detail(&self, token: &VerifiedToken) -> Result<(), String> {
        let tool = "tessera-configure-check";
        let target = mcp::Target {
            action: "tools/call".into(),
            resource_type: "Tool",
            resource_id: tool.into(),
            tool: Some(tool.into()),
            uri: None,
            prompt: None,
            arguments: Some(json!({})),
        };
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let record = RestrictedExpression::new_record([
            ("method".to_string(), s("tools/call")),
            ("tool".to_string(), s(tool)),
        ])
        .map_err(|e| e.to_string())?;
        let req = HttpRequest {
            method: "POST",
            ..HttpRequest::default()
        };
        let resource = uid("Tool", tool)?;
        match self.evaluate(
            token,
            "tools/call",
            resource,
            &req,
            0,
            Some((record, &target)),
            None,
        ) {
            Ok(Evaluation::Error { reason }) | Err(reason) => Err(reason),
            Ok(_) => Ok(()),
        }
    }

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
        let resource = match uid("Route", &route.name) {
            Ok(r) => r,
            Err(reason) => return cannot_judge(route, reason, req.request_id),
        };
        let evaluation =
            match self.evaluate(&verified, req.method, resource, req, now_s, None, None) {
                Ok(e) => e,
                Err(e) => {
                    return unauthenticated(
                        route,
                        &TokenError::BadClaim(e, "has no Cedar value"),
                        req.request_id,
                    )
                }
            };
        let mut d = Decision::new(
            Verdict::Allow,
            Some(route.name.clone()),
            Some(principal.clone()),
        );
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
                    d.mcp_lists = Some(crate::listing::ListRequests::stream(pending, req));
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

    fn decide_mcp(
        &self,
        pending: &Pending,
        req: &HttpRequest<'_>,
        body: &[u8],
        now_s: u64,
    ) -> Decision {
        let route = &self.routes[pending.route.min(self.routes.len() - 1)];
        let mut d = Decision::new(
            Verdict::Allow,
            Some(route.name.clone()),
            Some(pending.principal.clone()),
        );
        let rpc_reply = |status: u32, body: Value| LocalReply::json_rpc(status, body.to_string());
        // The token was checked at the headers; a body that trickles in must not outlive it.
        let skew = self.issuers[pending.token.issuer_index].clock_skew_s();
        if now_s > pending.token.expires_at.saturating_add(skew) {
            return unauthenticated(route, &TokenError::Expired, req.request_id);
        }
        if body.len() > self.max_body_bytes {
            d.verdict = Verdict::Deny;
            d.reason = "body too large".into();
            d.reply = Some(LocalReply::json_error(
                413,
                "payload_too_large",
                Some("the MCP request body exceeds the limit"),
                &[],
                req.request_id,
            ));
            return d;
        }
        let parsed = match crate::json::parse_strict(body, self.max_json_depth) {
            Ok(v) => v,
            Err(e) => {
                d.verdict = Verdict::Deny;
                d.reason = format!("parse error: {e}");
                d.reply = Some(rpc_reply(
                    400,
                    mcp::error_object(
                        &Value::Null,
                        mcp::PARSE_ERROR,
                        &format!("parse error: {e}"),
                        None,
                    ),
                ));
                return d;
            }
        };
        let (messages, batch) = match mcp::messages(&parsed, self.max_batch_messages) {
            Ok(m) => m,
            Err((code, msg)) => {
                d.verdict = Verdict::Deny;
                d.reason = msg.clone();
                d.reply = Some(rpc_reply(
                    400,
                    mcp::error_object(&Value::Null, code, &msg, None),
                ));
                return d;
            }
        };
        // Per message: None = allowed; Some((id, refusal)) = refused.
        let mut refused: Vec<Option<(Value, Refusal)>> = Vec::with_capacity(messages.len());
        let mut ids: Vec<Option<Value>> = Vec::with_capacity(messages.len());
        let mut verdict = Verdict::Allow;
        let mut policies_all = Vec::new();
        for m in &messages {
            let m = match m {
                Ok(m) => m,
                Err((id, (code, msg))) => {
                    ids.push(Some(id.clone()));
                    d.reason = msg.clone();
                    refused.push(Some((id.clone(), Refusal::invalid(*code, msg.clone()))));
                    verdict = Verdict::Deny;
                    continue;
                }
            };
            let id = match &m.kind {
                mcp::Kind::Request { id } => Some(id.clone()),
                _ => None,
            };
            ids.push(id.clone());
            if m.kind == mcp::Kind::Response {
                // A client's answer to a server request carries no new request to judge.
                refused.push(None);
                continue;
            }
            let outcome = match mcp::target(m, &route.name).and_then(|t| self.formatted(t)) {
                Err((code, msg)) => Err(Refusal::invalid(code, msg)),
                Ok(t) => self
                    .evaluate_mcp(&pending.token, &t, req, now_s, None)
                    .or_else(|r| {
                        // Approval is taken for the body's only message, not inside a batch.
                        let single = if batch { None } else { id.as_ref() };
                        self.approve_mcp(r, pending, route, &t, req, now_s, single, &mut d.once)
                    }),
            };
            match outcome {
                Ok(p) => {
                    policies_all.extend(p);
                    refused.push(None);
                }
                Err(r) => {
                    if verdict != Verdict::Error {
                        verdict = r.verdict;
                    }
                    let why = if r.detail.is_empty() {
                        &r.message
                    } else {
                        &r.detail
                    };
                    d.reason = format!("{}: {why}", m.method);
                    policies_all.extend(r.policies.iter().cloned());
                    refused.push(Some((id.unwrap_or(Value::Null), r)));
                }
            }
        }
        policies_all.sort();
        policies_all.dedup();
        d.policies = policies_all;
        if refused.iter().all(Option::is_none) {
            d.set_headers = self.identity_headers(&pending.token, &pending.principal);
            d.once.extend(pending.once.clone());
            if self.mode == Mode::Enforce {
                d.mcp_lists = crate::listing::ListRequests::new(pending, req, &messages);
            }
            return d;
        }
        // Refused only for scopes the token lacks: the HTTP 403 an MCP client steps up on.
        let refusals: Vec<&Refusal> = refused.iter().flatten().map(|(_, r)| r).collect();
        if let Some(reply) = self.step_up(&refusals, req.request_id) {
            d.verdict = Verdict::Deny;
            d.reason = "insufficient scope".into();
            d.reply = Some(reply);
            return d;
        }
        d.verdict = verdict;
        if let Some(ask) = refused
            .iter()
            .flatten()
            .find_map(|(_, r)| r.approval.as_deref())
        {
            d.notify = crate::approval::notification(
                self.approval.as_ref(),
                &d.policies,
                req.request_id,
                ask,
            );
        }
        let data = |p: &[String]| json!({"policies": p, "request_id": req.request_id});
        let mut answers = Vec::new();
        for (r, id) in refused.iter().zip(&ids) {
            match (r, id) {
                // A notification gets no JSON-RPC answer, refused or not (JSON-RPC 2.0 §4.1).
                (Some((id, r)), Some(_)) => {
                    let mut data = data(&r.policies);
                    if let Some(a) = &r.approval {
                        data["approval"] = a.as_ref().clone();
                    }
                    answers.push(mcp::error_object(id, r.code, &r.message, Some(data)))
                }
                (Some(_), None) => {}
                (None, Some(id)) => answers.push(mcp::error_object(
                    id,
                    mcp::NOT_FORWARDED,
                    "not forwarded: another message in the batch was refused",
                    Some(data(&[])),
                )),
                (None, None) => {}
            }
        }
        let reply = if batch {
            Value::Array(answers)
        } else {
            match answers.pop() {
                Some(a) => a,
                // A refused notification has no id to answer: a plain 403.
                None => {
                    d.reply = Some(LocalReply::forbidden(&d.policies, req.request_id));
                    return d;
                }
            }
        };
        // Invalid messages are the client's error (400); policy refusals are answers (200), so the
        // MCP client fails that one call and the session goes on.
        let invalid = refused.iter().flatten().all(|(_, r)| {
            ![
                mcp::FORBIDDEN,
                mcp::NOT_FORWARDED,
                crate::approval::APPROVAL_REQUIRED,
            ]
            .contains(&r.code)
        });
        d.reply = Some(rpc_reply(if invalid { 400 } else { 200 }, reply));
        d
    }

    /// A tool call's arguments with their declared formats in canonical form (`formats.rs`).
    fn formatted(&self, mut t: mcp::Target) -> Result<mcp::Target, mcp::RpcError> {
        if let (Some(tool), Some(args)) = (&t.tool, &t.arguments) {
            if let Some(canonical) = self
                .formats
                .apply(tool, args)
                .map_err(|e| (mcp::INVALID_PARAMS, e))?
            {
                t.arguments = Some(canonical);
            }
        }
        Ok(t)
    }

    /// One MCP message through Cedar: the determining policies when allowed.
    fn evaluate_mcp(
        &self,
        token: &VerifiedToken,
        t: &mcp::Target,
        req: &HttpRequest<'_>,
        now_s: u64,
        approval: Option<&crate::approval::Granted>,
    ) -> Result<Vec<String>, Refusal> {
        let per_tool = t
            .tool
            .as_ref()
            .map(|n| format!("call:{n}"))
            .filter(|a| self.policies.has_action(a));
        let action = per_tool.clone().unwrap_or_else(|| t.action.clone());
        if !self.policies.has_action(&action) {
            return Err(Refusal::cannot_judge(format!(
                "method `{}` is not declared in the schema",
                t.action
            )));
        }
        let resource = uid(t.resource_type, &t.resource_id).map_err(Refusal::cannot_judge)?;
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let mut fields = vec![("method".to_string(), s(&t.action))];
        if let Some(v) = &t.tool {
            fields.push(("tool".to_string(), s(v)));
        }
        if let Some(v) = &t.uri {
            fields.push(("uri".to_string(), s(v)));
        }
        if let Some(v) = &t.prompt {
            fields.push(("prompt".to_string(), s(v)));
        }
        // Arguments are typed only by a per-tool action's schema; the generic action has none.
        if let (Some(_), Some(args)) = (&per_tool, &t.arguments) {
            let a = json_to_cedar(args)
                .map_err(|e| Refusal::invalid(mcp::INVALID_PARAMS, format!("arguments: {e}")))?;
            fields.push(("arguments".to_string(), a));
        }
        let mcp_record = RestrictedExpression::new_record(fields)
            .map_err(|e| Refusal::cannot_judge(e.to_string()))?;
        match self.evaluate(
            token,
            &action,
            resource,
            req,
            now_s,
            Some((mcp_record, t)),
            approval,
        ) {
            Err(claim) => Err(Refusal::cannot_judge(format!(
                "claim `{claim}` has no Cedar value"
            ))),
            Ok(Evaluation::Allow { policies }) => Ok(policies),
            Ok(Evaluation::Deny { policies }) => Err(Refusal {
                code: mcp::FORBIDDEN,
                detail: String::new(),
                message: if policies.is_empty() {
                    "forbidden: no policy permits this call".to_string()
                } else {
                    format!("forbidden by policy {}", policies.join(", "))
                },
                policies,
                verdict: Verdict::Deny,
                approval: None,
            }),
            // With a per-tool action, a request that does not fit the schema means arguments that
            // do not fit the tool's declared type: the client's error, said briefly. The Cedar
            // detail goes to the log only.
            Ok(Evaluation::Error { reason })
                if per_tool.is_some() && reason.starts_with("request does not fit the schema") =>
            {
                Err(Refusal {
                    detail: reason,
                    ..Refusal::invalid(
                        mcp::INVALID_PARAMS,
                        "arguments do not match the tool's schema".into(),
                    )
                })
            }
            Ok(Evaluation::Error { reason }) => Err(Refusal {
                detail: reason,
                ..Refusal::cannot_judge("the call could not be evaluated".into())
            }),
        }
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
        let issuer = &self.issuers[t.issuer_index];
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

    fn principal_id<'t>(&self, t: &'t VerifiedToken) -> Result<&'t str, TokenError> {
        let issuer = &self.issuers[t.issuer_index];
        t.claim(&issuer.principal_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenError::MissingClaim(issuer.principal_claim.clone()))
    }

    fn principal_uid(&self, t: &VerifiedToken) -> Result<String, TokenError> {
        let (entity_type, id) = self.principal_type_and_id(t)?;
        Ok(format!("{entity_type}::{}", Value::String(id)))
    }

    /// The principal: the current actor of a delegated token (`agent.rs`), else the subject;
    /// its id in the issuer's identity namespace (`identity.rs`).
    fn principal_type_and_id<'t>(
        &'t self,
        t: &'t VerifiedToken,
    ) -> Result<(&'t str, String), TokenError> {
        let issuer = &self.issuers[t.issuer_index];
        let (ty, id) = match t.agent.delegation.current() {
            Some(actor) => (issuer.agent.actor_type.as_str(), actor),
            None => (issuer.principal_type.as_str(), self.principal_id(t)?),
        };
        Ok((ty, crate::identity::entity_id(&issuer.namespace, id)))
    }
    /// Builds and evaluates the Cedar request. `Err` names a token claim with no Cedar value.
    ///
    /// The request has per-token parts (entities and context attributes that come from the token
    /// alone: [`Engine::token_entities`], [`Engine::token_context`]) and per-request parts (the
    /// request line, the clock, the MCP call). Per-request parts of varying type (MCP arguments)
    /// turn off the token's "already fits the schema" memo for this evaluation.
    // The arguments are the parts of one Cedar request; a struct would only name them again.
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        t: &VerifiedToken,
        action: &str,
        resource: cedar_policy::EntityUid,
        req: &HttpRequest<'_>,
        now_s: u64,
        mcp: Option<(RestrictedExpression, &mcp::Target)>,
        approval: Option<&crate::approval::Granted>,
    ) -> Result<Evaluation, String> {
        if mcp.is_none() && approval.is_none() {
            if let Some(e) = self.policies.remembered(&t.checked, action, &resource) {
                return Ok(e);
            }
        }
        let entities = self.token_entities(t)?;
        let mut context = self.token_context(t)?;
        // Per-request parts. Strings and the clock have one type whatever the request says.
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let path = req.path.split(['?', '#']).next().unwrap_or("");
        let request = RestrictedExpression::new_record([
            ("method".to_string(), s(req.method)),
            ("path".to_string(), s(path)),
            ("host".to_string(), s(req.host)),
        ])
        .map_err(|e| e.to_string())?;
        context.push(("request".to_string(), request));
        context.push(("now".to_string(), long(now_s)));
        // Only fixed-type per-request parts so far.
        let mut fixed_context = true;
        if let Some((m, target)) = mcp {
            context.push(("mcp".to_string(), m));
            fixed_context = false;
            // A tool call whose task names the tool: `context.task` gains that detail.
            if let Some(tool) = &target.tool {
                if let Some(task) =
                    crate::agent::task_for_call(&t.agent, tool, target.arguments.as_ref())
                {
                    context.retain(|(k, _)| k != "task");
                    context.push(("task".to_string(), task?));
                }
            }
        }

        // A human approval of this request (approval.rs): present only on a retry that carries
        // one; rare, so it takes the checked path.
        if let Some(a) = approval {
            let approval = RestrictedExpression::new_record([
                ("approver".to_string(), s(&a.approver)),
                ("approved_at".to_string(), long(a.approved_at)),
            ])
            .map_err(|e| e.to_string())?;
            context.push(("approval".to_string(), approval));
            fixed_context = false;
        }
        Ok(self.policies.evaluate(
            entities,
            action,
            resource,
            context,
            Some(&t.checked),
            fixed_context,
        ))
    }

    /// The entities a request built from `t` needs: the principal first, with its groups as
    /// parents and its configured attributes. `Err` names the claim that has no Cedar value.
    fn token_entities(&self, t: &VerifiedToken) -> Result<Vec<Entity>, String> {
        let issuer = &self.issuers[t.issuer_index];
        // Parsed and checked when the token was verified: a failure here cannot happen.
        crate::agent::request_entities(
            &issuer.agent,
            &t.agent,
            &issuer.principal_type,
            &issuer.namespace,
            |ty| self.subject_entity(t, ty),
        )
    }

    /// The token's subject as an entity of `entity_type`, with the issuer's groups and
    /// attributes: the principal of a token without `act`, and `context.delegation.on_behalf_of`.
    fn subject_entity(&self, t: &VerifiedToken, entity_type: &str) -> Result<Entity, String> {
        let issuer = &self.issuers[t.issuer_index];
        let id = self
            .principal_id(t)
            .map_err(|_| issuer.principal_claim.clone())?;
        let ns = |id: &str| crate::identity::entity_id(&issuer.namespace, id);
        let principal_uid =
            uid(entity_type, &ns(id)).map_err(|_| issuer.principal_claim.clone())?;
        let mut parents = HashSet::new();
        if let Some(gc) = &issuer.groups_claim {
            for g in string_list(t.claim(gc)) {
                parents.insert(uid("Group", &ns(g)).map_err(|_| gc.clone())?);
            }
        }
        let mut attrs = std::collections::HashMap::new();
        for (attr, claim) in &issuer.principal_attributes {
            if let Some(v) = t.claim(claim) {
                attrs.insert(attr.clone(), json_to_cedar(v).map_err(|_| claim.clone())?);
            }
        }
        Entity::new(principal_uid, attrs, parents).map_err(|e| e.to_string())
    }

    /// The context attributes that come from `t` alone (`token`). `Err` names the claim that has
    /// no Cedar value.
    ///
    /// ONLY values from the token belong here (and in [`Engine::token_entities`]): what is built
    /// here is checked against the schema once per token, and decisions of actions whose policies
    /// read only these attributes (named in `authz::PER_TOKEN_CONTEXT`) are remembered per token.
    /// Anything that depends on the request goes with the per-request parts in
    /// [`Engine::evaluate`], with `fixed_context` false unless its type never varies.
    fn token_context(
        &self,
        t: &VerifiedToken,
    ) -> Result<Vec<(String, RestrictedExpression)>, String> {
        let issuer = &self.issuers[t.issuer_index];
        let set = |v: &[String]| {
            RestrictedExpression::new_set(
                v.iter()
                    .map(|s| RestrictedExpression::new_string(s.clone())),
            )
        };
        let mut claims = Vec::new();
        for c in &issuer.claims {
            if let Some(v) = t.claim(c).filter(|v| !v.is_null()) {
                claims.push((c.clone(), json_to_cedar(v).map_err(|_| c.clone())?));
            }
        }
        let record = |fields: Vec<(String, RestrictedExpression)>| {
            RestrictedExpression::new_record(fields).map_err(|e| e.to_string())
        };
        let mut token = vec![
            (
                "issuer".to_string(),
                RestrictedExpression::new_string(t.issuer.clone()),
            ),
            (
                "subject".to_string(),
                RestrictedExpression::new_string(t.subject.clone().unwrap_or_default()),
            ),
            ("audience".to_string(), set(&t.audience)),
            ("scopes".to_string(), set(&t.scopes)),
            ("expires_at".to_string(), long(t.expires_at)),
            ("claims".to_string(), record(claims)?),
        ];
        if let Some(c) = &t.client_id {
            token.push((
                "client_id".to_string(),
                RestrictedExpression::new_string(c.clone()),
            ));
        }
        if let Some(iat) = t.issued_at {
            token.push(("issued_at".to_string(), long(iat)));
        }
        let mut context = vec![("token".to_string(), record(token)?)];
        // `delegation` and `task` (agent.rs); parsed and checked when the token was verified.
        let agent = &t.agent;
        let subject = self
            .principal_id(t)
            .map_err(|_| issuer.principal_claim.clone())?;
        context.extend(crate::agent::context_parts(
            agent,
            subject,
            &issuer.namespace,
        )?);
        Ok(context)
    }

    fn identity_headers(&self, t: &VerifiedToken, principal: &str) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(self.forward.len());
        for (name, source) in &self.forward {
            let value = match source {
                HeaderSource::Principal => Some(principal.to_string()),
                HeaderSource::PrincipalId => self.principal_type_and_id(t).ok().map(|(_, id)| id),
                HeaderSource::PrincipalType => self
                    .principal_type_and_id(t)
                    .ok()
                    .map(|(ty, _)| ty.to_string()),
                HeaderSource::Issuer => Some(t.issuer.clone()),
                HeaderSource::Subject => t.subject.clone(),
                HeaderSource::Scopes => Some(t.scopes.join(" ")),
                HeaderSource::Claim(c) => t.claim(c).map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
            };
            // Header values must not carry control characters (CR/LF would split headers).
            if let Some(v) = value.filter(|v| !v.chars().any(char::is_control)) {
                out.push((name.clone(), v));
            }
        }
        out
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
            decide(&HttpRequest {
                path: &full,
                ..*req
            })
        }
    }
}

/// The RFC 9728 document, the URL clients are pointed to, and the paths it is served on: the
/// well-known URI inserted between host and path of the resource identifier (§3.1), and the bare
/// well-known path.
fn compile_resource_metadata(
    m: &crate::config::ResourceMetadata,
) -> Result<(String, Vec<String>, String), ConfigError> {
    let err = |msg: &str| ConfigError::new("resource_metadata.resource", msg.to_string());
    let rest = m
        .resource
        .strip_prefix("https://")
        .or_else(|| m.resource.strip_prefix("http://"))
        .ok_or_else(|| err("must be an http(s) URL"))?;
    if m.resource.contains('#') || m.resource.contains('?') {
        return Err(err("must not have a query or fragment (RFC 9728 §1.2)"));
    }
    if m.authorization_servers.is_empty() {
        return Err(ConfigError::new(
            "resource_metadata.authorization_servers",
            "needs at least one authorization server",
        ));
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let scheme = &m.resource[..m.resource.len() - rest.len()];
    let well_known = format!("/.well-known/oauth-protected-resource{path}");
    let url = format!("{scheme}{host}{well_known}");
    let mut paths = vec![well_known];
    if !path.is_empty() {
        paths.push("/.well-known/oauth-protected-resource".to_string());
    }
    let mut doc = json!({
        "resource": m.resource,
        "authorization_servers": m.authorization_servers,
        "bearer_methods_supported": ["header"],
    });
    if !m.scopes_supported.is_empty() {
        doc["scopes_supported"] = json!(m.scopes_supported);
    }
    if let Some(n) = &m.resource_name {
        doc["resource_name"] = json!(n);
    }
    Ok((url, paths, doc.to_string()))
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

/// Scope step-up and read-only access for the MCP list filter (core/src/listing.rs).
impl Engine {
    pub(crate) fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The per-token parts of a Cedar request, as `Engine::evaluate` builds them: the entities
    /// (principal first) and the `token` context attribute.
    pub(crate) fn token_parts(
        &self,
        t: &VerifiedToken,
    ) -> Result<crate::listing::RequestParts, String> {
        Ok((self.token_entities(t)?, self.token_context(t)?))
    }

    /// RFC 6750 §3.1 `insufficient_scope` (403) when every refusal is by forbid policies that
    /// all name the scope they need (`@scope("…")`): the client can get a token with those
    /// scopes and retry. `None` when any refusal is something else.
    fn step_up(&self, refusals: &[&Refusal], request_id: &str) -> Option<LocalReply> {
        let mut policies = Vec::new();
        for r in refusals {
            if r.verdict != Verdict::Deny || r.code != mcp::FORBIDDEN || r.policies.is_empty() {
                return None;
            }
            policies.extend(r.policies.iter().cloned());
        }
        self.step_up_for(&policies, request_id)
    }

    fn step_up_for(&self, policies: &[String], request_id: &str) -> Option<LocalReply> {
        let scopes = self.policies.required_scopes(policies)?;
        let url = self.resource_metadata.as_ref().map(|(u, _, _)| u.as_str());
        Some(
            LocalReply::insufficient_scope(&scopes, policies, request_id)
                .with_resource_metadata(url),
        )
    }
}

impl Pending {
    pub(crate) fn token(&self) -> &VerifiedToken {
        &self.token
    }
}

/// Human approval (core/src/approval.rs): the hooks of the HTTP and MCP paths.
impl Engine {
    /// `approval::bind_identity` with the token's issuer, subject, actors and task.
    fn bind_identity(&self, subject: &mut Value, t: &VerifiedToken) {
        let issuer = &self.issuers[t.issuer_index];
        let on_behalf_of = self
            .principal_id(t)
            .ok()
            .map(|s| crate::identity::entity_id(&issuer.namespace, s));
        crate::approval::bind_identity(
            subject,
            &t.issuer,
            on_behalf_of.as_deref(),
            &t.agent.delegation.actors,
            t.agent.task.as_ref().and_then(|task| task.id.as_deref()),
        );
    }

    /// A plain HTTP denial that approval may lift: asks for approval, or — with a valid approval
    /// of exactly this request — allows it, recording the approval before forwarding.
    #[allow(clippy::too_many_arguments)]
    fn approve_http(
        &self,
        d: &mut Decision,
        t: &VerifiedToken,
        route: &Route,
        req: &HttpRequest<'_>,
        now_s: u64,
        once: Option<crate::approval::Once>,
    ) {
        use crate::approval::{self, Approved};
        let Some(principal) = d.principal.clone() else {
            return;
        };
        let resource = format!("Route::{}", Value::String(route.name.clone()));
        let mut subject = approval::subject(
            &principal,
            req.method,
            &resource,
            &route.name,
            None,
            Some(req.path),
        );
        self.bind_identity(&mut subject, t);
        let evaluate = |g: &approval::Granted| {
            uid("Route", &route.name)
                .and_then(|resource| {
                    self.evaluate(t, req.method, resource, req, now_s, None, Some(g))
                })
                .unwrap_or_else(|reason| Evaluation::Error { reason })
        };
        let outcome = approval::approve(
            self.approval.as_ref(),
            &self.approvable,
            &d.policies,
            &subject,
            req.approval,
            now_s,
            evaluate,
        );
        match outcome {
            None => {}
            Some(Approved::Required { ask, reason }) => {
                d.reason = match &reason {
                    Some(r) => format!("approval required: {r}"),
                    None => "approval required".into(),
                };
                d.notify = approval::notification(
                    self.approval.as_ref(),
                    &d.policies,
                    req.request_id,
                    &ask,
                );
                d.reply = Some(approval::required_reply(
                    &d.policies,
                    req.request_id,
                    ask,
                    reason.as_deref(),
                ));
            }
            Some(Approved::Allowed {
                policies,
                granted,
                ask,
            }) => {
                let used = "approval already used";
                d.verdict = Verdict::Allow;
                d.reason = String::new();
                d.once.push(approval::Once {
                    key: granted.key,
                    until: granted.until,
                    verdict: Verdict::Deny,
                    reason: used.into(),
                    reply: approval::required_reply(&d.policies, req.request_id, ask, Some(used)),
                });
                d.once.extend(once);
                d.policies = policies;
                d.reply = None;
                d.set_headers = self.identity_headers(t, &principal);
            }
        }
    }

    /// An MCP call refused by policy that approval may lift (see `approve_http`). `id` is the
    /// call's id when it is the body's only message: an approval is not taken from a batch.
    #[allow(clippy::too_many_arguments)]
    fn approve_mcp(
        &self,
        refusal: Refusal,
        pending: &Pending,
        route: &Route,
        t: &mcp::Target,
        req: &HttpRequest<'_>,
        now_s: u64,
        id: Option<&Value>,
        once: &mut Vec<crate::approval::Once>,
    ) -> Result<Vec<String>, Refusal> {
        use crate::approval::{self, Approved, APPROVAL_REQUIRED};
        if refusal.code != mcp::FORBIDDEN || refusal.verdict != Verdict::Deny {
            return Err(refusal);
        }
        let action = t
            .tool
            .as_ref()
            .map(|n| format!("call:{n}"))
            .filter(|a| self.policies.has_action(a))
            .unwrap_or_else(|| t.action.clone());
        let resource = format!(
            "{}::{}",
            t.resource_type,
            Value::String(t.resource_id.clone())
        );
        let mut subject = approval::subject(
            &pending.principal,
            &action,
            &resource,
            &route.name,
            t.arguments.as_ref(),
            None,
        );
        self.bind_identity(&mut subject, &pending.token);
        let presented = id.and(pending.approval.as_deref());
        let evaluate =
            |g: &approval::Granted| match self.evaluate_mcp(&pending.token, t, req, now_s, Some(g))
            {
                Ok(policies) => Evaluation::Allow { policies },
                Err(r) if r.verdict == Verdict::Deny && r.code == mcp::FORBIDDEN => {
                    Evaluation::Deny {
                        policies: r.policies,
                    }
                }
                Err(r) => Evaluation::Error { reason: r.message },
            };
        let outcome = approval::approve(
            self.approval.as_ref(),
            &self.approvable,
            &refusal.policies,
            &subject,
            presented,
            now_s,
            evaluate,
        );
        let data = |ask: Value| json!({"policies": refusal.policies, "request_id": req.request_id, "approval": ask});
        match outcome {
            None => Err(refusal),
            Some(Approved::Allowed {
                policies,
                granted,
                ask,
            }) => {
                let used = "approval already used";
                let message = format!("{}: {used}", approval::required_message(&refusal.policies));
                let answer = mcp::error_object(
                    id.unwrap_or(&Value::Null),
                    APPROVAL_REQUIRED,
                    &message,
                    Some(data(ask)),
                );
                once.push(approval::Once {
                    key: granted.key,
                    until: granted.until,
                    verdict: Verdict::Deny,
                    reason: used.into(),
                    reply: LocalReply::json_rpc(200, answer.to_string()),
                });
                Ok(policies)
            }
            Some(Approved::Required { ask, reason }) => {
                let mut message = approval::required_message(&refusal.policies);
                if let Some(r) = &reason {
                    message = format!("{message}: {r}");
                }
                Err(Refusal {
                    code: APPROVAL_REQUIRED,
                    message,
                    approval: Some(Box::new(ask)),
                    ..refusal
                })
            }
        }
    }
}

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
        match path.strip_prefix(self.prefix.as_str()) {
            None => false,
            Some(rest) => self.prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        }
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
}

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
        }
    }
}

/// An authenticated MCP request waiting for its body.
#[derive(Debug, Clone)]
pub struct Pending {
    route: usize,
    token: Arc<VerifiedToken>,
    principal: String,
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
        }
    }

    /// One line for the proxy's debug log.
    pub fn log_line(&self, method: &str, path: &str, request_id: &str) -> String {
        format!(
            "tessera decision={} route={} principal={} method={} path={} policies=[{}] request_id={}{}",
            self.verdict.name(),
            self.route.as_deref().unwrap_or("-"),
            self.principal.as_deref().unwrap_or("-"),
            method,
            path,
            self.policies.join(","),
            request_id,
            if self.reason.is_empty() { String::new() } else { format!(" reason=\"{}\"", self.reason) }
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
    cache: Mutex<TokenCache>,
    /// RFC 9728: (metadata URL, well-known paths served, the JSON document).
    resource_metadata: Option<(String, Vec<String>, String)>,
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
            let issuer = Issuer::compile(ic, &path)?;
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
            routes.push(Route {
                name: r.name.clone(),
                prefix: r.prefix.clone(),
                host: r.host.clone(),
                auth: r.auth,
                kind: r.kind,
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
            resource_metadata,
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
        for (i, issuer) in self.issuers.iter().enumerate() {
            let mut payload = serde_json::Map::new();
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
                payload,
            };
            let req = HttpRequest {
                method,
                path: &route.prefix,
                ..HttpRequest::default()
            };
            let resource = uid("Route", &route.name).map_err(|e| ConfigError::new("routes", e))?;
            match self.evaluate(&token, method, resource, &req, 0, None) {
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
        }
        Ok(())
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

    pub fn policy_count(&self) -> usize {
        self.policies.policy_count()
    }

    /// Decides one request. `now_s` is the proxy's clock in Unix seconds.
    pub fn check(&self, req: &HttpRequest<'_>, now_s: u64) -> Decision {
        self.in_mode(self.decide(req, now_s))
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
        if !is_normalized(path) {
            return deny_reply(
                Verdict::Deny,
                None,
                "path is not normalized",
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
        let principal = match self.principal_uid(&verified) {
            Ok(p) => p,
            Err(e) => return unauthenticated(route, &e, req.request_id),
        };
        if route.kind == RouteKind::Mcp && req.method == "POST" {
            return self.await_mcp_body(route, verified, principal, req);
        }
        let resource = match uid("Route", &route.name) {
            Ok(r) => r,
            Err(reason) => return cannot_judge(route, reason, req.request_id),
        };
        let evaluation = match self.evaluate(&verified, req.method, resource, req, now_s, None) {
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
            }
            Evaluation::Error { reason } => {
                d.verdict = Verdict::Error;
                d.reply = Some(LocalReply::cannot_judge(req.request_id));
                d.reason = reason;
            }
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
            route: self
                .routes
                .iter()
                .position(|r| std::ptr::eq(r, route))
                .unwrap_or(0),
            token,
            principal,
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
        self.in_mode(self.decide_mcp(pending, req, body, now_s))
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
        let (messages, batch) = match mcp::messages(&parsed) {
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
            let outcome = match mcp::target(m, &route.name) {
                Err((code, msg)) => Err(Refusal::invalid(code, msg)),
                Ok(t) => self.evaluate_mcp(&pending.token, &t, req, now_s),
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
            return d;
        }
        d.verdict = verdict;
        let data = |p: &[String]| json!({"policies": p, "request_id": req.request_id});
        let mut answers = Vec::new();
        for (r, id) in refused.iter().zip(&ids) {
            match (r, id) {
                // A notification gets no JSON-RPC answer, refused or not (JSON-RPC 2.0 §4.1).
                (Some((id, r)), Some(_)) => answers.push(mcp::error_object(
                    id,
                    r.code,
                    &r.message,
                    Some(data(&r.policies)),
                )),
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
        let invalid = refused
            .iter()
            .flatten()
            .all(|(_, r)| r.code != mcp::FORBIDDEN && r.code != mcp::NOT_FORWARDED);
        d.reply = Some(rpc_reply(if invalid { 400 } else { 200 }, reply));
        d
    }

    /// One MCP message through Cedar: the determining policies when allowed.
    fn evaluate_mcp(
        &self,
        token: &VerifiedToken,
        t: &mcp::Target,
        req: &HttpRequest<'_>,
        now_s: u64,
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
        match self.evaluate(token, &action, resource, req, now_s, Some(mcp_record)) {
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
        let issuer = &self.issuers[t.issuer_index];
        let id = self.principal_id(t)?;
        Ok(format!(
            "{}::{}",
            issuer.principal_type,
            Value::String(id.to_string())
        ))
    }
    /// Builds and evaluates the Cedar request. `Err` names a token claim with no Cedar value.
    fn evaluate(
        &self,
        t: &VerifiedToken,
        action: &str,
        resource: cedar_policy::EntityUid,
        req: &HttpRequest<'_>,
        now_s: u64,
        mcp: Option<RestrictedExpression>,
    ) -> Result<Evaluation, String> {
        let issuer = &self.issuers[t.issuer_index];
        let id = self
            .principal_id(t)
            .map_err(|_| issuer.principal_claim.clone())?;
        let principal_uid =
            uid(&issuer.principal_type, id).map_err(|_| issuer.principal_claim.clone())?;
        let mut parents = HashSet::new();
        if let Some(gc) = &issuer.groups_claim {
            for g in string_list(t.claim(gc)) {
                parents.insert(uid("Group", g).map_err(|_| gc.clone())?);
            }
        }
        let mut attrs = std::collections::HashMap::new();
        for (attr, claim) in &issuer.principal_attributes {
            if let Some(v) = t.claim(claim) {
                attrs.insert(attr.clone(), json_to_cedar(v).map_err(|_| claim.clone())?);
            }
        }
        let principal = Entity::new(principal_uid, attrs, parents).map_err(|e| e.to_string())?;

        let set = |v: &[String]| {
            RestrictedExpression::new_set(
                v.iter()
                    .map(|s| RestrictedExpression::new_string(s.clone())),
            )
        };
        let long = |n: u64| RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX));
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
        let path = req.path.split(['?', '#']).next().unwrap_or("");
        let request = vec![
            (
                "method".to_string(),
                RestrictedExpression::new_string(req.method.to_string()),
            ),
            (
                "path".to_string(),
                RestrictedExpression::new_string(path.to_string()),
            ),
            (
                "host".to_string(),
                RestrictedExpression::new_string(req.host.to_string()),
            ),
        ];
        let mut context = vec![
            ("token".to_string(), record(token)?),
            ("request".to_string(), record(request)?),
            ("now".to_string(), long(now_s)),
        ];
        if let Some(m) = mcp {
            context.push(("mcp".to_string(), m));
        }
        Ok(self.policies.evaluate(principal, action, resource, context))
    }

    fn identity_headers(&self, t: &VerifiedToken, principal: &str) -> Vec<(String, String)> {
        let issuer = &self.issuers[t.issuer_index];
        let mut out = Vec::with_capacity(self.forward.len());
        for (name, source) in &self.forward {
            let value = match source {
                HeaderSource::Principal => Some(principal.to_string()),
                HeaderSource::PrincipalId => self.principal_id(t).ok().map(str::to_string),
                HeaderSource::PrincipalType => Some(issuer.principal_type.clone()),
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

/// A path the filter can judge: absolute, no dot segments, no encoded separators or dots, no
/// backslashes. Envoy normalises paths when configured to; this is the last line of defence
/// against a route prefix being bypassed with `/public/../admin`.
fn is_normalized(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f")
        || lower.contains("%2e")
        || lower.contains("%5c")
        || lower.contains("%00")
    {
        return false;
    }
    !path.split('/').any(|seg| seg == "." || seg == "..")
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

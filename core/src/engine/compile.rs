//! Configuration → `Engine`: every check that can be made before a request is made here, and a
//! configuration that fails one is refused with the JSON path of the field.

use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::authz::{uid, Evaluation, Policies};
use crate::cache::TokenCache;
use crate::config::{Auth, Config, RouteKind};
use crate::error::ConfigError;
use crate::mcp;
use crate::token::{Issuer, VerifiedToken};

use super::*;

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
            // One jwt_authn provider's payloads are one issuer's: two issuers reading the same
            // key would take each other's tokens.
            if let Some(key) = &ic.jwt_authn_payload {
                if !seen.insert(format!("jwt_authn_payload {key}")) {
                    return Err(ConfigError::new(
                        format!("{path}.jwt_authn_payload"),
                        "another issuer reads the same jwt_authn payload key",
                    ));
                }
            }
            let mut issuer = Issuer::compile(ic, &path, &c.limits)?;
            issuer.agent.max_delegation_depth = c.limits.max_delegation_depth;
            crate::agent::check_schema(&issuer.agent, &path, |t| policies.has_entity_type(t))?;
            if !policies.has_entity_type(&issuer.principal_type) {
                return Err(ConfigError::new(
                    format!("{path}.principal.type"),
                    format!("the schema has no entity type `{}`", issuer.principal_type),
                ));
            }
            if issuer.groups_claim.is_some() && !policies.has_entity_type(names::GROUP) {
                return Err(ConfigError::new(
                    format!("{path}.principal.groups_claim"),
                    "the schema has no entity type `Group`",
                ));
            }
            if issuer.namespace == names::SPIFFE_NAMESPACE
                && !c
                    .connection
                    .spiffe_trust_domains
                    .iter()
                    .any(|td| Some(td) == ic.spiffe_trust_domain.as_ref())
            {
                return Err(ConfigError::new(
                    format!("{path}.identity_namespace"),
                    "`spiffe` names the workloads of connection.spiffe_trust_domains: list this issuer's spiffe_trust_domain there",
                ));
            }
            if issuer.workload_actor {
                if c.connection.spiffe_trust_domains.is_empty() {
                    return Err(ConfigError::new(
                        format!("{path}.workload_actor"),
                        "needs connection.spiffe_trust_domains (and client_certificates \"verified\"): only a verified X.509-SVID of a listed trust domain names a workload",
                    ));
                }
                if !policies.has_entity_type(names::WORKLOAD) {
                    return Err(ConfigError::new(
                        format!("{path}.workload_actor"),
                        "the schema has no entity type `Workload`",
                    ));
                }
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
            if r.auth == Auth::Workload {
                if r.kind == RouteKind::Mcp {
                    return Err(ConfigError::new(
                        format!("routes[{i}].auth"),
                        "`workload` is for http routes: an mcp route's calls are decided with a token",
                    ));
                }
                if r.proof_of_possession == crate::config::ProofOfPossession::Required
                    || r.max_token_age_s.is_some()
                {
                    return Err(ConfigError::new(
                        format!("routes[{i}].auth"),
                        "a `workload` route reads no token: proof_of_possession and max_token_age_s do not apply",
                    ));
                }
                if c.connection.spiffe_trust_domains.is_empty() {
                    return Err(ConfigError::new(
                        format!("routes[{i}].auth"),
                        "`workload` needs connection.spiffe_trust_domains (and client_certificates \"verified\"): only a verified X.509-SVID of a listed trust domain names a workload",
                    ));
                }
            }
            let host = match r.host.as_deref() {
                None => None,
                Some(h) if h.is_empty() || h.contains([':', '/', '@']) => {
                    return Err(ConfigError::new(
                        format!("routes[{i}].host"),
                        "must be a host name without a port, path or user",
                    ))
                }
                Some(h) => Some(crate::path::host_for_policy(h)),
            };
            routes.push(Route {
                name: r.name.clone(),
                prefix: r.prefix.clone(),
                host,
                case_sensitive: r.case_sensitive,
                auth: r.auth,
                kind: r.kind,
                max_token_age_s: r.max_token_age_s,
                proof_required: r.proof_of_possession == crate::config::ProofOfPossession::Required,
            });
        }
        if routes.iter().any(|r| r.kind == RouteKind::Mcp) {
            for t in names::MCP_ENTITY_TYPES {
                if !policies.has_entity_type(t) {
                    return Err(ConfigError::new(
                        "schema",
                        format!("an mcp route needs entity type `{t}` in the schema"),
                    ));
                }
            }
        }
        if routes.iter().any(|r| r.auth != Auth::None) && !policies.has_entity_type(names::ROUTE) {
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
            // Headers the filter reads from the request (or sets itself) are never its output:
            // otherwise a client's copy would be read as if it were the filter's.
            let approval_header = c.approval.as_ref().map(|a| a.header.to_ascii_lowercase());
            if READ_HEADERS.contains(&lower.as_str()) || Some(&lower) == approval_header.as_ref() {
                return Err(ConfigError::new(
                    path,
                    "this header cannot be set by the filter: the filter reads it from the request",
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
            (
                "max_sessions_per_principal",
                c.limits.max_sessions_per_principal,
            ),
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
        let (status_lists, events) = compile_revocation(c.revocation.as_ref())?;
        if let Some(r) = c.revocation.as_ref().filter(|r| r.events.is_some()) {
            // A revocation kept for less than a token lives would let the token back in.
            for (i, ic) in c.issuers.iter().enumerate() {
                if ic.max_ttl_s.is_none_or(|t| t > r.retain_s) {
                    return Err(ConfigError::new(
                        format!("issuers[{i}].max_ttl_s"),
                        format!(
                            "with revocation.events every issuer needs max_ttl_s of at most \
                             revocation.retain_s ({} s), or a revoked token could outlive its \
                             revocation",
                            r.retain_s
                        ),
                    ));
                }
            }
        }
        let etcd = c
            .store
            .as_ref()
            .map(|s| crate::store::etcd::Etcd::compile(&s.etcd))
            .transpose()?;
        let sealer = c
            .sessions
            .as_ref()
            .map(|s| crate::sealed::Sealer::compile(&s.seal_keys))
            .transpose()?;
        if sealer.is_none() && etcd.is_some() && routes.iter().any(|r| r.kind == RouteKind::Mcp) {
            return Err(ConfigError::new(
                "sessions.seal_keys",
                "needed with store.etcd and an MCP route: a session bound in one process's \
                 shared data would be unknown (404) on every other replica",
            ));
        }
        if c.limits.max_pending_calls == 0 {
            return Err(ConfigError::new(
                "limits.max_pending_calls",
                "must be at least 1",
            ));
        }
        let dpop = c
            .dpop
            .as_ref()
            .map(crate::pop::dpop::Dpop::compile)
            .transpose()?;
        let connection = crate::pop::connection::ConnectionFacts::compile(&c.connection)?;
        for (i, h) in connection.request_headers.iter().enumerate() {
            if !policies.declared_anywhere(&format!("request/headers/{h}")) {
                return Err(ConfigError::new(
                    format!("connection.request_headers[{i}]"),
                    format!(
                        "`{h}` is declared in no action's context.request.headers in the schema \
                         (e.g. `type RequestHeaders = {{ \"{h}\"?: String }}`)"
                    ),
                ));
            }
            if owned_headers_contains(&forward, h) {
                return Err(ConfigError::new(
                    format!("connection.request_headers[{i}]"),
                    "is an identity header the filter sets (forward.headers)",
                ));
            }
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
            max_sessions_per_principal: c.limits.max_sessions_per_principal,
            formats: crate::formats::ArgumentFormats::compile(&c.argument_formats)?,
            resource_metadata,
            session_expiry: (c.limits.session_idle_s, c.limits.session_ttl_s),
            approval,
            approvable,
            cache: Mutex::new(TokenCache::new(
                c.limits.token_cache_entries,
                c.limits.token_cache_bytes,
            )),
            status_lists,
            events,
            etcd,
            sealer,
            dpop,
            connection,
            pending_calls: Mutex::new(Vec::new()),
            max_pending_calls: c.limits.max_pending_calls,
        };
        engine.check_schema_accepts_requests()?;
        engine.check_workload_routes()?;
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
                key_generation: 0,
                agent: crate::agent::parse(&payload.clone().into(), &issuer.agent).map_err(
                    |e| ConfigError::new(format!("issuers[{i}]"), format!("sample token: {e}")),
                )?,
                payload: payload.into(),
                binding: crate::pop::Binding::default(),
                checked: crate::authz::Checked::default(),
                session_owner: Default::default(),
            };
            let req = HttpRequest {
                method,
                path: &route.prefix,
                ..HttpRequest::default()
            };
            let resource =
                uid(names::ROUTE, &route.name).map_err(|e| ConfigError::new("routes", e))?;
            match self
                .evaluate(&token, method, resource, &req, 0, None, None)
                .map_err(|e| e.to_string())
            {
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
            if issuer.workload_actor {
                // The same token presented by a workload: a `Workload` principal.
                let mut presented = VerifiedToken {
                    checked: crate::authz::Checked::default(),
                    session_owner: Default::default(),
                    ..token.clone()
                };
                presented.agent.delegation.presenter =
                    Some("spiffe://tessera.configure.check/workload".into());
                let resource =
                    uid(names::ROUTE, &route.name).map_err(|e| ConfigError::new("routes", e))?;
                if let Ok(Evaluation::Error { reason }) | Err(reason) = self
                    .evaluate(&presented, method, resource, &req, 0, None, None)
                    .map_err(|e| e.to_string())
                {
                    return Err(ConfigError::new(
                        format!("issuers[{i}].workload_actor"),
                        format!("the schema does not accept a request with a workload as the principal: {reason}"),
                    ));
                }
            }
            let tool_calls = self.routes.iter().any(|r| r.kind == RouteKind::Mcp)
                && self.policies.has_action("tools/call");
            if delegated && tool_calls {
                self.check_task_detail(&token).map_err(|reason| {
                    let fields = issuer
                        .agent
                        .detail_field_names()
                        .collect::<Vec<_>>()
                        .join(", ");
                    ConfigError::new(
                        format!("issuers[{i}].task.detail_fields"),
                        format!(
                            "the schema does not accept the task detail fields ({fields}) of a tool call: {reason}"
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
            resource_type: names::TOOL,
            resource_id: tool.into(),
            tool: Some(tool.into()),
            uri: None,
            prompt: None,
            arguments: Some(json!({})),
            version: None,
            client: None,
        };
        let s = |v: &str| crate::authz::CedarValue::from(v.to_string());
        let record = crate::authz::value_record(vec![
            ("method".to_string(), s("tools/call")),
            ("tool".to_string(), s(tool)),
        ])?;
        let req = HttpRequest {
            method: "POST",
            ..HttpRequest::default()
        };
        let resource = uid(names::TOOL, tool)?;
        match self
            .evaluate(
                token,
                "tools/call",
                resource,
                &req,
                0,
                Some((record, &target, None)),
                None,
            )
            .map_err(|e| e.to_string())
        {
            Ok(Evaluation::Error { reason }) | Err(reason) => Err(reason),
            Ok(_) => Ok(()),
        }
    }
}

/// The RFC 9728 document, the URL clients are pointed to, and the paths it is served on: the
/// well-known URI inserted between host and path of the resource identifier (§3.1), and the bare
/// well-known path.
/// `revocation`: its status lists and its security events.
fn compile_revocation(
    r: Option<&crate::config::RevocationConfig>,
) -> Result<
    (
        Option<crate::revocation::status_list::StatusLists>,
        Option<crate::revocation::events::Events>,
    ),
    ConfigError,
> {
    let Some(r) = r else {
        return Ok((None, None));
    };
    if r.retain_s == 0 || r.max_entries == 0 {
        return Err(ConfigError::new(
            "revocation.retain_s",
            "retain_s and max_entries must be at least 1",
        ));
    }
    let retention = crate::revocation::Retention {
        retain_s: r.retain_s,
        max_entries: r.max_entries,
    };
    let lists = r
        .status_list
        .as_ref()
        .map(crate::revocation::status_list::StatusLists::compile)
        .transpose()?;
    let events = r
        .events
        .as_ref()
        .map(|e| crate::revocation::events::Events::compile(e, retention))
        .transpose()?;
    Ok((lists, events))
}

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
        crate::json::set(&mut doc, "scopes_supported", json!(m.scopes_supported));
    }
    if let Some(n) = &m.resource_name {
        crate::json::set(&mut doc, "resource_name", json!(n));
    }
    Ok((url, paths, doc.to_string()))
}

fn owned_headers_contains(forward: &[(String, HeaderSource)], name: &str) -> bool {
    forward.iter().any(|(n, _)| n == name)
}

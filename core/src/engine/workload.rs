//! Stages 2–5 of a route whose peer authenticates by its X.509-SVID (`auth: workload`): no token.
//! The credential is the verified client certificate whose URI SAN is a SPIFFE ID of a listed
//! trust domain (`pop/connection.rs`); the principal is `Workload::"spiffe|<SPIFFE ID>"`; the
//! Cedar request has the HTTP method as its action on the `Route`, and a context of what the
//! request and the connection say (`request`, `now`), nothing of a token.
//!
//! And a workload presenting a token of an issuer with `workload_actor`: the workload is the
//! token's outermost actor (`Engine::presented`), so `context.delegation` says who it acts for.

use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy::Entity;
use serde_json::Value;

use super::cedar::RequestLine;
use super::decision::{cannot_judge, deny_reply};
use super::identity::HeaderSource;
use super::route::Route;
use super::{Decision, Engine, HttpRequest};
use crate::authz::{uid, Evaluation, PerRequest};
use crate::error::{ConfigError, TokenError};
use crate::names;
use crate::token::VerifiedToken;
use crate::verdict::Verdict;

/// A workload the connection proved: its SPIFFE ID and that ID as a Cedar entity id.
struct Workload<'a> {
    spiffe_id: &'a str,
    entity_id: String,
}

impl Engine {
    pub(super) fn decide_workload(
        &self,
        route: &Route,
        req: &HttpRequest<'_>,
        now_s: u64,
    ) -> Decision {
        let Some(spiffe_id) = self.peer_spiffe_id(req) else {
            // No HTTP challenge can ask for a client certificate: 403, with what is missing.
            return deny_reply(
                Verdict::Deny,
                Some(route.name.clone()),
                "no workload identity: this route needs a verified client certificate whose URI SAN is a SPIFFE ID of a listed trust domain",
                req.request_id,
                403,
            );
        };
        let w = Workload {
            spiffe_id,
            entity_id: crate::identity::entity_id(names::SPIFFE_NAMESPACE, spiffe_id),
        };
        let principal = format!(
            "{}::{}",
            names::WORKLOAD,
            Value::String(w.entity_id.clone())
        );
        let evaluation = match self.evaluate_workload(&w, route, req, now_s) {
            Ok(e) => e,
            Err(reason) => return cannot_judge(route, reason, req.request_id),
        };
        let mut d = Decision::new(Verdict::Allow, Some(route.name.clone()), Some(principal));
        match evaluation {
            Evaluation::Allow { policies } => {
                d.policies = policies;
                d.set_headers = self.workload_headers(&w, d.principal.as_deref().unwrap_or(""));
            }
            Evaluation::Deny { policies } => {
                d.denied(policies, req.request_id);
            }
            Evaluation::Error { reason } => d.cannot_judge(reason, req.request_id),
        }
        d
    }

    /// `t` as presented on this request: when its issuer takes a presenting workload as the
    /// outermost actor (`issuers[].workload_actor`) and the connection carries a workload
    /// identity, a copy whose delegation ends with that workload (the principal). The copy is
    /// this request's alone: its schema checks and remembered decisions start empty, as the
    /// cached token's must not learn from another principal's requests.
    ///
    /// `Err`: the chain would be longer than `limits.max_delegation_depth` with the workload.
    pub(super) fn presented(
        &self,
        t: Arc<VerifiedToken>,
        req: &HttpRequest<'_>,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        let Some(issuer) = self.issuer_of(&t).ok().filter(|i| i.workload_actor) else {
            return Ok(t);
        };
        let Some(spiffe_id) = self.peer_spiffe_id(req) else {
            return Ok(t);
        };
        let max = issuer.agent.max_delegation_depth;
        if t.agent.delegation.depth() >= max {
            return Err(TokenError::DelegationTooDeep(max));
        }
        let mut presented = VerifiedToken {
            checked: crate::authz::Checked::default(),
            session_owner: Default::default(),
            ..(*t).clone()
        };
        presented.agent.delegation.presenter = Some(spiffe_id.to_string());
        Ok(Arc::new(presented))
    }

    /// The SPIFFE ID of the request's peer: its verified X.509-SVID of a listed trust domain.
    fn peer_spiffe_id<'r>(&self, req: &HttpRequest<'r>) -> Option<&'r str> {
        let peer = req.facts.and_then(|f| f.connection.tls.as_ref())?;
        self.connection.spiffe_id(peer).map(|(id, _)| id)
    }

    /// The Cedar request of a workload: its entity (no attributes, no groups), the method on
    /// the route, `context.request` and `context.now`. Checked against the schema every time
    /// (there is no token to remember the check with).
    fn evaluate_workload(
        &self,
        w: &Workload<'_>,
        route: &Route,
        req: &HttpRequest<'_>,
        now_s: u64,
    ) -> Result<Evaluation, String> {
        let principal = Entity::new_no_attrs(uid(names::WORKLOAD, &w.entity_id)?, HashSet::new());
        let resource = uid(names::ROUTE, &route.name)?;
        let line = RequestLine {
            method: req.method,
            path: crate::path::for_policy(req.path),
            host: &crate::path::host_for_policy(req.host),
            facts: req.facts,
        };
        let mut context = Vec::new();
        self.request_context(
            None,
            req.method,
            &line,
            now_s,
            &mut context,
            &mut String::new(),
        )
        .map_err(|e| e.to_string())?;
        Ok(self.policies.evaluate(
            vec![principal],
            req.method,
            resource,
            crate::authz::ContextParts {
                values: context,
                ..Default::default()
            },
            None,
            PerRequest::Fixed,
        ))
    }

    /// `forward.headers` for a workload: what names the principal; nothing of a token.
    fn workload_headers(&self, w: &Workload<'_>, principal: &str) -> Vec<(String, String)> {
        self.forward
            .iter()
            .filter_map(|(name, source)| {
                let value = match source {
                    HeaderSource::Principal => principal,
                    HeaderSource::PrincipalId => &w.entity_id,
                    HeaderSource::PrincipalType => names::WORKLOAD,
                    HeaderSource::Subject => w.spiffe_id,
                    HeaderSource::Issuer | HeaderSource::Scopes | HeaderSource::Claim(_) => {
                        return None
                    }
                };
                // A verified certificate's SAN has no control characters; checked all the same.
                (!value.chars().any(char::is_control)).then(|| (name.clone(), value.to_string()))
            })
            .collect()
    }

    /// At configure time, for the routes with `auth: workload`: the schema must have a
    /// `Workload` principal for the HTTP method actions, and accept a context without `token`,
    /// `delegation` or `pop` (declare them optional, `token?: Token`, and guard policies with
    /// `context has token`). Evaluates one sample request per declared method, so that a schema
    /// that does not accept them is a configuration error, not a denial per request.
    pub(super) fn check_workload_routes(&self) -> Result<(), ConfigError> {
        let Some((i, route)) = self
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.auth == crate::config::Auth::Workload)
        else {
            return Ok(());
        };
        let field = format!("routes[{i}].auth");
        if !self.policies.has_entity_type(names::WORKLOAD) {
            return Err(ConfigError::new(
                field,
                "`workload` needs entity type `Workload` in the schema",
            ));
        }
        let methods: Vec<_> = names::HTTP_METHODS
            .into_iter()
            .filter(|m| self.policies.has_action(m))
            .collect();
        if methods.is_empty() {
            return Err(ConfigError::new(
                "schema",
                "the schema declares no HTTP method actions (e.g. `action \"GET\"`)",
            ));
        }
        let sample = Workload {
            spiffe_id: "spiffe://tessera.configure.check/workload",
            entity_id: crate::identity::entity_id(
                names::SPIFFE_NAMESPACE,
                "spiffe://tessera.configure.check/workload",
            ),
        };
        for method in methods {
            let req = HttpRequest {
                method,
                path: &route.prefix,
                ..HttpRequest::default()
            };
            let reason = match self.evaluate_workload(&sample, route, &req, 0) {
                Ok(Evaluation::Error { reason }) | Err(reason) => reason,
                Ok(_) => continue,
            };
            return Err(ConfigError::new(
                field,
                format!(
                    "the schema does not accept a workload's request (action `{method}`; its context has no `token`, `delegation` or `pop`: declare them optional): {reason}"
                ),
            ));
        }
        Ok(())
    }
}

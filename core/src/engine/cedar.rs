//! The Cedar request built from a verified token and a request: the principal (in its issuer's
//! identity namespace), the entities, the context records; and its evaluation. The list filter
//! (`listing/`) builds its requests from the same per-token parts. The principal and the other
//! identities a token names are `identity.rs`'s.

use std::collections::HashSet;

use cedar_policy::{Entity, RestrictedExpression};
use serde_json::Value;

use crate::authz::{
    json_shape, json_to_cedar, shape_name, uid, value_of, value_record, CedarValue, ContextParts,
    Evaluation, PerRequest, Policies, TokenMemo, TokenParts,
};
use crate::error::RequestError;
use crate::mcp;
use crate::reply::LocalReply;
use crate::token::VerifiedToken;

use super::*;

/// The request line as policies see it (`context.request`), and the connection facts.
pub(crate) struct RequestLine<'a> {
    pub method: &'a str,
    /// Already in its policy form (`path::for_policy`, `path::host_for_policy`).
    pub path: &'a str,
    pub host: &'a str,
    pub facts: Option<&'a crate::pop::connection::RequestFacts>,
}

/// The entities (principal first) and context attributes of a Cedar request.
pub(crate) type RequestParts = (Vec<Entity>, Vec<(String, RestrictedExpression)>);

impl Engine {
    /// Builds and evaluates the Cedar request. `Err` names a token claim with no Cedar value.
    ///
    /// The request has per-token parts (entities and context attributes that come from the token
    /// alone: [`Engine::token_entities`], [`Engine::token_context`]) and per-request parts (the
    /// request line, the clock, the MCP call). The MCP call's record comes with its shape (see
    /// [`PerRequest::Shaped`]; `None`: none, the request is checked against the schema).
    // The arguments are the parts of one Cedar request; a struct would only name them again.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn evaluate(
        &self,
        t: &VerifiedToken,
        action: &str,
        resource: cedar_policy::EntityUid,
        req: &HttpRequest<'_>,
        now_s: u64,
        mcp: Option<(CedarValue, &mcp::Target, Option<&str>)>,
        approval: Option<&crate::approval::Granted>,
    ) -> Result<Evaluation, RequestError> {
        if mcp.is_none() && approval.is_none() {
            if let Some(e) = self.policies.remembered(&t.checked, action, &resource) {
                return Ok(e);
            }
        }
        let parts = self.token_parts_evaluated(t)?;
        let mut shape = parts.shape.clone();
        let mut values = Vec::new();
        // Evaluated now: the MCP call, a call's task, an approval.
        let mut fresh = Vec::new();
        // Per-request parts. Strings, the clock, the connection have one type whatever the
        // request says.
        let line = RequestLine {
            method: req.method,
            path: crate::path::for_policy(req.path),
            host: &crate::path::host_for_policy(req.host),
            facts: req.facts,
        };
        self.request_context(
            Some(&t.binding),
            action,
            &line,
            now_s,
            &mut values,
            &mut shape,
        )?;
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        // Only fixed-type per-request parts so far.
        let mut per_request = PerRequest::Fixed;
        if let Some((m, target, shape)) = mcp {
            values.push(("mcp".to_string(), m));
            per_request = shape.map_or(PerRequest::Varying, PerRequest::Shaped);
            // A tool call whose task names the tool: `context.task` gains that detail.
            if let Some(tool) = &target.tool {
                if let Some(task) =
                    crate::agent::task_for_call(&t.agent, tool, target.arguments.as_ref())
                {
                    // Replaces the token's `task` (`ContextParts`).
                    fresh.push(("task".to_string(), task?));
                    // Its details come from the arguments: no shape says their types.
                    per_request = PerRequest::Varying;
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
            .map_err(RequestError::build)?;
            fresh.push(("approval".to_string(), approval));
            per_request = PerRequest::Varying;
        }
        Ok(self.policies.evaluate(
            Vec::new(),
            action,
            resource,
            ContextParts {
                kept: Some(Arc::clone(&parts)),
                values,
                fresh,
            },
            Some(TokenMemo {
                checked: &t.checked,
                shape: &shape,
            }),
            per_request,
        ))
    }

    /// The parts of a Cedar request that come from `t` alone (`authz::TokenParts`): kept with
    /// the token (`Checked::offer_parts`), or built now, the context attributes evaluated.
    fn token_parts_evaluated(&self, t: &VerifiedToken) -> Result<Arc<TokenParts>, RequestError> {
        if let Some(parts) = t.checked.kept_parts() {
            return Ok(parts);
        }
        let mut shape = String::new();
        let entities = self.token_entities(t)?;
        let context = self.token_context(t, &mut shape)?;
        // How the token is bound (`context.pop`, built with the request's parts), and the
        // principal's type: the request is checked against the action's `appliesTo` too.
        t.binding.shape(&mut shape);
        if let Some(p) = entities.first() {
            shape_name(&mut shape, &p.uid().type_name().to_string());
        }
        let context = cedar_policy::Context::from_pairs(context).map_err(RequestError::build)?;
        let weight = crate::authz::parts_weight(t.payload.iter());
        let parts = Arc::new(TokenParts::new(entities, context, shape, weight));
        t.checked.offer_parts(&parts);
        Ok(parts)
    }

    /// The entities a request built from `t` needs: the principal first, with its groups as
    /// parents and its configured attributes. `Err` names the claim that has no Cedar value.
    pub(super) fn token_entities(&self, t: &VerifiedToken) -> Result<Vec<Entity>, RequestError> {
        let issuer = self.issuer_of(t).map_err(RequestError::build)?;
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
    pub(super) fn subject_entity(
        &self,
        t: &VerifiedToken,
        entity_type: &str,
    ) -> Result<Entity, RequestError> {
        let issuer = self.issuer_of(t).map_err(RequestError::build)?;
        let claim = |c: &String| RequestError::Claim(c.clone());
        let id = self
            .principal_id(t)
            .map_err(|_| claim(&issuer.principal_claim))?;
        let ns = |id: &str| crate::identity::entity_id(&issuer.namespace, id);
        let principal_uid =
            uid(entity_type, &ns(id)).map_err(|_| claim(&issuer.principal_claim))?;
        let mut parents = HashSet::new();
        if let Some(gc) = &issuer.groups_claim {
            for g in string_list(t.claim(gc)) {
                parents.insert(uid(names::GROUP, &ns(g)).map_err(|_| claim(gc))?);
            }
        }
        let mut attrs = std::collections::HashMap::new();
        for (attr, claim) in &issuer.principal_attributes {
            if let Some(v) = t.claim(claim) {
                attrs.insert(
                    attr.clone(),
                    json_to_cedar(v).map_err(|_| RequestError::Claim(claim.clone()))?,
                );
            }
        }
        Entity::new(principal_uid, attrs, parents).map_err(RequestError::build)
    }

    /// The context attributes that come from `t` alone (`token`). `Err` names the claim that has
    /// no Cedar value. Their shape goes to `shape` (see [`TokenMemo`]): what of their Cedar types
    /// can differ from one token of the issuer to another.
    ///
    /// ONLY values from the token belong here (and in [`Engine::token_entities`]): what is built
    /// here is evaluated once and kept with a token used more than once (`authz::TokenParts`),
    /// it is checked against the schema once per shape (a value whose type can vary from token
    /// to token must be described in `shape`), and decisions of actions whose policies read only
    /// these attributes (named in `authz::PER_TOKEN_CONTEXT`) are remembered per token. Anything
    /// that depends on the request goes with the per-request parts in [`Engine::evaluate`], as
    /// `PerRequest::Varying` unless its type never varies or a shape says it.
    pub(super) fn token_context(
        &self,
        t: &VerifiedToken,
        shape: &mut String,
    ) -> Result<Vec<(String, RestrictedExpression)>, RequestError> {
        use std::fmt::Write as _;
        let issuer = self.issuer_of(t).map_err(RequestError::build)?;
        // The issuer fixes the rest: which claims may appear, the delegation record's types.
        let _ = write!(shape, "{}|", t.issuer_index);
        let set = |v: &[String]| {
            RestrictedExpression::new_set(
                v.iter()
                    .map(|s| RestrictedExpression::new_string(s.clone())),
            )
        };
        let mut claims = Vec::new();
        for c in &issuer.claims {
            if let Some(v) = t.claim(c).filter(|v| !v.is_null()) {
                claims.push((
                    c.clone(),
                    json_to_cedar(v).map_err(|_| RequestError::Claim(c.clone()))?,
                ));
                shape_name(shape, c);
                json_shape(v, shape);
            }
        }
        shape.push('|');
        let record = |fields: Vec<(String, RestrictedExpression)>| {
            RestrictedExpression::new_record(fields).map_err(RequestError::build)
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
            shape.push('c');
            token.push((
                "client_id".to_string(),
                RestrictedExpression::new_string(c.clone()),
            ));
        }
        if let Some(iat) = t.issued_at {
            shape.push('i');
            token.push(("issued_at".to_string(), long(iat)));
        }
        // `delegation`'s members have fixed types (agent.rs); `task` has members or not.
        if let Some(task) = &t.agent.task {
            crate::agent::task_shape(task, shape);
        }
        let mut context = vec![("token".to_string(), record(token)?)];
        // `delegation` and `task` (agent.rs); parsed and checked when the token was verified.
        let agent = &t.agent;
        let subject = self
            .principal_id(t)
            .map_err(|_| RequestError::Claim(issuer.principal_claim.clone()))?;
        context.extend(crate::agent::context_parts(
            agent,
            subject,
            &issuer.namespace,
        )?);
        Ok(context)
    }

    /// The per-request context attributes every action has: `request` (the request line, and
    /// what the action's schema declares of the connection and the listed headers), `now`, and
    /// `pop` (how `binding`'s token is bound; none without a token) where declared.
    /// `Engine::evaluate`, the list filter and workload requests (`workload.rs`) build them here
    /// alike.
    pub(crate) fn request_context(
        &self,
        binding: Option<&crate::pop::Binding>,
        action: &str,
        line: &RequestLine<'_>,
        now_s: u64,
        context: &mut Vec<(String, CedarValue)>,
        shape: &mut String,
    ) -> Result<(), RequestError> {
        let s = |v: &str| CedarValue::from(v.to_string());
        let declares = |path: &str| self.policies.declares(action, path);
        // The shape (see `authz::TokenMemo`): which of the optional members are here. Every
        // member's type is fixed.
        shape.push('R');
        let mut request = vec![
            ("method".to_string(), s(line.method)),
            ("path".to_string(), s(line.path)),
            ("host".to_string(), s(line.host)),
        ];
        if let Some(facts) = line.facts {
            let c = &facts.connection;
            if let Some(ip) = c
                .source_ip
                .as_ref()
                .filter(|_| declares("request/source_ip"))
            {
                let ip = value_of(&RestrictedExpression::new_ip(ip.clone()))
                    .map_err(RequestError::build)?;
                request.push(("source_ip".to_string(), ip));
                shape.push('a');
            }
            if let Some(port) = c.source_port.filter(|_| declares("request/source_port")) {
                request.push(("source_port".to_string(), long_value(u64::from(port))));
                shape.push('o');
            }
            if let Some(peer) = c.tls.as_ref().filter(|_| declares("request/tls")) {
                let spiffe = self.connection.spiffe_id(peer);
                let fields = [
                    ("verified", Some(CedarValue::from(self.connection.verified))),
                    ("certificate_sha256", Some(s(&peer.certificate_sha256))),
                    ("subject", peer.subject.as_deref().map(s)),
                    ("spiffe_id", spiffe.map(|(id, _)| s(id))),
                    ("trust_domain", spiffe.map(|(_, td)| s(td))),
                ];
                shape.push('t');
                let tls: Vec<(String, CedarValue)> = fields
                    .into_iter()
                    .filter(|(name, _)| declares(&format!("request/tls/{name}")))
                    .filter_map(|(name, v)| Some((name.to_string(), v?)))
                    .collect();
                request.push(("tls".to_string(), shaped_record(tls, shape)?));
            }
        }
        if declares("request/headers") {
            let listed = line.facts.map_or(&[][..], |f| f.headers.as_slice());
            shape.push('h');
            let headers: Vec<(String, CedarValue)> = listed
                .iter()
                .filter(|(name, _)| declares(&format!("request/headers/{name}")))
                .map(|(name, value)| (name.clone(), s(value)))
                .collect();
            request.push(("headers".to_string(), shaped_record(headers, shape)?));
        }
        let request = value_record(request).map_err(RequestError::build)?;
        context.push(("request".to_string(), request));
        context.push(("now".to_string(), long_value(now_s)));
        if let Some(b) = binding.filter(|_| declares("pop")) {
            context.push(("pop".to_string(), b.context().map_err(RequestError::build)?));
            shape.push('P');
        }
        Ok(())
    }

    pub(crate) fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The per-token parts of a Cedar request, as `Engine::evaluate` builds them: the entities
    /// (principal first) and the `token`, `delegation` and `task` context attributes.
    pub(crate) fn token_parts(&self, t: &VerifiedToken) -> Result<RequestParts, RequestError> {
        Ok((
            self.token_entities(t)?,
            self.token_context(t, &mut String::new())?,
        ))
    }

    pub(super) fn step_up_for(&self, policies: &[String], request_id: &str) -> Option<LocalReply> {
        let scopes = self.policies.required_scopes(policies)?;
        let url = self.resource_metadata.as_ref().map(|(u, _, _)| u.as_str());
        Some(
            LocalReply::insufficient_scope(&scopes, policies, request_id)
                .with_resource_metadata(url),
        )
    }
}

/// A Cedar `Long` from a clock or token time (saturating: Cedar longs are signed 64-bit).
fn long(n: u64) -> RestrictedExpression {
    RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A record of optional members (`request.tls`, `request.headers`), their names written to
/// `shape` (which are there is what varies; their types do not).
fn shaped_record(
    fields: Vec<(String, CedarValue)>,
    shape: &mut String,
) -> Result<CedarValue, RequestError> {
    for (name, _) in &fields {
        shape_name(shape, name);
    }
    shape.push('.');
    value_record(fields).map_err(RequestError::build)
}

/// [`long`] as a value.
fn long_value(n: u64) -> CedarValue {
    CedarValue::from(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Groups may come as an array of strings or one space-separated string.
fn string_list(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => s.split_whitespace().collect(),
        _ => Vec::new(),
    }
}

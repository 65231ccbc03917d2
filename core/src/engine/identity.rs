//! The third stage: who the token says is calling — the principal (the current actor of a
//! delegation chain, else the subject) in its issuer's identity namespace, on whose behalf, the
//! task — and what of it goes upstream (the identity headers) or binds an MCP session.

use serde_json::{json, Value};

use super::Engine;
use crate::error::TokenError;
use crate::token::{Issuer, VerifiedToken};

/// Where the value of a forwarded identity header comes from (`forward.headers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HeaderSource {
    Principal,
    PrincipalId,
    PrincipalType,
    Issuer,
    Subject,
    Scopes,
    Claim(String),
}

impl Engine {
    /// The issuer that verified `t` (always one of this engine's: the token cache is the
    /// engine's own).
    pub(super) fn issuer_of(&self, t: &VerifiedToken) -> Result<&Issuer, TokenError> {
        self.issuers
            .get(t.issuer_index)
            .ok_or(TokenError::UnknownIssuer)
    }

    pub(super) fn principal_id<'t>(&self, t: &'t VerifiedToken) -> Result<&'t str, TokenError> {
        let issuer = self.issuer_of(t)?;
        t.claim(&issuer.principal_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenError::MissingClaim(issuer.principal_claim.clone()))
    }

    pub(super) fn principal_uid(&self, t: &VerifiedToken) -> Result<String, TokenError> {
        let (entity_type, id) = self.principal_type_and_id(t)?;
        Ok(format!("{entity_type}::{}", Value::String(id)))
    }

    /// The principal: the current actor of a delegated token (`agent.rs`), else the subject;
    /// its id in the issuer's identity namespace (`identity.rs`).
    pub(super) fn principal_type_and_id<'t>(
        &'t self,
        t: &'t VerifiedToken,
    ) -> Result<(&'t str, String), TokenError> {
        let issuer = self.issuer_of(t)?;
        let d = &t.agent.delegation;
        if let Some(w) = &d.presenter {
            // A presenting workload (`workload.rs`): a `Workload` in the `spiffe` namespace.
            let id = crate::identity::entity_id(crate::names::SPIFFE_NAMESPACE, w);
            return Ok((crate::names::WORKLOAD, id));
        }
        let (ty, id) = match d.current() {
            Some(actor) => (issuer.agent.actor_type.as_str(), actor),
            None => (issuer.principal_type.as_str(), self.principal_id(t)?),
        };
        Ok((ty, crate::identity::entity_id(&issuer.namespace, id)))
    }
    /// `approval::bind_identity` with the token's issuer, subject, actors and task.
    pub(super) fn bind_identity(&self, subject: &mut Value, t: &VerifiedToken) {
        // The namespace of an issuer this engine does not have (cannot happen) is empty: never
        // a real one, so the digest still binds nothing it should not.
        let namespace = self.issuer_of(t).map_or("", |i| i.namespace.as_str());
        let on_behalf_of = self
            .principal_id(t)
            .ok()
            .map(|s| crate::identity::entity_id(namespace, s));
        crate::approval::bind_identity(
            subject,
            &t.issuer,
            on_behalf_of.as_deref(),
            &t.agent
                .delegation
                .all()
                .map(str::to_string)
                .collect::<Vec<_>>(),
            t.agent.task.as_ref().and_then(|task| task.id.as_deref()),
        );
    }

    /// Who an MCP session of this request is bound to (`Decision::session_owner`): the digest
    /// (SHA-256, base64url) of the identity an approval binds — principal, on whose behalf, actors, task — with the
    /// issuer's identity namespace in place of the issuer, so that issuers configured to share
    /// identities share sessions too. All of it comes from the token and the configuration:
    /// computed once per token, kept with it.
    pub(super) fn session_owner(&self, t: &VerifiedToken) -> String {
        t.session_owner
            .get_or_init(|| {
                // Callers have the principal already: it was found.
                let principal = self.principal_uid(t).unwrap_or_default();
                self.session_owner_of(t, &principal)
            })
            .clone()
    }

    fn session_owner_of(&self, t: &VerifiedToken, principal: &str) -> String {
        let mut who = json!({"principal": principal});
        self.bind_identity(&mut who, t);
        let namespace = self.issuer_of(t).map_or("", |i| i.namespace.as_str());
        crate::json::set(&mut who, "issuer", json!(namespace));
        // A key of this filter's own: any one-to-one serialisation does (serde_json's, built in
        // a fixed order), and JCS would cost a serialiser pass per MCP request.
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(crate::cache::digest(&who.to_string()))
    }

    pub(super) fn identity_headers(
        &self,
        t: &VerifiedToken,
        principal: &str,
    ) -> Vec<(String, String)> {
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

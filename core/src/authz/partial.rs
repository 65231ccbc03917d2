//! Cedar partial evaluation (MCP list filtering, `listing/`) and the scopes a step-up asks for
//! (`Engine::decide`): kept apart from the request path of `mod.rs`.

use cedar_policy::{Context, Decision, Entity, EntityUid, PolicyId, Request, RestrictedExpression};

use super::Policies;

impl Policies {
    /// Cedar partial evaluation of one request whose context may hold unknowns: the decision when
    /// it is certain whatever the unknowns are, `None` when it depends on them. `Err` when the
    /// request cannot be built or a policy errors for certain (the caller fails closed).
    pub(crate) fn evaluate_partial(
        &self,
        entities: Vec<Entity>,
        action: &str,
        resource: EntityUid,
        context: Vec<(String, RestrictedExpression)>,
        after_step_up: bool,
    ) -> Result<Option<Decision>, String> {
        let index = self
            .by_action
            .get(action)
            .ok_or_else(|| format!("action `{action}` is not declared in the schema"))?;
        let principal = entities
            .first()
            .map(Entity::uid)
            .ok_or("no principal entity")?;
        let context = Context::from_pairs(context).map_err(|e| format!("context: {e}"))?;
        // Not checked against the schema: Cedar's request validation rejects an (untyped) unknown
        // where the schema declares a type. The known part is built as for a call, which is
        // checked; policies were validated against the declared types.
        let request = Request::new(principal, index.uid.clone(), resource, context, None)
            .map_err(|e| format!("request: {e}"))?;
        let entities = index
            .entities
            .clone()
            .add_entities(entities, Some(&self.schema))
            .map_err(|e| format!("entities: {e}"))?;
        // The whole set, not the per-action index: partial responses do not combine. After a
        // step-up the `@scope` forbids are lifted (the client will hold the scopes they name).
        let set = if after_step_up {
            &self.without_scope_forbids
        } else {
            &self.set
        };
        let response = self
            .authorizer
            .is_authorized_partial(&request, set, &entities);
        if let Some(p) = response.definitely_errored().next() {
            return Err(format!("policy `{p}` errored"));
        }
        Ok(response.decision())
    }

    /// The scopes a denial asks for: the union of the `@scope("…")` annotations (space-separated
    /// scopes) of `policies`, the determining forbids, when every one carries it. `None` when
    /// there is none (no permit is not a missing scope) or one does not say.
    pub fn required_scopes(&self, policies: &[String]) -> Option<Vec<String>> {
        let mut scopes = std::collections::BTreeSet::new();
        for id in policies {
            let policy = self.set.policy(&PolicyId::new(id.as_str()))?;
            if policy.effect() != cedar_policy::Effect::Forbid {
                return None;
            }
            let named: Vec<&str> = policy.annotation("scope")?.split_whitespace().collect();
            if named.is_empty() {
                return None;
            }
            scopes.extend(named.into_iter().map(str::to_string));
        }
        (!scopes.is_empty()).then(|| scopes.into_iter().collect())
    }
}

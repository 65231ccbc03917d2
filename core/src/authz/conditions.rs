//! One request's decision over the policies that can apply to it, evaluated by Cedar's own
//! evaluator (`cedar_policy_core`) on conditions built once, when the policies are compiled.
//!
//! `cedar_policy::Authorizer::is_authorized` rebuilds each policy's condition (its scope, `when`
//! and `unless` joined into one expression) on every evaluation, and builds a response of every
//! policy's outcome with its annotations; one request ran it once per policy list of the action
//! index (`mod.rs`). Here each policy's condition is built once and shared by every action it
//! applies to, and one evaluator (one request, one entity store) runs the lists of a request in
//! turn. What decides is Cedar's: its evaluator says whether each condition holds, and they
//! combine as Cedar's authorizer combines them — any satisfied forbid denies, otherwise any
//! satisfied permit allows, and a policy that errors is reported (the caller fails closed).
//! `index_decides_as_cedar_does` in `mod.rs` holds this to `is_authorized` over the whole set.

use std::sync::Arc;

use cedar_policy::{Entities, Request};
use cedar_policy_core::ast::{Effect, Expr, Literal, SlotEnv, ValueKind};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

use super::Evaluation;

/// One policy as the evaluator runs it, for the actions its action scope matches.
pub(super) struct Condition {
    /// The policy's id (its `@id`), as denials and logs name it.
    id: String,
    effect: Effect,
    /// Principal scope ∧ resource scope ∧ `when` ∧ ¬`unless`, built once. The action scope is
    /// left out: a condition is evaluated only for the actions the scope matches, decided once
    /// when the action index is built ([`action_scope_matches`]), so that `action in [A, B]`
    /// does not build the set `[A, B]` on every request.
    expr: Expr,
    /// Slot values (empty: templates are refused at compile time).
    env: SlotEnv,
}

impl Condition {
    pub(super) fn of(policy: &cedar_policy::Policy) -> Arc<Condition> {
        let ast: &cedar_policy_core::ast::Policy = policy.as_ref();
        // As Cedar's `TemplateBody::condition`, without the action scope; `&&` evaluates left
        // to right as there, so the same parts are evaluated (and err) in the same order.
        let body = ast
            .non_scope_constraints()
            .cloned()
            .unwrap_or_else(|| Expr::val(true));
        let expr = Expr::and(
            ast.principal_constraint().as_expr(),
            Expr::and(ast.resource_constraint().as_expr(), body),
        );
        Arc::new(Condition {
            id: policy.id().to_string(),
            effect: ast.effect(),
            expr,
            env: ast.env().clone(),
        })
    }
}

/// Whether a policy's action scope holds for `action`, whose ancestors (transitively, in the
/// schema's action hierarchy) are `ancestors`: as Cedar evaluates `action == A` (the same
/// action) and `action in [A, …]` (one of them, or an ancestor: `in` is reflexive).
pub(super) fn action_scope_matches(
    scope: &cedar_policy::ActionConstraint,
    action: &cedar_policy::EntityUid,
    ancestors: &[cedar_policy::EntityUid],
) -> bool {
    use cedar_policy::ActionConstraint;
    let is_in = |a: &cedar_policy::EntityUid| a == action || ancestors.contains(a);
    match scope {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => a == action,
        ActionConstraint::In(list) => list.iter().any(is_in),
    }
}

/// The decision on `request` with `entities` over the policies of `lists` (which together are
/// every policy that can apply to the request: see `ActionIndex`).
pub(super) fn decide<'a>(
    request: &Request,
    entities: &Entities,
    lists: impl IntoIterator<Item = &'a [Arc<Condition>]>,
) -> Evaluation {
    let evaluator = Evaluator::new(
        request.as_ref().clone(),
        entities.as_ref(),
        Extensions::all_available(),
    );
    let mut permits = Vec::new();
    let mut forbids = Vec::new();
    let mut errors = Vec::new();
    for condition in lists.into_iter().flatten() {
        let satisfied = match evaluator.interpret(&condition.expr, &condition.env) {
            Ok(v) => match v.value {
                ValueKind::Lit(Literal::Bool(b)) => Ok(b),
                // Never for a validated policy: a condition is a conjunction.
                other => Err(format!("type error: expected a boolean, got {other}")),
            },
            Err(e) => Err(e.to_string()),
        };
        match satisfied {
            Ok(true) => match condition.effect {
                Effect::Permit => permits.push(condition.id.clone()),
                Effect::Forbid => forbids.push(condition.id.clone()),
            },
            Ok(false) => {}
            // Cedar skips a policy that errors, which for a forbid would let the request
            // through: the request is not judged.
            Err(e) => errors.push(format!(
                "error while evaluating policy `{}`: {e}",
                condition.id
            )),
        }
    }
    if !errors.is_empty() {
        return Evaluation::Error {
            reason: format!("policy evaluation error: {}", errors.join("; ")),
        };
    }
    if forbids.is_empty() && !permits.is_empty() {
        permits.sort();
        Evaluation::Allow { policies: permits }
    } else {
        forbids.sort();
        Evaluation::Deny { policies: forbids }
    }
}

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

/// One policy as the evaluator runs it.
pub(super) struct Condition {
    /// The policy's id (its `@id`), as denials and logs name it.
    id: String,
    effect: Effect,
    /// Scope ∧ `when` ∧ ¬`unless`, built once.
    expr: Expr,
    /// Slot values (empty: templates are refused at compile time).
    env: SlotEnv,
}

impl Condition {
    pub(super) fn of(policy: &cedar_policy::Policy) -> Arc<Condition> {
        let ast: &cedar_policy_core::ast::Policy = policy.as_ref();
        Arc::new(Condition {
            id: policy.id().to_string(),
            effect: ast.effect(),
            expr: ast.condition(),
            env: ast.env().clone(),
        })
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

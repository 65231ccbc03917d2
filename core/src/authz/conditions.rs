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
//!
//! What a lookup of the action index already decided is left out of a condition: the action
//! scope, and the principal or resource scope the policy is kept under ([`Placement`]). A
//! condition that then reads nothing but the principal (its entity, groups and attributes) and
//! the token's `context.token` and `context.delegation` is the same for every request with one
//! token: its outcome is remembered with the token ([`Outcomes`]) and not evaluated again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cedar_policy::{Entities, EntityUid, PrincipalConstraint, Request, ResourceConstraint};
use cedar_policy_core::ast::{Effect, Expr, ExprKind, Literal, SlotEnv, ValueKind, Var};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

use super::Evaluation;

/// One policy as the evaluator runs it, for the actions its action scope matches.
pub(super) struct Condition {
    /// The policy's id (its `@id`), as denials and logs name it.
    id: String,
    effect: Effect,
    /// The principal scope ∧ the resource scope ∧ `when` ∧ ¬`unless`, built once, without what
    /// the index lookup decided: the action scope (decided when the action index is built,
    /// [`action_scope_matches`], so that `action in [A, B]` does not build the set `[A, B]` on
    /// every request) and the scope the policy is kept under ([`Placement`]).
    expr: Expr,
    /// Slot values (empty: templates are refused at compile time).
    env: SlotEnv,
    /// Where the outcome is remembered per token ([`Outcomes`]), when the condition reads
    /// nothing that a request brings ([`reads_only_the_token`]).
    slot: Option<usize>,
}

/// Where the action index keeps a policy: under the one principal or the one resource its
/// scope names (`principal == …` first), or with the others. A request's lists are the general
/// one and those of its principal and its resource, so a policy kept under one holds that scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Placement {
    Principal(EntityUid),
    Resource(EntityUid),
    General,
}

impl Placement {
    pub(super) fn of(policy: &cedar_policy::Policy) -> Placement {
        match (policy.principal_constraint(), policy.resource_constraint()) {
            (PrincipalConstraint::Eq(p), _) => Placement::Principal(p),
            (_, ResourceConstraint::Eq(r)) => Placement::Resource(r),
            _ => Placement::General,
        }
    }
}

/// Context attributes built from the token alone that no request replaces (unlike `task`,
/// which a tool call may narrow, and `pop`, built with each request).
const TOKEN_CONTEXT: [&str; 2] = ["token", "delegation"];

/// Whether every use of `context` in `expr` reads one of `attributes`: `context.a` or
/// `context has a`. Any other use (`context` itself, `context.other`) counts against it.
pub(super) fn reads_context_only(expr: &Expr, attributes: &[&str]) -> bool {
    let (mut contexts, mut named) = (0, 0);
    for e in expr.subexpressions() {
        match e.expr_kind() {
            ExprKind::Var(Var::Context) => contexts += 1,
            ExprKind::GetAttr { expr, attr } | ExprKind::HasAttr { expr, attr }
                if matches!(expr.expr_kind(), ExprKind::Var(Var::Context))
                    && attributes.contains(&attr.as_str()) =>
            {
                named += 1
            }
            _ => {}
        }
    }
    contexts == named
}

/// Whether `expr` reads nothing that a request brings: no resource, no action (a condition
/// serves several actions; nor an action entity, whose ancestors are in the store per action),
/// no context but `context.token` / `context.delegation`, no slot or unknown. The principal and
/// its entities come from the token.
fn reads_only_the_token(expr: &Expr) -> bool {
    let request_part = expr.subexpressions().any(|e| match e.expr_kind() {
        // Action entities and their hierarchy are in the store per action (`ActionIndex`).
        ExprKind::Lit(Literal::EntityUID(e)) => e.is_action(),
        ExprKind::Var(Var::Resource | Var::Action) | ExprKind::Slot(_) | ExprKind::Unknown(_) => {
            true
        }
        _ => false,
    });
    !request_part && reads_context_only(expr, &TOKEN_CONTEXT)
}

impl Condition {
    /// `policy`'s condition; `slots` counts the slots of [`Outcomes`] given out so far.
    pub(super) fn of(policy: &cedar_policy::Policy, slots: &mut usize) -> Arc<Condition> {
        let ast: &cedar_policy_core::ast::Policy = policy.as_ref();
        let placement = Placement::of(policy);
        // As Cedar's `TemplateBody::condition`, without what the lookup decided; `&&` evaluates
        // left to right as there, so the same parts are evaluated (and err) in the same order.
        let body = ast
            .non_scope_constraints()
            .cloned()
            .unwrap_or_else(|| Expr::val(true));
        let principal = match placement {
            Placement::Principal(_) => Expr::val(true),
            _ => ast.principal_constraint().as_expr(),
        };
        let resource = match placement {
            Placement::Resource(_) => Expr::val(true),
            _ => ast.resource_constraint().as_expr(),
        };
        let expr = Expr::and(principal, Expr::and(resource, body));
        let slot = (reads_only_the_token(&expr) && *slots < Outcomes::SLOTS).then(|| {
            *slots += 1;
            *slots - 1
        });
        Arc::new(Condition {
            id: policy.id().to_string(),
            effect: ast.effect(),
            expr,
            env: ast.env().clone(),
            slot,
        })
    }

    /// The action entities the condition names (`Action::"write" in Action::"writes"`): the
    /// action index's entity store holds them and their ancestors, as Cedar's store of every
    /// action entity would.
    pub(super) fn action_literals(&self) -> Vec<EntityUid> {
        self.expr
            .subexpressions()
            .filter_map(|e| match e.expr_kind() {
                ExprKind::Lit(Literal::EntityUID(uid)) if uid.is_action() => {
                    Some(EntityUid::from(uid.as_ref().clone()))
                }
                _ => None,
            })
            .collect()
    }
}

/// The outcomes of the conditions that read only the token ([`Condition::slot`]), remembered
/// with one token (`Checked`): whether each was evaluated, and whether it held. An outcome that
/// was an error is not remembered (the request is not judged, every time).
#[derive(Debug, Default)]
pub struct Outcomes {
    known: [AtomicU64; 2],
    held: [AtomicU64; 2],
}

impl Clone for Outcomes {
    fn clone(&self) -> Outcomes {
        let copy = |w: &[AtomicU64; 2]| {
            w.each_ref()
                .map(|a| AtomicU64::new(a.load(Ordering::Acquire)))
        };
        // Known first (as `get` reads them): an outcome known in the copy is there too.
        let known = copy(&self.known);
        Outcomes {
            known,
            held: copy(&self.held),
        }
    }
}

impl Outcomes {
    /// Conditions past the first 128 that read only the token are evaluated every time.
    const SLOTS: usize = 128;

    fn word_bit(slot: usize) -> Option<(usize, u64)> {
        (slot < Self::SLOTS).then(|| (slot / 64, 1u64 << (slot % 64)))
    }

    fn get(&self, slot: usize) -> Option<bool> {
        let (w, bit) = Self::word_bit(slot)?;
        let known = self.known.get(w)?.load(Ordering::Acquire) & bit != 0;
        known.then(|| {
            self.held
                .get(w)
                .is_some_and(|h| h.load(Ordering::Relaxed) & bit != 0)
        })
    }

    fn set(&self, slot: usize, held: bool) {
        let Some((w, bit)) = Self::word_bit(slot) else {
            return;
        };
        if let (Some(h), Some(k)) = (self.held.get(w), self.known.get(w)) {
            if held {
                h.fetch_or(bit, Ordering::Relaxed);
            }
            k.fetch_or(bit, Ordering::Release);
        }
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
/// every policy that can apply to the request: see `ActionIndex`). `token`: the outcomes
/// remembered for the token the request's principal, entities and token attributes all come
/// from (`None` when they do not all come from one token).
pub(super) fn decide<'a>(
    request: &Request,
    entities: &Entities,
    lists: impl IntoIterator<Item = &'a [Arc<Condition>]>,
    token: Option<&Outcomes>,
) -> Evaluation {
    let evaluator = Evaluator::new(
        request.as_ref().clone(),
        entities.as_ref(),
        Extensions::all_available(),
    );
    let evaluate =
        |condition: &Condition| match evaluator.interpret(&condition.expr, &condition.env) {
            Ok(v) => match v.value {
                ValueKind::Lit(Literal::Bool(b)) => Ok(b),
                // Never for a validated policy: a condition is a conjunction.
                other => Err(format!("type error: expected a boolean, got {other}")),
            },
            Err(e) => Err(e.to_string()),
        };
    let mut permits = Vec::new();
    let mut forbids = Vec::new();
    let mut errors = Vec::new();
    for condition in lists.into_iter().flatten() {
        let remembered = token.zip(condition.slot);
        let satisfied = match remembered.and_then(|(t, slot)| t.get(slot)) {
            Some(held) => Ok(held),
            None => {
                let outcome = evaluate(condition);
                if let (Some((t, slot)), Ok(held)) = (remembered, &outcome) {
                    t.set(slot, *held);
                }
                outcome
            }
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

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use cedar_policy::{Context, Entity, RestrictedExpression};

    use super::super::*;
    use crate::config::PolicySource;

    const SCHEMA: &str = r#"
        entity Group;
        entity User in [Group] { level: Long };
        entity Doc;
        type Ctx = { token: { scopes: Set<String> }, n: Long };
        action "read" appliesTo { principal: [User], resource: [Doc], context: Ctx };
        action "write" appliesTo { principal: [User], resource: [Doc], context: Ctx };
    "#;

    /// Which read only the token: `p-scope` (token claims), `p-doc` (kept under its resource,
    /// then the principal's attributes), `p-bo` (kept under its principal), `f-level` (the
    /// principal's groups and attributes).
    /// The others read the request: its context, its resource, its action (a condition serves
    /// every action its scope matches).
    const POLICIES: &str = r#"
        @id("p-scope") permit (principal, action, resource) when { context.token.scopes.contains("r") };
        @id("p-doc") permit (principal, action == Action::"read", resource == Doc::"d1") when { principal.level > 3 };
        @id("f-level") forbid (principal in Group::"g", action, resource) unless { principal.level > 1 };
        @id("p-bo") permit (principal == User::"bo", action == Action::"write", resource) when { principal.level > 0 };
        @id("f-n") forbid (principal, action == Action::"write", resource) when { context.n > 5 };
        @id("f-res") forbid (principal, action, resource) when { resource == Doc::"secret" };
        @id("p-act") permit (principal, action, resource) when { action == Action::"write" && context.n < 3 };
        @id("p-act-scope") permit (principal, action, resource) when { action == Action::"read" && context.token.scopes.contains("x") };
        @id("p-action-entity") permit (principal, action, resource) when { Action::"read" in Action::"read" && principal.level > 4 };
        @id("f-whole") forbid (principal, action, resource) when { context == { token: { scopes: ["x"] }, n: 9 } };
    "#;

    fn user(id: &str, level: i64, in_g: bool) -> Entity {
        super::super::tests::user_in(id, level, in_g.then_some("g"))
    }

    fn scopes(s: &[&str]) -> (String, RestrictedExpression) {
        let set = s
            .iter()
            .map(|s| RestrictedExpression::new_string(s.to_string()));
        let token = [("scopes".to_string(), RestrictedExpression::new_set(set))];
        (
            "token".to_string(),
            RestrictedExpression::new_record(token).unwrap(),
        )
    }

    /// Which conditions remember their outcome with the token.
    #[test]
    fn only_conditions_that_read_only_the_token_are_remembered() {
        let p = Policies::compile(SCHEMA, &PolicySource::Text(POLICIES.into())).unwrap();
        let mut remembered = HashMap::new();
        for index in p.by_action.values() {
            let lists = std::iter::once(&index.general)
                .chain(index.by_principal.values())
                .chain(index.by_resource.values());
            for c in lists.flatten() {
                remembered.insert(c.id.clone(), c.slot.is_some());
            }
        }
        let expected: HashMap<String, bool> = [
            ("p-scope", true),
            ("p-doc", true),
            ("f-level", true),
            ("p-bo", true),
            ("f-n", false),
            ("f-res", false),
            ("p-act", false),
            ("p-act-scope", false),
            ("f-whole", false),
            ("p-action-entity", false),
        ]
        .into_iter()
        .map(|(id, r)| (id.to_string(), r))
        .collect();
        assert_eq!(remembered, expected);
    }

    /// With outcomes remembered per token, every request of every token is decided as Cedar's
    /// `is_authorized` decides it over the whole set, in any order and again.
    #[test]
    fn remembered_outcomes_decide_as_cedar_does() {
        let p = Policies::compile(SCHEMA, &PolicySource::Text(POLICIES.into())).unwrap();
        let mut seen = HashSet::new();
        let tokens = [
            (user("ann", 5, true), scopes(&["r"])),
            (user("bo", 1, true), scopes(&["r"])),
            (user("cy", 4, false), scopes(&[])),
            (user("di", 0, false), scopes(&["x"])),
        ];
        for (principal, token) in tokens {
            let context = Context::from_pairs([token.clone()]).unwrap();
            let kept = Arc::new(TokenParts::new(
                vec![principal.clone()],
                context,
                String::new(),
                1,
            ));
            let checked = Checked::default();
            for round in 0..2 {
                for action in ["write", "read"] {
                    for doc in ["d1", "secret", "d2"] {
                        for n in [9, 0, 4] {
                            let resource = uid("Doc", doc).unwrap();
                            let parts = ContextParts {
                                kept: Some(Arc::clone(&kept)),
                                values: vec![("n".to_string(), CedarValue::from(n))],
                                fresh: vec![],
                            };
                            let ours = p.evaluate(
                                vec![],
                                action,
                                resource.clone(),
                                parts,
                                Some(TokenMemo {
                                    checked: &checked,
                                    shape: "",
                                }),
                                PerRequest::Varying,
                            );
                            let ctx = vec![
                                token.clone(),
                                ("n".to_string(), RestrictedExpression::new_long(n)),
                            ];
                            let cedar = cedar_decides(&p, principal.clone(), action, resource, ctx);
                            let who = principal.uid();
                            assert_eq!(ours, cedar, "round {round}: {who} {action} {doc} n={n}");
                            seen.insert(format!("{cedar:?}"));
                        }
                    }
                }
            }
            // The conditions that read only the token were remembered: three, and `p-bo` for
            // bo's token.
            let expected = if principal.uid() == uid("User", "bo").unwrap() {
                4
            } else {
                3
            };
            let known: u32 = checked
                .outcomes
                .known
                .iter()
                .map(|w| w.load(Ordering::Relaxed).count_ones())
                .sum();
            assert_eq!(known, expected, "{:?}", principal.uid());
        }
        assert!(seen.len() >= 6, "{seen:?}");
    }
}

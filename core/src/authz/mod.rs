//! Cedar: the compiled, validated policy set and schema, and the evaluation of one request.
//!
//! Policies are named by their `@id("…")` annotation so that denials and logs name what a policy
//! author wrote. Parse and validation errors carry the document name and line/column.
//!
//! What evaluation remembers between requests is `memo.rs`'s; the policies' conditions and the
//! decision over them are `conditions.rs`'s; the Cedar values of context attributes are
//! `values.rs`'s; partial evaluation (list filtering) and step-up scopes are `partial.rs`'s.
//! What each action's schema declares of its context is `declared.rs`'s. (Over 600 lines only
//! with its tests, which stay beside the code they pin.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use cedar_policy::{
    Authorizer, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet,
    Request, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

mod conditions;
mod declared;
mod memo;
mod partial;
mod values;
use conditions::{Condition, Placement};
use declared::declared_fields;
use memo::request_shape;
pub use memo::{
    json_shape, parts_weight, shape_name, Checked, ContextParts, PerRequest, TokenMemo, TokenParts,
    KEPT_BYTES,
};
pub use values::{expression_of, json_to_cedar, json_to_value, value_of, value_record, CedarValue};

use crate::config::PolicySource;
use crate::error::ConfigError;

pub struct Policies {
    pub set: PolicySet,
    /// `set` without the forbids that a step-up lifts (`@scope("…")`): what a caller could be
    /// allowed once its token has the scopes they name.
    without_scope_forbids: PolicySet,
    pub schema: Schema,
    /// Per schema action: what one request with that action needs, prepared at configure time.
    by_action: HashMap<String, ActionIndex>,
    authorizer: Authorizer,
    entity_types: HashSet<String>,
    /// Per action: the attributes its schema declares for `context.mcp`.
    /// Per action, the context attributes its schema declares (`declared_fields`).
    declared: HashMap<String, HashSet<String>>,
}

/// The policies that can apply to one action, split so that a request evaluates only those whose
/// scope can match it, and the action's own entities (it and its ancestors, for `action in …`,
/// and the action entities its conditions name, with theirs).
///
/// A policy whose action scope does not match is "not applicable" whatever else holds, so leaving
/// it out changes no decision; one whose scope matches holds it for every request with this
/// action, so its condition leaves the action scope out (`conditions.rs`). Policies naming one
/// principal (`principal == …`) or one resource (`resource == …`) are kept in maps by that
/// entity, so 1,000 per-agent or per-route policies cost a lookup, not 1,000 evaluations. A request's lists are evaluated by one evaluator and combined
/// as Cedar does (`conditions.rs`): any satisfied forbid denies; otherwise any satisfied permit
/// allows.
struct ActionIndex {
    uid: EntityUid,
    /// This action's key in [`Checked`]'s remembered decisions (0: none, more than 63 actions).
    bit: u64,
    entities: Entities,
    /// No policy for this action reads a per-request context attribute: decisions depend on the
    /// token, the action and the resource only.
    token_determined: bool,
    general: Vec<Arc<Condition>>,
    by_principal: HashMap<EntityUid, Vec<Arc<Condition>>>,
    by_resource: HashMap<EntityUid, Vec<Arc<Condition>>>,
    /// Shapes of whole requests with this action that fitted the schema once ([`request_shape`]:
    /// the resource, the token's parts and the request's, the varying part): a request of the
    /// same shape fits too, whatever the token or the values, so it is not checked again.
    fitting: Mutex<HashSet<String>>,
}

/// Request shapes remembered per action, and the longest remembered: a few kinds of token and
/// request, a few tools with a few argument combinations each; an odd request is checked every
/// time, never remembered without bound.
const SHAPES_PER_ACTION: usize = 256;
const MAX_SHAPE_LEN: usize = 1024;

impl ActionIndex {
    fn fits(&self, shape: &str) -> bool {
        self.fitting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(shape)
    }

    fn learn(&self, shape: String) {
        let mut known = self.fitting.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() < SHAPES_PER_ACTION && shape.len() <= MAX_SHAPE_LEN {
            known.insert(shape);
        }
    }
}

impl ActionIndex {
    fn build(
        uid: EntityUid,
        bit: u64,
        all: &Entities,
        set: &PolicySet,
        conditions: &HashMap<PolicyId, Arc<Condition>>,
    ) -> Result<ActionIndex, String> {
        let ancestors: Vec<EntityUid> = all
            .ancestors(&uid)
            .map(|a| a.cloned().collect())
            .unwrap_or_default();
        let mut lineage = ancestors.clone();
        lineage.push(uid.clone());
        let mut index = ActionIndex {
            uid,
            bit,
            entities: Entities::empty(),
            token_determined: true,
            general: Vec::new(),
            by_principal: HashMap::new(),
            by_resource: HashMap::new(),
            fitting: Mutex::default(),
        };
        for policy in set.policies() {
            // The conditions leave the action scope out: it is decided here, exactly.
            if !conditions::action_scope_matches(
                &policy.action_constraint(),
                &index.uid,
                &ancestors,
            ) {
                continue;
            }
            let ast: &cedar_policy_core::ast::Policy = policy.as_ref();
            if !conditions::reads_context_only(&ast.condition(), &PER_TOKEN_CONTEXT) {
                index.token_determined = false;
            }
            let target = match Placement::of(policy) {
                Placement::Principal(p) => index.by_principal.entry(p).or_default(),
                Placement::Resource(r) => index.by_resource.entry(r).or_default(),
                Placement::General => &mut index.general,
            };
            let condition = conditions
                .get(policy.id())
                .ok_or_else(|| format!("policy `{}` has no condition", policy.id()))?;
            // The action entities a condition names, with their ancestors, are in the store.
            for named in condition.action_literals() {
                let above = all
                    .ancestors(&named)
                    .map(|a| a.cloned().collect::<Vec<_>>());
                lineage.extend(above.unwrap_or_default());
                lineage.push(named);
            }
            target.push(Arc::clone(condition));
        }
        lineage.sort_by_key(|u| u.to_string());
        lineage.dedup();
        index.entities =
            Entities::from_entities(lineage.iter().filter_map(|u| all.get(u).cloned()), None)
                .map_err(|e| e.to_string())?;
        Ok(index)
    }
}

/// Context attributes built from the token alone; every other attribute (`request`, `now`,
/// `mcp`, `approval`, …) may differ from one request to the next.
/// (`pop` says how the token is bound; a bound token reaches Cedar only proven.)
const PER_TOKEN_CONTEXT: [&str; 4] = ["token", "delegation", "task", "pop"];

/// The outcome of one Cedar evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evaluation {
    Allow {
        policies: Vec<String>,
    },
    /// `policies` are the determining forbid policies; empty when no permit matched.
    Deny {
        policies: Vec<String>,
    },
    /// The request could not be judged (does not fit the schema, or a policy errored): denied.
    Error {
        reason: String,
    },
}

/// Byte offset → 1-based line and column.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Renders a Cedar diagnostic with the position of its first label.
fn located(d: &dyn Diagnostic, text: &str) -> String {
    let mut msg = d.to_string();
    if let Some(help) = d.help() {
        msg.push_str(&format!(" ({help})"));
    }
    match d.labels().and_then(|mut l| l.next()) {
        Some(label) => {
            let (line, col) = line_col(text, label.offset());
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

impl Policies {
    pub fn compile(schema_text: &str, source: &PolicySource) -> Result<Policies, ConfigError> {
        let (schema, _warnings) = Schema::from_cedarschema_str(schema_text)
            .map_err(|e| ConfigError::new("schema", located(&e, schema_text)))?;

        let documents: Vec<(String, String, &str)> = match source {
            PolicySource::Text(t) => {
                vec![("policies".to_string(), "policy".to_string(), t.as_str())]
            }
            PolicySource::Files(files) => files
                .iter()
                .map(|(name, text)| {
                    let stem = name.trim_end_matches(".cedar").to_string();
                    (format!("policies[\"{name}\"]"), stem, text.as_str())
                })
                .collect(),
        };

        let mut set = PolicySet::new();
        // Policy id → (config path of its document, its text), to locate validation errors.
        let mut origin: BTreeMap<String, (String, &str)> = BTreeMap::new();
        for (path, stem, text) in &documents {
            let parsed = PolicySet::from_str(text).map_err(|errs| {
                let msgs: Vec<String> = errs.iter().map(|e| located(e, text)).collect();
                ConfigError::new(path.clone(), msgs.join("; "))
            })?;
            if parsed.templates().next().is_some() {
                return Err(ConfigError::new(
                    path.clone(),
                    "policy templates are not supported",
                ));
            }
            for (n, policy) in parsed.policies().enumerate() {
                let id = match policy.annotation("id") {
                    Some(id) => id.to_string(),
                    None => format!("{stem}{n}"),
                };
                if origin.contains_key(&id) {
                    return Err(ConfigError::new(
                        path.clone(),
                        format!("duplicate policy id `{id}`"),
                    ));
                }
                if let Ok(est) = policy.to_json() {
                    crate::path::check_policy_literals(&est).map_err(|e| {
                        ConfigError::new(path.clone(), format!("policy `{id}`: {e}"))
                    })?;
                }
                set.add(policy.new_id(PolicyId::new(id.clone())))
                    .map_err(|e| ConfigError::new(path.clone(), e.to_string()))?;
                origin.insert(id, (path.clone(), text));
            }
        }

        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            let msgs: Vec<String> = result
                .validation_errors()
                .map(|e| {
                    let id = e.policy_id().to_string();
                    match origin.get(&id) {
                        Some((path, text)) => {
                            format!("{path}: policy `{id}`: {}", located(e, text))
                        }
                        None => format!("policy `{id}`: {e}"),
                    }
                })
                .collect();
            return Err(ConfigError::new(
                "policies",
                format!(
                    "policies do not validate against the schema: {}",
                    msgs.join("; ")
                ),
            ));
        }

        let action_entities = schema
            .action_entities()
            .map_err(|e| ConfigError::new("schema", e.to_string()))?;
        let entity_types = schema.entity_types().map(|t| t.to_string()).collect();
        // Each policy's condition built once, shared by every action it applies to.
        let mut slots = 0;
        let conditions: HashMap<PolicyId, Arc<Condition>> = set
            .policies()
            .map(|p| (p.id().clone(), Condition::of(p, &mut slots)))
            .collect();
        let mut by_action = HashMap::new();
        for (i, a) in schema.actions().enumerate() {
            let bit = if i < 63 { 1 << i } else { 0 };
            let index = ActionIndex::build(a.clone(), bit, &action_entities, &set, &conditions)
                .map_err(|e| ConfigError::new("schema", format!("action {a}: {e}")))?;
            by_action.insert(a.id().unescaped().to_string(), index);
        }
        let mut without_scope_forbids = PolicySet::new();
        for p in set.policies() {
            if !(p.effect() == cedar_policy::Effect::Forbid && p.annotation("scope").is_some()) {
                without_scope_forbids
                    .add(p.clone())
                    .map_err(|e| ConfigError::new("policies", e.to_string()))?;
            }
        }
        Ok(Policies {
            set,
            without_scope_forbids,
            schema,
            by_action,
            authorizer: Authorizer::new(),
            entity_types,
            declared: declared_fields(schema_text),
        })
    }

    /// Whether `action`'s schema declares `context.mcp.<field>`.
    pub fn mcp_declares(&self, action: &str, field: &str) -> bool {
        self.declares(action, &format!("mcp/{field}"))
    }

    /// Whether `action`'s schema declares the context attribute at `path` (`pop`,
    /// `request/tls`, `request/headers/x-tenant`): attributes the filter adds to older shapes
    /// go only where declared, so that a schema written before them keeps validating.
    pub fn declares(&self, action: &str, path: &str) -> bool {
        self.declared.get(action).is_some_and(|f| f.contains(path))
    }

    /// Whether some action's schema declares the context attribute at `path`.
    pub fn declared_anywhere(&self, path: &str) -> bool {
        self.declared.values().any(|f| f.contains(path))
    }

    pub fn has_entity_type(&self, name: &str) -> bool {
        self.entity_types.contains(name)
    }

    pub fn has_action(&self, name: &str) -> bool {
        self.by_action.contains_key(name)
    }

    /// The action of an MCP request: `call:<tool>` for a call of `tool` when the schema declares
    /// it (`names::call_action`), else the method (`generic`).
    pub fn action_for(&self, tool: Option<&str>, generic: &str) -> String {
        tool.map(crate::names::call_action)
            .filter(|a| self.has_action(a))
            .unwrap_or_else(|| generic.to_string())
    }

    pub fn policy_count(&self) -> usize {
        self.set.policies().count()
    }

    /// The decision remembered for this token, action and resource, when the action's policies
    /// read nothing that varies per request; callers check it before building a request. Only
    /// for requests whose per-request parts are the fixed-type ones (see [`Policies::evaluate`]).
    pub fn remembered(
        &self,
        checked: &Checked,
        action: &str,
        resource: &EntityUid,
    ) -> Option<Evaluation> {
        let index = self.by_action.get(action)?;
        if !index.token_determined || index.bit == 0 {
            return None;
        }
        checked.decision(index.bit, resource)
    }

    /// Evaluates one request. `entities` are the principal (first) and any entities the context
    /// refers to, with their parents and attributes; they and the context are checked against the
    /// schema, so that a policy never sees a value of another type than the one it was validated
    /// for. With parts kept with the token (`context.kept`), their entities come first, and the
    /// entity store built from them alone for this action is kept with them too.
    ///
    /// `token` is what is known of the token the entities come from (pass it only when they come
    /// from the token alone): entities that fitted the schema once fit it every time. A request
    /// fits when one of the same shape ([`request_shape`]: the resource, the `token`'s
    /// shape ([`TokenMemo`]) and `per_request`, see [`PerRequest`]) fitted this action once, with
    /// this token or another; a request without a shape is checked every time.
    pub fn evaluate(
        &self,
        entities: Vec<Entity>,
        action: &str,
        resource: EntityUid,
        context: impl Into<ContextParts>,
        token: Option<TokenMemo<'_>>,
        per_request: PerRequest<'_>,
    ) -> Evaluation {
        let checked = token.map(|t| t.checked);
        let error = |reason: String| Evaluation::Error { reason };
        let Some(index) = self.by_action.get(action) else {
            return error(format!("action `{action}` is not declared in the schema"));
        };
        let context: ContextParts = context.into();
        let kept = context.kept.clone();
        if kept.is_some() && !entities.is_empty() {
            // Kept parts come with their own entities and store, never with more.
            return error("entities given besides the token's kept parts".into());
        }
        let first = kept
            .as_ref()
            .map_or(entities.first(), |k| k.entities.first());
        let Some(principal_uid) = first.map(Entity::uid) else {
            return error("no principal entity".into());
        };
        let context = match context.into_context() {
            Ok(c) => c,
            Err(e) => return error(format!("context: {e}")),
        };
        let fixed = per_request == PerRequest::Fixed;
        let memo = checked.filter(|_| fixed && index.token_determined && index.bit != 0);
        if let Some(e) = memo.and_then(|c| c.decision(index.bit, &resource)) {
            return e;
        }
        let shape = request_shape(&resource, token, per_request);
        let request_known = shape.as_deref().is_some_and(|s| index.fits(s));
        let request = match Request::new(
            principal_uid.clone(),
            index.uid.clone(),
            resource.clone(),
            context,
            (!request_known).then_some(&self.schema),
        ) {
            Ok(r) => r,
            Err(e) => return error(format!("request does not fit the schema: {e}")),
        };
        let entities_known = checked.is_some_and(Checked::entities_fit);
        // The store of the token's entities alone, known to fit, is the same for every request
        // with this action.
        let keeps_store = kept
            .as_ref()
            .filter(|_| entities.is_empty() && index.bit != 0);
        let stored = keeps_store
            .filter(|_| entities_known)
            .and_then(|k| k.store(index.bit));
        let entities = match stored {
            Some(store) => store,
            None => {
                let all = match &kept {
                    Some(k) => k.entities.clone(),
                    None => entities,
                };
                match index
                    .entities
                    .clone()
                    .add_entities(all, (!entities_known).then_some(&self.schema))
                {
                    Ok(e) => {
                        let e = Arc::new(e);
                        if let Some(k) = keeps_store {
                            k.keep_store(index.bit, &e);
                        }
                        e
                    }
                    Err(e) => return error(format!("entities: {e}")),
                }
            }
        };
        // Here the request fitted (checked now, or known to).
        if let Some(c) = checked {
            c.entities.store(true, Ordering::Relaxed);
        }
        if let (false, Some(shape)) = (request_known, shape) {
            index.learn(shape);
        }
        let lists = [
            Some(&index.general),
            index.by_principal.get(&principal_uid),
            index.by_resource.get(&resource),
        ];
        // The principal, its entities and the token's attributes come from the token alone when
        // its kept parts are all the request has of it (entities besides them are refused).
        let outcomes = checked.filter(|_| kept.is_some()).map(|c| &c.outcomes);
        let e = conditions::decide(
            &request,
            &entities,
            lists.into_iter().flatten().map(Vec::as_slice),
            outcomes,
        );
        if let Some(c) = memo {
            c.remember(index.bit, resource, &e);
        }
        e
    }
}

pub fn uid(entity_type: &str, id: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(
        type_name(entity_type)?,
        EntityId::new(id),
    ))
}

/// Entity type names parsed once per thread: parsing one runs Cedar's parser, a few
/// microseconds, and every request names several. The names come from the configuration and
/// `names.rs`, never from a request, so there are few; past [`TYPE_NAMES_KEPT`] they are parsed
/// each time.
fn type_name(entity_type: &str) -> Result<EntityTypeName, String> {
    thread_local! {
        static PARSED: std::cell::RefCell<HashMap<String, EntityTypeName>> =
            std::cell::RefCell::new(HashMap::new());
    }
    if let Some(t) = PARSED.with(|p| p.borrow().get(entity_type).cloned()) {
        return Ok(t);
    }
    let t = EntityTypeName::from_str(entity_type)
        .map_err(|e| format!("entity type `{entity_type}`: {e}"))?;
    PARSED.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < TYPE_NAMES_KEPT {
            p.insert(entity_type.to_string(), t.clone());
        }
    });
    Ok(t)
}

const TYPE_NAMES_KEPT: usize = 64;

/// What Cedar's own authorizer decides for this request over the whole policy set, with every
/// action entity: the reference the index and the per-token outcomes are held to. Where Cedar
/// skips a policy that errors, we judge nothing.
#[cfg(test)]
fn cedar_decides(
    p: &Policies,
    principal: Entity,
    action: &str,
    resource: EntityUid,
    context: Vec<(String, cedar_policy::RestrictedExpression)>,
) -> Evaluation {
    use cedar_policy::{Context, Decision};
    let request = Request::new(
        principal.uid(),
        uid("Action", action).unwrap_or_else(|e| panic!("{e}")),
        resource,
        Context::from_pairs(context).unwrap_or_else(|e| panic!("{e}")),
        Some(&p.schema),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let entities = p
        .schema
        .action_entities()
        .unwrap_or_else(|e| panic!("{e}"))
        .add_entities([principal], Some(&p.schema))
        .unwrap_or_else(|e| panic!("{e}"));
    let r = Authorizer::new().is_authorized(&request, &p.set, &entities);
    let mut policies: Vec<String> = r.diagnostics().reason().map(|p| p.to_string()).collect();
    policies.sort();
    let errors: Vec<String> = r.diagnostics().errors().map(|e| e.to_string()).collect();
    match r.decision() {
        _ if !errors.is_empty() => Evaluation::Error {
            reason: format!("policy evaluation error: {}", errors.join("; ")),
        },
        Decision::Allow => Evaluation::Allow { policies },
        Decision::Deny => Evaluation::Deny { policies },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::{Context, RestrictedExpression};
    use serde_json::{json, Value};

    /// A token memo without a shape: nothing is shared with other tokens.
    fn memo(checked: &Checked) -> TokenMemo<'_> {
        TokenMemo { checked, shape: "" }
    }

    const SCHEMA: &str = r#"
        entity Group;
        entity User in [Group] { level: Long };
        entity Doc;
        action "act";
        action "read" in ["act"] appliesTo { principal: [User], resource: [Doc], context: { n: Long } };
        action "write" in ["act"] appliesTo { principal: [User], resource: [Doc], context: { n: Long } };
        action "delete" appliesTo { principal: [User], resource: [Doc], context: { n: Long } };
    "#;

    const POLICIES: &str = r#"
        @id("p-any") permit (principal in Group::"staff", action, resource) when { context.n > 5 };
        @id("p-read") permit (principal, action == Action::"read", resource);
        @id("p-act") permit (principal == User::"bob", action in Action::"act", resource);
        @id("p-doc") permit (principal, action in [Action::"write", Action::"delete"], resource == Doc::"d1");
        @id("f-secret") forbid (principal, action, resource == Doc::"secret") unless { principal.level > 3 };
        @id("f-eve") forbid (principal == User::"eve", action == Action::"read", resource);
        @id("f-big") forbid (principal, action in Action::"act", resource) when { context.n > 100 };
        @id("p-eq-parent") permit (principal, action == Action::"act", resource == Doc::"d2");
        @id("f-named-actions") forbid (principal, action == Action::"read", resource == Doc::"d2") when { Action::"write" in Action::"act" && principal.level > 4 };
        @id("f-overflow") forbid (principal, action == Action::"delete", resource) when { context.n * 10000000000000000 > 0 };
    "#;

    fn user(id: &str, level: i64, staff: bool) -> Entity {
        user_in(id, level, staff.then_some("staff"))
    }

    /// `User::"<id>"` with `level`, a member of `Group::"<group>"` if given.
    pub(super) fn user_in(id: &str, level: i64, group: Option<&str>) -> Entity {
        let parents: HashSet<_> = group
            .map(|g| uid("Group", g).unwrap())
            .into_iter()
            .collect();
        let attrs = [("level".to_string(), RestrictedExpression::new_long(level))];
        Entity::new(
            uid("User", id).unwrap(),
            attrs.into_iter().collect(),
            parents,
        )
        .unwrap()
    }

    /// The indexed evaluation decides every request exactly as Cedar does with the whole policy
    /// set and every action entity, including the determining policies and the errors (where
    /// Cedar skips the policy, we judge nothing: `f-overflow` overflows for `n = 1000`).
    #[test]
    fn index_decides_as_cedar_does() {
        let p = Policies::compile(SCHEMA, &PolicySource::Text(POLICIES.into())).unwrap();
        let mut seen = HashSet::new();
        for (id, level, staff) in [("alice", 1, true), ("bob", 5, false), ("eve", 9, true)] {
            for action in ["read", "write", "delete"] {
                for doc in ["d1", "d2", "secret"] {
                    for n in [0, 10, 1000] {
                        let principal = user(id, level, staff);
                        let ctx = vec![("n".to_string(), RestrictedExpression::new_long(n))];
                        let resource = uid("Doc", doc).unwrap();
                        let ours = p.evaluate(
                            vec![principal.clone()],
                            action,
                            resource.clone(),
                            ctx.clone(),
                            None,
                            PerRequest::Fixed,
                        );
                        let cedar = cedar_decides(&p, principal, action, resource, ctx);
                        assert_eq!(ours, cedar, "{id} {action} {doc} n={n}");
                        seen.insert(format!("{cedar:?}"));
                    }
                }
            }
        }
        // The grid reaches allows and denies by several policies and errors, not one outcome.
        assert!(seen.len() >= 8, "{seen:?}");
        assert!(seen.iter().any(|s| s.contains("f-overflow")), "{seen:?}");
    }

    /// Requests are checked against the schema once per shape: the resource's type, the token's
    /// shape, the kind of per-request parts and their shape. Whatever differs in one of them is
    /// checked again; a varying part without a shape, or a token without one, every time.
    #[test]
    fn requests_are_remembered_by_shape() {
        let p = Policies::compile(SCHEMA, &PolicySource::Text(POLICIES.into())).unwrap();
        let doc = || uid("Doc", "d2").unwrap();
        let n = |v: RestrictedExpression| vec![("n".to_string(), v)];
        let good = || n(RestrictedExpression::new_long(1));
        // A request that does not fit shows whether it was checked: checked, it does not fit
        // the schema; not checked, the policies meet a string where they compare a number. (A
        // real request of a remembered shape fits.)
        let bad = || n(RestrictedExpression::new_string("ten".into()));
        let alice = || vec![user("alice", 1, true)];
        let with = |checked, shape| Some(TokenMemo { checked, shape });
        let was_checked = |e: Evaluation| match e {
            Evaluation::Error { reason } if reason.starts_with("request does not fit") => true,
            Evaluation::Error { reason } if reason.starts_with("policy evaluation error") => false,
            e => panic!("{e:?}"),
        };
        let (first, second) = (Checked::default(), Checked::default());
        let eval = |action, resource, ctx, token, per_request| {
            p.evaluate(alice(), action, resource, ctx, token, per_request)
        };
        // A varying part without a shape: checked every time, and nothing is remembered.
        for ctx in [bad(), good(), bad()] {
            let fits = ctx == good();
            let e = eval("read", doc(), ctx, with(&first, "A"), PerRequest::Varying);
            assert_eq!(matches!(e, Evaluation::Error { .. }), !fits, "{e:?}");
        }
        assert!(first.entities_fit());
        assert!(was_checked(eval(
            "read",
            doc(),
            bad(),
            with(&first, "A"),
            PerRequest::Fixed
        )));
        // A fixed request that fitted: another token of the same shape is not checked.
        let e = eval("read", doc(), good(), with(&first, "A"), PerRequest::Fixed);
        assert!(matches!(e, Evaluation::Allow { .. }), "{e:?}");
        assert!(!was_checked(eval(
            "read",
            doc(),
            bad(),
            with(&second, "A"),
            PerRequest::Fixed
        )));
        // Another token shape, action, resource or kind of per-request parts is checked.
        let d3 = || uid("Doc", "d3").unwrap();
        let e = eval("read", d3(), bad(), with(&second, "A"), PerRequest::Fixed);
        assert!(was_checked(e));
        assert!(was_checked(eval(
            "read",
            doc(),
            bad(),
            with(&second, "B"),
            PerRequest::Fixed
        )));
        assert!(was_checked(eval(
            "act",
            doc(),
            bad(),
            with(&second, "A"),
            PerRequest::Fixed
        )));
        let other_type = uid("User", "d2").unwrap();
        let e = eval(
            "read",
            other_type,
            good(),
            with(&second, "A"),
            PerRequest::Fixed,
        );
        assert!(was_checked(e));
        let shaped = PerRequest::Shaped("l");
        assert!(was_checked(eval(
            "read",
            doc(),
            bad(),
            with(&second, "A"),
            shaped
        )));
        // A shaped request that fitted: the same shapes are not checked, another one is.
        let e = eval("read", doc(), good(), with(&second, "A"), shaped);
        assert!(matches!(e, Evaluation::Allow { .. }), "{e:?}");
        assert!(!was_checked(eval(
            "read",
            doc(),
            bad(),
            with(&first, "A"),
            shaped
        )));
        let other = PerRequest::Shaped("s");
        assert!(was_checked(eval(
            "read",
            doc(),
            bad(),
            with(&first, "A"),
            other
        )));
        assert!(was_checked(eval(
            "read",
            doc(),
            bad(),
            with(&first, "B"),
            shaped
        )));
        // A token without a shape shares nothing.
        let e = eval("read", doc(), good(), with(&first, ""), PerRequest::Fixed);
        assert!(matches!(e, Evaluation::Allow { .. }), "{e:?}");
        assert!(was_checked(eval(
            "read",
            doc(),
            bad(),
            with(&first, ""),
            PerRequest::Fixed
        )));
        assert!(!p.by_action["write"].fits("F3:Doc2:d21:A"));
        assert!(p.by_action["read"].fits("F3:Doc2:d21:A"));
    }

    /// Different Cedar types never share a shape; the same type with other values does.
    #[test]
    fn shapes_say_the_type_and_only_the_type() {
        let shape = |v: Value| {
            let mut s = String::new();
            json_shape(&v, &mut s);
            s
        };
        let distinct = [
            json!("x"),
            json!(1),
            json!(true),
            json!([]),
            json!(["x"]),
            json!(["x", 1]),
            json!([["x"]]),
            json!([["x"], "x"]),
            json!({}),
            json!({"a": "x"}),
            json!({"a": 1}),
            json!({"b": "x"}),
            json!({"a": "x", "b": "x"}),
            json!({"a": {"b": "x"}}),
            json!({"ab": "x"}),
            json!({"1:a": "x"}),
            json!({"a": "x", "1:b": "x"}),
            json!({"a": [{"b": 1}]}),
            json!({"a": [{"b": 1}, {"b": "x"}]}),
        ];
        let shapes: HashSet<String> = distinct.iter().cloned().map(shape).collect();
        assert_eq!(shapes.len(), distinct.len(), "{shapes:?}");
        assert_eq!(
            shape(json!({"a": "x", "n": 1, "s": ["p"]})),
            shape(json!({"a": "another", "n": -7, "s": ["q", "r", "p"], "gone": null}))
        );
        assert_eq!(shape(json!(["x", 1, "y"])), shape(json!([2, "z"])));
    }

    /// A resource of an enumerated entity type is checked against the enumeration: one that
    /// fitted says nothing of another of the same type.
    #[test]
    fn enumerated_resources_are_remembered_one_by_one() {
        let schema = r#"
            entity User;
            entity Tool enum ["search", "fetch"];
            action "call" appliesTo { principal: [User], resource: [Tool], context: {} };
        "#;
        let policies = r#"@id("any-tool") permit (principal, action, resource is Tool);"#;
        let p = Policies::compile(schema, &PolicySource::Text(policies.into())).unwrap();
        let bob = || {
            vec![Entity::new(uid("User", "bob").unwrap(), HashMap::new(), HashSet::new()).unwrap()]
        };
        let checked = Checked::default();
        let token = Some(TokenMemo {
            checked: &checked,
            shape: "A",
        });
        for (tool, allowed) in [("search", true), ("delete_all", false), ("fetch", true)] {
            for _ in 0..2 {
                let resource = uid("Tool", tool).unwrap();
                let e = p.evaluate(bob(), "call", resource, vec![], token, PerRequest::Fixed);
                assert_eq!(
                    matches!(e, Evaluation::Allow { .. }),
                    allowed,
                    "{tool}: {e:?}"
                );
            }
        }
    }

    /// Decisions are remembered only for actions whose policies read nothing per request.
    #[test]
    fn decisions_are_remembered_only_when_token_determined() {
        let schema = r#"
            entity User;
            entity Doc;
            type Ctx = { token: { level: Long }, now: Long };
            action "a" appliesTo { principal: [User], resource: [Doc], context: Ctx };
            action "b" appliesTo { principal: [User], resource: [Doc], context: Ctx };
            action "c" appliesTo { principal: [User], resource: [Doc], context: Ctx };
            action "d" appliesTo { principal: [User], resource: [Doc], context: Ctx };
        "#;
        let policies = r#"
            @id("a-level") permit (principal, action == Action::"a", resource) when { context.token.level > 1 };
            @id("b-clock") permit (principal, action == Action::"b", resource) when { context.now < 100 };
            @id("c-has") permit (principal, action == Action::"c", resource) when { context has token && context["token"].level > 1 };
            @id("d-both") permit (principal, action == Action::"d", resource) when { context.token.level > 1 } unless { context.now > 5 };
        "#;
        let p = Policies::compile(schema, &PolicySource::Text(policies.into())).unwrap();
        assert!(p.by_action["a"].token_determined);
        assert!(!p.by_action["b"].token_determined);
        assert!(p.by_action["c"].token_determined);
        assert!(!p.by_action["d"].token_determined);
        let checked = Checked::default();
        let ctx = |now: i64| {
            vec![
                (
                    "token".to_string(),
                    RestrictedExpression::new_record([(
                        "level".to_string(),
                        RestrictedExpression::new_long(2),
                    )])
                    .unwrap(),
                ),
                ("now".to_string(), RestrictedExpression::new_long(now)),
            ]
        };
        let bob = || {
            vec![Entity::new(uid("User", "bob").unwrap(), HashMap::new(), HashSet::new()).unwrap()]
        };
        let doc = || uid("Doc", "d").unwrap();
        for (action, now, allowed) in [
            ("b", 1, true),
            ("b", 500, false),
            ("a", 1, true),
            ("a", 500, true),
        ] {
            let e = p.evaluate(
                bob(),
                action,
                doc(),
                ctx(now),
                Some(memo(&checked)),
                PerRequest::Fixed,
            );
            assert_eq!(
                matches!(e, Evaluation::Allow { .. }),
                allowed,
                "{action} {now}: {e:?}"
            );
        }
        let remembered = checked.decisions.lock().unwrap().clone();
        assert_eq!(remembered.len(), 1, "{remembered:?}");
        assert_eq!(remembered[0].0, p.by_action["a"].bit);
        // A varying context never uses or fills the memo.
        let other = Checked::default();
        p.evaluate(
            bob(),
            "a",
            doc(),
            ctx(1),
            Some(memo(&other)),
            PerRequest::Varying,
        );
        assert!(other.decisions.lock().unwrap().is_empty());
    }

    /// A record built as values is the value its expression evaluates to; a name twice is
    /// refused by both.
    #[test]
    fn records_built_as_values_are_what_their_expressions_evaluate_to() {
        let e = |n: &str, v: RestrictedExpression| (n.to_string(), v);
        let expression = RestrictedExpression::new_record([
            e("method", RestrictedExpression::new_string("POST".into())),
            e("port", RestrictedExpression::new_long(443)),
            e("verified", RestrictedExpression::new_bool(true)),
            e("ip", RestrictedExpression::new_ip("10.0.0.1")),
        ])
        .unwrap();
        let v = |n: &str, v: CedarValue| (n.to_string(), v);
        let ip = value_of(&RestrictedExpression::new_ip("10.0.0.1")).unwrap();
        let built = value_record(vec![
            v("method", CedarValue::from("POST".to_string())),
            v("port", CedarValue::from(443i64)),
            v("verified", CedarValue::from(true)),
            v("ip", ip),
        ])
        .unwrap();
        assert_eq!(value_of(&expression).unwrap(), built);
        let twice = vec![
            v("a", CedarValue::from(1i64)),
            v("a", CedarValue::from(2i64)),
        ];
        assert!(value_record(twice).unwrap_err().contains("`a`"));
        let pairs = [
            e("a", RestrictedExpression::new_long(1)),
            e("a", RestrictedExpression::new_long(2)),
        ];
        assert!(RestrictedExpression::new_record(pairs).is_err());
    }

    /// A token's kept parts bring their own entities (and store): entities given besides them
    /// are refused, never added unchecked.
    #[test]
    fn entities_besides_kept_parts_are_refused() {
        let p = Policies::compile(SCHEMA, &PolicySource::Text(POLICIES.into())).unwrap();
        let alice = || vec![user("alice", 1, true)];
        let context =
            Context::from_pairs([("n".to_string(), RestrictedExpression::new_long(1))]).unwrap();
        let kept = Arc::new(TokenParts::new(alice(), context, String::new(), 1));
        let parts = |kept: &Arc<TokenParts>| ContextParts {
            kept: Some(Arc::clone(kept)),
            ..ContextParts::default()
        };
        let doc = || uid("Doc", "d2").unwrap();
        let e = p.evaluate(
            alice(),
            "read",
            doc(),
            parts(&kept),
            None,
            PerRequest::Fixed,
        );
        assert!(
            matches!(&e, Evaluation::Error { reason } if reason.contains("besides")),
            "{e:?}"
        );
        let e = p.evaluate(vec![], "read", doc(), parts(&kept), None, PerRequest::Fixed);
        assert!(!matches!(e, Evaluation::Error { .. }), "{e:?}");
    }
}

//! Agent identity in tokens: RFC 8693 delegation chains (`act`) and task-scoped credentials
//! (RFC 9396 `authorization_details`, a task id, an intent). Checked when the token is verified,
//! so that a bad or too deep chain or a bad detail is a 401 before Cedar sees it, and turned into
//! the per-token Cedar parts (`Engine::token_entities`, `Engine::token_context`): the principal
//! (the current actor), the `on_behalf_of` entity, `context.delegation` and `context.task`.
//!
//! RFC 8693 §4.1: `act` is an object naming the current actor (`sub`); earlier actors are nested
//! inside it, so the outermost `act` is the party making this request. The RFC says that only the
//! top-level claims and the current actor should grant access; the earlier actors are exposed for
//! policies that restrict (every actor trusted, chains no longer than N) and for logs.
//!
//! (Over 600 lines only with its tests, which stay beside the code they pin: the module is
//! 570 lines.)

use cedar_policy::{Entity, EntityUid, RestrictedExpression};
use serde_json::{Map, Value};

use crate::config::{DelegationConfig, TaskConfig, DEFAULT_MAX_DELEGATION_DEPTH};
use crate::error::{ConfigError, RequestError, TokenError};

/// RFC 8693 §4.1 claim carrying the actor chain.
pub const ACT_CLAIM: &str = "act";
/// RFC 9396 §9.1 claim carrying the authorization details in a JWT access token.
pub const DETAILS_CLAIM: &str = "authorization_details";
/// The member of a tool detail that names the tool (RFC 9396 §2.2 common field `identifier`).
pub const TOOL_MEMBER: &str = "identifier";
/// Entity type of `context.delegation.on_behalf_of`.
pub use crate::names::ON_BEHALF_OF as ON_BEHALF_OF_TYPE;
/// Filter-derived member of `context.task.detail`; no detail field may take its name.
const ARGUMENT_DOMAINS: &str = "argument_domains";

/// The Cedar type of a detail field; a detail whose member has another JSON type is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldType {
    Long,
    String,
    Bool,
    StringSet,
}

impl FieldType {
    fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "Long" => FieldType::Long,
            "String" => FieldType::String,
            "Bool" => FieldType::Bool,
            "Set<String>" => FieldType::StringSet,
            _ => return None,
        })
    }

    fn accepts(self, v: &Value) -> bool {
        match self {
            FieldType::Long => v.is_i64(),
            FieldType::String => v.is_string(),
            FieldType::Bool => v.is_boolean(),
            FieldType::StringSet => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        }
    }
}

/// The compiled `delegation` and `task` settings of one issuer.
#[derive(Debug)]
pub struct AgentConfig {
    pub actor_type: String,
    /// `issuers[].delegation` is set: `act` is honoured (else a token with `act` is refused).
    pub delegation: bool,
    /// `limits.max_delegation_depth`, set by the engine.
    pub max_delegation_depth: usize,
    id_claim: String,
    intent_claim: String,
    tool_detail_type: String,
    detail_fields: Vec<(String, FieldType)>,
}

impl AgentConfig {
    /// `path` is the issuer's (`issuers[1]`).
    pub fn compile(
        d: Option<&DelegationConfig>,
        t: &TaskConfig,
        path: &str,
    ) -> Result<AgentConfig, ConfigError> {
        let delegation = d.is_some();
        let default = DelegationConfig::default();
        let d = d.unwrap_or(&default);
        let non_empty = |v: &str, field: &str| {
            if v.is_empty() {
                Err(ConfigError::new(
                    format!("{path}.{field}"),
                    "must not be empty",
                ))
            } else {
                Ok(())
            }
        };
        non_empty(&d.actor_type, "delegation.actor_type")?;
        non_empty(&t.id_claim, "task.id_claim")?;
        non_empty(&t.intent_claim, "task.intent_claim")?;
        non_empty(&t.tool_detail_type, "task.tool_detail_type")?;
        let mut detail_fields = Vec::with_capacity(t.detail_fields.len());
        for (name, ty) in &t.detail_fields {
            let field = format!("{path}.task.detail_fields.{name}");
            if name.is_empty() || name == ARGUMENT_DOMAINS || name == "type" || name == TOOL_MEMBER
            {
                return Err(ConfigError::new(
                    field,
                    "reserved or empty name (type, identifier and argument_domains are the filter's)",
                ));
            }
            let ty = FieldType::parse(ty).ok_or_else(|| {
                ConfigError::new(
                    field,
                    format!("unknown type `{ty}`: use Long, String, Bool or Set<String>"),
                )
            })?;
            detail_fields.push((name.clone(), ty));
        }
        Ok(AgentConfig {
            actor_type: d.actor_type.clone(),
            delegation,
            max_delegation_depth: DEFAULT_MAX_DELEGATION_DEPTH,
            id_claim: t.id_claim.clone(),
            intent_claim: t.intent_claim.clone(),
            tool_detail_type: t.tool_detail_type.clone(),
            detail_fields,
        })
    }
}

impl AgentConfig {
    /// The names of the configured task detail fields, in configuration order.
    pub fn detail_field_names(&self) -> impl Iterator<Item = &str> {
        self.detail_fields.iter().map(|(name, _)| name.as_str())
    }
}

/// The `act` chain of a token: empty without `act`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delegation {
    /// Actor ids, earliest first: the last one is the current actor.
    pub actors: Vec<String>,
    /// The workload that presented the token over a verified mutual-TLS connection, when its
    /// issuer takes it as the outermost actor (`issuers[].workload_actor`): its SPIFFE ID. Not
    /// from the token: set per request (`engine/workload.rs`); its entity is a `Workload` in
    /// the `spiffe` identity namespace, not the issuer's.
    pub presenter: Option<String>,
}

impl Delegation {
    /// Number of actors (0: the subject acts itself).
    pub fn depth(&self) -> usize {
        self.actors.len() + usize::from(self.presenter.is_some())
    }

    /// Every actor, earliest first: the `act` chain, then the presenting workload.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.actors
            .iter()
            .map(String::as_str)
            .chain(self.presenter.as_deref())
    }

    /// The current actor (the presenting workload, else the outermost `act.sub`), the principal
    /// of a delegated request.
    pub fn current(&self) -> Option<&str> {
        self.presenter
            .as_deref()
            .or_else(|| self.actors.last().map(String::as_str))
    }

    /// `subject>first>…>current`, for logs and `like` patterns.
    pub fn chain(&self, subject: &str) -> String {
        let mut out = String::from(subject);
        for a in self.all() {
            out.push('>');
            out.push_str(a);
        }
        out
    }

    /// The current actor's entity type and id: a presenting workload's in the `spiffe`
    /// namespace, else `actor_type` in the issuer's `namespace`.
    pub fn current_entity(&self, actor_type: &str, namespace: &str) -> Option<(String, String)> {
        if let Some(w) = &self.presenter {
            let id = crate::identity::entity_id(crate::names::SPIFFE_NAMESPACE, w);
            return Some((crate::names::WORKLOAD.to_string(), id));
        }
        let actor = self.actors.last()?;
        Some((
            actor_type.to_string(),
            crate::identity::entity_id(namespace, actor),
        ))
    }
}

/// Reads the `act` chain iteratively (never recursively: the payload is the client's), refusing
/// more than `max_depth` levels.
pub fn delegation(
    payload: &crate::claims::Claims,
    max_depth: usize,
) -> Result<Delegation, TokenError> {
    let bad = |why: &'static str| TokenError::BadClaim(ACT_CLAIM.into(), why);
    let mut current_first = Vec::new();
    let mut next = payload.get(ACT_CLAIM);
    while let Some(v) = next.filter(|v| !v.is_null()) {
        let actor = v.as_object().ok_or(bad("an actor must be a JSON object"))?;
        if current_first.len() == max_depth {
            return Err(TokenError::DelegationTooDeep(max_depth));
        }
        let sub = actor
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(bad("every actor needs a non-empty sub"))?;
        current_first.push(sub.to_string());
        next = actor.get(ACT_CLAIM);
    }
    current_first.reverse();
    Ok(Delegation {
        actors: current_first,
        presenter: None,
    })
}

/// One authorization detail of the tool type: the tool it names and its typed fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDetail {
    pub tool: String,
    /// (field, value) for the configured fields the detail has; values already type-checked.
    fields: Vec<(String, Value)>,
}

/// What a token says about its task. Present when it has a task id, an intent or
/// authorization details.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Task {
    pub id: Option<String>,
    pub intent: Option<String>,
    /// `type` of every authorization detail; `None` without `authorization_details`.
    pub types: Option<Vec<String>>,
    /// Details of the tool type, one per tool.
    pub tools: Vec<ToolDetail>,
}

impl Task {
    fn detail_for(&self, tool: &str) -> Option<&ToolDetail> {
        self.tools.iter().find(|d| d.tool == tool)
    }
}

/// Reads the task claims and checks the authorization details: an array of objects with a string
/// `type` (RFC 9396 §2); a detail of the tool type names its tool (`identifier`) once, and its
/// configured fields have their declared types. Anything else is a token the filter cannot judge.
pub fn task(
    payload: &crate::claims::Claims,
    cfg: &AgentConfig,
) -> Result<Option<Task>, TokenError> {
    let string = |claim: &str| -> Result<Option<String>, TokenError> {
        match payload.get(claim) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(TokenError::BadClaim(claim.into(), "must be a string")),
        }
    };
    let id = string(&cfg.id_claim)?;
    let intent = string(&cfg.intent_claim)?;
    let bad = |why: &'static str| TokenError::BadClaim(DETAILS_CLAIM.into(), why);
    let (types, tools) = match payload.get(DETAILS_CLAIM) {
        None | Some(Value::Null) => (None, Vec::new()),
        Some(Value::Array(details)) => {
            let mut types = Vec::with_capacity(details.len());
            let mut tools: Vec<ToolDetail> = Vec::new();
            for d in details {
                let d = d.as_object().ok_or(bad("every detail must be an object"))?;
                let ty = d
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or(bad("every detail needs a string type"))?;
                types.push(ty.to_string());
                if ty != cfg.tool_detail_type {
                    continue;
                }
                let tool = d
                    .get(TOOL_MEMBER)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or(bad("a tool detail needs a string identifier (the tool)"))?;
                if tools.iter().any(|t| t.tool == tool) {
                    return Err(bad("two details name the same tool"));
                }
                let mut fields = Vec::new();
                for (name, ty) in &cfg.detail_fields {
                    match d.get(name) {
                        None | Some(Value::Null) => {}
                        Some(v) if ty.accepts(v) => fields.push((name.clone(), v.clone())),
                        Some(_) => {
                            return Err(bad("a detail field has another type than configured"))
                        }
                    }
                }
                tools.push(ToolDetail {
                    tool: tool.to_string(),
                    fields,
                });
            }
            (Some(types), tools)
        }
        Some(_) => return Err(bad("must be an array")),
    };
    if id.is_none() && intent.is_none() && types.is_none() {
        return Ok(None);
    }
    Ok(Some(Task {
        id,
        intent,
        types,
        tools,
    }))
}

/// Everything agent-specific a verified token says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentClaims {
    pub delegation: Delegation,
    pub task: Option<Box<Task>>,
}

/// Parses and checks `act` and the task claims of a verified payload.
pub fn parse(
    payload: &crate::claims::Claims,
    cfg: &AgentConfig,
) -> Result<AgentClaims, TokenError> {
    if !cfg.delegation && payload.get(ACT_CLAIM).is_some_and(|v| !v.is_null()) {
        return Err(TokenError::BadClaim(
            ACT_CLAIM.into(),
            "this issuer is not configured for delegation",
        ));
    }
    Ok(AgentClaims {
        delegation: delegation(payload, cfg.max_delegation_depth)?,
        task: task(payload, cfg)?.map(Box::new),
    })
}

/// Claims of a delegated, task-scoped token, for the configure-time check that the schema
/// accepts the requests such a token yields (`context.delegation`, `context.task`).
pub fn sample_claims(cfg: &AgentConfig) -> Vec<(String, Value)> {
    let mut detail = Map::new();
    detail.insert("type".into(), Value::from(cfg.tool_detail_type.clone()));
    detail.insert(TOOL_MEMBER.into(), Value::from("tessera-configure-check"));
    for (name, ty) in &cfg.detail_fields {
        let v = match ty {
            FieldType::Long => Value::from(0),
            FieldType::String => Value::from(""),
            FieldType::Bool => Value::from(false),
            FieldType::StringSet => Value::Array(vec![]),
        };
        detail.insert(name.clone(), v);
    }
    let mut claims = vec![
        (cfg.id_claim.clone(), Value::from("tessera-configure-check")),
        (
            cfg.intent_claim.clone(),
            Value::from("tessera-configure-check"),
        ),
        (
            DETAILS_CLAIM.into(),
            Value::Array(vec![Value::Object(detail)]),
        ),
    ];
    if cfg.delegation {
        claims.push((
            ACT_CLAIM.into(),
            serde_json::json!({"sub": "tessera-configure-check-actor"}),
        ));
    }
    claims
}

/// The entity types the issuer's delegated requests need: the actor type (the principal) and
/// `User` (`context.delegation.on_behalf_of`).
pub fn check_schema(
    cfg: &AgentConfig,
    path: &str,
    has_type: impl Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    if cfg.delegation && !has_type(&cfg.actor_type) {
        return Err(ConfigError::new(
            format!("{path}.delegation.actor_type"),
            format!("the schema has no entity type `{}`", cfg.actor_type),
        ));
    }
    if !has_type(ON_BEHALF_OF_TYPE) {
        return Err(ConfigError::new(
            "schema",
            "the schema has no entity type `User` (context.delegation.on_behalf_of)",
        ));
    }
    Ok(())
}

/// `routes[].max_token_age_s`: a token issued longer ago is refused, and so is one without `iat`
/// (its age is unknown).
pub fn check_token_age(
    max_age_s: Option<u64>,
    issued_at: Option<u64>,
    now_s: u64,
) -> Result<(), TokenError> {
    let Some(max) = max_age_s else {
        return Ok(());
    };
    let iat = issued_at.ok_or_else(|| TokenError::MissingClaim("iat".into()))?;
    if now_s.saturating_sub(iat) > max {
        return Err(TokenError::TooOldForRoute(max));
    }
    Ok(())
}

/// The entities of a token's request, the principal first. Delegated: the current actor (type
/// `delegation.actor_type`, no parents or attributes: an agent never gets the groups of the one
/// it acts for), then `on_behalf_of`. Otherwise: the subject as the issuer maps it, then
/// `on_behalf_of` unless that is the same entity. `subject_as(type)` builds the subject with the
/// issuer's groups and attributes as an entity of that type.
pub fn request_entities(
    cfg: &AgentConfig,
    claims: &AgentClaims,
    principal_type: &str,
    namespace: &str,
    subject_as: impl Fn(&str) -> Result<Entity, RequestError>,
) -> Result<Vec<Entity>, RequestError> {
    let principal = match claims.delegation.current_entity(&cfg.actor_type, namespace) {
        Some((ty, id)) => Entity::new_no_attrs(
            crate::authz::uid(&ty, &id).map_err(RequestError::Build)?,
            Default::default(),
        ),
        None => subject_as(principal_type)?,
    };
    let on_behalf_of = subject_as(ON_BEHALF_OF_TYPE)?;
    if on_behalf_of.uid() == principal.uid() {
        return Ok(vec![principal]);
    }
    Ok(vec![principal, on_behalf_of])
}

/// The per-token context attributes: `delegation`, and `task` (without `detail`) when the token
/// has one. `subject` is the subject's id (the issuer's principal claim).
pub fn context_parts(
    claims: &AgentClaims,
    subject: &str,
    namespace: &str,
) -> Result<Vec<(String, RestrictedExpression)>, RequestError> {
    let on_behalf_of = crate::authz::uid(
        ON_BEHALF_OF_TYPE,
        &crate::identity::entity_id(namespace, subject),
    )
    .map_err(RequestError::Build)?;
    let mut parts = vec![(
        "delegation".to_string(),
        delegation_record(&claims.delegation, on_behalf_of, subject)?,
    )];
    if let Some(t) = &claims.task {
        parts.push(("task".to_string(), task_record(t, None, None)?));
    }
    Ok(parts)
}

/// `context.task` for an MCP `tools/call` when the token's task (parsed when it was verified)
/// has a detail naming the tool, replacing the per-token `task`; `None` when the per-token one
/// stands.
pub fn task_for_call(
    agent: &AgentClaims,
    tool: &str,
    arguments: Option<&Value>,
) -> Option<Result<RestrictedExpression, RequestError>> {
    let t = agent.task.as_ref()?;
    t.detail_for(tool)?;
    Some(task_record(t, Some(tool), arguments))
}

fn string(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_string())
}

fn string_set<'a>(v: impl IntoIterator<Item = &'a str>) -> RestrictedExpression {
    RestrictedExpression::new_set(v.into_iter().map(string))
}

fn record(
    fields: Vec<(String, RestrictedExpression)>,
) -> Result<RestrictedExpression, RequestError> {
    RestrictedExpression::new_record(fields).map_err(RequestError::build)
}

/// Every member has one type whatever the token says (the token shape,
/// `Engine::token_context`, relies on it: a member whose type can vary must be described there).
///
/// `context.delegation`: `on_behalf_of` (the subject's entity), `subject` (its id), `actor` (the
/// principal's id: the current actor, or the subject without `act`), `actors` (every actor's id;
/// empty without `act`), `chain` (`subject>…>current`) and `depth`.
pub fn delegation_record(
    d: &Delegation,
    on_behalf_of: EntityUid,
    subject: &str,
) -> Result<RestrictedExpression, RequestError> {
    let depth = i64::try_from(d.depth()).unwrap_or(i64::MAX);
    record(vec![
        (
            "on_behalf_of".into(),
            RestrictedExpression::new_entity_uid(on_behalf_of),
        ),
        ("subject".into(), string(subject)),
        ("actor".into(), string(d.current().unwrap_or(subject))),
        ("actors".into(), string_set(d.all())),
        ("chain".into(), string(&d.chain(subject))),
        ("depth".into(), RestrictedExpression::new_long(depth)),
    ])
}

/// Appends the shape ([`crate::authz::PerRequest`]'s sense) of [`task_record`]`(t, None, None)`
/// to `out`: which members it has (every member's type is fixed). It must change with
/// `task_record`: a member added there is added here.
pub fn task_shape(t: &Task, out: &mut String) {
    out.push('T');
    out.push(if t.id.is_some() { 'i' } else { '-' });
    out.push(if t.intent.is_some() { 'n' } else { '-' });
    out.push(if t.types.is_some() { 'y' } else { '-' });
}

/// `context.task`. For an MCP `tools/call` (`tool` and its `arguments`), `detail` is the detail
/// naming that tool, when there is one: its configured fields and `argument_domains`.
pub fn task_record(
    t: &Task,
    tool: Option<&str>,
    arguments: Option<&Value>,
) -> Result<RestrictedExpression, RequestError> {
    let mut fields = Vec::new();
    if let Some(id) = &t.id {
        fields.push(("id".to_string(), string(id)));
    }
    if let Some(intent) = &t.intent {
        fields.push(("intent".to_string(), string(intent)));
    }
    if let Some(types) = &t.types {
        fields.push((
            "types".to_string(),
            string_set(types.iter().map(String::as_str)),
        ));
        fields.push((
            "tools".to_string(),
            string_set(t.tools.iter().map(|d| d.tool.as_str())),
        ));
    }
    if let Some(detail) = tool.and_then(|name| t.detail_for(name)) {
        fields.push(("detail".to_string(), detail_record(detail, arguments)?));
    }
    record(fields)
}

fn detail_record(
    d: &ToolDetail,
    arguments: Option<&Value>,
) -> Result<RestrictedExpression, RequestError> {
    let mut fields = vec![(
        ARGUMENT_DOMAINS.to_string(),
        string_set(
            arguments
                .map(argument_domains)
                .unwrap_or_default()
                .iter()
                .map(String::as_str),
        ),
    )];
    for (name, v) in &d.fields {
        // Types were checked when the token was parsed.
        let e = crate::authz::json_to_cedar(v)
            .map_err(|e| RequestError::Build(format!("{name}: {e}")))?;
        fields.push((name.clone(), e));
    }
    record(fields)
}

/// Domains of the e-mail addresses among a call's arguments: top-level string arguments (and
/// strings in top-level arrays) of the form `local@domain` with one `@` and no whitespace,
/// lowercased. Cedar compares strings only with literal `like` patterns, so a policy cannot check
/// an argument against a domain taken from the token without this.
pub fn argument_domains(arguments: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        if let Some(d) = email_domain(s) {
            if !out.contains(&d) {
                out.push(d);
            }
        }
    };
    if let Some(args) = arguments.as_object() {
        for v in args.values() {
            match v {
                Value::String(s) => add(s),
                Value::Array(a) => a.iter().filter_map(Value::as_str).for_each(&mut add),
                _ => {}
            }
        }
    }
    out
}

fn email_domain(s: &str) -> Option<String> {
    if s.chars().any(char::is_whitespace) {
        return None;
    }
    let (local, domain) = s.split_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return None;
    }
    Some(domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(v: Value) -> crate::claims::Claims {
        v.as_object().cloned().unwrap_or_default().into()
    }

    fn cfg() -> AgentConfig {
        let mut t = TaskConfig::default();
        t.detail_fields.insert("max_amount".into(), "Long".into());
        t.detail_fields
            .insert("allowed_recipient_domain".into(), "String".into());
        AgentConfig::compile(Some(&DelegationConfig::default()), &t, "issuers[0]")
            .expect("compiles")
    }

    /// `{"act": {"sub": last, "act": {… {"sub": first}}}}` for actors listed earliest first.
    fn nested(actors: &[&str]) -> Value {
        let mut act = Value::Null;
        for a in actors {
            let mut o = json!({"sub": a});
            if !act.is_null() {
                o["act"] = act;
            }
            act = o;
        }
        json!({"sub": "alice", "act": act})
    }

    #[test]
    fn the_outermost_act_is_the_current_actor_and_the_chain_starts_at_the_subject() {
        let d = delegation(&payload(nested(&["planner", "executor"])), 8).expect("parses");
        assert_eq!(d.actors, ["planner", "executor"]);
        assert_eq!(d.current(), Some("executor"));
        assert_eq!(d.depth(), 2);
        assert_eq!(d.chain("alice"), "alice>planner>executor");
    }

    #[test]
    fn without_act_the_chain_is_the_subject_alone() {
        let d = delegation(&payload(json!({"sub": "alice"})), 8).expect("parses");
        assert_eq!((d.depth(), d.current()), (0, None));
        assert_eq!(d.chain("alice"), "alice");
    }

    #[test]
    fn a_chain_deeper_than_the_limit_is_refused() {
        let eight: Vec<String> = (0..8).map(|i| format!("a{i}")).collect();
        let eight: Vec<&str> = eight.iter().map(String::as_str).collect();
        assert_eq!(
            delegation(&payload(nested(&eight)), 8).map(|d| d.depth()),
            Ok(8)
        );
        let nine = [eight.as_slice(), &["a8"]].concat();
        assert_eq!(
            delegation(&payload(nested(&nine)), 8),
            Err(TokenError::DelegationTooDeep(8))
        );
        assert_eq!(
            delegation(&payload(nested(&["a"])), 0),
            Err(TokenError::DelegationTooDeep(0))
        );
    }

    #[test]
    fn malformed_actors_are_refused() {
        for bad in [
            json!({"act": "planner"}),
            json!({"act": {"client_id": "planner"}}),
            json!({"act": {"sub": ""}}),
            json!({"act": {"sub": "x", "act": ["y"]}}),
        ] {
            assert!(
                matches!(delegation(&payload(bad.clone()), 8), Err(TokenError::BadClaim(ref c, _)) if c == "act"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_route_with_a_maximum_token_age_refuses_old_tokens_and_tokens_without_iat() {
        assert_eq!(check_token_age(None, None, 1_000), Ok(()));
        assert_eq!(check_token_age(Some(60), Some(940), 1_000), Ok(()));
        assert_eq!(
            check_token_age(Some(60), Some(939), 1_000),
            Err(TokenError::TooOldForRoute(60))
        );
        assert_eq!(
            check_token_age(Some(60), None, 1_000),
            Err(TokenError::MissingClaim("iat".into()))
        );
        // iat slightly in the future (within the clock skew) is age 0.
        assert_eq!(check_token_age(Some(60), Some(1_030), 1_000), Ok(()));
    }

    #[test]
    fn the_configure_check_claims_are_a_valid_delegated_task_token() {
        let c = cfg();
        let p: Map<String, Value> = sample_claims(&c).into_iter().collect();
        let claims = parse(&p.into(), &c).expect("parses");
        assert_eq!(claims.delegation.depth(), 1);
        let task = claims.task.expect("a task");
        assert_eq!(task.tools.len(), 1);
        assert_eq!(task.tools[0].fields.len(), 2);
    }

    #[test]
    fn a_delegated_request_has_the_actor_first_and_the_subject_as_user() {
        let c = cfg();
        let subject_as = |ty: &str| {
            crate::authz::uid(ty, "ns|alice")
                .map(|u| Entity::new_no_attrs(u, Default::default()))
                .map_err(RequestError::Build)
        };
        let delegated = parse(&payload(nested(&["planner"])), &c).expect("parses");
        let e = request_entities(&c, &delegated, "User", "ns", subject_as).expect("entities");
        let uids: Vec<String> = e.iter().map(|e| e.uid().to_string()).collect();
        assert_eq!(uids, ["Agent::\"ns|planner\"", "User::\"ns|alice\""]);
        let direct = parse(&payload(json!({"sub": "alice"})), &c).expect("parses");
        let e = request_entities(&c, &direct, "User", "ns", subject_as).expect("entities");
        assert_eq!(e.len(), 1, "a User subject is its own on_behalf_of");
        let e = request_entities(&c, &direct, "Agent", "ns", subject_as).expect("entities");
        let uids: Vec<String> = e.iter().map(|e| e.uid().to_string()).collect();
        assert_eq!(uids, ["Agent::\"ns|alice\"", "User::\"ns|alice\""]);
    }

    #[test]
    fn act_is_refused_from_an_issuer_without_delegation() {
        let t = TaskConfig::default();
        let c = AgentConfig::compile(None, &t, "issuers[0]").expect("compiles");
        assert!(parse(&payload(json!({"sub": "alice"})), &c).is_ok());
        let e = parse(&payload(nested(&["planner"])), &c)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("delegation")));
    }

    #[test]
    fn task_claims_and_tool_details_are_read() {
        let p = payload(json!({
            "task_id": "t-1", "intent": "pay rent",
            "authorization_details": [
                {"type": "mcp_tool", "identifier": "transfer_funds", "max_amount": 500, "other": 1},
                {"type": "payment_initiation", "instructedAmount": {"amount": "5"}},
                {"type": "mcp_tool", "identifier": "send_email", "allowed_recipient_domain": "example.com"}
            ]
        }));
        let t = task(&p, &cfg()).expect("parses").expect("a task");
        assert_eq!(t.id.as_deref(), Some("t-1"));
        assert_eq!(t.intent.as_deref(), Some("pay rent"));
        assert_eq!(
            t.types.as_deref(),
            Some(
                &[
                    "mcp_tool".to_string(),
                    "payment_initiation".into(),
                    "mcp_tool".into()
                ][..]
            )
        );
        let pay = t.detail_for("transfer_funds").expect("detail");
        assert_eq!(pay.fields, vec![("max_amount".to_string(), json!(500))]);
        assert!(t.detail_for("read_file").is_none());
    }

    #[test]
    fn a_token_without_task_claims_has_no_task() {
        assert_eq!(task(&payload(json!({"sub": "a"})), &cfg()), Ok(None));
    }

    #[test]
    fn bad_authorization_details_are_refused() {
        for bad in [
            json!({"authorization_details": {"type": "mcp_tool"}}),
            json!({"authorization_details": ["mcp_tool"]}),
            json!({"authorization_details": [{"identifier": "x"}]}),
            json!({"authorization_details": [{"type": "mcp_tool"}]}),
            json!({"authorization_details": [{"type": "mcp_tool", "identifier": "a"}, {"type": "mcp_tool", "identifier": "a"}]}),
            json!({"authorization_details": [{"type": "mcp_tool", "identifier": "a", "max_amount": "500"}]}),
            json!({"task_id": 7}),
        ] {
            assert!(
                matches!(
                    task(&payload(bad.clone()), &cfg()),
                    Err(TokenError::BadClaim(..))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn argument_domains_are_the_domains_of_address_shaped_arguments() {
        let args = json!({"to": "Bob@Example.COM", "cc": ["a@x.org", "not an@address"],
                          "subject": "hi", "body": "write to eve@evil.example please", "n": 3});
        assert_eq!(argument_domains(&args), ["example.com", "x.org"]);
        assert!(argument_domains(&json!({"to": "a@b@c"})).is_empty());
    }

    #[test]
    fn detail_fields_with_unknown_types_or_reserved_names_name_the_field() {
        let mut t = TaskConfig::default();
        t.detail_fields
            .insert("max_amount".into(), "Decimal".into());
        let e = AgentConfig::compile(Some(&DelegationConfig::default()), &t, "issuers[2]")
            .expect_err("refused");
        assert_eq!(e.path, "issuers[2].task.detail_fields.max_amount");
        let mut t = TaskConfig::default();
        t.detail_fields
            .insert("argument_domains".into(), "String".into());
        let e = AgentConfig::compile(Some(&DelegationConfig::default()), &t, "issuers[0]")
            .expect_err("refused");
        assert_eq!(e.path, "issuers[0].task.detail_fields.argument_domains");
    }

    #[test]
    fn cedar_records_have_the_documented_shape() {
        let d = delegation(&payload(nested(&["planner"])), 8).expect("parses");
        let on_behalf_of = crate::authz::uid("User", "alice").expect("uid");
        let r = delegation_record(&d, on_behalf_of, "alice").expect("record");
        let text = format!("{r:?}");
        for part in ["on_behalf_of", "\"alice>planner\"", "\"planner\"", "depth"] {
            assert!(text.contains(part), "{text}");
        }
        let t = task(
            &payload(json!({"authorization_details": [{"type": "mcp_tool", "identifier": "send_email", "allowed_recipient_domain": "example.com"}]})),
            &cfg(),
        )
        .expect("parses")
        .expect("task");
        let with = format!(
            "{:?}",
            task_record(
                &t,
                Some("send_email"),
                Some(&json!({"to": "bob@example.com"}))
            )
            .expect("record")
        );
        assert!(
            with.contains("argument_domains") && with.contains("allowed_recipient_domain"),
            "{with}"
        );
        let without = format!(
            "{:?}",
            task_record(&t, Some("read_file"), None).expect("record")
        );
        assert!(
            !without.contains("detail") && without.contains("tools"),
            "{without}"
        );
    }
}

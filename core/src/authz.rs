//! Cedar: the compiled, validated policy set and schema, and the evaluation of one request.
//!
//! Policies are named by their `@id("…")` annotation so that denials and logs name what a policy
//! author wrote. Parse and validation errors carry the document name and line/column.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde_json::Value;

use crate::config::PolicySource;
use crate::error::ConfigError;

pub struct Policies {
    pub set: PolicySet,
    pub schema: Schema,
    action_entities: Entities,
    authorizer: Authorizer,
    entity_types: HashSet<String>,
    actions: HashSet<String>,
}

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
        let actions = schema
            .actions()
            .map(|a| a.id().unescaped().to_string())
            .collect();
        Ok(Policies {
            set,
            schema,
            action_entities,
            authorizer: Authorizer::new(),
            entity_types,
            actions,
        })
    }

    pub fn has_entity_type(&self, name: &str) -> bool {
        self.entity_types.contains(name)
    }

    pub fn has_action(&self, name: &str) -> bool {
        self.actions.contains(name)
    }

    pub fn policy_count(&self) -> usize {
        self.set.policies().count()
    }

    /// Evaluates one request. `principal` carries its parents and attributes; the context is
    /// checked against the action's context type in the schema, so that a policy never sees a
    /// value of another type than the one it was validated for.
    pub fn evaluate(
        &self,
        principal: Entity,
        action: &str,
        resource: EntityUid,
        context: Vec<(String, RestrictedExpression)>,
    ) -> Evaluation {
        let principal_uid = principal.uid();
        let action_uid = match uid("Action", action) {
            Ok(a) => a,
            Err(reason) => return Evaluation::Error { reason },
        };
        let context = match Context::from_pairs(context) {
            Ok(c) => c,
            Err(e) => {
                return Evaluation::Error {
                    reason: format!("context: {e}"),
                }
            }
        };
        let request = match Request::new(
            principal_uid,
            action_uid,
            resource,
            context,
            Some(&self.schema),
        ) {
            Ok(r) => r,
            Err(e) => {
                return Evaluation::Error {
                    reason: format!("request does not fit the schema: {e}"),
                }
            }
        };
        let entities = match self
            .action_entities
            .clone()
            .add_entities([principal], Some(&self.schema))
        {
            Ok(e) => e,
            Err(e) => {
                return Evaluation::Error {
                    reason: format!("principal entity: {e}"),
                }
            }
        };
        let response = self
            .authorizer
            .is_authorized(&request, &self.set, &entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        if !errors.is_empty() {
            // Cedar skips a policy that errors, which for a forbid would let the request through.
            return Evaluation::Error {
                reason: format!("policy evaluation error: {}", errors.join("; ")),
            };
        }
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|p| p.to_string())
            .collect();
        policies.sort();
        match response.decision() {
            Decision::Allow => Evaluation::Allow { policies },
            Decision::Deny => Evaluation::Deny { policies },
        }
    }
}

pub fn uid(entity_type: &str, id: &str) -> Result<EntityUid, String> {
    let t = EntityTypeName::from_str(entity_type)
        .map_err(|e| format!("entity type `{entity_type}`: {e}"))?;
    Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
}

/// A JSON value (from a token) as a Cedar value: strings, integers, booleans, arrays as sets,
/// objects as records. Numbers that are not 64-bit integers have no Cedar equivalent.
pub fn json_to_cedar(v: &Value) -> Result<RestrictedExpression, &'static str> {
    Ok(match v {
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => {
            RestrictedExpression::new_long(n.as_i64().ok_or("not a 64-bit integer")?)
        }
        Value::Array(a) => RestrictedExpression::new_set(
            a.iter().map(json_to_cedar).collect::<Result<Vec<_>, _>>()?,
        ),
        // A null member is an absent one: clients write optional arguments as `null`.
        Value::Object(m) => RestrictedExpression::new_record(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| Ok((k.clone(), json_to_cedar(v)?)))
                .collect::<Result<Vec<_>, &'static str>>()?,
        )
        .map_err(|_| "duplicate record key")?,
        Value::Null => return Err("null has no Cedar value"),
    })
}

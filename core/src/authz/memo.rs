//! What Cedar evaluation remembers between requests (`Policies::evaluate`): per token
//! ([`Checked`]: that its entities fit the schema, decisions that depend on the token alone, its
//! evaluated parts, [`TokenParts`]) and per request shape (the shape of a whole request, across
//! tokens: [`request_shape`], [`TokenMemo`], [`PerRequest`], written with [`shape_name`] and
//! [`json_shape`]). Nothing here changes a decision: each memo stands for work whose result
//! cannot differ (see each item).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cedar_policy::{Context, Entities, Entity, EntityUid, RestrictedExpression};
use serde_json::Value;

use super::{CedarValue, Evaluation};

/// The shape of a whole request with one action ([`Policies::evaluate`]): what its schema check
/// depends on (the resource itself, not only its type). `None` when it has none (no token shape,
/// or a varying part without a shape): then it is checked every time. The parts are
/// length-prefixed, so no two requests of different types share a shape, and the kind of
/// per-request parts is part of it: what fitted with an MCP record says nothing of a request
/// without one.
pub(super) fn request_shape(
    resource: &EntityUid,
    token: Option<TokenMemo<'_>>,
    per_request: PerRequest<'_>,
) -> Option<String> {
    let token = token.filter(|t| !t.shape.is_empty())?;
    let (kind, varying) = match per_request {
        PerRequest::Fixed => ('F', ""),
        PerRequest::Shaped(s) => ('S', s),
        PerRequest::Varying => return None,
    };
    // The resource's id too: Cedar checks it against an enumerated entity type (`entity Tool
    // enum [...]`), so two resources of one type need not both fit.
    let mut shape = String::from(kind);
    shape_name(&mut shape, &resource.type_name().to_string());
    shape_name(&mut shape, resource.id().unescaped());
    shape_name(&mut shape, token.shape);
    shape.push_str(varying);
    Some(shape)
}

/// What is known of the token a request was built from: its memo, and the shape of the context
/// parts besides the varying one (`Engine::evaluate`): of the token's (`Engine::token_context`:
/// the issuer, which configured claims it has and the shape of each ([`json_shape`]), which
/// optional members, how it is bound, the principal's type) and of the request's
/// (`Engine::request_context`: which optional members). Requests of one shape share what was
/// learned of the schema; an empty shape shares nothing.
#[derive(Debug, Clone, Copy)]
pub struct TokenMemo<'a> {
    pub checked: &'a Checked,
    pub shape: &'a str,
}

/// What is already known about the Cedar requests built from one verified token (kept with the
/// token in the cache, so it lives as long as the token does):
/// - that its entities fit the schema, so that their check runs once per token, not per request
///   (whole requests are remembered by shape, across tokens: [`TokenMemo`]);
/// - decisions for actions whose policies read nothing that varies per request (only the
///   principal, the resource, and the token's own context parts): the same token, action and
///   resource always get the same answer, so it is remembered (a few per token).
///
/// - the Cedar parts built from the token alone ([`TokenParts`]), once the token's requests have
///   run Cedar twice, within [`KEPT_BYTES`] for all tokens at a time: kept for every cached token
///   they would cost 3–4 KiB each (36 MiB with 10,000 tokens), so a token used once, or whose
///   decisions are remembered, keeps none.
#[derive(Debug, Default)]
pub struct Checked {
    pub(super) entities: AtomicBool,
    pub(super) decisions: Mutex<Vec<(u64, EntityUid, Evaluation)>>,
    /// The outcomes of the policy conditions that read only the token (`conditions.rs`).
    pub(super) outcomes: super::conditions::Outcomes,
    /// How many times this token's parts were built (up to 2).
    builds: AtomicU8,
    parts: OnceLock<Arc<TokenParts>>,
}

/// What all kept [`TokenParts`] may weigh at once (per VM), in [`parts_weight`]'s estimate:
/// about 500 agent tokens of a few claims, a handful with claims of thousands of values.
pub const KEPT_BYTES: usize = 2 << 20;

/// The weight of the [`TokenParts`] kept now (each counts itself until dropped).
static KEPT: AtomicUsize = AtomicUsize::new(0);

/// A generous estimate of the memory the Cedar parts built from a token with this payload take:
/// 1 KiB, and for every JSON value in it 256 bytes and its text. Whatever claims the issuer maps,
/// the parts hold each of the payload's values a few times at most (a set's elements in a sorted
/// set and a hash set; the subject's groups as parents of the principal and of the
/// `delegation.on_behalf_of` entity), each in well under 128 bytes besides its text.
pub fn parts_weight<'a>(payload: impl IntoIterator<Item = (&'a str, &'a Value)>) -> usize {
    fn weight(v: &Value) -> usize {
        256 + match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(weight).sum(),
            Value::Object(m) => m.iter().map(|(k, v)| k.len() + weight(v)).sum(),
            _ => 0,
        }
    }
    1024 + payload
        .into_iter()
        .map(|(k, v)| k.len() + weight(v))
        .sum::<usize>()
}

/// The Cedar parts of a request that come from its token alone (`Engine::token_entities`,
/// `Engine::token_context`), the context attributes already evaluated, and their shape (the
/// token's part of [`TokenMemo`]'s).
#[derive(Debug)]
pub struct TokenParts {
    pub entities: Vec<Entity>,
    pub context: Context,
    pub shape: String,
    /// Entity stores built from `entities` alone, by action (`ActionIndex::bit`): a few.
    stores: Mutex<Vec<(u64, Arc<Entities>)>>,
    /// What these parts weigh ([`parts_weight`]).
    weight: usize,
    /// The count these parts hold their weight in while kept, and its limit ([`KEPT`],
    /// [`KEPT_BYTES`]; none while built for one request). Each kept store holds the parts'
    /// weight once more (it copies the entities' parents).
    counted: OnceLock<(&'static AtomicUsize, usize)>,
}

impl TokenParts {
    pub fn new(
        entities: Vec<Entity>,
        context: Context,
        shape: String,
        weight: usize,
    ) -> TokenParts {
        TokenParts {
            entities,
            context,
            shape,
            stores: Mutex::default(),
            weight,
            counted: OnceLock::new(),
        }
    }

    /// The entity store built from these entities for the action `bit`, if kept.
    pub(super) fn store(&self, bit: u64) -> Option<Arc<Entities>> {
        let stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        stores
            .iter()
            .find(|(b, _)| *b == bit)
            .map(|(_, s)| Arc::clone(s))
    }

    /// Keeps `store` (built from these entities alone, known to fit the schema) for `bit`, if
    /// these parts are kept and its weight fits in what is left of their limit.
    pub(super) fn keep_store(&self, bit: u64, store: &Arc<Entities>) {
        let Some((count, limit)) = self.counted.get() else {
            return;
        };
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if stores.len() >= STORES_PER_TOKEN || stores.iter().any(|(b, _)| *b == bit) {
            return;
        }
        if reserve(count, self.weight, *limit) {
            stores.push((bit, Arc::clone(store)));
        }
    }
}

/// Entity stores kept per token: a token is normally used with a handful of actions.
const STORES_PER_TOKEN: usize = 4;

/// Adds `weight` to `count` if the total stays within `limit`.
fn reserve(count: &AtomicUsize, weight: usize, limit: usize) -> bool {
    count
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            n.checked_add(weight).filter(|total| *total <= limit)
        })
        .is_ok()
}

impl Drop for TokenParts {
    fn drop(&mut self) {
        if let Some((count, _)) = self.counted.get() {
            let stores = self.stores.get_mut().map_or(0, |s| s.len());
            count.fetch_sub(self.weight * (1 + stores), Ordering::Relaxed);
        }
    }
}

/// Decisions remembered per token: a token is normally used on a handful of routes.
const DECISIONS_PER_TOKEN: usize = 8;

impl Checked {
    pub(super) fn entities_fit(&self) -> bool {
        self.entities.load(Ordering::Relaxed)
    }

    /// The token's parts, if kept.
    pub fn kept_parts(&self) -> Option<Arc<TokenParts>> {
        self.parts.get().cloned()
    }

    /// `parts` were just built from the token: kept if they were built before and their weight
    /// fits in what is left of [`KEPT_BYTES`].
    pub fn offer_parts(&self, parts: &Arc<TokenParts>) {
        self.offer_parts_within(parts, &KEPT, KEPT_BYTES);
    }

    fn offer_parts_within(
        &self,
        parts: &Arc<TokenParts>,
        count: &'static AtomicUsize,
        limit: usize,
    ) {
        let builds = self.builds.load(Ordering::Relaxed);
        if builds < 2 {
            self.builds.store(builds + 1, Ordering::Relaxed);
        }
        if builds == 0 || self.parts.get().is_some() {
            return;
        }
        if parts.counted.get().is_some() {
            return; // already kept by another token (cannot happen: parts are built per token)
        }
        if !reserve(count, parts.weight, limit) {
            return;
        }
        let _ = parts.counted.set((count, limit));
        // Kept meanwhile by another caller: these parts give their weight back when dropped.
        let _ = self.parts.set(Arc::clone(parts));
    }

    pub(super) fn decision(&self, bit: u64, resource: &EntityUid) -> Option<Evaluation> {
        let d = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        d.iter()
            .find(|(b, r, _)| *b == bit && r == resource)
            .map(|(_, _, e)| e.clone())
    }

    pub(super) fn remember(&self, bit: u64, resource: EntityUid, e: &Evaluation) {
        let mut d = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        if d.len() < DECISIONS_PER_TOKEN {
            // Exact growth: most tokens are used for one or two decisions, and 10,000 cached
            // tokens each holding room for four would cost megabytes.
            d.reserve_exact(1);
            d.push((bit, resource, e.clone()));
        }
    }
}

impl Clone for Checked {
    fn clone(&self) -> Checked {
        let parts = OnceLock::new();
        if let Some(p) = self.parts.get() {
            let _ = parts.set(Arc::clone(p));
        }
        Checked {
            entities: AtomicBool::new(self.entities_fit()),
            decisions: Mutex::new(self.decisions.lock().map(|d| d.clone()).unwrap_or_default()),
            outcomes: self.outcomes.clone(),
            builds: AtomicU8::new(self.builds.load(Ordering::Relaxed)),
            parts,
        }
    }
}

/// The context attributes of one request ([`Policies::evaluate`]): those evaluated once and kept
/// with the token ([`TokenParts::context`]), those built for this request as values (`values`:
/// the request line, the clock, how the token is bound) and as expressions, evaluated now
/// (`fresh`: the MCP call, a call's task, an approval). Of these, `task` replaces the kept one
/// (a tool call can make it more precise); any other name given twice is an error, as
/// `Context::from_pairs` has it.
#[derive(Default)]
pub struct ContextParts {
    pub kept: Option<Arc<TokenParts>>,
    pub values: Vec<(String, CedarValue)>,
    pub fresh: Vec<(String, RestrictedExpression)>,
}

impl From<Vec<(String, RestrictedExpression)>> for ContextParts {
    fn from(fresh: Vec<(String, RestrictedExpression)>) -> ContextParts {
        ContextParts {
            fresh,
            ..ContextParts::default()
        }
    }
}

/// The one token attribute a request's may replace ([`ContextParts`]).
const REPLACEABLE: &str = "task";

impl ContextParts {
    pub(super) fn into_context(self) -> Result<Context, String> {
        use cedar_policy_core::ast;
        let fields = |c: &Context| match c.as_ref() {
            ast::Context::Value(m) => Ok(Arc::clone(m)),
            ast::Context::RestrictedResidual(_) => Err("an attribute has no value".to_string()),
        };
        let kept = self.kept.as_ref().map(|k| fields(&k.context)).transpose()?;
        let values = match super::value_record(self.values)?.value {
            ast::ValueKind::Record(m) => m,
            _ => return Err("not a record".into()),
        };
        let fresh = if self.fresh.is_empty() {
            None
        } else {
            Some(fields(
                &Context::from_pairs(self.fresh).map_err(|e| e.to_string())?,
            )?)
        };
        // Every part evaluated: their values joined (cheap clones: Cedar's values share their
        // records and sets).
        let mut all = BTreeMap::new();
        for (part, replaces) in [(kept, false), (Some(values), true), (fresh, true)] {
            for (name, v) in part.iter().flat_map(|m| m.iter()) {
                if all.contains_key(name) && !(replaces && name == REPLACEABLE) {
                    return Err(format!("the attribute `{name}` is given twice"));
                }
                all.insert(name.clone(), v.clone());
            }
        }
        Ok(Context::from(ast::Context::Value(Arc::new(all))))
    }
}

/// What of a request's context does not come from the token (for [`Policies::evaluate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerRequest<'a> {
    /// Parts whose types never vary (strings from the request line, the clock, how the token is
    /// bound).
    Fixed,
    /// Those, and parts of varying type whose Cedar type `shape` says in full ([`json_shape`]
    /// of the values they were built from, with their place): the same shape fits the schema
    /// every time or never.
    Shaped(&'a str),
    /// Those, and parts of varying type without a shape: checked every time.
    Varying,
}

/// Appends `name` to a shape, length-prefixed (`5:token`), so that where it ends is never in doubt.
pub fn shape_name(out: &mut String, name: &str) {
    use std::fmt::Write as _;
    let _ = write!(out, "{}:{name}", name.len());
}

/// Appends to `out` the shape of the Cedar value [`json_to_cedar`] makes of `v`: its type and
/// nothing of its values. Equal shapes are equal Cedar types (record keys are length-prefixed,
/// every shape ends where its grammar says, so no two types write the same text).
pub fn json_shape(v: &Value, out: &mut String) {
    match v {
        Value::String(_) => out.push('s'),
        Value::Bool(_) => out.push('b'),
        Value::Number(n) if n.is_i64() => out.push('l'),
        // json_to_cedar refuses these; a shape of their own all the same.
        Value::Number(_) => out.push('n'),
        Value::Null => out.push('z'),
        // A set's type is its elements': which shapes they have, not how many or in what order.
        Value::Array(a) => {
            let shapes: std::collections::BTreeSet<String> = a
                .iter()
                .map(|e| {
                    let mut s = String::new();
                    json_shape(e, &mut s);
                    s
                })
                .collect();
            out.push('[');
            for s in shapes {
                out.push_str(&s);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            // As json_to_cedar: a null member is an absent one.
            for (k, v) in m.iter().filter(|(_, v)| !v.is_null()) {
                shape_name(out, k);
                json_shape(v, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token keeps its parts from their second build on, within the limit, and each kept set
    /// holds its weight until the last holder drops it.
    #[test]
    fn parts_are_kept_from_the_second_build_within_the_limit() {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let parts = || Arc::new(TokenParts::new(vec![], Context::empty(), "s".into(), 10));
        let checked = Checked::default();
        checked.offer_parts_within(&parts(), &COUNT, 15);
        assert!(
            checked.kept_parts().is_none(),
            "a token used once keeps nothing"
        );
        let second = parts();
        checked.offer_parts_within(&second, &COUNT, 15);
        let kept = checked.kept_parts().expect("kept from the second build");
        assert!(Arc::ptr_eq(&kept, &second));
        assert_eq!(COUNT.load(Ordering::Relaxed), 10);
        // A clone of the memo shares the same parts; a third build keeps the first kept.
        let copy = checked.clone();
        checked.offer_parts_within(&parts(), &COUNT, 15);
        assert!(Arc::ptr_eq(&checked.kept_parts().unwrap(), &second));
        assert!(Arc::ptr_eq(&copy.kept_parts().unwrap(), &second));
        assert_eq!(COUNT.load(Ordering::Relaxed), 10);
        // The limit (15) would be passed (20): another token keeps nothing.
        let other = Checked::default();
        other.offer_parts_within(&parts(), &COUNT, 15);
        other.offer_parts_within(&parts(), &COUNT, 15);
        assert!(other.kept_parts().is_none());
        // Dropped by every holder: the weight is given back, and the other token can keep.
        drop((checked, copy, kept, second));
        assert_eq!(COUNT.load(Ordering::Relaxed), 0);
        other.offer_parts_within(&parts(), &COUNT, 15);
        assert!(other.kept_parts().is_some());
        assert_eq!(COUNT.load(Ordering::Relaxed), 10);
    }

    /// Kept and fresh attributes are joined; a fresh `task` replaces the kept one, and any other
    /// name in both is refused, as one `Context::from_pairs` refuses it.
    #[test]
    fn a_request_attribute_replaces_only_the_task() {
        let kept = |names: &[&str]| {
            let pairs = names.iter().map(|n| {
                (
                    n.to_string(),
                    RestrictedExpression::new_string("kept".into()),
                )
            });
            let context = Context::from_pairs(pairs).unwrap();
            Some(Arc::new(TokenParts::new(vec![], context, String::new(), 1)))
        };
        let fresh = |name: &str| {
            vec![(
                name.to_string(),
                RestrictedExpression::new_string("fresh".into()),
            )]
        };
        let joined = ContextParts {
            kept: kept(&["token", "task"]),
            values: vec![],
            fresh: fresh("task"),
        }
        .into_context()
        .unwrap();
        let value = |c: &Context, n: &str| c.get(n).map(|v| v.to_string());
        assert_eq!(value(&joined, "task").as_deref(), Some("\"fresh\""));
        assert_eq!(value(&joined, "token").as_deref(), Some("\"kept\""));
        for name in ["token", "delegation"] {
            let e = ContextParts {
                kept: kept(&["token", "delegation", "task"]),
                values: vec![],
                fresh: fresh(name),
            }
            .into_context()
            .unwrap_err();
            assert!(e.contains(name), "{e}");
        }
        let added = ContextParts {
            kept: kept(&["token"]),
            values: vec![],
            fresh: fresh("now"),
        }
        .into_context()
        .unwrap();
        assert_eq!(value(&added, "now").as_deref(), Some("\"fresh\""));
        // Values built directly join the same way.
        let v = |name: &str| vec![(name.to_string(), CedarValue::from("value".to_string()))];
        let with_values = ContextParts {
            kept: kept(&["token", "task"]),
            values: v("request"),
            fresh: fresh("task"),
        }
        .into_context()
        .unwrap();
        assert_eq!(value(&with_values, "request").as_deref(), Some("\"value\""));
        assert_eq!(value(&with_values, "task").as_deref(), Some("\"fresh\""));
        for (values, fresh_name) in [(v("token"), "mcp"), (v("mcp"), "mcp")] {
            let e = ContextParts {
                kept: kept(&["token"]),
                values,
                fresh: fresh(fresh_name),
            }
            .into_context()
            .unwrap_err();
            assert!(e.contains("twice"), "{e}");
        }
    }

    /// The weight follows the payload's values, not the token count: a few tokens with claims
    /// of thousands of values fill [`KEPT_BYTES`], hundreds of ordinary ones do not.
    #[test]
    fn parts_weigh_what_their_payload_holds() {
        let small = serde_json::json!({"iss": "https://agents.example.com", "sub": "agent-7",
            "scope": "orders:read", "exp": 1, "iat": 0, "aud": "api"});
        let groups: Vec<String> = (0..3000).map(|i| format!("group-{i}")).collect();
        let large = serde_json::json!({"sub": "agent-7", "groups": groups});
        let w =
            |v: &Value| parts_weight(v.as_object().unwrap().iter().map(|(k, v)| (k.as_str(), v)));
        assert!(w(&small) < 4096, "{}", w(&small));
        assert!(KEPT_BYTES / w(&small) >= 500);
        assert!(w(&large) > 3000 * 256);
        assert!(KEPT_BYTES / w(&large) <= 3);
    }

    /// A kept entity store holds the parts' weight once more, within the same limit, and gives
    /// it back with them; parts not kept keep no store.
    #[test]
    fn kept_stores_count_against_the_limit() {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let parts = || Arc::new(TokenParts::new(vec![], Context::empty(), "s".into(), 10));
        let store = Arc::new(Entities::empty());
        let unkept = parts();
        unkept.keep_store(1, &store);
        assert!(
            unkept.store(1).is_none(),
            "parts built for one request keep no store"
        );
        let checked = Checked::default();
        checked.offer_parts_within(&parts(), &COUNT, 30);
        checked.offer_parts_within(&parts(), &COUNT, 30);
        let kept = checked.kept_parts().expect("kept");
        assert_eq!(COUNT.load(Ordering::Relaxed), 10);
        kept.keep_store(1, &store);
        kept.keep_store(2, &store);
        assert_eq!(COUNT.load(Ordering::Relaxed), 30);
        kept.keep_store(4, &store);
        assert!(kept.store(1).is_some() && kept.store(2).is_some());
        assert!(kept.store(4).is_none(), "past the limit");
        assert_eq!(COUNT.load(Ordering::Relaxed), 30);
        drop((checked, kept));
        assert_eq!(COUNT.load(Ordering::Relaxed), 0);
    }

    /// A value given twice is refused like any other attribute given twice.
    #[test]
    fn a_value_given_twice_is_refused() {
        let now = |n: i64| ("now".to_string(), CedarValue::from(n));
        let e = ContextParts {
            values: vec![now(1), now(2)],
            ..ContextParts::default()
        }
        .into_context()
        .unwrap_err();
        assert!(e.contains("`now`"), "{e}");
    }
}

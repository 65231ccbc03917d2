//! A verified token's claims: what identity, delegation and task parsing read (`agent.rs`) and
//! what `context.token.claims` is built from.

use serde_json::{Map, Value};

/// A verified token's claims, kept compactly for as long as the token is cached: sorted by name
/// in one exact-size allocation (a `serde_json::Map` is an index map here, with a hash table and
/// spare capacity per token).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims(Box<[(Box<str>, Value)]>);

impl Claims {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(name))
            .ok()
            .and_then(|i| self.0.get(i))
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }
}

impl From<Map<String, Value>> for Claims {
    fn from(m: Map<String, Value>) -> Claims {
        let mut v: Vec<(Box<str>, Value)> = m
            .into_iter()
            .map(|(k, v)| (k.into_boxed_str(), v))
            .collect();
        // Keys of a map are unique: the order is total.
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Claims(v.into_boxed_slice())
    }
}

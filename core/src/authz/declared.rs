//! What each action of the schema declares of its context: the attribute paths the filter adds
//! only where declared (`Policies::declares`), so that a schema written before them keeps
//! validating.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

/// Per action of the schema, the attribute paths its context type declares, written
/// `mcp/client`, `request/headers/x-tenant` (`/` never appears in a header name): read from the
/// schema's JSON form, following common type names (`McpContext`, `ReadFileCall`), three levels
/// deep.
pub(super) fn declared_fields(schema_text: &str) -> HashMap<String, HashSet<String>> {
    let mut out = HashMap::new();
    let Ok((fragment, _)) = cedar_policy::SchemaFragment::from_cedarschema_str(schema_text) else {
        return out;
    };
    let Ok(json) = fragment.to_json_value() else {
        return out;
    };
    let Some(namespaces) = json.as_object() else {
        return out;
    };
    for ns in namespaces.values() {
        let common = ns.get("commonTypes");
        // A type as written, or the common type it names.
        let resolve = |t: &Value| -> Option<Value> {
            let mut t = t.clone();
            for _ in 0..8 {
                let name = match t.get("type").and_then(Value::as_str) {
                    Some("Record") => return Some(t),
                    Some("EntityOrCommon") => t.get("name").and_then(Value::as_str)?.to_string(),
                    Some(other) => other.to_string(),
                    None => return None,
                };
                let short = name.rsplit("::").next().unwrap_or(&name);
                t = common?.get(short)?.clone();
            }
            None
        };
        fn walk(
            record: &Value,
            prefix: &str,
            depth: usize,
            resolve: &dyn Fn(&Value) -> Option<Value>,
            out: &mut HashSet<String>,
        ) {
            let Some(attrs) = record.get("attributes").and_then(Value::as_object) else {
                return;
            };
            for (name, t) in attrs {
                let path = format!("{prefix}{name}");
                if depth > 1 {
                    if let Some(inner) = resolve(t) {
                        walk(&inner, &format!("{path}/"), depth - 1, resolve, out);
                    }
                }
                out.insert(path);
            }
        }
        let Some(actions) = ns.get("actions").and_then(Value::as_object) else {
            continue;
        };
        for (action, def) in actions {
            if let Some(ctx) = def.pointer("/appliesTo/context").and_then(resolve) {
                let mut fields = HashSet::new();
                walk(&ctx, "", 3, &resolve, &mut fields);
                out.insert(action.clone(), fields);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declared_fields_of_context_mcp_are_read_per_action_through_common_types() {
        let schema = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/tessera.cedarschema"
        ))
        .unwrap_or_default();
        let f = declared_fields(&schema);
        for action in ["tools/call", "server/discover", "call:read_file"] {
            let fields = f.get(action).cloned().unwrap_or_default();
            assert!(
                fields.contains("mcp/protocol_version") && fields.contains("mcp/client"),
                "{action}: {fields:?}"
            );
        }
        assert!(
            !f.get("GET")
                .is_some_and(|f| f.iter().any(|p| p.starts_with("mcp"))),
            "an HTTP action has no context.mcp"
        );
        let old = "entity Tool; type Call = { method: String };
                   action \"tools/call\" appliesTo { principal: [Tool], resource: [Tool], context: { mcp: Call } };";
        let f = declared_fields(old);
        assert_eq!(
            f.get("tools/call").map(|f| f.contains("mcp/method")),
            Some(true)
        );
        assert_eq!(
            f.get("tools/call")
                .map(|f| f.contains("mcp/protocol_version")),
            Some(false)
        );
    }
}

//! MCP over Streamable HTTP: the JSON-RPC 2.0 messages of a POST body, what Cedar request each one
//! is, and the JSON-RPC errors a client sees when one is refused.

use serde_json::{json, Value};

/// JSON-RPC 2.0 error codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Implementation-defined server error (JSON-RPC reserves -32000..-32099): refused by policy.
pub const FORBIDDEN: i64 = -32003;
/// A batch with a refused message is not forwarded; its other requests get this.
pub const NOT_FORWARDED: i64 = -32004;

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Has an `id`: the client waits for an answer.
    Request { id: Value },
    /// No `id`.
    Notification,
    /// A client's answer to a server request (`result` or `error`, no `method`).
    Response,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    pub method: String,
    pub params: Value,
}

/// What a message asks Cedar: action, resource type and id, and the `context.mcp` record.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The generic action (the MCP method); a per-tool action `call:<tool>` is preferred when the
    /// schema declares it.
    pub action: String,
    pub resource_type: &'static str,
    pub resource_id: String,
    pub tool: Option<String>,
    pub uri: Option<String>,
    pub prompt: Option<String>,
    pub arguments: Option<Value>,
    /// The protocol version the request names, and the client's name and version (self-reported):
    /// `mcp_revision.rs`. In `context.mcp` when the action's schema declares them.
    pub version: Option<String>,
    pub client: Option<(Option<String>, Option<String>)>,
}

/// A message the filter refuses before Cedar: (code, message).
pub type RpcError = (i64, String);

/// One message of a body, or (its id, why it is not a valid message).
pub type Parsed = Result<Message, (Value, RpcError)>;

/// The largest integer id accepted: JavaScript's `Number.MAX_SAFE_INTEGER`, so that a server in
/// any language echoes the id the filter matched its answer by.
const MAX_SAFE_ID: u64 = (1 << 53) - 1;

/// Splits a parsed body into messages. `Err` is the JSON-RPC error for the whole body: an empty
/// batch, a batch of more than `max_batch` messages, or one where two requests share an id
/// (answers are matched by id, so a repeated id could hide which answer is which).
pub fn messages(body: &Value, max_batch: usize) -> Result<(Vec<Parsed>, bool), RpcError> {
    match body {
        Value::Array(items) => {
            if items.is_empty() {
                return Err((INVALID_REQUEST, "empty batch".into()));
            }
            if items.len() > max_batch {
                return Err((
                    INVALID_REQUEST,
                    format!("a batch may hold at most {max_batch} messages"),
                ));
            }
            let parsed: Vec<Parsed> = items.iter().map(message).collect();
            let mut ids: Vec<&Value> = parsed
                .iter()
                .filter_map(|m| match m {
                    Ok(Message {
                        kind: Kind::Request { id },
                        ..
                    }) => Some(id),
                    _ => None,
                })
                .collect();
            let n = ids.len();
            ids.sort_by_key(|id| id.to_string());
            ids.dedup();
            if ids.len() != n {
                return Err((
                    INVALID_REQUEST,
                    "two requests of the batch share an id".into(),
                ));
            }
            Ok((parsed, true))
        }
        other => Ok((vec![message(other)], false)),
    }
}

/// One message, or (its id, the error) when it is not a valid JSON-RPC 2.0 message.
fn message(v: &Value) -> Parsed {
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let invalid = |msg: &str| (id.clone(), (INVALID_REQUEST, msg.to_string()));
    let Some(obj) = v.as_object() else {
        return Err(invalid("a JSON-RPC message must be an object"));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("jsonrpc must be \"2.0\""));
    }
    if let Some(id) = obj.get("id") {
        let safe = id.as_i64().is_some_and(|n| n.unsigned_abs() <= MAX_SAFE_ID);
        if !(id.is_string() || safe) {
            return Err(invalid(
                "id must be a string or an integer of at most 2^53 - 1",
            ));
        }
    }
    let params = obj
        .get("params")
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    if !(params.is_object() || params.is_array()) {
        return Err(invalid("params must be an object or an array"));
    }
    match obj.get("method") {
        Some(Value::String(m)) => Ok(Message {
            kind: match obj.get("id") {
                Some(id) => Kind::Request { id: id.clone() },
                None => Kind::Notification,
            },
            method: m.clone(),
            params,
        }),
        Some(_) => Err(invalid("method must be a string")),
        None if obj.contains_key("result") || obj.contains_key("error") => Ok(Message {
            kind: Kind::Response,
            method: String::new(),
            params: Value::Null,
        }),
        None => Err(invalid("a request needs a method")),
    }
}

/// The Cedar target of a request or notification. `server` is the route name (the `McpServer`).
pub fn target(m: &Message, server: &str) -> Result<Target, RpcError> {
    let string_param = |name: &str| -> Result<String, RpcError> {
        m.params
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                (
                    INVALID_PARAMS,
                    format!("params.{name} must be a non-empty string"),
                )
            })
    };
    let mut t = Target {
        action: m.method.clone(),
        resource_type: crate::names::MCP_SERVER,
        resource_id: server.to_string(),
        tool: None,
        uri: None,
        prompt: None,
        arguments: None,
        version: None,
        client: None,
    };
    match m.method.as_str() {
        "tools/call" => {
            let name = string_param("name")?;
            let args = m.params.get("arguments").cloned().unwrap_or(json!({}));
            if !args.is_object() {
                return Err((INVALID_PARAMS, "params.arguments must be an object".into()));
            }
            t.resource_type = crate::names::TOOL;
            t.resource_id = name.clone();
            t.tool = Some(name);
            t.arguments = Some(args);
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            let raw = string_param("uri")?;
            let uri = crate::formats::canonical_resource_uri(&raw).map_err(|e| {
                (
                    INVALID_PARAMS,
                    format!("params.uri is not a resource URI with one meaning: {e}"),
                )
            })?;
            t.resource_type = crate::names::RESOURCE;
            t.resource_id = uri.clone();
            t.uri = Some(uri);
        }
        "prompts/get" => {
            let name = string_param("name")?;
            t.resource_type = crate::names::PROMPT;
            t.resource_id = name.clone();
            t.prompt = Some(name);
        }
        _ => {}
    }
    Ok(t)
}

/// The resources a `subscriptions/listen` (2026-07-28) subscribes to, each in its one form: every
/// one is judged as `resources/subscribe`, as a 2025-11-25 subscription is. At most `max`.
pub fn subscriptions(m: &Message, max: usize) -> Result<Vec<String>, RpcError> {
    let Some(list) = m.params.pointer("/notifications/resourceSubscriptions") else {
        return Ok(vec![]);
    };
    let invalid = |msg: String| (INVALID_PARAMS, msg);
    let items = list.as_array().ok_or_else(|| {
        invalid("params.notifications.resourceSubscriptions must be an array".into())
    })?;
    if items.len() > max {
        return Err(invalid(format!(
            "params.notifications.resourceSubscriptions may hold at most {max} URIs"
        )));
    }
    items
        .iter()
        .map(|v| {
            let raw = v.as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
                invalid("params.notifications.resourceSubscriptions holds a non-string".into())
            })?;
            crate::formats::canonical_resource_uri(raw).map_err(|e| {
                invalid(format!(
                    "a subscribed URI is not a resource URI with one meaning: {e}"
                ))
            })
        })
        .collect()
}

pub fn error_object(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(d) = data {
        crate::json::set(&mut error, "data", d);
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_call_targets_the_tool_with_its_arguments() {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "transfer_funds", "arguments": {"amount": 5}}});
        let (msgs, batch) = messages(&body, 64).expect("valid");
        assert!(!batch);
        let m = msgs[0].clone().expect("message");
        assert_eq!(m.kind, Kind::Request { id: json!(7) });
        let t = target(&m, "mcp").expect("target");
        assert_eq!(
            (t.resource_type, t.resource_id.as_str()),
            ("Tool", "transfer_funds")
        );
        assert_eq!(t.arguments, Some(json!({"amount": 5})));
    }

    #[test]
    fn invalid_messages_keep_their_id() {
        let body = json!([{"jsonrpc": "1.0", "id": "a", "method": "ping"}, {"jsonrpc": "2.0", "method": "notifications/initialized"}]);
        let (msgs, batch) = messages(&body, 64).expect("batch");
        assert!(batch);
        assert_eq!(
            msgs[0].clone().err().map(|(id, e)| (id, e.0)),
            Some((json!("a"), INVALID_REQUEST))
        );
        assert_eq!(
            msgs[1].clone().map(|m| m.kind).ok(),
            Some(Kind::Notification)
        );
        assert!(messages(&json!([]), 64).is_err());
    }

    #[test]
    fn batches_are_bounded_and_ids_unique_and_safe() {
        let ping = |id: Value| json!({"jsonrpc": "2.0", "id": id, "method": "ping"});
        let code = |v: &Value, max| messages(v, max).err().map(|e| e.0);
        assert_eq!(
            code(&json!([ping(json!(1)), ping(json!(1))]), 64),
            Some(INVALID_REQUEST)
        );
        assert_eq!(
            code(&json!([ping(json!("a")), ping(json!("a"))]), 64),
            Some(INVALID_REQUEST)
        );
        // "1" and 1 are different ids; notifications have none.
        assert_eq!(code(&json!([ping(json!(1)), ping(json!("1"))]), 64), None);
        assert_eq!(
            code(&json!([ping(json!(1)), ping(json!(2)), ping(json!(3))]), 2),
            Some(INVALID_REQUEST)
        );
        // 2^53 is not a safe integer: a JavaScript server would echo another number.
        let (msgs, _) = messages(&ping(json!(9007199254740993_u64)), 64).expect("parsed");
        assert!(msgs[0].is_err());
        let (msgs, _) = messages(&ping(json!(-9007199254740991_i64)), 64).expect("parsed");
        assert!(msgs[0].is_ok());
    }

    #[test]
    fn a_tool_call_without_a_name_is_invalid_params() {
        let m = Message {
            kind: Kind::Notification,
            method: "tools/call".into(),
            params: json!({}),
        };
        assert_eq!(target(&m, "mcp").err().map(|e| e.0), Some(INVALID_PARAMS));
    }
}

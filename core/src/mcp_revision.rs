//! Which MCP revision a POST speaks, and whether its headers say what its body says.
//!
//! - **2026-07-28** ("modern"): no `initialize`, no session; every request carries its protocol
//!   version (and client info) in `params._meta`, and mirrors its version, method and name into
//!   the `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers so that components in front
//!   of the server can route on them. The filter refuses a request whose headers do not match its
//!   body (400, `HeaderMismatch` -32020), so that nothing behind it that reads the headers can be
//!   told something else than what the server executes.
//! - **2025-11-25 and earlier** ("handshake"): `initialize` opens a session; the version is in the
//!   `MCP-Protocol-Version` header after it. Mirrored headers, when such a client sends them, must
//!   match too.
//!
//! A request is modern when its body says so (`_meta` carries a protocol version), as a dual-era
//! server decides, never on a header alone: a header naming 2026-07-28 over a body that does not
//! is a mismatch. Values of `Mcp-Name` that are not plain ASCII come as `=?base64?…?=`.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::mcp::{Kind, Parsed, INVALID_PARAMS, INVALID_REQUEST};

/// Revisions whose requests carry their version in `_meta`.
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];
/// Revisions negotiated with `initialize`.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The HTTP headers do not match the body, or a required one is missing.
pub const HEADER_MISMATCH: i64 = -32020;
/// The request's protocol version is not one the filter can judge.
pub const UNSUPPORTED_VERSION: i64 = -32022;

const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CLIENT: &str = "io.modelcontextprotocol/clientInfo";

/// The request headers that mirror the body (each at most once: `SINGLE_HEADERS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirrored {
    /// `MCP-Protocol-Version`.
    pub version: Option<String>,
    /// `Mcp-Method`.
    pub method: Option<String>,
    /// `Mcp-Name`, as sent (`=?base64?…?=` not yet decoded).
    pub name: Option<String>,
}

/// What a POST body's revision is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Revision {
    /// 2026-07-28 (no sessions; approval through `input_required`).
    pub modern: bool,
    /// The protocol version the request names, when it names one (`_meta`, the header, or an
    /// `initialize`'s `params.protocolVersion`).
    pub version: Option<String>,
    /// The client's self-description (`name`, `version`): from `_meta`, or an `initialize`.
    /// Self-reported: fit for logs and soft policy, never proof of who calls.
    pub client: Option<(Option<String>, Option<String>)>,
}

/// Why a body's headers and revision are refused: HTTP 400 and this JSON-RPC error.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub id: Value,
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

/// The revision of a POST body, its mirrored headers checked against it.
pub fn revision(
    headers: &Mirrored,
    messages: &[Parsed],
    batch: bool,
) -> Result<Revision, Box<Refused>> {
    let refuse = |id: &Value, code, message: String, data| {
        Err(Box::new(Refused {
            id: id.clone(),
            code,
            message,
            data,
        }))
    };
    let modern_header = headers
        .version
        .as_deref()
        .is_some_and(|v| MODERN_VERSIONS.contains(&v));
    if batch {
        let claims_modern = messages
            .iter()
            .flatten()
            .any(|m| meta(&m.params, META_VERSION).is_some());
        if claims_modern || modern_header {
            return refuse(
                &Value::Null,
                INVALID_REQUEST,
                "a 2026-07-28 request is one message, not a batch".into(),
                None,
            );
        }
        if headers.method.is_some() || headers.name.is_some() {
            return refuse(
                &Value::Null,
                HEADER_MISMATCH,
                "Header mismatch: Mcp-Method and Mcp-Name cannot mirror a batch".into(),
                None,
            );
        }
        return handshake(headers, None);
    }
    let Some(Ok(m)) = messages.first() else {
        // An invalid message: its own error answers it.
        return handshake(headers, None).or(Ok(Revision::default()));
    };
    let id = match &m.kind {
        Kind::Request { id } => id.clone(),
        _ => Value::Null,
    };
    let body_version = match meta(&m.params, META_VERSION) {
        None => None,
        Some(Value::String(v)) => Some(v.as_str()),
        Some(_) => {
            return refuse(
                &id,
                INVALID_PARAMS,
                format!("params._meta[\"{META_VERSION}\"] must be a string"),
                None,
            )
        }
    };
    let Some(version) = body_version else {
        if modern_header {
            return refuse(
                &id,
                HEADER_MISMATCH,
                format!(
                    "Header mismatch: the MCP-Protocol-Version header names {} but the body's \
                     params._meta carries no protocol version",
                    headers.version.as_deref().unwrap_or_default()
                ),
                None,
            );
        }
        mirrors(headers, m, &id, false)?;
        return handshake(headers, Some(m));
    };
    if !MODERN_VERSIONS.contains(&version) {
        return refuse(
            &id,
            UNSUPPORTED_VERSION,
            "Unsupported protocol version".into(),
            Some(json!({"supported": MODERN_VERSIONS, "requested": version})),
        );
    }
    if headers.version.as_deref() != Some(version) {
        return refuse(
            &id,
            HEADER_MISMATCH,
            format!(
                "Header mismatch: MCP-Protocol-Version header {} does not match body value '{version}'",
                shown(headers.version.as_deref())
            ),
            None,
        );
    }
    mirrors(headers, m, &id, true)?;
    Ok(Revision {
        modern: true,
        version: Some(version.to_string()),
        client: meta(&m.params, META_CLIENT).map(client_info),
    })
}

/// A 2025-11-25 (or earlier) body: a version header the filter does not know is refused.
fn handshake(
    headers: &Mirrored,
    m: Option<&crate::mcp::Message>,
) -> Result<Revision, Box<Refused>> {
    if let Some(v) = headers.version.as_deref() {
        if !HANDSHAKE_VERSIONS.contains(&v) && !MODERN_VERSIONS.contains(&v) {
            let id = match m.map(|m| &m.kind) {
                Some(Kind::Request { id }) => id.clone(),
                _ => Value::Null,
            };
            let supported: Vec<&str> = MODERN_VERSIONS
                .iter()
                .chain(HANDSHAKE_VERSIONS.iter().rev())
                .copied()
                .collect();
            return Err(Box::new(Refused {
                id,
                code: UNSUPPORTED_VERSION,
                message: "Unsupported protocol version".into(),
                data: Some(json!({"supported": supported, "requested": v})),
            }));
        }
    }
    let initialize = m.filter(|m| m.method == "initialize");
    let version = headers.version.clone().or_else(|| {
        initialize
            .and_then(|m| m.params.get("protocolVersion"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let client = initialize
        .and_then(|m| m.params.get("clientInfo"))
        .map(client_info);
    Ok(Revision {
        modern: false,
        version,
        client,
    })
}

/// `Mcp-Method` and `Mcp-Name` against the message: required on a modern request (`Mcp-Name` on
/// the methods that name something), and when sent by an older client, equal too.
fn mirrors(
    headers: &Mirrored,
    m: &crate::mcp::Message,
    id: &Value,
    modern: bool,
) -> Result<(), Box<Refused>> {
    let mismatch = |message: String| {
        Box::new(Refused {
            id: id.clone(),
            code: HEADER_MISMATCH,
            message,
            data: None,
        })
    };
    match headers.method.as_deref() {
        Some(h) if h == m.method => {}
        None if !modern => {}
        h => {
            return Err(mismatch(format!(
                "Header mismatch: Mcp-Method header {} does not match body value '{}'",
                shown(h),
                m.method
            )))
        }
    }
    let field = match m.method.as_str() {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    };
    let body = field.and_then(|f| m.params.get(f)).and_then(Value::as_str);
    match (field, headers.name.as_deref(), body) {
        // Nothing to mirror and nothing mirrored.
        (None, None, _) => Ok(()),
        (None, Some(_), _) => Err(mismatch(format!(
            "Header mismatch: Mcp-Name header on {}, which names nothing",
            m.method
        ))),
        (Some(_), None, _) if !modern => Ok(()),
        // The body's own error (a missing name) is the target's to report.
        (Some(_), None, None) => Ok(()),
        (Some(f), h, b) => match (h.map(decode), b) {
            (Some(Ok(h)), Some(b)) if h == b => Ok(()),
            (Some(Err(e)), _) => Err(mismatch(format!("Header mismatch: Mcp-Name header {e}"))),
            (h, _) => Err(mismatch(format!(
                "Header mismatch: Mcp-Name header {} does not match body value params.{f}",
                match h {
                    Some(Ok(v)) => format!("'{v}'"),
                    _ => "missing".into(),
                }
            ))),
        },
    }
}

/// A mirrored value as the client meant it: `=?base64?…?=` (standard alphabet, padded) decoded,
/// anything else taken as it is.
pub fn decode(value: &str) -> Result<String, String> {
    let Some(inner) = value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    else {
        // Plain values are visible ASCII (and space, tab): anything else must come base64-encoded,
        // or a server reading header bytes as Latin-1 would see another value than this check.
        if !value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) || b == b'\t')
        {
            return Err("is not plain ASCII (other values come as =?base64?...?=)".into());
        }
        return Ok(value.to_string());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(inner)
        .map_err(|_| "is not valid base64".to_string())?;
    String::from_utf8(bytes).map_err(|_| "is not UTF-8 once decoded".to_string())
}

fn meta<'a>(params: &'a Value, key: &str) -> Option<&'a Value> {
    params.get("_meta").and_then(|m| m.get(key))
}

fn client_info(v: &Value) -> (Option<String>, Option<String>) {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    (s("name"), s("version"))
}

fn shown(v: Option<&str>) -> String {
    v.map_or("missing".into(), |v| format!("'{v}'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::messages;

    fn modern(method: &str, params: Value) -> Value {
        let mut params = params;
        crate::json::set(
            &mut params,
            "_meta",
            json!({META_VERSION: "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {},
                   META_CLIENT: {"name": "probe", "version": "1.0"}}),
        );
        json!({"jsonrpc": "2.0", "id": 4, "method": method, "params": params})
    }

    fn headers(version: Option<&str>, method: Option<&str>, name: Option<&str>) -> Mirrored {
        Mirrored {
            version: version.map(str::to_string),
            method: method.map(str::to_string),
            name: name.map(str::to_string),
        }
    }

    fn check(h: &Mirrored, body: &Value) -> Result<Revision, Box<Refused>> {
        let (msgs, batch) = messages(body, 64).expect("messages");
        revision(h, &msgs, batch)
    }

    fn code(h: &Mirrored, body: &Value) -> Option<i64> {
        check(h, body).err().map(|r| r.code)
    }

    const V: Option<&str> = Some("2026-07-28");

    #[test]
    fn a_modern_call_whose_headers_match_is_modern_with_its_client() {
        let call = modern("tools/call", json!({"name": "read_file", "arguments": {}}));
        let r = check(&headers(V, Some("tools/call"), Some("read_file")), &call).unwrap();
        assert!(r.modern);
        assert_eq!(r.version.as_deref(), Some("2026-07-28"));
        assert_eq!(r.client, Some((Some("probe".into()), Some("1.0".into()))));
        // Base64 form of the name (as clients send non-ASCII values).
        let enc = "=?base64?cmVhZF9maWxl?=";
        assert!(check(&headers(V, Some("tools/call"), Some(enc)), &call).is_ok());
    }

    #[test]
    fn every_mirrored_header_must_match_the_body() {
        let call = modern("tools/call", json!({"name": "read_file", "arguments": {}}));
        for h in [
            headers(None, Some("tools/call"), Some("read_file")),
            headers(Some("2025-11-25"), Some("tools/call"), Some("read_file")),
            headers(V, None, Some("read_file")),
            headers(V, Some("tools/list"), Some("read_file")),
            headers(V, Some("tools/call"), None),
            headers(V, Some("tools/call"), Some("delete_file")),
            headers(V, Some("tools/call"), Some("Read_file")),
            headers(V, Some("tools/call"), Some("=?base64?ZGVsZXRlX2ZpbGU=?=")),
            headers(V, Some("tools/call"), Some("=?base64?not base64?=")),
        ] {
            assert_eq!(code(&h, &call), Some(HEADER_MISMATCH), "{h:?}");
        }
        let read = modern("resources/read", json!({"uri": "file:///workspace/a"}));
        let h = headers(V, Some("resources/read"), Some("file:///workspace/a"));
        assert!(check(&h, &read).is_ok());
        let h = headers(V, Some("resources/read"), Some("file:///workspace/b"));
        assert_eq!(code(&h, &read), Some(HEADER_MISMATCH));
        // A name on a method that names nothing.
        let list = modern("tools/list", json!({}));
        let h = headers(V, Some("tools/list"), Some("read_file"));
        assert_eq!(code(&h, &list), Some(HEADER_MISMATCH));
    }

    #[test]
    fn a_modern_header_over_an_older_body_is_a_mismatch_and_versions_are_known() {
        let legacy = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        assert_eq!(
            code(&headers(V, Some("tools/list"), None), &legacy),
            Some(HEADER_MISMATCH)
        );
        let r = check(&headers(Some("2025-11-25"), None, None), &legacy).unwrap();
        assert_eq!(
            (r.modern, r.version.as_deref()),
            (false, Some("2025-11-25"))
        );
        let unknown = check(&headers(Some("1900-01-01"), None, None), &legacy).unwrap_err();
        assert_eq!(unknown.code, UNSUPPORTED_VERSION);
        assert_eq!(unknown.data.unwrap()["requested"], "1900-01-01");
        let mut future = modern("tools/list", json!({}));
        future["params"]["_meta"][META_VERSION] = json!("2099-01-01");
        let e = check(
            &headers(Some("2099-01-01"), Some("tools/list"), None),
            &future,
        )
        .unwrap_err();
        assert_eq!((e.code, e.id), (UNSUPPORTED_VERSION, json!(4)));
        assert_eq!(
            e.data.unwrap(),
            json!({"supported": ["2026-07-28"], "requested": "2099-01-01"})
        );
    }

    #[test]
    fn an_older_client_s_mirrored_headers_must_match_too_and_batches_are_older() {
        let legacy = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                            "params": {"name": "read_file", "arguments": {}}});
        let h = headers(Some("2025-11-25"), Some("tools/call"), Some("delete_file"));
        assert_eq!(code(&h, &legacy), Some(HEADER_MISMATCH));
        let h = headers(Some("2025-11-25"), Some("tools/call"), None);
        assert!(check(&h, &legacy).is_ok());
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "clientInfo": {"name": "c", "version": "2"}}});
        let r = check(&Mirrored::default(), &init).unwrap();
        assert_eq!(r.version.as_deref(), Some("2025-11-25"));
        assert_eq!(r.client, Some((Some("c".into()), Some("2".into()))));
        let mut second = legacy.clone();
        second["id"] = json!(2);
        let batch = json!([legacy, second]);
        assert_eq!(code(&headers(V, None, None), &batch), Some(INVALID_REQUEST));
        assert_eq!(
            code(&headers(None, Some("tools/call"), None), &batch),
            Some(HEADER_MISMATCH)
        );
        let modern_batch = json!([modern("tools/list", json!({}))]);
        assert_eq!(
            code(&Mirrored::default(), &modern_batch),
            Some(INVALID_REQUEST)
        );
    }

    #[test]
    fn base64_values_decode_strictly() {
        assert_eq!(
            decode("=?base64?SGVsbG8sIOS4lueVjA==?=").unwrap(),
            "Hello, 世界"
        );
        assert_eq!(decode("plain").unwrap(), "plain");
        assert!(
            decode("=?base64?SGVsbG8sIOS4lueVjA?=").is_err(),
            "padding is required"
        );
        assert!(decode("=?base64?/w==?=").is_err(), "not UTF-8");
        assert!(decode("café").is_err(), "raw non-ASCII must be encoded");
        assert!(decode("a\u{7f}").is_err());
    }
}

//! Local replies a client can act on: RFC 6750 `WWW-Authenticate` challenges for token problems,
//! small JSON bodies naming the policies for denials.

use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// RFC 7230 quoted-string content: the description comes from our own messages, but a kid or
/// algorithm from the token is echoed in them, so quotes and backslashes are escaped and
/// non-printable characters dropped.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            _ => {}
        }
    }
    out
}

impl LocalReply {
    /// No credentials on a protected route: a bare challenge (RFC 6750 §3.1: no error code).    /// Adds RFC 9728 `resource_metadata="…"` to the `WWW-Authenticate` challenge.
    pub fn with_resource_metadata(mut self, url: Option<&str>) -> LocalReply {
        if let Some(url) = url {
            for (k, v) in &mut self.headers {
                if k == "www-authenticate" {
                    let sep = if v == "Bearer" { " " } else { ", " };
                    v.push_str(&format!("{sep}resource_metadata=\"{}\"", quoted(url)));
                }
            }
        }
        self
    }

    pub fn missing_token(request_id: &str) -> LocalReply {
        LocalReply {
            status: 401,
            headers: vec![
                ("www-authenticate".into(), "Bearer".into()),
                ("content-type".into(), "application/json".into()),
            ],
            body:
                json!({"error": "unauthorized", "error_description": "a bearer token is required", "request_id": request_id})
                    .to_string(),
        }
    }

    pub fn invalid_token(description: &str, request_id: &str) -> LocalReply {
        let d = quoted(description);
        LocalReply {
            status: 401,
            headers: vec![
                (
                    "www-authenticate".into(),
                    format!("Bearer error=\"invalid_token\", error_description=\"{d}\""),
                ),
                ("content-type".into(), "application/json".into()),
            ],
            body:
                json!({"error": "invalid_token", "error_description": d, "request_id": request_id})
                    .to_string(),
        }
    }

    /// A DPoP challenge (RFC 9449 §7.1): `error` is `invalid_token`, `invalid_dpop_proof` or
    /// `use_dpop_nonce`; `algs` the proof algorithms accepted.
    pub fn dpop_challenge(
        error: &str,
        description: &str,
        algs: &str,
        request_id: &str,
    ) -> LocalReply {
        let d = quoted(description);
        LocalReply {
            status: 401,
            headers: vec![
                (
                    "www-authenticate".into(),
                    format!(
                        "DPoP error=\"{error}\", error_description=\"{d}\", algs=\"{}\"",
                        quoted(algs)
                    ),
                ),
                ("content-type".into(), "application/json".into()),
            ],
            body: json!({"error": error, "error_description": d, "request_id": request_id})
                .to_string(),
        }
    }

    /// The same refusal as a DPoP challenge, for a client that used the DPoP scheme: every
    /// `Bearer` challenge becomes `DPoP` with the accepted algorithms.
    pub fn as_dpop(mut self, algs: &str) -> LocalReply {
        for (k, v) in &mut self.headers {
            if k == "www-authenticate" {
                if let Some(rest) = v.strip_prefix("Bearer") {
                    let sep = if rest.is_empty() { " " } else { ", " };
                    *v = format!("DPoP{rest}{sep}algs=\"{}\"", quoted(algs));
                }
            }
        }
        self
    }

    /// Adds a `DPoP` challenge beside the `Bearer` one (RFC 9449 §7.1: a resource that takes
    /// both schemes offers both).
    pub fn with_dpop_offer(mut self, algs: &str) -> LocalReply {
        if self
            .headers
            .iter()
            .any(|(k, v)| k == "www-authenticate" && v.starts_with("Bearer"))
        {
            self.headers.insert(
                1,
                (
                    "www-authenticate".into(),
                    format!("DPoP algs=\"{}\"", quoted(algs)),
                ),
            );
        }
        self
    }

    /// `DPoP-Nonce: <nonce>` (RFC 9449 §9): the nonce the client's next proof must carry.
    pub fn with_dpop_nonce(mut self, nonce: Option<String>) -> LocalReply {
        if let Some(n) = nonce {
            self.headers.push(("dpop-nonce".into(), n));
        }
        self
    }

    /// RFC 6750 §3.1 and the MCP authorization spec's scope challenge: 403 naming the scopes
    /// (space-separated) a new token needs; `with_resource_metadata` adds where to get one.
    pub fn insufficient_scope(
        scopes: &[String],
        policies: &[String],
        request_id: &str,
    ) -> LocalReply {
        let scope = scopes.join(" ");
        let d = "the token lacks a scope this request needs";
        let challenge = format!(
            "Bearer error=\"insufficient_scope\", scope=\"{}\", error_description=\"{d}\"",
            quoted(&scope)
        );
        LocalReply {
            status: 403,
            headers: vec![
                ("www-authenticate".into(), challenge),
                ("content-type".into(), "application/json".into()),
            ],
            body: json!({"error": "insufficient_scope", "error_description": d, "scope": scope,
                         "policies": policies, "request_id": request_id})
            .to_string(),
        }
    }

    pub fn forbidden(policies: &[String], request_id: &str) -> LocalReply {
        LocalReply::json_error(403, "forbidden", None, policies, request_id)
    }

    /// The filter cannot judge the request: denied (fail closed) with a reason.
    pub fn cannot_judge(request_id: &str) -> LocalReply {
        LocalReply::json_error(
            403,
            "forbidden",
            Some("the request could not be evaluated"),
            &[],
            request_id,
        )
    }

    /// Not configured, or configuration failed: 503, never a pass.
    pub fn unavailable(request_id: &str) -> LocalReply {
        LocalReply::json_error(
            503,
            "unavailable",
            Some("authorization is not configured"),
            &[],
            request_id,
        )
    }
    /// The filter cannot judge the request now (keys or a status list not there, too many calls
    /// in flight): 503 with the reason, to be tried again shortly.
    pub fn retry_later(reason: &str, request_id: &str) -> LocalReply {
        let mut r = LocalReply::json_error(503, "unavailable", Some(reason), &[], request_id);
        r.headers.push(("retry-after".into(), "1".into()));
        r
    }

    /// RFC 9728 protected-resource metadata, served by the filter itself.
    pub fn metadata(doc: &str) -> LocalReply {
        LocalReply {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "max-age=300".into()),
            ],
            body: doc.to_string(),
        }
    }

    /// A JSON-RPC answer (a single error object or a batch of them).
    pub fn json_rpc(status: u32, body: String) -> LocalReply {
        LocalReply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        }
    }

    pub fn json_error(
        status: u32,
        error: &str,
        reason: Option<&str>,
        policies: &[String],
        request_id: &str,
    ) -> LocalReply {
        let mut body = json!({"error": error, "policies": policies, "request_id": request_id});
        if let Some(r) = reason {
            crate::json::set(&mut body, "reason", json!(r));
        }
        LocalReply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }
}

/// `s` made safe for one unquoted log field: control characters (CR, LF, ESC, NEL, …), the
/// Unicode line and paragraph separators and whitespace (the space, NBSP, …) escaped as `\u{…}`, so that a value from a
/// request or a token cannot start a forged line, nor a forged field (`id principal=admin`).
/// (Principals are JSON-quoted already: `Agent::"a\nb"`.)
pub fn log_safe(s: &str) -> std::borrow::Cow<'_, str> {
    escape(s, false)
}

/// `s` made safe inside a double-quoted log field (`reason="…"`): as [`log_safe`], and `"` and
/// `\` escaped too, so that the value cannot close the field.
pub fn log_quoted(s: &str) -> std::borrow::Cow<'_, str> {
    escape(s, true)
}

fn escape(s: &str, quoted: bool) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}')
            || (!quoted && c.is_whitespace())
            || (quoted && matches!(c, '\\' | '"'))
    };
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' if quoted => out.push_str("\\\\"),
            '"' if quoted => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod log_tests {
    use super::{log_quoted, log_safe};

    #[test]
    fn control_characters_cannot_forge_a_log_line() {
        assert_eq!(log_safe("plain/path"), "plain/path");
        assert_eq!(log_safe("id principal=admin"), "id\\u{0020}principal=admin");
        assert_eq!(log_quoted("a reason"), "a reason");
        assert_eq!(log_safe("a\u{a0}b\u{3000}c"), "a\\u{00a0}b\\u{3000}c");
        assert_eq!(
            log_safe("Agent::\"a\\\"b\""),
            "Agent::\"a\\\"b\"",
            "JSON-quoted: kept"
        );
        assert_eq!(
            log_quoted("k\ntessera decision=allow\r\u{1b}[2J\"\\"),
            "k\\ntessera decision=allow\\r\\u{001b}[2J\\\"\\\\"
        );
        let nel = log_safe("a\u{85}b\u{2028}");
        assert!(
            !nel.contains('\u{85}') && !nel.contains('\u{2028}'),
            "{nel}"
        );
    }
}

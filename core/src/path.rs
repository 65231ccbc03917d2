//! The one canonical form of a request path, used for routing and for `context.request.path`.
//!
//! A prefix match on a path that the upstream reads differently is a way around a decision:
//! `/public/../admin`, `/admin;x` (a path parameter to Tomcat and Spring), `//admin`, `/%61dmin`
//! (`a` percent-encoded). So a path is either brought to one form or refused (400):
//! - it must start with `/`; the query (`?…`) is not part of it and is kept as sent;
//! - refused: a backslash, a control character, `;`, an empty segment (`//`), a dot segment
//!   (`.`, `..`), and a percent-encoded `/`, `\`, `.`, `;`, `%` or control character, whose
//!   meaning depends on how often and where the upstream decodes;
//! - percent-encoded unreserved characters (RFC 3986 §2.3: letters, digits, `-`, `.`, `_`, `~`)
//!   are decoded, and the hex digits of every other escape are upper-cased (§6.2.2.1): the path
//!   the upstream decodes is the path that was routed.
//!
//! Routes match the canonical path case-insensitively (ASCII), so `/ADMIN` is the admin route
//! for an upstream that ignores case. Policies see `context.request.path` without a trailing `/`
//! ([`for_policy`]), lower-cased on a route whose upstream ignores case ([`fold_case`],
//! `case_sensitive: false`), and `context.request.host` as routes match it ([`host_for_policy`]).

use std::borrow::Cow;

/// The canonical path of `path` (the query and fragment cut off), or why it is refused.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, &'static str> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err("the path must start with `/`");
    }
    let bytes = path.as_bytes();
    let mut out: Option<String> = None;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => return Err("the path has a backslash"),
            b';' => return Err("the path has a `;` (path parameters are ambiguous)"),
            0..=0x1f | 0x7f => return Err("the path has a control character"),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or("the path has a broken escape")?;
                let v = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("the path has a broken escape")?;
                if matches!(v, b'/' | b'\\' | b'.' | b';' | b'%') || v < 0x20 || v == 0x7f {
                    return Err(
                        "the path has an encoded separator, dot, `;`, `%` or control character",
                    );
                }
                let o = out.get_or_insert_with(|| path[..i].to_string());
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'_' | b'~') {
                    o.push(char::from(v));
                } else {
                    o.push('%');
                    o.push_str(&format!("{v:02X}"));
                }
                i += 3;
                continue;
            }
            _ => {
                if let Some(o) = out.as_mut() {
                    // Byte-wise copy of a UTF-8 string between ASCII boundaries: push the char.
                    let ch_len = utf8_len(b);
                    o.push_str(&path[i..i + ch_len]);
                    i += ch_len;
                    continue;
                }
            }
        }
        i += 1;
    }
    let result = match out {
        Some(o) => Cow::Owned(o),
        None => Cow::Borrowed(path),
    };
    // Segments are checked on the decoded form: `/%2e%2e/` is refused above, `/.%2e/` too.
    for seg in result.split('/').skip(1) {
        if seg == "." || seg == ".." {
            return Err("the path has a dot segment");
        }
    }
    if result.len() > 1 && result[1..].split('/').rev().skip(1).any(str::is_empty) {
        return Err("the path has an empty segment (`//`)");
    }
    Ok(result)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// Whether the canonical `path` is under the route `prefix`: equal to it, or continuing with a
/// `/` (or the prefix ends with `/`). ASCII case is ignored.
pub fn under(path: &str, prefix: &str) -> bool {
    let (p, q) = (path.as_bytes(), prefix.as_bytes());
    if !p
        .get(..q.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(q))
    {
        return false;
    }
    let rest = p.get(q.len()..).unwrap_or(&[]);
    prefix.ends_with('/') || rest.first().is_none_or(|b| *b == b'/')
}

/// `context.request.path`: the canonical `path` (no query) with one trailing `/` removed (except
/// from `/`): `/orders/1/refund/` is the resource `/orders/1/refund` to nearly every framework, so
/// a policy's `like "/orders/*/refund"` cannot be stepped around with a slash. (On a route with
/// `case_sensitive: false` the path was lower-cased before: [`fold_case`].)
pub fn for_policy(path: &str) -> &str {
    let path = path.split(['?', '#']).next().unwrap_or("");
    match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    }
}

/// `path` with ASCII letters of its path part lower-cased outside percent-escapes (whose hex
/// digits stay upper-case, as in the canonical form); the query is kept as sent.
pub fn fold_case(path: &str) -> String {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    let mut out = String::with_capacity(path.len());
    let mut escape = 0;
    for c in path.get(..end).unwrap_or(path).chars() {
        if c == '%' {
            escape = 2;
            out.push(c);
        } else if escape > 0 {
            escape -= 1;
            out.push(c);
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out.push_str(path.get(end..).unwrap_or(""));
    out
}

/// `context.request.host`: the host name as routes match it — ASCII lower-cased, without its
/// port and one trailing dot (`Admin.Example.com.:443` → `admin.example.com`): a policy on
/// `admin.example.com` holds for every spelling that reaches the same route.
pub fn host_for_policy(host: &str) -> String {
    host_name(host).to_ascii_lowercase()
}

/// The name of `host` without its port, and the port (digits after the last `:`, outside an
/// IPv6 literal's brackets).
pub fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.chars().all(|c| c.is_ascii_digit())
                && (!h.starts_with('[') || h.ends_with(']')) =>
        {
            (h, Some(p))
        }
        _ => (host, None),
    }
}

/// The host name a route's `host` is compared with: no port, no trailing dot.
pub fn host_name(host: &str) -> &str {
    let name = split_port(host).0;
    name.strip_suffix('.').unwrap_or(name)
}

/// `Some("path")` when `v` is `context.request.path` (likewise any attribute of the record).
fn request_attr(v: &serde_json::Value) -> Option<&str> {
    let get = v.get(".")?;
    let request = get.get("left")?.get(".")?;
    (request.get("left")?.get("Var")?.as_str() == Some("context")
        && request.get("attr")?.as_str() == Some("request"))
    .then(|| get.get("attr")?.as_str())
    .flatten()
}

/// Checks a policy (its Cedar JSON form) for a comparison of `context.request.path` or
/// `context.request.host` with a literal that no request can ever give (`== "/Admin"`,
/// `like "/orders/*/"`, `== "Api.example.com."`): such a `forbid` would silently never apply.
/// `Err` says which literal and what to write instead.
pub fn check_policy_literals(est: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let check = |attr: &str, literal: &str| -> Result<(), String> {
        let (fixed, rule) = match attr {
            // A `like` pattern that starts with a wildcard: only its end can be checked.
            "path" if literal.starts_with('*') => {
                let trailing = literal.len() > 2 && literal.ends_with('/');
                if !trailing {
                    return Ok(());
                }
                (
                    literal.trim_end_matches('/').to_string(),
                    "the canonical path without a trailing `/`",
                )
            }
            "path" => match canonical(literal) {
                Ok(c) => (
                    for_policy(&c).to_string(),
                    "the canonical path without a trailing `/`",
                ),
                Err(why) => {
                    return Err(format!(
                        "`context.request.path` is compared with \"{literal}\", which no request \
                         gives: such a path is refused ({why})"
                    ))
                }
            },
            "host" => (
                host_for_policy(literal),
                "the host lower-cased, without a port or a trailing dot",
            ),
            _ => return Ok(()),
        };
        if fixed == literal {
            return Ok(());
        }
        Err(format!(
            "`context.request.{attr}` is compared with \"{literal}\", which no request gives: \
             policies see {rule} (write \"{fixed}\")"
        ))
    };
    match est {
        Value::Object(m) => {
            for op in ["==", "!="] {
                if let Some(args) = m.get(op) {
                    let (l, r) = (&args["left"], &args["right"]);
                    for (side, other) in [(l, r), (r, l)] {
                        if let (Some(a), Some(lit)) = (request_attr(side), other["Value"].as_str())
                        {
                            check(a, lit)?;
                        }
                    }
                }
            }
            if let Some(args) = m.get("like") {
                if let (Some(a), Some(pattern)) =
                    (request_attr(&args["left"]), args["pattern"].as_array())
                {
                    let text: String = pattern
                        .iter()
                        .map(|p| p["Literal"].as_str().unwrap_or("*"))
                        .collect();
                    check(a, &text)?;
                }
            }
            m.values().try_for_each(check_policy_literals)
        }
        Value::Array(items) => items.iter().try_for_each(check_policy_literals),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/admin;x",
            "/admin/..;/x",
            "//admin",
            "/a//b",
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/.%2E/admin",
            "/admin%2fx",
            "/admin%5cx",
            "/a%00",
            "/a%3bx",
            "/a%252e%252e/",
            "/a\\b",
            "/a\tb",
            "admin",
            "",
            "/a%2",
            "/a%zz",
        ] {
            assert!(canonical(p).is_err(), "{p:?} was accepted");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(canonical("/%61dmin").as_deref(), Ok("/admin"));
        assert_eq!(canonical("/a%2db%7e").as_deref(), Ok("/a-b~"));
        assert_eq!(canonical("/a%20b%c3%a9").as_deref(), Ok("/a%20b%C3%A9"));
        assert_eq!(canonical("/é/x?q=1#f").as_deref(), Ok("/é/x"));
        assert_eq!(canonical("/admin/").as_deref(), Ok("/admin/"));
        assert_eq!(canonical("/").as_deref(), Ok("/"));
        assert!(matches!(
            canonical("/orders/1?x=..;"),
            Ok(Cow::Borrowed("/orders/1"))
        ));
    }

    #[test]
    fn routes_match_whole_segments_ignoring_case() {
        assert!(under("/admin", "/admin"));
        assert!(under("/ADMIN/x", "/admin"));
        assert!(under("/admin/", "/admin"));
        assert!(!under("/administrator", "/admin"));
        assert!(under("/anything", "/"));
        assert!(!under("/adm", "/admin"));
    }

    #[test]
    fn policies_see_one_spelling_of_a_path_and_a_host() {
        assert_eq!(for_policy("/Orders/1/refund/"), "/Orders/1/refund");
        assert_eq!(for_policy("/orders/1/refund?x=/"), "/orders/1/refund");
        assert_eq!(for_policy("/"), "/");
        assert_eq!(fold_case("/A%C3%A9/B?Q=X"), "/a%C3%A9/b?Q=X");
        assert_eq!(host_for_policy("Admin.Example.COM."), "admin.example.com");
        assert_eq!(
            host_for_policy("admin.example.com.:8443"),
            "admin.example.com"
        );
        assert_eq!(host_for_policy("[::1]:80"), "[::1]");
        assert_eq!(host_name("admin.example.com.:443"), "admin.example.com");
        assert_eq!(host_name("[::1]"), "[::1]");
    }

    #[test]
    fn a_policy_literal_no_request_can_give_is_named() {
        use std::str::FromStr;
        let check = |text: &str| {
            let p = cedar_policy::Policy::from_str(text).expect("parses");
            check_policy_literals(&p.to_json().expect("json"))
        };
        for ok in [
            r#"forbid(principal, action, resource) when {
                context.request.path like "/orders/*/refund" && context.request.host != "api.example.com" };"#,
            r#"forbid(principal, action, resource) when { context.request.path like "*/refund" };"#,
            r#"forbid(principal, action, resource) when { context.request.path like "/" };"#,
            r#"forbid(principal, action, resource) when { context.request.path == "/Orders" };"#,
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            r#"forbid(principal, action, resource) when { context.request.path == "/%61dmin" };"#,
            r#"forbid(principal, action, resource) when { context.request.path == "/a;b" };"#,
            r#"forbid(principal, action, resource) when { context.request.host == "api.example.com:443" };"#,
            r#"forbid(principal, action, resource) when { "/admin/" == context.request.path };"#,
            r#"forbid(principal, action, resource) when { context.request.path like "/orders/*/" };"#,
            r#"forbid(principal, action, resource) when { context.request.path like "*/refund/" };"#,
            r#"forbid(principal, action, resource) when { context.request.host == "Api.example.com" };"#,
        ] {
            let e = check(bad).expect_err(bad);
            assert!(e.contains("which no request"), "{e}");
        }
    }
}

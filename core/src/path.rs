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
//! for an upstream that ignores case; `context.request.path` keeps the case as sent.

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
    while i < bytes.len() {
        let b = bytes[i];
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
    if p.len() < q.len() || !p[..q.len()].eq_ignore_ascii_case(q) {
        return false;
    }
    let rest = &p[q.len()..];
    prefix.ends_with('/') || rest.is_empty() || rest[0] == b'/'
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
}

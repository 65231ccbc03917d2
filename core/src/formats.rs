//! Typed MCP tool arguments: `argument_formats` in the configuration says which arguments of
//! which tool are a `path`, an `email` or a `url`. Cedar's `like` over the raw string is a trap
//! (`/workspace/../etc/shadow` is not under `/workspace/`; `eve@evil.com, bob@example.com` is
//! not one address at example.com), so such an argument is brought to its canonical form before
//! Cedar sees it, and a value that does not parse, or that two parsers could read differently,
//! is refused (-32602) before Cedar. Policies then compare canonical values:
//! - `path`: absolute; `.` and empty segments dropped; `..` refused (the server's file system
//!   resolves it after symbolic links, not as text), as are NUL, control characters and
//!   backslashes.
//! - `email`: exactly one RFC 5322 addr-spec (the `email_address` crate), no display name, no
//!   quoted local part, no domain literal, no `%` or `!` (old relay routing); the local part
//!   ASCII lower-cased and the domain in its IDNA ASCII form (UTS #46): `local@domain`.
//! - `url`: parsed as the WHATWG URL standard says (the `url` crate), with a host and without
//!   user or password; serialised canonically (scheme and host lower-cased, dot segments
//!   resolved, default port dropped). Refused first, because other parsers (Python's `urllib`,
//!   curl) read them differently: a backslash, whitespace or a control character anywhere, a
//!   scheme not followed by `//`, and a `%` or non-ASCII character in the authority.
//!
//! MCP resource URIs (`resources/read`, `resources/subscribe`) are brought to one form too
//! ([`canonical_resource_uri`]), whether or not a format is configured.
//!
//! An argument that is an array of strings has each element brought to its form.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Path,
    Email,
    Url,
}

impl Format {
    fn parse(name: &str) -> Option<Format> {
        match name {
            "path" => Some(Format::Path),
            "email" => Some(Format::Email),
            "url" => Some(Format::Url),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Path => "path",
            Format::Email => "email",
            Format::Url => "url",
        }
    }

    /// The canonical form of `v`, or why it is not one.
    pub fn canonical(self, v: &str) -> Result<String, String> {
        match self {
            Format::Path => canonical_path(v),
            Format::Email => canonical_email(v),
            Format::Url => canonical_url(v),
        }
    }
}

/// `argument_formats`: tool name → argument name → format.
#[derive(Debug, Default)]
pub struct ArgumentFormats {
    tools: BTreeMap<String, Vec<(String, Format)>>,
}

impl ArgumentFormats {
    pub fn compile(
        c: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<ArgumentFormats, ConfigError> {
        let mut tools = BTreeMap::new();
        for (tool, args) in c {
            let mut formats = Vec::with_capacity(args.len());
            for (arg, name) in args {
                let f = Format::parse(name).ok_or_else(|| {
                    ConfigError::new(
                        format!("argument_formats.{tool}.{arg}"),
                        format!("unknown format `{name}`: use path, email or url"),
                    )
                })?;
                formats.push((arg.clone(), f));
            }
            tools.insert(tool.clone(), formats);
        }
        Ok(ArgumentFormats { tools })
    }

    /// The arguments of a call to `tool` with its formatted arguments in canonical form; `None`
    /// when the tool has none (use the arguments as they are). `Err` says which argument does
    /// not parse.
    pub fn apply(&self, tool: &str, arguments: &Value) -> Result<Option<Value>, String> {
        let Some(formats) = self.tools.get(tool) else {
            return Ok(None);
        };
        let mut out = arguments.clone();
        let Some(obj) = out.as_object_mut() else {
            return Ok(None);
        };
        for (arg, f) in formats {
            let Some(v) = obj.get_mut(arg) else {
                continue;
            };
            let why = |e: String| format!("argument `{arg}` is not a valid {}: {e}", f.name());
            match v {
                Value::String(s) => *s = f.canonical(s).map_err(why)?,
                Value::Array(items) => {
                    for item in items {
                        let Value::String(s) = item else {
                            return Err(why("an element is not a string".into()));
                        };
                        *s = f.canonical(s).map_err(why)?;
                    }
                }
                Value::Null => {}
                _ => return Err(why("not a string".into())),
            }
        }
        Ok(Some(out))
    }
}

fn canonical_path(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err("empty".into());
    }
    if v.chars().any(|c| c.is_control()) {
        return Err("it has NUL or a control character".into());
    }
    if v.contains('\\') {
        return Err("it has a backslash".into());
    }
    if !v.starts_with('/') {
        return Err("it is relative (the server's working directory is unknown)".into());
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in v.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err("it has a `..` segment".into()),
            s => segments.push(s),
        }
    }
    Ok(format!("/{}", segments.join("/")))
}

fn canonical_email(v: &str) -> Result<String, String> {
    if v.contains(['"', ',', ';', '<', '>', '(', ')', '%', '!'])
        || v.chars().any(char::is_whitespace)
    {
        return Err("not exactly one plain address".into());
    }
    let options = email_address::Options::default()
        .without_display_text()
        .without_domain_literal();
    let a =
        email_address::EmailAddress::parse_with_options(v, options).map_err(|e| e.to_string())?;
    let domain = match url::Host::parse(a.domain()) {
        Ok(url::Host::Domain(d)) => d,
        _ => return Err("the domain is not a valid domain name".into()),
    };
    Ok(format!("{}@{domain}", a.local_part().to_ascii_lowercase()))
}

/// Refuses a backslash (a `/` to WHATWG, a plain character to RFC 3986 parsers), whitespace and
/// control characters (removed by WHATWG, kept or refused by others) anywhere in a URI.
fn no_backslash_or_whitespace(v: &str) -> Result<(), String> {
    if v.contains('\\') {
        return Err("it has a backslash".into());
    }
    if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("it has whitespace or a control character".into());
    }
    Ok(())
}

/// What other URL parsers read differently from the WHATWG standard, refused in the raw text:
/// a backslash (a `/` to WHATWG, part of the authority to `urllib`), whitespace and control
/// characters (removed by WHATWG), a scheme without `//`, and an authority with `%` or non-ASCII.
fn unambiguous_url(v: &str) -> Result<(), String> {
    no_backslash_or_whitespace(v)?;
    let Some(rest) = v.split_once(':').and_then(|(_, r)| r.strip_prefix("//")) else {
        return Err("its scheme is not followed by `//`".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('%') || !authority.is_ascii() {
        return Err(
            "its host has `%` or a non-ASCII character (write it in IDNA ASCII form)".into(),
        );
    }
    Ok(())
}

fn canonical_url(v: &str) -> Result<String, String> {
    unambiguous_url(v)?;
    let u = url::Url::parse(v).map_err(|e| e.to_string())?;
    if u.host_str().is_none_or(str::is_empty) {
        return Err("it has no host".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("it has a user or password".into());
    }
    Ok(u.to_string())
}

/// The one form of an MCP resource URI, which policies compare (`context.mcp.uri`, the
/// `Resource` id) and list filtering judges. Refused anywhere: a backslash, whitespace and
/// control characters. Then:
/// - the scheme lower-cased;
/// - a hierarchical URI (`scheme://authority/path`): the user part of the authority dropped (it
///   names no other resource), the host lower-cased, in IDNA ASCII form, without a trailing
///   dot; an empty or default port dropped (`http` 80, `https` 443, `ws` 80, `wss` 443, `ftp`
///   21); `file://localhost/` is `file:///`; the path canonical as a request path is
///   (`path.rs`: unreserved escapes decoded; `..`, `.`, `//`, `;` and encoded separators
///   refused), so `file:///workspace/../etc/passwd` and `%2e%2e` never match
///   `like "file:///workspace/*"`;
/// - `scheme:/path` (no authority): the path canonical; `file:` without `//` is refused;
/// - any other (`urn:…`, `mailto:…`): kept, but no `.` or `..` segment;
/// - the query and fragment are kept as sent, but may not hold a dot segment or an encoded dot
///   either: a server that takes the URI apart by hand must not find a path to resolve there.
pub fn canonical_resource_uri(v: &str) -> Result<String, String> {
    no_backslash_or_whitespace(v)?;
    let (scheme, rest) = v.split_once(':').ok_or("it has no scheme")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err("its scheme is not valid".into());
    }
    let scheme = scheme.to_ascii_lowercase();
    let body_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (body, tail) = rest.split_at(body_end);
    no_dot_segments(tail).map_err(|e| format!("its query or fragment {e}"))?;
    if let Some(hier) = body.strip_prefix("//") {
        let end = hier.find('/').unwrap_or(hier.len());
        let (authority, path) = hier.split_at(end);
        let authority = canonical_authority(&scheme, authority)?;
        let path = if path.is_empty() {
            String::new()
        } else {
            resource_path(path)?
        };
        Ok(format!("{scheme}://{authority}{path}{tail}"))
    } else if special_scheme(&scheme) {
        Err(format!("a {scheme} URI must have `//` after its scheme"))
    } else if body.starts_with('/') {
        Ok(format!("{scheme}:{}{tail}", resource_path(body)?))
    } else {
        no_dot_segments(body)?;
        Ok(format!("{scheme}:{body}{tail}"))
    }
}

fn resource_path(path: &str) -> Result<String, String> {
    crate::path::canonical(path)
        .map(std::borrow::Cow::into_owned)
        .map_err(|e| e.replacen("the path", "its path", 1))
}

/// Refuses a `.` or `..` segment, also percent-encoded, in `s` (split at `/`).
fn no_dot_segments(s: &str) -> Result<(), String> {
    if s.to_ascii_lowercase().contains("%2e") {
        return Err("has an encoded dot".into());
    }
    if s.split(['/', '?', '#', '=', '&'])
        .any(|seg| seg == "." || seg == "..")
    {
        return Err("has a dot segment".into());
    }
    Ok(())
}

/// The schemes whose URIs browsers and the WHATWG URL standard parse specially.
fn special_scheme(scheme: &str) -> bool {
    matches!(scheme, "http" | "https" | "ws" | "wss" | "ftp" | "file")
}

/// The host (and port) of an authority, in one form: see [`canonical_resource_uri`].
fn canonical_authority(scheme: &str, authority: &str) -> Result<String, String> {
    let host_port = match authority.rsplit_once('@') {
        Some((user, hp)) => {
            let user_ok = user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:%".contains(c));
            if !user_ok {
                return Err("its user part has a character a URI does not allow there".into());
            }
            hp
        }
        None => authority,
    };
    let (host, port) = if host_port.starts_with('[') {
        let close = host_port.find(']').ok_or("its IPv6 host has no `]`")?;
        let (h, rest) = host_port.split_at(close + 1);
        let port = match rest {
            "" => None,
            r => Some(
                r.strip_prefix(':')
                    .ok_or("its IPv6 host is followed by something other than a port")?,
            ),
        };
        (h, port)
    } else {
        let (h, p) = match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        };
        let ok = h
            .chars()
            .all(|c| !c.is_ascii() || c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=".contains(c));
        if !ok {
            return Err("its host has a character a URI does not allow there".into());
        }
        (h, p)
    };
    let host = if host.is_empty() {
        if special_scheme(scheme) && scheme != "file" {
            return Err("it has no host".into());
        }
        String::new()
    } else if special_scheme(scheme) || !host.is_ascii() || host.starts_with('[') {
        // As a browser or Node reads it: IPv4 in any notation (`0x7f.1`, `2130706433`) is
        // dotted decimal, IPv6 compressed, a domain in IDNA ASCII form.
        match url::Host::parse(host) {
            Ok(url::Host::Domain(d)) => d.strip_suffix('.').map_or(d.clone(), str::to_string),
            Ok(ip) => ip.to_string(),
            Err(e) => return Err(format!("its host is not valid: {e}")),
        }
    } else {
        host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
    };
    if let Some(p) = port {
        if !p.chars().all(|c| c.is_ascii_digit()) {
            return Err("its port is not a number".into());
        }
    }
    let default = match scheme {
        "http" | "ws" => Some("80"),
        "https" | "wss" => Some("443"),
        "ftp" => Some("21"),
        _ => None,
    };
    // `:0443` is port 443.
    let port = port
        .filter(|p| !p.is_empty())
        .map(|p| match p.trim_start_matches('0') {
            "" => "0",
            p => p,
        })
        .filter(|p| Some(*p) != default);
    let host = if scheme == "file" && host == "localhost" {
        String::new()
    } else {
        host
    };
    Ok(match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_are_resolved_and_nul_refused() {
        let p = |v| canonical_path(v);
        assert_eq!(p("/workspace/./a//b/").as_deref(), Ok("/workspace/a/b"));
        assert_eq!(p("/").as_deref(), Ok("/"));
        assert!(p("/workspace/../etc/shadow").is_err());
        assert!(p("/../../etc").is_err());
        assert!(p("etc/passwd").is_err());
        assert!(p("../etc").is_err());
        assert!(p("/a\0b").is_err());
        assert!(p("a\\..\\b").is_err());
        assert!(p("").is_err());
    }

    #[test]
    fn an_email_is_exactly_one_plain_address_with_its_domain_lower_cased() {
        let e = |v| canonical_email(v);
        assert_eq!(e("Bob@Example.COM").as_deref(), Ok("bob@example.com"));
        assert_eq!(
            e("bob@B\u{fc}cher.example").as_deref(),
            Ok("bob@xn--bcher-kva.example")
        );
        assert_eq!(
            e("bob@EXAMPLE\u{3002}com").as_deref(),
            Ok("bob@example.com")
        );
        for bad in [
            "eve@evil.com, bob@example.com",
            "Eve <eve@evil.com>",
            "\"eve@evil.com\"@example.com",
            "bob@[10.0.0.1]",
            "bob",
            "bob@example.com ",
            "a@b@example.com",
            "bob%evil.com@example.com",
            "evil.com!bob@example.com",
        ] {
            assert!(e(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn urls_are_parsed_with_the_host_lower_cased() {
        let u = |v| canonical_url(v);
        assert_eq!(
            u("HTTPS://Docs.Example.COM:443/a/../b?q").as_deref(),
            Ok("https://docs.example.com/b?q")
        );
        assert!(u("https://docs.example.com@evil.com/").is_err());
        assert!(u("not a url").is_err());
        assert!(u("mailto:bob@example.com").is_err());
        // Read as host evil.com by Python's urllib, as docs.example.com by WHATWG.
        for bad in [
            "https://docs.example.com\\@evil.com/x",
            "https:\\\\evil.com/x",
            "https:evil.com/x",
            "https:evil.com/x?u=https://a",
            "https:/evil.com/x",
            "https://docs.example.com\t@evil.com/",
            " https://docs.example.com/",
            "https://docs%2eexample.com/",
            "https://d\u{f6}cs.example.com/",
        ] {
            assert!(u(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn resource_uris_have_one_form() {
        let r = |v| canonical_resource_uri(v);
        for (raw, want) in [
            ("FILE:///workspace/%61/b?x", "file:///workspace/a/b?x"),
            ("Res://Host:80", "res://host:80"),
            ("file://localhost/etc/shadow", "file:///etc/shadow"),
            (
                "https://Internal.Example.com.:443/x",
                "https://internal.example.com/x",
            ),
            (
                "https://internal.example.com:/x",
                "https://internal.example.com/x",
            ),
            (
                "https://internal.example.com:0443/x",
                "https://internal.example.com/x",
            ),
            (
                "postgres://user@localhost:5432/t/schema",
                "postgres://localhost:5432/t/schema",
            ),
            ("git+ssh://git@host/repo.git", "git+ssh://host/repo.git"),
            (
                "https://b\u{fc}cher.example/a",
                "https://xn--bcher-kva.example/a",
            ),
            ("file:///project/src/main.rs", "file:///project/src/main.rs"),
            ("screen://localhost/display1", "screen://localhost/display1"),
            ("custom:/a/%62", "custom:/a/b"),
            ("https://docs.example.com%2f@x/", "https://x/"),
            ("http://2130706433/latest", "http://127.0.0.1/latest"),
            ("http://0x7f.1/", "http://127.0.0.1/"),
            ("http://127.000.0.1/", "http://127.0.0.1/"),
            ("http://[0:0::1]:80/", "http://[::1]/"),
            ("https://internal.corp\u{ff0e}/x", "https://internal.corp/x"),
            ("urn:Example:A", "urn:Example:A"),
            ("file:///logs/{date}.log", "file:///logs/{date}.log"),
        ] {
            assert_eq!(r(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "file:///workspace/../etc/passwd",
            "file:///workspace/%2e%2e/etc/passwd",
            "file:///workspace/.%2E/etc/passwd",
            "file:///workspace//etc",
            "file:///workspace/a%2f..%2f..%2fetc",
            "file:///workspace\\..\\etc",
            "file:///workspace/?/../../etc/passwd",
            "file:///workspace/#/../etc/passwd",
            "file:///workspace/?x=%2e%2e",
            "file:/workspace/../etc/shadow",
            "https:evil.com/x",
            "https:/evil.com/x",
            "https:///evil.com/x",
            "http://[::1]evil/",
            "http://[::1].evil.com/",
            "file:etc/shadow",
            "custom:/a/../b",
            "custom:/a/./b",
            "urn:a/../b",
            "https://host:8x/",
            "file:///work space",
            "no-scheme",
            "1x://a",
        ] {
            assert!(r(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn formats_apply_to_the_named_arguments_of_the_named_tool() {
        let mut c = BTreeMap::new();
        c.insert(
            "send_email".to_string(),
            BTreeMap::from([("to".to_string(), "email".to_string())]),
        );
        let f = ArgumentFormats::compile(&c).expect("compiles");
        let args = json!({"to": ["A@X.ORG", "b@y.org"], "subject": "Hi"});
        assert_eq!(
            f.apply("send_email", &args),
            Ok(Some(json!({"to": ["a@x.org", "b@y.org"], "subject": "Hi"})))
        );
        assert_eq!(f.apply("read_file", &args), Ok(None));
        assert!(f.apply("send_email", &json!({"to": 5})).is_err());
        c.insert(
            "t".to_string(),
            BTreeMap::from([("a".to_string(), "ipv6".to_string())]),
        );
        let e = ArgumentFormats::compile(&c).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("argument_formats.t.a")));
    }
}

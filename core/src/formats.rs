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

/// What other URL parsers read differently from the WHATWG standard, refused in the raw text:
/// a backslash (a `/` to WHATWG, part of the authority to `urllib`), whitespace and control
/// characters (removed by WHATWG), a scheme without `//`, and an authority with `%` or non-ASCII.
fn unambiguous_url(v: &str) -> Result<(), String> {
    if v.contains('\\') {
        return Err("it has a backslash".into());
    }
    if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("it has whitespace or a control character".into());
    }
    let Some((_, rest)) = v.split_once("://") else {
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
/// `Resource` id) and list filtering judges: the scheme lower-cased; for a hierarchical URI
/// (`scheme://authority/path`) the authority lower-cased and the path canonical as a request
/// path is (`path.rs`: unreserved escapes decoded, `..`, `.`, `//`, `;` and encoded separators
/// refused), so `file:///workspace/../etc/passwd` and `file:///workspace/%2e%2e/etc/passwd`
/// never match `like "file:///workspace/*"`. The query and fragment are kept as sent. Refused
/// anywhere: a backslash, whitespace and control characters.
pub fn canonical_resource_uri(v: &str) -> Result<String, String> {
    if v.contains('\\') {
        return Err("it has a backslash".into());
    }
    if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("it has whitespace or a control character".into());
    }
    let (scheme, rest) = v.split_once(':').ok_or("it has no scheme")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err("its scheme is not valid".into());
    }
    let scheme = scheme.to_ascii_lowercase();
    let Some(hier) = rest.strip_prefix("//") else {
        // Not hierarchical (`urn:…`, `mailto:…`): no dot segments to resolve.
        return Ok(format!("{scheme}:{rest}"));
    };
    let end = hier.find(['/', '?', '#']).unwrap_or(hier.len());
    let (authority, after) = hier.split_at(end);
    if !authority
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~' | ':' | '[' | ']'))
    {
        return Err("its authority has a character other than a host and port".into());
    }
    let authority = authority.to_ascii_lowercase();
    let path_end = after.find(['?', '#']).unwrap_or(after.len());
    let (path, tail) = after.split_at(path_end);
    let path = if path.is_empty() {
        String::new()
    } else {
        crate::path::canonical(path)
            .map_err(|e| e.replacen("the path", "its path", 1))?
            .into_owned()
    };
    Ok(format!("{scheme}://{authority}{path}{tail}"))
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
        assert_eq!(
            r("FILE:///workspace/%61/b?x").as_deref(),
            Ok("file:///workspace/a/b?x")
        );
        assert_eq!(r("Res://Host:80").as_deref(), Ok("res://host:80"));
        assert_eq!(r("urn:Example:A/../b").as_deref(), Ok("urn:Example:A/../b"));
        for bad in [
            "file:///workspace/../etc/passwd",
            "file:///workspace/%2e%2e/etc/passwd",
            "file:///workspace/.%2E/etc/passwd",
            "file:///workspace//etc",
            "file:///workspace/a%2f..%2f..%2fetc",
            "file:///workspace\\..\\etc",
            "file://evil@host/x",
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

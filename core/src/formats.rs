//! Typed MCP tool arguments: `argument_formats` in the configuration says which arguments of
//! which tool are a `path`, an `email` or a `url`. Cedar's `like` over the raw string is a trap
//! (`/workspace/../etc/shadow` is not under `/workspace/`; `eve@evil.com, bob@example.com` is
//! not one address at example.com), so such an argument is brought to its canonical form before
//! Cedar sees it, and a value that does not parse, or is ambiguous, is refused (-32602) before
//! Cedar. Policies then compare canonical values:
//! - `path`: `.` and empty segments dropped, `..` resolved (an absolute path cannot climb above
//!   `/`; a relative one that climbs out of its base is refused); NUL, control characters and
//!   backslashes refused.
//! - `email`: exactly one RFC 5322 addr-spec (the `email_address` crate), no display name, no
//!   quoted local part, no domain literal; the domain lower-cased: `local@domain`.
//! - `url`: parsed as the WHATWG URL standard says (the `url` crate), with a host and without
//!   user or password; serialised canonically (scheme and host lower-cased, dot segments
//!   resolved, default port dropped).
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
    let absolute = v.starts_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for seg in v.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() && !absolute {
                    return Err("it climbs out of its base directory".into());
                }
            }
            s => segments.push(s),
        }
    }
    let joined = segments.join("/");
    Ok(if absolute {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    })
}

fn canonical_email(v: &str) -> Result<String, String> {
    if v.contains(['"', ',', ';', '<', '>', '(', ')']) || v.chars().any(char::is_whitespace) {
        return Err("not exactly one plain address".into());
    }
    let options = email_address::Options::default()
        .without_display_text()
        .without_domain_literal();
    let a =
        email_address::EmailAddress::parse_with_options(v, options).map_err(|e| e.to_string())?;
    Ok(format!("{}@{}", a.local_part(), a.domain().to_lowercase()))
}

fn canonical_url(v: &str) -> Result<String, String> {
    let u = url::Url::parse(v).map_err(|e| e.to_string())?;
    if u.host_str().is_none_or(str::is_empty) {
        return Err("it has no host".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("it has a user or password".into());
    }
    Ok(u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_are_resolved_and_nul_refused() {
        let p = |v| canonical_path(v);
        assert_eq!(p("/workspace/../etc/shadow").as_deref(), Ok("/etc/shadow"));
        assert_eq!(p("/workspace/./a//b/").as_deref(), Ok("/workspace/a/b"));
        assert_eq!(p("/../../etc").as_deref(), Ok("/etc"));
        assert_eq!(p("a/b/../c").as_deref(), Ok("a/c"));
        assert!(p("../etc").is_err());
        assert!(p("/a\0b").is_err());
        assert!(p("a\\..\\b").is_err());
        assert!(p("").is_err());
    }

    #[test]
    fn an_email_is_exactly_one_plain_address_with_its_domain_lower_cased() {
        let e = |v| canonical_email(v);
        assert_eq!(e("Bob@Example.COM").as_deref(), Ok("Bob@example.com"));
        for bad in [
            "eve@evil.com, bob@example.com",
            "Eve <eve@evil.com>",
            "\"eve@evil.com\"@example.com",
            "bob@[10.0.0.1]",
            "bob",
            "bob@example.com ",
            "a@b@example.com",
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
            Ok(Some(json!({"to": ["A@x.org", "b@y.org"], "subject": "Hi"})))
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

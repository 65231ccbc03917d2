//! The connection a request came on, as the proxy reports it (Envoy attributes, read by the
//! plugin before each request; `source.address` only when the schema declares `source_ip` or
//! `source_port`): the source address and the TLS peer's
//! certificate — its SHA-256 (what `cnf.x5t#S256` binds a token to, RFC 8705 §3), its
//! subject, its first URI SAN (a SPIFFE ID, when the certificate is an X.509-SVID).
//!
//! Whether the listener verified the certificate is not among the attributes (Envoy's
//! `connection.mtls` only says one was presented): the operator says it
//! (`connection.client_certificates`), and only a verified certificate yields a SPIFFE ID.

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::config::{ClientCertificates, ConnectionConfig};
use crate::error::ConfigError;

/// What the proxy says about the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    pub source_ip: Option<String>,
    pub source_port: Option<u16>,
    pub tls: Option<TlsPeer>,
}

/// What Cedar sees of a request beyond its request line: the connection and the headers the
/// operator lists (`connection.request_headers`), read with the request headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub connection: Connection,
    /// Listed headers present in the request, each once: (lower-case name, value).
    pub headers: Vec<(String, String)>,
    /// The request's dynamic metadata, where Envoy's `jwt_authn` puts the payloads it verified
    /// (`jwt_authn.rs`): read only when an issuer relies on it (`Engine::reads_jwt_authn`).
    pub jwt_authn: Option<Vec<u8>>,
}

/// The client certificate the peer presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    /// base64url (no padding) SHA-256 of the DER certificate: the form of `cnf.x5t#S256`.
    pub certificate_sha256: String,
    pub subject: Option<String>,
    /// The first URI SAN (Envoy reports only the first).
    pub uri_san: Option<String>,
}

/// The Envoy attributes read, as path segments.
pub const SOURCE_ADDRESS: [&str; 2] = ["source", "address"];
pub const MTLS: [&str; 2] = ["connection", "mtls"];
pub const PEER_DIGEST: [&str; 2] = ["connection", "sha256_peer_certificate_digest"];
pub const PEER_SUBJECT: [&str; 2] = ["connection", "subject_peer_certificate"];
pub const PEER_URI_SAN: [&str; 2] = ["connection", "uri_san_peer_certificate"];

impl Connection {
    /// The connection as Envoy's attributes describe it, each read through `get` (`None`: the
    /// attribute is absent). Strings come as bytes, booleans as one byte; the digest as 64
    /// lower-case hex digits. A value that does not parse counts as absent: a certificate
    /// whose digest cannot be read is no certificate (a bound token then fails).
    pub fn from_attributes(get: &dyn Fn(&[&str]) -> Option<Vec<u8>>) -> Connection {
        let text = |path: &[&str]| {
            get(path)
                .and_then(|v| String::from_utf8(v).ok())
                .filter(|s| !s.is_empty())
        };
        let source = text(&SOURCE_ADDRESS).and_then(|a| a.parse::<SocketAddr>().ok());
        let presented = get(&MTLS).is_some_and(|v| v.first().is_some_and(|b| *b != 0));
        let tls = presented
            .then(|| text(&PEER_DIGEST).and_then(|hex| hex_to_b64url(&hex)))
            .flatten()
            .map(|certificate_sha256| TlsPeer {
                certificate_sha256,
                subject: text(&PEER_SUBJECT),
                uri_san: text(&PEER_URI_SAN),
            });
        Connection {
            source_ip: source.map(|s| s.ip().to_string()),
            source_port: source.map(|s| s.port()),
            tls,
        }
    }
}

fn hex_to_b64url(hex: &str) -> Option<String> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let bytes = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// The compiled `connection` configuration.
#[derive(Debug, Default)]
pub struct ConnectionFacts {
    /// Headers copied into `context.request.headers`, lower-case.
    pub request_headers: Vec<String>,
    pub verified: bool,
    pub trust_domains: Vec<String>,
}

impl ConnectionFacts {
    pub fn compile(c: &ConnectionConfig) -> Result<ConnectionFacts, ConfigError> {
        let mut request_headers = Vec::new();
        for (i, h) in c.request_headers.iter().enumerate() {
            let path = format!("connection.request_headers[{i}]");
            let token = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token || h.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(ConfigError::new(path, "must be a lower-case header name"));
            }
            if h.contains('_') {
                // Envoy and upstreams may take `x_tenant` for `x-tenant` (and the filter refuses
                // the `_` spelling of a listed name): only the dash spelling is listed.
                return Err(ConfigError::new(
                    path,
                    "must not contain `_`: list the dash spelling",
                ));
            }
            if h == "authorization" || h == "dpop" || h == "cookie" {
                return Err(ConfigError::new(
                    path,
                    "credentials are not copied into the Cedar context",
                ));
            }
            if !request_headers.contains(h) {
                request_headers.push(h.clone());
            }
        }
        let mut trust_domains = Vec::new();
        for (i, td) in c.spiffe_trust_domains.iter().enumerate() {
            if !is_trust_domain(td) {
                return Err(ConfigError::new(
                    format!("connection.spiffe_trust_domains[{i}]"),
                    "not a SPIFFE trust domain name (lower-case letters, digits, `.`, `-`, `_`)",
                ));
            }
            trust_domains.push(td.clone());
        }
        if !trust_domains.is_empty() && c.client_certificates != ClientCertificates::Verified {
            return Err(ConfigError::new(
                "connection.spiffe_trust_domains",
                "SPIFFE IDs come only from verified certificates: set connection.client_certificates to \"verified\" (and make the listener verify them)",
            ));
        }
        Ok(ConnectionFacts {
            request_headers,
            verified: c.client_certificates == ClientCertificates::Verified,
            trust_domains,
        })
    }

    /// The peer's SPIFFE ID and trust domain: its URI SAN, when the certificate is verified, the
    /// SAN a well-formed SPIFFE ID, and its trust domain one of ours.
    pub fn spiffe_id<'a>(&self, peer: &'a TlsPeer) -> Option<(&'a str, &'a str)> {
        if !self.verified {
            return None;
        }
        let id = peer.uri_san.as_deref()?;
        let td = workload_trust_domain(id)?;
        self.trust_domains
            .iter()
            .any(|t| t == td)
            .then_some((id, td))
    }
}

/// A SPIFFE trust domain name (SPIFFE-ID spec §2.1).
pub fn is_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

/// The trust domain of a workload's SPIFFE ID: a well-formed one with a path (an ID without a
/// path names the trust domain itself, not a workload).
pub fn workload_trust_domain(id: &str) -> Option<&str> {
    let td = spiffe_trust_domain(id)?;
    (id.len() > "spiffe://".len() + td.len()).then_some(td)
}

/// The trust domain of a well-formed SPIFFE ID (SPIFFE-ID spec §2): `spiffe://` (lower-case),
/// a trust domain, a path of non-empty segments of `[A-Za-z0-9._-]` other than `.` and `..`,
/// no trailing `/`, nothing else (no port, user, query or fragment), at most 2048 bytes.
pub fn spiffe_trust_domain(id: &str) -> Option<&str> {
    if id.len() > 2048 {
        return None;
    }
    let rest = id.strip_prefix("spiffe://")?;
    let (td, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !is_trust_domain(td) {
        return None;
    }
    if !path.is_empty() {
        for seg in path[1..].split('/') {
            let ok = !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                return None;
            }
        }
    }
    Some(td)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&[&str], &[u8])]) -> Connection {
        let owned: Vec<(Vec<String>, Vec<u8>)> = pairs
            .iter()
            .map(|(p, v)| (p.iter().map(|s| s.to_string()).collect(), v.to_vec()))
            .collect();
        Connection::from_attributes(&|path: &[&str]| {
            owned
                .iter()
                .find(|(p, _)| p.iter().map(String::as_str).eq(path.iter().copied()))
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn envoy_attributes_become_the_connection() {
        let hex = "ab".repeat(32);
        let c = attrs(&[
            (&SOURCE_ADDRESS, b"[2001:db8::1]:4431"),
            (&MTLS, &[1]),
            (&PEER_DIGEST, hex.as_bytes()),
            (&PEER_URI_SAN, b"spiffe://example.org/ns/a/sa/b"),
        ]);
        assert_eq!(c.source_ip.as_deref(), Some("2001:db8::1"));
        assert_eq!(c.source_port, Some(4431));
        let tls = c.tls.expect("a peer certificate");
        assert_eq!(tls.certificate_sha256, URL_SAFE_NO_PAD.encode([0xab; 32]));
        assert_eq!(
            tls.uri_san.as_deref(),
            Some("spiffe://example.org/ns/a/sa/b")
        );
        // Not presented (mtls false), or a digest that does not parse: no certificate.
        assert_eq!(
            attrs(&[(&MTLS, &[0]), (&PEER_DIGEST, hex.as_bytes())]).tls,
            None
        );
        assert_eq!(attrs(&[(&MTLS, &[1]), (&PEER_DIGEST, b"zz")]).tls, None);
        assert_eq!(
            attrs(&[(&SOURCE_ADDRESS, b"/var/run/sock")]).source_ip,
            None
        );
    }

    #[test]
    fn spiffe_ids_are_checked_as_the_spec_says() {
        assert_eq!(
            spiffe_trust_domain("spiffe://example.org/ns/a"),
            Some("example.org")
        );
        assert_eq!(
            spiffe_trust_domain("spiffe://example.org"),
            Some("example.org")
        );
        // The trust domain itself is not a workload.
        assert_eq!(workload_trust_domain("spiffe://example.org"), None);
        assert_eq!(
            workload_trust_domain("spiffe://example.org/ns/a"),
            Some("example.org")
        );
        for bad in [
            "SPIFFE://example.org/a",
            "spiffe://Example.org/a",
            "spiffe://example.org/a/",
            "spiffe://example.org//a",
            "spiffe://example.org/a/../b",
            "spiffe://example.org:443/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/a?b",
            "spiffe://example.org/a%20b",
            "https://example.org/a",
        ] {
            assert_eq!(spiffe_trust_domain(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_spiffe_id_needs_a_verified_certificate_of_a_trusted_domain() {
        let peer = TlsPeer {
            certificate_sha256: "h".into(),
            subject: None,
            uri_san: Some("spiffe://example.org/a".into()),
        };
        let facts = |verified, tds: &[&str]| ConnectionFacts {
            request_headers: vec![],
            verified,
            trust_domains: tds.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            facts(true, &["example.org"]).spiffe_id(&peer),
            Some(("spiffe://example.org/a", "example.org"))
        );
        assert_eq!(facts(false, &["example.org"]).spiffe_id(&peer), None);
        assert_eq!(facts(true, &["other.org"]).spiffe_id(&peer), None);
        let root = TlsPeer {
            uri_san: Some("spiffe://example.org".into()),
            ..peer
        };
        assert_eq!(facts(true, &["example.org"]).spiffe_id(&root), None);
    }

    #[test]
    fn a_listed_header_is_a_lower_case_dash_spelled_name_and_no_credential() {
        let compile = |name: &str| {
            let c = ConnectionConfig {
                request_headers: vec!["x-tenant".into(), name.into()],
                ..ConnectionConfig::default()
            };
            ConnectionFacts::compile(&c).err().map(|e| e.to_string())
        };
        assert_eq!(compile("x-region"), None);
        for bad in [
            "x_tenant",
            "X-Tenant",
            ":path",
            "",
            "authorization",
            "dpop",
            "cookie",
        ] {
            let e = compile(bad).unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(e.contains("connection.request_headers[1]"), "{e}");
        }
    }
}

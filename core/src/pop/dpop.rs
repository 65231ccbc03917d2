//! DPoP proofs (RFC 9449): a JWT the client signs for every request with the key its access
//! token is bound to (`cnf.jkt`, the RFC 7638 thumbprint of that key). A proof is checked as
//! RFC 9449 §4.3 lists, cheap checks first and the signature last:
//! one header (the exchange), at most `max_proof_bytes`, a compact JWS, `typ: dpop+jwt`, an
//! `alg` of the allow-list, no `jku`/`x5u`/`x5c`/`crit`, a public `jwk` (private members
//! refused) whose thumbprint is the token's `cnf.jkt`, a `jti` (1 to 256 bytes), `htm`
//! and `htu` naming this request, `iat` within the window, `ath` the hash of the token, the
//! server's nonce when nonces are on, the signature by that `jwk`. The engine then spends the
//! `jti` (`engine/credential.rs`): on this proxy as soon as the proof verifies, whatever the
//! decision, and with `store.etcd` across the fleet when the request is forwarded
//! (`approval::Once`).
//!
//! The proof's key is the one place a token-offered key is right: it is checked against the
//! thumbprint the issuer signed into the access token. jwt-simple's header type cannot hold a
//! `jwk` object, so the signature is checked with the curve crates jwt-simple is built on.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::DpopConfig;
use crate::error::ConfigError;

/// Proof algorithms Tessera can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// JWK members that hold private key material (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
/// Header parameters that point at other keys: a proof's key is its `jwk`, nothing else.
const FORBIDDEN_HEADERS: [&str; 4] = ["jku", "x5u", "x5c", "crit"];
/// Longest `jti` kept (RFC 9449 §4.2 asks for at least 96 bits of randomness; 256 bytes is
/// generous).
const MAX_JTI_BYTES: usize = 256;
const NONCE_DOMAIN: &[u8] = b"tessera-dpop-nonce.v1.";

/// The compiled `dpop` configuration.
#[derive(Debug)]
pub struct Dpop {
    algs: Vec<Alg>,
    /// `algs="…"` of the challenge.
    algs_param: String,
    max_age_s: u64,
    clock_skew_s: u64,
    /// Normalised `scheme://authority` a proof may name; empty: the request's own.
    origins: Vec<String>,
    nonce: Option<Nonces>,
    max_proof_bytes: usize,
}

#[derive(Debug)]
struct Nonces {
    keys: Vec<Vec<u8>>,
    ttl_s: u64,
}

/// What the request says that a proof must match.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    /// `:path` as the client sent it (query included; ignored).
    pub path: &'a str,
}

/// A proof that holds, and the record its `jti` needs (the engine records it, scoped by the
/// key's thumbprint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    /// The proof's `jti`.
    pub jti: String,
    /// Until when the `jti` must be remembered: as long as the proof's `iat` is in the window.
    pub until: u64,
}

/// Why a proof is refused: the RFC 9449 §7.1 error code, and the description a client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError {
    /// `invalid_dpop_proof`.
    Invalid(String),
    /// `use_dpop_nonce`: the proof needs a (fresh) nonce of ours.
    UseNonce(&'static str),
}

impl Dpop {
    pub fn compile(c: &DpopConfig) -> Result<Dpop, ConfigError> {
        let mut algs = Vec::new();
        for (i, a) in c.algs.iter().enumerate() {
            let alg = Alg::from_name(a).ok_or_else(|| {
                ConfigError::new(
                    format!("dpop.algs[{i}]"),
                    format!("`{a}` is not a proof algorithm Tessera checks (ES256, ES384, EdDSA)"),
                )
            })?;
            if !algs.contains(&alg) {
                algs.push(alg);
            }
        }
        if algs.is_empty() {
            return Err(ConfigError::new("dpop.algs", "names no algorithm"));
        }
        if algs.contains(&Alg::Es256) {
            crate::es256::prepare();
        }
        if c.max_age_s == 0 {
            return Err(ConfigError::new("dpop.max_age_s", "must be at least 1"));
        }
        let mut origins = Vec::new();
        for (i, o) in c.origins.iter().enumerate() {
            let n = normalise(&format!("{o}/"))
                .filter(|n| n.ends_with("://") || n.matches('/').count() == 3)
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("dpop.origins[{i}]"),
                        "not a scheme://authority (http or https, no path)",
                    )
                })?;
            origins.push(n.trim_end_matches('/').to_string());
        }
        let nonce = match &c.nonce {
            None => None,
            Some(n) => {
                if n.keys.is_empty() {
                    return Err(ConfigError::new("dpop.nonce.keys", "names no key"));
                }
                let mut keys = Vec::new();
                for (i, k) in n.keys.iter().enumerate() {
                    let bytes = STANDARD.decode(k).map_err(|_| {
                        ConfigError::new(format!("dpop.nonce.keys[{i}]"), "not base64")
                    })?;
                    if bytes.len() < 32 {
                        return Err(ConfigError::new(
                            format!("dpop.nonce.keys[{i}]"),
                            "must hold at least 32 random bytes",
                        ));
                    }
                    keys.push(bytes);
                }
                if n.ttl_s == 0 {
                    return Err(ConfigError::new("dpop.nonce.ttl_s", "must be at least 1"));
                }
                Some(Nonces {
                    keys,
                    ttl_s: n.ttl_s,
                })
            }
        };
        Ok(Dpop {
            algs_param: algs.iter().map(|a| a.name()).collect::<Vec<_>>().join(" "),
            algs,
            max_age_s: c.max_age_s,
            clock_skew_s: c.clock_skew_s,
            origins,
            nonce,
            max_proof_bytes: c.max_proof_bytes,
        })
    }

    /// The accepted algorithms, space-separated, for `WWW-Authenticate: DPoP algs="…"`.
    pub fn algs(&self) -> &str {
        &self.algs_param
    }

    /// A fresh nonce for `DPoP-Nonce`, when nonces are on.
    pub fn fresh_nonce(&self, now_s: u64) -> Option<String> {
        let n = self.nonce.as_ref()?;
        let t = now_s.to_string();
        let mac = nonce_mac(n.keys.first()?, &t)?;
        Some(format!("{t}.{}", URL_SAFE_NO_PAD.encode(mac)))
    }

    /// Checks `proof` for a request to `target` with `token`, bound to the key whose RFC 7638
    /// thumbprint is `jkt`.
    pub fn check(
        &self,
        proof: &str,
        target: Target<'_>,
        token: &str,
        jkt: &str,
        now_s: u64,
    ) -> Result<Proven, ProofError> {
        let bad = |m: &str| ProofError::Invalid(m.to_string());
        if proof.len() > self.max_proof_bytes {
            return Err(bad("proof too large"));
        }
        let mut parts = proof.trim().split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a compact JWS"));
        };
        let header = json_part(h).ok_or_else(|| bad("header is not base64url JSON"))?;
        let claims = json_part(p).ok_or_else(|| bad("payload is not base64url JSON"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad("signature is not base64url"))?;

        // typ and alg.
        let typ = header
            .get("typ")
            .and_then(Value::as_str)
            .map(crate::jws::media_type);
        if typ.as_deref() != Some("dpop+jwt") {
            return Err(bad("typ must be dpop+jwt"));
        }
        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let alg = Alg::from_name(alg_name)
            .filter(|a| self.algs.contains(a))
            .ok_or_else(|| bad("alg is not accepted"))?;
        if let Some(name) = FORBIDDEN_HEADERS.iter().find(|n| header.contains_key(**n)) {
            return Err(ProofError::Invalid(format!(
                "header parameter `{name}` is not accepted"
            )));
        }
        // The key: public, of the algorithm's type, the one the token is bound to.
        let jwk = header
            .get("jwk")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("header has no jwk"))?;
        if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err(bad("jwk holds private key material"));
        }
        let key = ProofKey::from_jwk(alg, jwk).ok_or_else(|| bad("jwk is not a key for alg"))?;
        if thumbprint(jwk).as_deref() != Some(jkt) {
            return Err(bad("proof key does not match the token's cnf.jkt"));
        }

        // Claims.
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let jti = text("jti")
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES)
            .ok_or_else(|| bad("jti missing or too long"))?;
        if text("htm") != Some(target.method) {
            return Err(bad("htm does not match the request method"));
        }
        let htu = text("htu")
            .and_then(normalise)
            .ok_or_else(|| bad("htu missing or not an http(s) URI"))?;
        if !self.names(&htu, target) {
            return Err(bad("htu does not match the request URI"));
        }
        let iat = claims
            .get("iat")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("iat missing or not an integer"))?;
        if iat > now_s.saturating_add(self.clock_skew_s) {
            return Err(bad("iat is in the future"));
        }
        if now_s.saturating_sub(iat) > self.max_age_s {
            return Err(bad("proof is too old (iat)"));
        }
        if text("ath") != Some(ath(token).as_str()) {
            return Err(bad("ath does not match the access token"));
        }
        if let Some(n) = &self.nonce {
            let nonce = text("nonce").ok_or(ProofError::UseNonce("a nonce is required"))?;
            if !n.accepts(nonce, now_s, self.clock_skew_s) {
                return Err(ProofError::UseNonce("nonce is stale or unknown"));
            }
        }

        // The signature, last: the costliest check.
        let signed = &proof.trim()[..h.len() + 1 + p.len()];
        if !key.verifies(signed.as_bytes(), &signature) {
            return Err(bad("signature invalid"));
        }
        Ok(Proven {
            jti: jti.to_string(),
            until: iat.saturating_add(self.max_age_s).saturating_add(1),
        })
    }

    /// Whether the normalised `htu` names the request: its path (query ignored) and its origin,
    /// the request's own or one of `origins`.
    fn names(&self, htu: &str, t: Target<'_>) -> bool {
        let path = t.path.split(['?', '#']).next().unwrap_or("");
        // Only an authority (RFC 3986 §3.2: host, port, no userinfo): a `/`, `?` or `#` in
        // `:authority` would move the boundary between authority and path.
        let authority_char =
            |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b);
        if !path.starts_with('/')
            || t.authority.is_empty()
            || !t.authority.bytes().all(authority_char)
        {
            return false;
        }
        let Some(own) = normalise(&format!("{}://{}{path}", t.scheme, t.authority)) else {
            return false;
        };
        if self.origins.is_empty() {
            return htu == own;
        }
        // `own` is `scheme://authority/path…`: compare the path part, and the origin with the list.
        let (Some(own_path), Some(htu_path)) = (path_of(&own), path_of(htu)) else {
            return false;
        };
        own_path == htu_path
            && self
                .origins
                .iter()
                .any(|o| htu.len() == o.len() + htu_path.len() && htu.starts_with(o.as_str()))
    }
}

impl Nonces {
    fn accepts(&self, nonce: &str, now_s: u64, skew_s: u64) -> bool {
        let Some((t, mac)) = nonce.split_once('.') else {
            return false;
        };
        let (Ok(issued), Ok(mac)) = (t.parse::<u64>(), URL_SAFE_NO_PAD.decode(mac)) else {
            return false;
        };
        if issued > now_s.saturating_add(skew_s) || now_s.saturating_sub(issued) > self.ttl_s {
            return false;
        }
        self.keys.iter().any(|k| {
            // HMAC takes a key of any length: the `Err` cannot happen.
            let Ok(mut m) = <Hmac<Sha256>>::new_from_slice(k) else {
                return false;
            };
            m.update(NONCE_DOMAIN);
            m.update(t.as_bytes());
            m.verify_slice(&mac).is_ok()
        })
    }
}

fn nonce_mac(key: &[u8], t: &str) -> Option<Vec<u8>> {
    let mut m = <Hmac<Sha256>>::new_from_slice(key).ok()?;
    m.update(NONCE_DOMAIN);
    m.update(t.as_bytes());
    Some(m.finalize().into_bytes().to_vec())
}

/// `ath` (RFC 9449 §4.2): base64url of the SHA-256 of the access token's ASCII.
pub fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

fn json_part(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// The path of a normalised `scheme://authority/path`.
fn path_of(uri: &str) -> Option<&str> {
    let rest = &uri[uri.find("://")? + 3..];
    Some(&rest[rest.find('/')?..])
}

/// An http(s) URI without query and fragment, normalised as RFC 3986 §6.2.2 and §6.2.3 say
/// (RFC 9449 §4.3 step 9): scheme and host lower-cased, the default port dropped, an empty path
/// as `/`, dot segments removed, percent-encoding with upper-case hex and unreserved characters
/// decoded. `None` for anything else.
pub(crate) fn normalise(uri: &str) -> Option<String> {
    let uri = uri.split(['?', '#']).next()?;
    let u = url::Url::parse(uri).ok()?;
    if !matches!(u.scheme(), "http" | "https") || !u.username().is_empty() || u.password().is_some()
    {
        return None;
    }
    let host = u.host_str()?;
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    Some(format!(
        "{}://{host}{port}{}",
        u.scheme(),
        percent_normalised(u.path())
    ))
}

/// `%xx` of an unreserved character decoded, every other `%xx` with upper-case hex.
fn percent_normalised(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(rest.get(..i).unwrap_or_default());
        let hex = rest
            .get(i + 1..i + 3)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok().map(|v| (h, v))) {
            Some((_, v)) if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                out.push(char::from(v));
            }
            Some((h, _)) => {
                out.push('%');
                out.push_str(&h.to_ascii_uppercase());
            }
            None => {
                out.push('%');
                rest = rest.get(i + 1..).unwrap_or_default();
                continue;
            }
        }
        rest = rest.get(i + 3..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// RFC 7638 thumbprint of a proof's public key: SHA-256 of the required members in
/// lexicographic order, no whitespace; base64url.
pub fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    let members: Vec<(&str, &str)> = match s("kty")? {
        "EC" => vec![
            ("crv", s("crv")?),
            ("kty", "EC"),
            ("x", s("x")?),
            ("y", s("y")?),
        ],
        "OKP" => vec![("crv", s("crv")?), ("kty", "OKP"), ("x", s("x")?)],
        "RSA" => vec![("e", s("e")?), ("kty", "RSA"), ("n", s("n")?)],
        _ => return None,
    };
    let mut json = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&serde_json::to_string(k).ok()?);
        json.push(':');
        json.push_str(&serde_json::to_string(v).ok()?);
    }
    json.push('}');
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(json.as_bytes())))
}

/// A proof's verification key, built from its `jwk` for the header's algorithm.
enum ProofKey {
    /// `es256/`, without a table: a proof's key verifies one signature.
    Es256(crate::es256::OneTimeKey),
    Es384(p384::ecdsa::VerifyingKey),
    /// ed25519-dalek's `verify_strict`, the checks `ed25519/` is tested against: building that
    /// module's tables for a key costs more than the one verification they would speed up.
    EdDsa(ed25519_dalek::VerifyingKey),
}

impl ProofKey {
    fn from_jwk(alg: Alg, jwk: &Map<String, Value>) -> Option<ProofKey> {
        let s = |k: &str| jwk.get(k).and_then(Value::as_str);
        let b = |k: &str| URL_SAFE_NO_PAD.decode(s(k)?).ok();
        let coordinates = |len: usize| -> Option<(Vec<u8>, Vec<u8>)> {
            let (x, y) = (b("x")?, b("y")?);
            (x.len() == len && y.len() == len).then_some((x, y))
        };
        match (alg, s("kty")?, s("crv")?) {
            (Alg::Es256, "EC", "P-256") => {
                let (x, y) = coordinates(32)?;
                crate::es256::OneTimeKey::from_coordinates(
                    x.as_slice().try_into().ok()?,
                    y.as_slice().try_into().ok()?,
                )
                .map(ProofKey::Es256)
            }
            (Alg::Es384, "EC", "P-384") => {
                let (x, y) = coordinates(48)?;
                let sec1 = [&[0x04][..], &x, &y].concat();
                p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                    .ok()
                    .map(ProofKey::Es384)
            }
            // As for tokens (`jwks.rs`): a point off the curve or of small order is no key.
            (Alg::EdDsa, "OKP", "Ed25519") => {
                let x: [u8; 32] = b("x")?.try_into().ok()?;
                ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .ok()
                    .filter(|k| !k.is_weak())
                    .map(ProofKey::EdDsa)
            }
            _ => None,
        }
    }

    fn verifies(&self, signed: &[u8], signature: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        match self {
            ProofKey::Es256(k) => k.verify(signed, signature),
            ProofKey::Es384(k) => p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| k.verify(signed, &sig).is_ok()),
            ProofKey::EdDsa(k) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| k.verify_strict(signed, &sig).is_ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk: Map<String, Value> = serde_json::from_str(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .unwrap();
        assert_eq!(
            thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn rfc9449_example_ath() {
        // RFC 9449 §7.1: the access token of the example request and its proof's `ath`.
        assert_eq!(
            ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    #[test]
    fn htu_is_compared_after_rfc3986_normalisation() {
        let n = |s: &str| normalise(s);
        assert_eq!(
            n("HTTPS://Example.COM:443/a/./b/../c?x=1#f"),
            n("https://example.com/a/c")
        );
        assert_eq!(n("http://example.com"), n("http://example.com/"));
        assert_eq!(
            n("http://example.com/%7Euser/%2f"),
            n("http://example.com/~user/%2F")
        );
        assert_ne!(n("http://example.com/a"), n("http://example.com/A"));
        assert_ne!(n("http://example.com:8080/a"), n("http://example.com/a"));
        assert_eq!(n("ftp://example.com/a"), None);
        assert_eq!(n("http://user@example.com/a"), None);
    }

    #[test]
    fn an_authority_that_is_not_one_names_nothing() {
        let config: DpopConfig = serde_json::from_str("{}").unwrap();
        let d = Dpop::compile(&config).unwrap();
        let names = |htu: &str, authority: &str| {
            let target = Target {
                method: "GET",
                scheme: "https",
                authority,
                path: "/a",
            };
            d.names(&normalise(htu).unwrap(), target)
        };
        assert!(names("https://example.com/a", "example.com"));
        assert!(names("https://example.com:8443/a", "example.com:8443"));
        // `?`, `#` or `/` in :authority would move the path: a proof for `/` or `/x/a`.
        assert!(!names("https://example.com/", "example.com?"));
        assert!(!names("https://example.com/", "example.com#"));
        assert!(!names("https://example.com/x/a", "example.com/x"));
        assert!(!names("https://example.com/a", "u@example.com"));
        assert!(!names("https://example.com/a", ""));
    }
}

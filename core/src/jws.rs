//! Compact JWS (RFC 7515) as every signed document Tessera reads is checked: access tokens,
//! security event tokens and status list tokens. The key is chosen by `kid` among keys that came
//! from configuration or the issuer's own JWKS, never from the token; the algorithm is the key's.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{
    Base64UrlSafeNoPadding, Duration, Token, UnixTimeStamp, VerificationOptions,
};
use jwt_simple::reexports::ct_codecs::Decoder as _;
use jwt_simple::JWTError;
use serde_json::{Map, Value};

use crate::error::TokenError;
use crate::jwks::Key;

/// Token-offered key material is never trusted (RFC 8725 §3.10 and the JWT attack catalogue).
const FORBIDDEN_HEADERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// A compact JWS taken apart (not yet verified).
#[derive(Debug)]
pub struct Parts {
    pub header: Map<String, Value>,
    pub payload: Map<String, Value>,
}

impl Parts {
    /// The header's `alg` (present, never `none`: [`decode`] checked it).
    pub fn alg(&self) -> &str {
        self.header.get("alg").and_then(Value::as_str).unwrap_or("")
    }

    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// The header's `typ` as a media type (see [`media_type`]); `Err` when it is not a string.
    pub fn typ(&self) -> Result<Option<String>, TokenError> {
        match self.header.get("typ") {
            None => Ok(None),
            Some(Value::String(t)) => Ok(Some(media_type(t))),
            Some(_) => Err(TokenError::Malformed("typ is not a string")),
        }
    }
}

/// A JOSE `typ` compared as RFC 7515 §4.1.9 says: case-insensitively, `application/` optional.
pub fn media_type(typ: &str) -> String {
    let t = typ.trim().to_ascii_lowercase();
    match t.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => t,
    }
}

fn decode_json_part(part: &str, what: &'static str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(what))?;
    // RFC 7515 §5.2: a member name twice is refused. serde_json keeps the last; a parser
    // upstream (or Envoy's jwt_authn) may keep the first and read another claim.
    if serde_json::from_slice::<UniqueKeys>(&bytes).is_err() {
        return Err(TokenError::Malformed("a JSON member name appears twice"));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TokenError::Malformed(what)),
    }
}

/// Any JSON value whose objects, at every depth, name each member once (else it fails to
/// deserialize).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UniqueKeys, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom("a member name twice"));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

/// The JOSE header of a compact JWS, decoded (`None`: not base64url JSON, or a name twice).
pub fn decode_header(token: &str) -> Option<Map<String, Value>> {
    decode_json_part(token.split('.').next()?, "header").ok()
}

/// Takes a compact JWS apart and refuses what no key may verify: `alg: none`, header-borne keys,
/// critical extensions.
pub fn decode(token: &str, max_bytes: usize) -> Result<Parts, TokenError> {
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "not a compact JWS (three base64url parts)",
        ));
    };
    let header = decode_json_part(h, "header is not base64url JSON")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenError::Malformed("header has no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::AlgNone);
    }
    for name in FORBIDDEN_HEADERS {
        if header.contains_key(name) {
            return Err(TokenError::ForbiddenHeader(name));
        }
    }
    if header.contains_key("crit") {
        return Err(TokenError::CriticalHeader);
    }
    let payload = decode_json_part(p, "payload is not base64url JSON")?;
    Ok(Parts { header, payload })
}

/// What the signature check also enforces: time (the proxy's clock), skew, audiences.
pub struct Checks {
    pub now_s: u64,
    pub clock_skew_s: u64,
    pub audiences: Option<std::collections::HashSet<String>>,
    pub max_bytes: usize,
}

/// Verifies the signature of `token` (taken apart as `parts`) with the key its `kid` names, or,
/// without a `kid`, every key of its algorithm (as Envoy's `jwt_authn` does). A `kid` that names
/// no key is tried only against keys without a kid (an HMAC secret), never against a key that has
/// another kid.
pub fn verify(keys: &[Key], parts: &Parts, token: &str, checks: &Checks) -> Result<(), TokenError> {
    let alg = parts.alg();
    let kid = parts.kid();
    let by_kid = kid.and_then(|k| keys.iter().find(|key| key.kid.as_deref() == Some(k)));
    let candidates: Vec<&Key> = match by_kid {
        Some(key) => {
            if !key.algorithm.matches_header(alg) {
                return Err(TokenError::AlgorithmMismatch {
                    expected: key.algorithm.name(),
                    found: alg.to_string(),
                });
            }
            vec![key]
        }
        None => {
            let c: Vec<&Key> = keys
                .iter()
                .filter(|k| (kid.is_none() || k.kid.is_none()) && k.algorithm.matches_header(alg))
                .collect();
            if c.is_empty() {
                return Err(match kid {
                    Some(k) => TokenError::UnknownKid(k.to_string()),
                    None => TokenError::NoKeyForAlgorithm(alg.to_string()),
                });
            }
            c
        }
    };
    let mut last_err = TokenError::BadSignature;
    for key in candidates {
        let verdict = match key.verify_with_jwt_simple(token, options(checks)) {
            Some(r) => r.map(drop).map_err(|e| map_jwt_error(&e)),
            None => verify_own(key, token, parts, checks),
        };
        match verdict {
            Ok(()) => return Ok(()),
            Err(e) => {
                last_err = e;
                if last_err != TokenError::BadSignature {
                    break;
                }
            }
        }
    }
    Err(last_err)
}

/// jwt-simple's options for [`Checks`].
pub fn options(checks: &Checks) -> VerificationOptions {
    VerificationOptions {
        accept_future: false,
        allowed_audiences: checks.audiences.clone(),
        time_tolerance: Some(Duration::from_secs(checks.clock_skew_s)),
        max_token_length: Some(checks.max_bytes),
        artificial_time: Some(UnixTimeStamp::from_secs(checks.now_s)),
        ..VerificationOptions::default()
    }
}

/// Verifies `token` as jwt-simple's `Token::verify` does, with the signature checked by `key`
/// (`Key::verify_signature`: the keys Tessera verifies itself): the header jwt-simple would accept (its length and member types, no `crit`, a `typ`
/// of `JWT` or `…+JWT`, a decodable `salt`), the signature (base64url decoded as jwt-simple
/// decodes it), then the registered claims ([`check_registered`]). The errors are jwt-simple's,
/// mapped as theirs are.
fn verify_own(key: &Key, token: &str, parts: &Parts, checks: &Checks) -> Result<(), TokenError> {
    if token.len() > checks.max_bytes {
        return Err(TokenError::TooLarge);
    }
    let meta = Token::decode_metadata(token).map_err(|e| map_jwt_error(&e))?;
    if meta.critical().is_some_and(|c| !c.is_empty()) {
        return Err(TokenError::CriticalHeader);
    }
    if let Some(typ) = meta.signature_type() {
        let typ = typ.to_uppercase();
        if typ != "JWT" && !typ.ends_with("+JWT") {
            return Err(TokenError::Malformed("typ is not JWT"));
        }
    }
    let undecodable = TokenError::Malformed("token could not be decoded");
    if let Some(Value::String(salt)) = parts.header.get("salt") {
        Base64UrlSafeNoPadding::decode_to_vec(salt, None).map_err(|_| undecodable.clone())?;
    }
    let (signed, signature) = token.rsplit_once('.').ok_or(undecodable.clone())?;
    let signature =
        Base64UrlSafeNoPadding::decode_to_vec(signature, None).map_err(|_| undecodable)?;
    key.verify_signature(signed.as_bytes(), &signature)
        .unwrap_or(Err(TokenError::BadSignature))?;
    check_registered(&parts.payload, checks)
}

/// The registered claims checked as [`verify`] has jwt-simple check them, for a payload whose
/// signature someone else verified (`jwt_authn.rs`): `iss`, `sub`, `jti`, `nonce` strings, `aud`
/// a string or strings and one of `checks.audiences`, `iat` and `nbf` not after now (plus the
/// skew), `exp` not before now (minus the skew).
pub fn check_registered(payload: &Map<String, Value>, checks: &Checks) -> Result<(), TokenError> {
    let undecodable = TokenError::Malformed("token could not be decoded");
    for name in ["iss", "sub", "jti", "nonce"] {
        if !matches!(
            payload.get(name),
            None | Some(Value::Null | Value::String(_))
        ) {
            return Err(undecodable);
        }
    }
    let audiences: Vec<&str> = match payload.get("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a
            .iter()
            .map(Value::as_str)
            .collect::<Option<_>>()
            .ok_or(undecodable.clone())?,
        Some(_) => return Err(undecodable),
    };
    let time = |name| numeric(payload, name).map_err(|_| undecodable.clone());
    let (iat, nbf, exp) = (time("iat")?, time("nbf")?, time("exp")?);
    let (now, skew) = (checks.now_s, checks.clock_skew_s);
    if iat.is_some_and(|iat| iat > now.saturating_add(skew)) {
        return Err(TokenError::IssuedInFuture);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(skew)) {
        return Err(TokenError::NotYetValid);
    }
    if exp.is_some_and(|exp| now < skew || now - skew > exp) {
        return Err(TokenError::Expired);
    }
    if let Some(allowed) = &checks.audiences {
        if !audiences.iter().any(|a| allowed.contains(*a)) {
            return Err(TokenError::Audience);
        }
    }
    Ok(())
}

/// A NumericDate claim (`exp`, `iat`, …): absent, or a non-negative number.
pub fn numeric(
    payload: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, TokenError> {
    match payload.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(TokenError::BadClaim(name.to_string(), "not a NumericDate")),
    }
}

pub fn map_jwt_error(e: &jwt_simple::Error) -> TokenError {
    match e.downcast_ref::<JWTError>() {
        Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag) => {
            TokenError::BadSignature
        }
        Some(JWTError::TokenHasExpired) => TokenError::Expired,
        Some(JWTError::TokenNotValidYet) => TokenError::NotYetValid,
        Some(JWTError::ClockDrift) => TokenError::IssuedInFuture,
        Some(JWTError::RequiredAudienceMismatch | JWTError::RequiredAudienceMissing) => {
            TokenError::Audience
        }
        Some(JWTError::RequiredIssuerMismatch | JWTError::RequiredIssuerMissing) => {
            TokenError::UnknownIssuer
        }
        Some(JWTError::UnknownCriticalExtension) => TokenError::CriticalHeader,
        Some(JWTError::TokenTooLong | JWTError::HeaderTooLarge) => TokenError::TooLarge,
        Some(JWTError::NotJWT) => TokenError::Malformed("typ is not JWT"),
        Some(JWTError::CompactEncodingError) => TokenError::Malformed("not a compact JWS"),
        // Anything else (base64 of the signature, claims of the wrong JSON type, …) is a token we
        // cannot judge, and so a rejected one.
        _ => TokenError::Malformed("token could not be decoded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use serde_json::json;

    const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0";

    fn signed(payload: &Value) -> String {
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let input = format!("{}.{}", b64(&json!({"alg": "HS256"})), b64(payload));
        let secret = URL_SAFE_NO_PAD.decode(SECRET).unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
        mac.update(input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{input}.{sig}")
    }

    /// `check_registered` says of a payload what jwt-simple's verification says of it, signed.
    #[test]
    fn registered_claims_are_checked_as_jwt_simple_checks_them() {
        let key = crate::jwks::hmac_key(SECRET, "k").unwrap();
        let now = 1_800_000_000u64;
        let times = [
            json!(null),
            json!(now - 200),
            json!(now - 60),
            json!(now - 59),
            json!(now),
            json!(now + 59),
            json!(now + 60),
            json!(now + 61),
            json!((now + 60) as f64 + 0.5),
            json!("soon"),
            json!(-1),
        ];
        let auds = [
            json!(null),
            json!("api"),
            json!("other"),
            json!(["other", "api"]),
            json!(["other"]),
            json!([]),
            json!([1]),
            json!(5),
        ];
        let strings = [json!(null), json!("x"), json!(7), json!(["x"])];
        let mut cases = 0;
        for (i, t) in times.iter().enumerate() {
            for (j, aud) in auds.iter().enumerate() {
                let mut p = Map::new();
                // Each time claim in turn, and `exp` always somewhere.
                p.insert(["iat", "nbf", "exp"][(i + j) % 3].into(), t.clone());
                p.insert("exp".into(), times[(i * 7 + j) % times.len()].clone());
                p.insert("aud".into(), aud.clone());
                p.insert(
                    ["iss", "sub", "jti", "nonce"][j % 4].into(),
                    strings[(i + j) % strings.len()].clone(),
                );
                let p: Map<String, Value> = p.into_iter().filter(|(_, v)| !v.is_null()).collect();
                let token = signed(&Value::Object(p.clone()));
                let checks = Checks {
                    now_s: now,
                    clock_skew_s: 60,
                    audiences: Some(["api".to_string()].into()),
                    max_bytes: 8192,
                };
                let theirs = verify(
                    std::slice::from_ref(&key),
                    &decode(&token, 8192).unwrap(),
                    &token,
                    &checks,
                )
                .map(|_| ());
                let ours = check_registered(&p, &checks);
                assert_eq!(ours, theirs, "payload {}", Value::Object(p));
                cases += 1;
            }
        }
        assert_eq!(cases, times.len() * auds.len());
    }

    #[test]
    fn a_member_name_twice_is_refused_at_any_depth() {
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let header = b64(r#"{"alg":"HS256"}"#);
        for payload in [
            r#"{"sub":"admin","iss":"x","sub":"alice"}"#,
            r#"{"sub":"alice","act":{"sub":"a","sub":"b"}}"#,
            r#"{"list":[{"k":1,"k":2}]}"#,
            r#"{"s\u0075b":"admin","sub":"alice"}"#,
        ] {
            let token = format!("{header}.{}.sig", b64(payload));
            assert_eq!(
                decode(&token, 8192).unwrap_err(),
                TokenError::Malformed("a JSON member name appears twice"),
                "{payload}"
            );
        }
        let dup_header = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"HS256","alg":"none"}"#),
            b64("{}")
        );
        assert!(decode(&dup_header, 8192).is_err());
        let fine = format!(
            "{header}.{}.sig",
            b64(r#"{"sub":"alice","act":{"sub":"a"},"l":[{"k":1},{"k":2}]}"#)
        );
        assert!(decode(&fine, 8192).is_ok());
    }
}

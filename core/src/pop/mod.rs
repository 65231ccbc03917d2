//! Proof of possession: a token bound (RFC 7800 `cnf`) to a key its holder proves it holds on
//! every request, so that a stolen token is worth nothing without the key. Two bindings:
//! - `cnf.jkt`: DPoP (RFC 9449, `dpop.rs`) — a proof signed with that key per request;
//! - `cnf.x5t#S256`: a certificate-bound token (RFC 8705 §3) — the client certificate of the
//!   connection (`connection.rs`) hashes to it.
//!
//! A bound token is only accepted proven; an unbound one only where neither its issuer nor the
//! route requires proof (`proof_of_possession`). Cedar sees how the token is bound in
//! `context.pop`.

use serde_json::Value;

use crate::error::TokenError;

pub mod connection;
pub mod dpop;

/// How a token is bound, from its `cnf` claim: parsed when the token is verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    /// RFC 9449 `cnf.jkt`: the RFC 7638 thumbprint of the DPoP key.
    pub jkt: Option<String>,
    /// RFC 8705 `cnf.x5t#S256`: base64url SHA-256 of the client certificate (DER).
    pub x5t: Option<String>,
}

impl Binding {
    /// The binding a token's `cnf` names. A `cnf` the filter cannot check (a confirmation
    /// method it does not know, a value of the wrong type) is refused: its issuer meant the
    /// token to be bound, and accepting it as a bearer token would drop that.
    pub fn of(cnf: Option<&Value>) -> Result<Binding, TokenError> {
        let Some(cnf) = cnf.filter(|v| !v.is_null()) else {
            return Ok(Binding::default());
        };
        let bad = |why| TokenError::BadClaim("cnf".into(), why);
        let cnf = cnf.as_object().ok_or(bad("not an object"))?;
        let member = |name: &str| -> Result<Option<String>, TokenError> {
            match cnf.get(name) {
                None => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(bad("a confirmation value is not a non-empty string")),
            }
        };
        let b = Binding {
            jkt: member("jkt")?,
            x5t: member("x5t#S256")?,
        };
        if !b.is_bound() {
            return Err(bad(
                "names no confirmation method Tessera checks (jkt, x5t#S256)",
            ));
        }
        Ok(b)
    }

    pub fn is_bound(&self) -> bool {
        self.jkt.is_some() || self.x5t.is_some()
    }

    /// `context.pop.method`.
    pub fn method(&self) -> &'static str {
        match (&self.jkt, &self.x5t) {
            (Some(_), Some(_)) => "dpop+mtls",
            (Some(_), None) => "dpop",
            (None, Some(_)) => "mtls",
            (None, None) => "bearer",
        }
    }

    /// Appends the shape of [`Binding::context`] (which optional members it has) to `out`, for
    /// the token shape (`authz::TokenMemo`). It must change with `context`.
    pub fn shape(&self, out: &mut String) {
        out.push('P');
        out.push(if self.jkt.is_some() { 'j' } else { '-' });
        out.push(if self.x5t.is_some() { 'x' } else { '-' });
    }

    /// `context.pop`: how the token is bound and whether that was proven. Every bound token
    /// that reaches Cedar was proven (an unproven one is refused before), so the record depends
    /// on the token alone, and decisions that read it can be remembered with the token.
    pub fn context(&self) -> Result<crate::authz::CedarValue, String> {
        use crate::authz::CedarValue;
        let s = |v: &str| CedarValue::from(v.to_string());
        let mut fields = vec![
            ("method".to_string(), s(self.method())),
            ("proven".to_string(), CedarValue::from(self.is_bound())),
        ];
        if let Some(j) = &self.jkt {
            fields.push(("jkt".to_string(), s(j)));
        }
        if let Some(x) = &self.x5t {
            fields.push(("x5t_s256".to_string(), s(x)));
        }
        crate::authz::value_record(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cnf_is_read_and_what_cannot_be_checked_is_refused() {
        assert_eq!(Binding::of(None), Ok(Binding::default()));
        let b = Binding::of(Some(&json!({"jkt": "abc"}))).unwrap();
        assert_eq!((b.method(), b.is_bound()), ("dpop", true));
        let b = Binding::of(Some(&json!({"x5t#S256": "h", "jkt": "k"}))).unwrap();
        assert_eq!(b.method(), "dpop+mtls");
        for bad in [
            json!("abc"),
            json!({"jwk": {"kty": "EC"}}),
            json!({"jkt": 5}),
            json!({"jkt": ""}),
            json!({}),
        ] {
            assert!(Binding::of(Some(&bad)).is_err(), "{bad}");
        }
    }
}

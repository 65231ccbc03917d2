//! Tokens that Envoy's `jwt_authn` filter verified (`issuers[].jwt_authn_payload`).
//!
//! `jwt_authn`, placed before Tessera, verifies a token's signature and puts its payload into the
//! request's dynamic metadata: `filter_metadata["envoy.filters.http.jwt_authn"][<key>]`, where
//! `<key>` is the provider's `payload_in_metadata` (Istio's `RequestAuthentication` uses the
//! issuer). Envoy hands the attribute `metadata` to a Wasm filter as a serialized
//! `envoy.config.core.v3.Metadata` (deeper paths come as proxy-wasm pairs, which lose the
//! types of values: a string and a number of 8 bytes look alike). Dynamic metadata is written
//! by filters only, never by a client.
//!
//! Tessera admits such a token only when its own payload (the one it takes from `Authorization`
//! and decides on) equals the payload `jwt_authn` verified for this request, value for value
//! (numbers compared as the doubles a `Struct` holds). A token `jwt_authn` did not verify — it
//! failed, was missing, or another token was verified — is refused: the metadata is absent or
//! different. Everything else (issuer, audience, lifetime, `typ`, delegation, task, single use,
//! revocation, proof of possession) Tessera checks itself, as for tokens it verifies.

use serde_json::{Map, Number, Value};

/// The dynamic-metadata namespace `jwt_authn` writes.
pub const FILTER: &str = "envoy.filters.http.jwt_authn";

/// The attribute path of the request's dynamic metadata (Envoy's `metadata`).
pub const ATTRIBUTE: [&str; 1] = ["metadata"];

/// Protobuf nesting deeper than this is refused (two steps per JSON level: `Value`, `Struct`;
/// 32 levels of JSON). A token's payload is bounded by `max_token_bytes` anyway.
const MAX_DEPTH: usize = 64;

/// Integers beyond ±2^53 have no double of their own: `jwt_authn` keeps a neighbour, so a token
/// could name a neighbouring value (another account id) and still "equal" the verified one.
const EXACT_INTEGERS: u64 = 1 << 53;

/// A token's payload as decoded (`Map`) or as kept with a cached token (`Claims`).
pub trait Payload {
    fn claim(&self, name: &str) -> Option<&Value>;
    fn count(&self) -> usize;
}

impl Payload for Map<String, Value> {
    fn claim(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl Payload for crate::claims::Claims {
    fn claim(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
    fn count(&self) -> usize {
        self.iter().count()
    }
}

/// Whether `payload` (the token's) is the payload `jwt_authn` verified under `key`, given the
/// request's dynamic metadata as Envoy gives it for [`ATTRIBUTE`]; the same for a JOSE header
/// (`header_in_metadata`). Bytes that do not decode verify nothing; nor does a token with an
/// integer beyond ±2^53.
pub fn is_verified(metadata: &[u8], key: &str, payload: &dyn Payload) -> bool {
    verified_payload(metadata, key).is_some_and(|v| same_object(&v, payload))
}

/// `Metadata { map<string, Struct> filter_metadata = 1; … }`: the payload under
/// `filter_metadata[FILTER].fields[key]`, a `Struct` value. A name there twice: none.
fn verified_payload(metadata: &[u8], key: &str) -> Option<Map<String, Value>> {
    let filter = map_entry(metadata, FILTER)?;
    let value = map_entry(filter, key)?;
    match decode_value(value, 0)? {
        Value::Object(payload) => Some(payload),
        _ => None,
    }
}

/// The value bytes of the entry `name` of the map in field 1 of `message` (a `Struct`'s
/// `fields`, a `Metadata`'s `filter_metadata`); `None` when absent, twice, or malformed.
fn map_entry<'a>(message: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut r = Reader { bytes: message };
    let mut found = None;
    while let Some((n, f)) = r.field().ok()? {
        let (1, Field::Bytes(entry)) = (n, f) else {
            continue;
        };
        let (mut key, mut value) = (None, &[][..]);
        let mut e = Reader { bytes: entry };
        while let Some((n, f)) = e.field().ok()? {
            match (n, f) {
                (1, Field::Bytes(k)) => key = Some(k),
                (2, Field::Bytes(v)) => value = v,
                _ => {}
            }
        }
        if key == Some(name.as_bytes()) && found.replace(value).is_some() {
            return None;
        }
    }
    found
}

fn same_object(verified: &Map<String, Value>, token: &dyn Payload) -> bool {
    verified.len() == token.count()
        && verified
            .iter()
            .all(|(k, v)| token.claim(k).is_some_and(|t| same(v, t)))
}

/// JSON equality, numbers as doubles (what `jwt_authn` made of the token's numbers).
fn same(verified: &Value, token: &Value) -> bool {
    match (verified, token) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => {
            let exact = match (b.as_u64(), b.as_i64()) {
                (Some(u), _) => u <= EXACT_INTEGERS,
                (None, Some(i)) => i.unsigned_abs() <= EXACT_INTEGERS,
                _ => true,
            };
            exact && a.as_f64().zip(b.as_f64()).is_some_and(|(a, b)| a == b)
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        (Value::Object(a), Value::Object(b)) => same_object(a, b as &dyn Payload),
        _ => false,
    }
}

/// The protobuf wire format, as far as `Struct`, `Value` and `ListValue` need it.
struct Reader<'a> {
    bytes: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.bytes.split_first()?;
            self.bytes = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    /// The next field (number, value); `None` at the end. Groups and malformed input: `Err`.
    #[allow(clippy::type_complexity)]
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>, ()> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let tag = self.varint().ok_or(())?;
        let value = match tag & 7 {
            0 => Field::Varint(self.varint().ok_or(())?),
            1 => {
                let b = self.take(8).ok_or(())?;
                Field::Fixed64(u64::from_le_bytes(b.try_into().map_err(|_| ())?))
            }
            2 => {
                let n = usize::try_from(self.varint().ok_or(())?).map_err(|_| ())?;
                Field::Bytes(self.take(n).ok_or(())?)
            }
            5 => {
                self.take(4).ok_or(())?;
                Field::Fixed32
            }
            _ => return Err(()),
        };
        Ok(Some((tag >> 3, value)))
    }
}

/// `google.protobuf.Struct { map<string, Value> fields = 1; }`. A key twice: refused.
fn decode_struct(bytes: &[u8], depth: usize) -> Option<Map<String, Value>> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut r = Reader { bytes };
    let mut out = Map::new();
    while let Some((n, f)) = r.field().ok()? {
        let (1, Field::Bytes(entry)) = (n, f) else {
            continue;
        };
        let (mut key, mut value) = (None, None);
        let mut e = Reader { bytes: entry };
        while let Some((n, f)) = e.field().ok()? {
            match (n, f) {
                (1, Field::Bytes(k)) => key = Some(std::str::from_utf8(k).ok()?.to_string()),
                (2, Field::Bytes(v)) => value = Some(decode_value(v, depth + 1)?),
                _ => {}
            }
        }
        // A map entry without a value holds the default `Value` (no kind): nothing JSON says.
        if out.insert(key.unwrap_or_default(), value?).is_some() {
            return None;
        }
    }
    Some(out)
}

/// `google.protobuf.Value`: exactly one kind.
fn decode_value(bytes: &[u8], depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut r = Reader { bytes };
    let mut kind = None;
    while let Some((n, f)) = r.field().ok()? {
        let v = match (n, f) {
            (1, Field::Varint(_)) => Value::Null,
            (2, Field::Fixed64(bits)) => Value::Number(Number::from_f64(f64::from_bits(bits))?),
            (3, Field::Bytes(s)) => Value::String(std::str::from_utf8(s).ok()?.to_string()),
            (4, Field::Varint(b)) => Value::Bool(b != 0),
            (5, Field::Bytes(s)) => Value::Object(decode_struct(s, depth + 1)?),
            (6, Field::Bytes(l)) => Value::Array(decode_list(l, depth + 1)?),
            _ => continue,
        };
        if kind.replace(v).is_some() {
            return None;
        }
    }
    kind
}

/// `google.protobuf.ListValue { repeated Value values = 1; }`.
fn decode_list(bytes: &[u8], depth: usize) -> Option<Vec<Value>> {
    let mut r = Reader { bytes };
    let mut out = Vec::new();
    while let Some((n, f)) = r.field().ok()? {
        if let (1, Field::Bytes(v)) = (n, f) {
            out.push(decode_value(v, depth)?);
        }
    }
    Some(out)
}

/// Dynamic metadata as Envoy gives it for [`ATTRIBUTE`] after `jwt_authn` verified a token and
/// stored its parts (payload, header) under their keys (numbers as doubles): what the tests
/// give the module in the harness.
pub fn encode_metadata(entries: &[(&str, &Map<String, Value>)]) -> Vec<u8> {
    let mut fields = Map::new();
    for (key, object) in entries {
        fields.insert(key.to_string(), Value::Object((*object).clone()));
    }
    let mut entry = Vec::new();
    put_bytes(&mut entry, 1, FILTER.as_bytes());
    put_bytes(&mut entry, 2, &encode_struct(&fields));
    let mut out = Vec::new();
    put_bytes(&mut out, 1, &entry);
    out
}

fn encode_struct(object: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in object {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, k.as_bytes());
        put_bytes(&mut entry, 2, &encode_value(v));
        put_bytes(&mut out, 1, &entry);
    }
    out
}

fn encode_value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match v {
        Value::Null => out.extend([1 << 3, 0]),
        Value::Number(n) => {
            out.push((2 << 3) | 1);
            out.extend(n.as_f64().unwrap_or(f64::NAN).to_bits().to_le_bytes());
        }
        Value::String(s) => put_bytes(&mut out, 3, s.as_bytes()),
        Value::Bool(b) => out.extend([4 << 3, u8::from(*b)]),
        Value::Object(m) => put_bytes(&mut out, 5, &encode_struct(m)),
        Value::Array(a) => {
            let mut list = Vec::new();
            for item in a {
                put_bytes(&mut list, 1, &encode_value(item));
            }
            put_bytes(&mut out, 6, &list);
        }
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn is_verified(verified: &[u8], payload: &Map<String, Value>) -> bool {
        decode_struct(verified, 0).is_some_and(|v| same_object(&v, payload))
    }

    fn payload() -> Map<String, Value> {
        object(json!({
            "iss": "https://idp", "sub": "alice", "aud": ["orders-api", "x"], "exp": 1_900_000_000u64,
            "scope": "orders:read", "act": {"sub": "agent", "act": {"sub": "planner"}},
            "cnf": {"jkt": "abc"}, "single": true, "none": null, "ratio": 0.5
        }))
    }

    #[test]
    fn the_payload_jwt_authn_verified_is_the_tokens() {
        let p = payload();
        assert!(is_verified(&encode_struct(&p), &p));
    }

    #[test]
    fn any_other_payload_is_not() {
        let verified = encode_struct(&payload());
        let changes = [
            ("sub", json!("mallory")),
            ("exp", json!(1_900_000_001u64)),
            ("aud", json!(["orders-api"])),
            ("act", json!({"sub": "agent"})),
            ("single", json!("true")),
            ("none", json!(false)),
            ("ratio", json!("0.5")),
            ("extra", json!(1)),
        ];
        for (k, v) in changes {
            let mut p = payload();
            p.insert(k.into(), v);
            assert!(!is_verified(&verified, &p), "{k} changed, still verified");
        }
        let mut fewer = payload();
        fewer.remove("scope");
        assert!(!is_verified(&verified, &fewer));
        assert!(!is_verified(&encode_struct(&fewer), &payload()));
    }

    #[test]
    fn numbers_compare_exactly_and_integers_beyond_2_53_verify_nothing() {
        let p = object(json!({"m": 3, "f": 0.25, "neg": -7}));
        let verified = encode_struct(&object(json!({"m": 3.0, "f": 0.25, "neg": -7.0})));
        assert!(is_verified(&verified, &p));
        // 2^53 + 1 has no double of its own: jwt_authn keeps 2^53, and a token naming any
        // neighbour of a large id would match it. Such a token is not verified.
        let big = object(json!({"n": 9_007_199_254_740_993u64}));
        let kept = encode_struct(&object(json!({"n": 9_007_199_254_740_992u64})));
        assert!(!is_verified(&kept, &big));
        let id = object(json!({"acct": 1_234_567_890_123_456_700u64}));
        let real = encode_struct(&object(json!({"acct": 1_234_567_890_123_456_789u64})));
        assert!(!is_verified(&real, &id));
        let at = object(json!({"n": 9_007_199_254_740_992u64, "m": -9_007_199_254_740_992i64}));
        assert!(is_verified(&encode_struct(&at), &at));
    }

    #[test]
    fn bytes_that_are_no_struct_verify_nothing() {
        let p = payload();
        let good = encode_struct(&p);
        assert!(!is_verified(&[], &p));
        assert!(!is_verified(&good[..good.len() - 1], &p));
        assert!(!is_verified(&[0xff; 12], &p));
        // A group (wire type 3) and a key twice.
        assert!(!is_verified(&[0x0b], &p));
        let mut twice = good.clone();
        twice.extend_from_slice(&encode_struct(&object(json!({"sub": "alice"}))));
        assert!(!is_verified(&twice, &p));
        // A Value with two kinds.
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, b"sub");
        let mut value = encode_value(&json!("alice"));
        value.extend(encode_value(&json!(true)));
        put_bytes(&mut entry, 2, &value);
        let mut s = Vec::new();
        put_bytes(&mut s, 1, &entry);
        assert!(!is_verified(&s, &object(json!({"sub": "alice"}))));
    }

    /// The bytes Envoy 1.40 gave for `metadata` after `jwt_authn` verified a token (captured
    /// from tests/e2e/test_jwt_authn.py's gateway).
    const FROM_ENVOY: &str = "0ad8010a1c656e766f792e66696c746572732e687474702e6a77745f617574686e12b7010ab4010a1f68747470733a2f2f6167656e74732e64656d6f2e746573736572612e6465761290012a8d010a100a0373756212091a076167656e742d370a280a0369737312211a1f68747470733a2f2f6167656e74732e64656d6f2e746573736572612e6465760a130a03617564120c1a0a6f72646572732d6170690a160a0573636f7065120d1a0b6f72646572733a726561640a100a03657870120911000040b711c5da410a100a036961741209110000406c11c5da41";

    #[test]
    fn envoys_metadata_names_the_payload_jwt_authn_verified() {
        let metadata = crate::hex(FROM_ENVOY);
        let p = object(json!({
            "sub": "agent-7", "iss": "https://agents.demo.tessera.dev", "aud": "orders-api",
            "scope": "orders:read", "exp": 1_796_490_973u64, "iat": 1_796_490_673u64
        }));
        let key = "https://agents.demo.tessera.dev";
        assert!(super::is_verified(&metadata, key, &p));
        assert!(!super::is_verified(&metadata, "agents", &p));
        let mut other = p.clone();
        other.insert("exp".into(), json!(1_796_490_974u64));
        assert!(!super::is_verified(&metadata, key, &other));
        // What the tests give the harness is what Envoy gives.
        assert!(super::is_verified(&encode_metadata(&[(key, &p)]), key, &p));
        // The filter's entry twice: nothing verified.
        let mut twice = metadata.clone();
        twice.extend_from_slice(&metadata);
        assert!(!super::is_verified(&twice, key, &p));
    }

    #[test]
    fn nesting_is_bounded() {
        let mut v = json!(1);
        for _ in 0..20 {
            v = json!({ "a": v });
        }
        let p = object(v);
        assert!(is_verified(&encode_struct(&p), &p), "20 levels verify");
        let mut v = json!(1);
        for _ in 0..40 {
            v = json!({ "a": v });
        }
        let p = object(v);
        assert!(!is_verified(&encode_struct(&p), &p));
    }
}

//! Tessera verifies Ed25519 and RSA (RS* and PS*) signatures with arithmetic of its own choosing
//! (`core/src/ed25519/`; `core/src/rsa.rs`), and the header and claims of those tokens as jwt-simple
//! checks them (`jws::verify_own`). Here the verdict on every token of a grid (well signed and
//! tampered signatures, odd headers, odd claims, RSA representatives out of range) must be the
//! one jwt-simple gives with the same key. The tokens are signed by jsonwebtoken over exactly the
//! bytes each case builds; the RSA keys include a modulus of 3,001 bits and one of 4,096.

// A helper that panics is a test failing with its message (clippy.toml allows it in #[test]s).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{crypto, Algorithm, EncodingKey};
use jwt_simple::prelude::{
    Ed25519PublicKey, EdDSAPublicKeyLike, JWTClaims, PS256PublicKey, PS384PublicKey,
    PS512PublicKey, RS256KeyPair, RS256PublicKey, RS384PublicKey, RS512PublicKey, RSAPublicKeyLike,
    VerificationOptions,
};
use serde_json::{json, Map, Value};
use tessera_core::error::TokenError;
use tessera_core::{jwks, jws};

const NOW: u64 = 1_800_000_000;

type Claims = JWTClaims<Map<String, Value>>;
type Reference = Box<dyn Fn(&str, VerificationOptions) -> Result<Claims, jwt_simple::Error>>;

struct Signer {
    name: String,
    alg: &'static str,
    algorithm: Algorithm,
    key: EncodingKey,
    ours: jwks::Key,
    reference: Reference,
    /// RSA: the modulus, big-endian.
    modulus: Option<Vec<u8>>,
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).expect(path)
}

/// Tessera's key from a JWK, without its `kid`: every key here is a candidate for every token.
fn our_key(mut jwk: Value) -> jwks::Key {
    jwk.as_object_mut().expect("a JWK").remove("kid");
    jwks::parse_jwks(&json!({ "keys": [jwk] }), "test")
        .expect("the key loads")
        .pop()
        .expect("one key")
}

fn signers() -> Vec<Signer> {
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let jwks: Value = serde_json::from_slice(&read("tests/keys/jwks.json")).expect("jwks.json");
    let ed = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == "demo-ed25519")
        .expect("the demo Ed25519 key")
        .clone();
    let x = URL_SAFE_NO_PAD
        .decode(ed["x"].as_str().expect("x"))
        .expect("x is base64url");
    let ed_ref = Ed25519PublicKey::from_bytes(&x).expect("jwt-simple takes the key");
    let mut out = vec![Signer {
        name: "Ed25519".into(),
        alg: "EdDSA",
        algorithm: Algorithm::EdDSA,
        key: EncodingKey::from_ed_pem(&read("tests/keys/ed25519.pem")).expect("ed25519.pem"),
        ours: our_key(ed),
        reference: Box::new(move |t, o| ed_ref.verify_token(t, Some(o))),
        modulus: None,
    }];
    for file in ["rsa2048.pem", "rsa3001.pem", "rsa4096.pem"] {
        let pem = read(&format!("tests/keys/{file}"));
        let pair = RS256KeyPair::from_pem(std::str::from_utf8(&pem).expect("utf-8"))
            .expect("jwt-simple reads the key");
        let c = pair.public_key().to_components();
        let (n, e) = (c.n, c.e);
        for (alg, algorithm) in [
            ("RS256", Algorithm::RS256),
            ("RS384", Algorithm::RS384),
            ("RS512", Algorithm::RS512),
            ("PS256", Algorithm::PS256),
            ("PS384", Algorithm::PS384),
            ("PS512", Algorithm::PS512),
        ] {
            macro_rules! reference {
                ($key:ty) => {{
                    let k = <$key>::from_components(&n, &e).expect("key");
                    Box::new(move |t, o| k.verify_token(t, Some(o)))
                }};
            }
            let reference: Reference = match alg {
                "RS256" => reference!(RS256PublicKey),
                "RS384" => reference!(RS384PublicKey),
                "RS512" => reference!(RS512PublicKey),
                "PS256" => reference!(PS256PublicKey),
                "PS384" => reference!(PS384PublicKey),
                _ => reference!(PS512PublicKey),
            };
            out.push(Signer {
                name: format!("{alg} {file}"),
                alg,
                algorithm,
                key: EncodingKey::from_rsa_pem(&pem).expect("rsa pem"),
                ours: our_key(json!({"kty": "RSA", "alg": alg, "n": b64(&n), "e": b64(&e)})),
                reference,
                modulus: Some(n.clone()),
            });
        }
    }
    out
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// The signed input of a header and a payload given as JSON text.
fn input(header: &str, payload: &str) -> String {
    format!("{}.{}", b64(header), b64(payload))
}

fn sign(s: &Signer, input: &str) -> Vec<u8> {
    let sig = crypto::sign(input.as_bytes(), &s.key, s.algorithm).expect("signs");
    URL_SAFE_NO_PAD.decode(sig).expect("base64url")
}

fn checks() -> jws::Checks {
    jws::Checks {
        now_s: NOW,
        clock_skew_s: 60,
        audiences: Some(HashSet::from(["api".to_string()])),
        max_bytes: 16 * 1024,
    }
}

/// Tessera's verdict and jwt-simple's on `token`; `None` when Tessera refuses the token before any
/// key sees it (`jws::decode`: not JSON, `crit`, header-borne keys), for either kind of key.
fn verdicts(s: &Signer, token: &str) -> Option<(Result<(), TokenError>, Result<(), TokenError>)> {
    let checks = checks();
    let parts = jws::decode(token, checks.max_bytes).ok()?;
    let ours = jws::verify(std::slice::from_ref(&s.ours), &parts, token, &checks);
    let theirs = (s.reference)(token, jws::options(&checks))
        .map(drop)
        .map_err(|e| jws::map_jwt_error(&e));
    Some((ours, theirs))
}

fn headers(alg: &str) -> Vec<String> {
    let mut h: Vec<String> = [
        "".to_string(),
        r#","typ":"JWT""#.into(),
        r#","typ":"jwt""#.into(),
        r#","typ":"at+jwt""#.into(),
        r#","typ":"AT+JWT""#.into(),
        r#","typ":"application/at+jwt""#.into(),
        r#","typ":"JWS""#.into(),
        r#","typ":"""#.into(),
        r#","typ":1"#.into(),
        r#","typ":null"#.into(),
        r#","kid":7"#.into(),
        r#","kid":"k1""#.into(),
        r#","cty":"JWT""#.into(),
        r#","cty":["JWT"]"#.into(),
        r#","salt":"AAAA""#.into(),
        r#","salt":"!!""#.into(),
        r#","salt":5"#.into(),
        r#","x5t":"abc""#.into(),
        r#","x5t#S256":3"#.into(),
        r#","extra":{"a":[1,2,{"b":null}]}"#.into(),
    ]
    .iter()
    .map(|rest| format!(r#"{{"alg":"{alg}"{rest}}}"#))
    .collect();
    if alg == "EdDSA" {
        h.push(r#"{"alg":"Ed25519"}"#.into());
    }
    h.push(format!(r#"{{"typ":"JWT","alg":"{alg}"}}"#));
    h.push(format!(r#"{{"alg":"{alg}","alg":"{alg}"}}"#));
    h
}

fn payloads() -> Vec<String> {
    let good = |extra: &str| {
        format!(
            r#"{{"iss":"https://idp.example","sub":"agent-7","aud":"api","iat":{},"exp":{}{extra}}}"#,
            NOW - 10,
            NOW + 300
        )
    };
    vec![
        good(""),
        good(r#","scope":"orders:read","act":{"sub":"relay"}"#),
        good(r#","nbf":1800000100"#),
        good(r#","nbf":1800000030"#),
        good(r#","jti":3"#),
        good(r#","nonce":"n""#),
        format!(r#"{{"aud":"api","exp":{}}}"#, NOW - 100),
        format!(r#"{{"aud":"api","exp":{}}}"#, NOW - 30),
        format!(r#"{{"aud":"api","exp":{}}}"#, NOW + 100),
        format!(r#"{{"aud":"api","iat":{},"exp":{}}}"#, NOW + 100, NOW + 300),
        format!(r#"{{"aud":"other","exp":{}}}"#, NOW + 100),
        format!(r#"{{"aud":["x","api"],"exp":{}}}"#, NOW + 100),
        format!(r#"{{"aud":[1],"exp":{}}}"#, NOW + 100),
        format!(r#"{{"iss":5,"aud":"api","exp":{}}}"#, NOW + 100),
        r#"{"aud":"api","exp":"soon"}"#.into(),
        r#"{"aud":"api","exp":1e300}"#.into(),
        r#"{"aud":"api","exp":-5}"#.into(),
        r#"{"aud":"api"}"#.into(),
        r#"{}"#.into(),
    ]
}

/// Signatures that must not verify: the good one changed, cut, lengthened, replaced.
fn tampered(s: &Signer, input: &str, good: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut push = |what: &str, sig: String| out.push((what.to_string(), format!("{input}.{sig}")));
    let bits = good.len() * 8;
    for bit in [0, 7, 8, bits / 2, bits - 9, bits - 1] {
        let mut sig = good.to_vec();
        sig[bit / 8] ^= 1 << (bit % 8);
        push(&format!("bit {bit} flipped"), URL_SAFE_NO_PAD.encode(&sig));
    }
    push("shortened", URL_SAFE_NO_PAD.encode(&good[..good.len() - 1]));
    let mut longer = good.to_vec();
    longer.push(0);
    push("a byte appended", URL_SAFE_NO_PAD.encode(&longer));
    let mut leading = vec![0];
    leading.extend_from_slice(good);
    push("a zero byte in front", URL_SAFE_NO_PAD.encode(&leading));
    push("empty", String::new());
    push("padded", format!("{}=", URL_SAFE_NO_PAD.encode(good)));
    push(
        "not base64url",
        format!("{}+", URL_SAFE_NO_PAD.encode(good)),
    );
    let other = sign(s, &input.replacen('.', ".e30", 1));
    push("another input's", URL_SAFE_NO_PAD.encode(other));
    if s.alg == "EdDSA" {
        // Malleability: S + L is S modulo the group order, but not canonical (RFC 8032 §5.1.7).
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut sig = good.to_vec();
        let mut carry = 0u16;
        for (b, l) in sig[32..].iter_mut().zip(L) {
            let v = u16::from(*b) + u16::from(l) + carry;
            *b = v as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0, "S + L fits 256 bits");
        push("S + L", URL_SAFE_NO_PAD.encode(&sig));
    }
    if let Some(n) = &s.modulus {
        // RSAVP1's range: the modulus itself, zero, one, the modulus minus one.
        push("s = n", URL_SAFE_NO_PAD.encode(n));
        let k = n.len();
        push("s = 0", URL_SAFE_NO_PAD.encode(vec![0u8; k]));
        let mut one = vec![0u8; k];
        one[k - 1] = 1;
        push("s = 1", URL_SAFE_NO_PAD.encode(&one));
        let mut n_minus_1 = n.clone();
        n_minus_1[k - 1] -= 1; // n is odd
        push("s = n - 1", URL_SAFE_NO_PAD.encode(&n_minus_1));
    }
    out
}

#[test]
fn verdicts_are_jwt_simples() {
    let mut compared = 0;
    let mut accepted = 0;
    for s in signers() {
        // Every header and payload, well signed.
        for header in headers(s.alg) {
            for payload in payloads() {
                let input = input(&header, &payload);
                let sig = sign(&s, &input);
                let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
                let Some((ours, theirs)) = verdicts(&s, &token) else {
                    continue;
                };
                assert_eq!(ours, theirs, "{}: {header} {payload}", s.name);
                compared += 1;
                accepted += usize::from(ours.is_ok());
            }
        }
        // A good token, its signature tampered with.
        let input = input(
            &format!(r#"{{"alg":"{}","typ":"JWT"}}"#, s.alg),
            &payloads()[0],
        );
        let good = sign(&s, &input);
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&good));
        assert_eq!(
            verdicts(&s, &token).map(|v| v.0),
            Some(Ok(())),
            "{}",
            s.name
        );
        for (what, token) in tampered(&s, &input, &good) {
            let (ours, theirs) = verdicts(&s, &token).expect("the header decodes");
            assert!(ours.is_err(), "{}: a signature {what} verified", s.name);
            assert_eq!(ours, theirs, "{}: a signature {what}", s.name);
            compared += 1;
        }
    }
    // The grid is not vacuous: both verdicts occur, many times.
    assert!(compared > 2_000, "{compared} tokens compared");
    assert!(
        accepted > 100 && accepted < compared / 2,
        "{accepted} accepted"
    );
}

/// RFC 8037 appendix A.4 (Ed25519) and RFC 7515 appendix A.2 (RS256, the key of RFC 7517 A.1):
/// the published signatures verify, and a changed byte of the signed input does not.
#[test]
fn rfc_example_signatures() {
    let ed = our_key(json!({
        "kty": "OKP", "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    }));
    let rs = our_key(json!({
        "kty": "RSA", "alg": "RS256", "e": "AQAB",
        "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"
    }));
    let examples = [
        (
            &ed,
            "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc",
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg",
        ),
        (
            &rs,
            "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
            "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw",
        ),
    ];
    for (key, input, sig) in examples {
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("base64url");
        assert_eq!(
            key.verify_signature(input.as_bytes(), &sig),
            Some(Ok(())),
            "{input}"
        );
        let mut changed = input.as_bytes().to_vec();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert_eq!(
            key.verify_signature(&changed, &sig),
            Some(Err(TokenError::BadSignature)),
            "{input} changed"
        );
    }
}

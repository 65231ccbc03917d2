use super::*;
use p256::ecdsa::signature::{Signer as _, Verifier as _};

fn hex32(s: &str) -> [u8; 32] {
    crate::hex(s).try_into().unwrap()
}

/// Big-endian bytes of at most 32 significant bytes, left-padded (Wycheproof writes
/// coordinates with a leading zero byte when the top bit is set).
fn padded(bytes: &[u8]) -> Option<[u8; 32]> {
    let start = bytes.len().checked_sub(32);
    match start {
        Some(s) if bytes[..s].iter().all(|b| *b == 0) => bytes[s..].try_into().ok(),
        Some(_) => None,
        None => {
            let mut out = [0u8; 32];
            out[32 - bytes.len()..].copy_from_slice(bytes);
            Some(out)
        }
    }
}

#[test]
fn fips_186_vectors_verify() {
    // FIPS 186-4 SigVer/SigGen, P-256 with SHA-256 (prehashed), as RustCrypto's p256 carries
    // them (src/test_vectors/ecdsa.rs): (Qx, Qy, digest, r, s).
    let vectors = [
        (
            "1ccbe91c075fc7f4f033bfa248db8fccd3565de94bbfb12f3c59ff46c271bf83",
            "ce4014c68811f9a21a1fdb2c0e6113e06db7ca93b7404e78dc7ccd5ca89a4ca9",
            "44acf6b7e36c1342c2c5897204fe09504e1e2efb1a900377dbc4e7a6a133ec56",
            "f3ac8061b514795b8843e3d6629527ed2afd6b1f6a555a7acabb5e6f79c8c2ac",
            "8bf77819ca05a6b2786c76262bf7371cef97b218e96f175a3ccdda2acc058903",
        ),
        (
            "74ccd8a62fba0e667c50929a53f78c21b8ff0c3c737b0b40b1750b2302b0bde8",
            "29074e21f3a0ef88b9efdf10d06aa4c295cc1671f758ca0e4cd108803d0f2614",
            "b804cf88af0c2eff8bbbfb3660ebb3294138e9d3ebd458884e19818061dacff0",
            "35fb60f5ca0f3ca08542fb3cc641c8263a2cab7a90ee6a5e1583fac2bb6f6bd1",
            "ee59d81bc9db1055cc0ed97b159d8784af04e98511d0a9a407b99bb292572e96",
        ),
    ];
    for (qx, qy, m, r, s) in vectors {
        let key = PublicKey::from_coordinates(&hex32(qx), &hex32(qy)).unwrap();
        let mut sig = hex32(r).to_vec();
        sig.extend(hex32(s));
        assert!(key.verify_digest(&hex32(m), &sig));
        let mut other = hex32(m);
        other[0] ^= 1;
        assert!(!key.verify_digest(&other, &sig));
    }
}

/// Project Wycheproof's `ecdsa_secp256r1_sha256` vectors (Apache-2.0), in the blobby encoding
/// RustCrypto's p256 0.14 ships them in (`src/test_vectors/data/wycheproof.blb`): records of
/// (wx, wy, msg, DER signature, pass). A JWS signature is r ‖ s, never DER: a vector whose DER
/// does not parse is a DER test and must be one that fails.
#[test]
fn wycheproof_vectors() {
    let records = blobby(include_bytes!("wycheproof.blb"));
    assert_eq!(records.len() % 5, 0);
    let (mut passed, mut failed) = (0, 0);
    let mut keys = std::collections::HashMap::new();
    for (i, v) in records.chunks(5).enumerate() {
        let (wx, wy, msg, der, pass) = (v[0], v[1], v[2], v[3], v[4] == [1]);
        let key = keys.entry((wx, wy)).or_insert_with(|| {
            PublicKey::from_coordinates(&padded(wx).unwrap(), &padded(wy).unwrap())
                .expect("every Wycheproof key is on the curve")
        });
        let Ok(sig) = p256::ecdsa::Signature::from_der(der) else {
            assert!(!pass, "vector {i}: a valid signature that is not DER");
            continue;
        };
        assert_eq!(key.verify(msg, &sig.to_bytes()), pass, "vector {i}");
        // r + n in place of r (when it fits in 32 bytes): the same residue, but no scalar. One
        // valid vector (x(R) ≥ n) would verify if r were reduced rather than refused.
        let bytes = sig.to_bytes();
        let (r, s) = bytes.split_at(32);
        if let Some(r_plus_n) = add_be(r, &N) {
            assert!(
                !key.verify(msg, &[&r_plus_n[..], s].concat()),
                "vector {i}, r + n"
            );
        }
        let once = OneTimeKey::from_coordinates(&padded(wx).unwrap(), &padded(wy).unwrap());
        assert_eq!(
            once.unwrap().verify(msg, &sig.to_bytes()),
            pass,
            "vector {i}"
        );
        if pass {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    // 386 vectors: the 147 valid ones, and the 20 invalid ones whose DER holds two scalars.
    assert_eq!(records.len() / 5, 386);
    assert_eq!((passed, failed), (147, 20));
}

/// A blobby file (RustCrypto's `blobby`): a count of blobs, a count of shared blobs, the shared
/// blobs (length, bytes), then each blob as a varint: odd, the shared blob it names; even, its
/// length, followed by its bytes. Varints are big-endian base 128 with an offset on each
/// continued byte (as git's).
fn blobby(data: &[u8]) -> Vec<&[u8]> {
    fn varint(data: &[u8], at: &mut usize) -> usize {
        let mut v = 0usize;
        loop {
            let b = data[*at];
            *at += 1;
            v = (v << 7) | usize::from(b & 0x7f);
            if b & 0x80 == 0 {
                return v;
            }
            v += 1;
        }
    }
    fn take<'a>(data: &'a [u8], at: &mut usize, len: usize) -> &'a [u8] {
        let blob = &data[*at..*at + len];
        *at += len;
        blob
    }
    let mut at = 0;
    let total = varint(data, &mut at);
    let shared: Vec<&[u8]> = (0..varint(data, &mut at))
        .map(|_| {
            let len = varint(data, &mut at);
            take(data, &mut at, len)
        })
        .collect();
    let mut blobs = Vec::new();
    while at < data.len() {
        let v = varint(data, &mut at);
        if v & 1 == 1 {
            blobs.push(shared[v >> 1]);
        } else {
            blobs.push(take(data, &mut at, v >> 1));
        }
    }
    assert_eq!(blobs.len(), total);
    blobs
}

/// A deterministic stream of 32-byte values (SHA-256 in counter mode).
fn stream(seed: &str, i: u32) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(seed.as_bytes());
    h.update(i.to_le_bytes());
    h.finalize().into()
}

/// a + b for 32-byte big-endian numbers, `None` past 2²⁵⁶.
fn add_be(a: &[u8], b: &[u8; 32]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let t = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = t as u8;
        carry = t >> 8;
    }
    (carry == 0).then_some(out)
}

fn add_to_scalar_bytes(bytes: &[u8], k: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut carry = u16::from(k);
    for b in out.iter_mut().rev() {
        let t = u16::from(*b) + carry;
        *b = t as u8;
        carry = t >> 8;
    }
    out
}

/// Signatures from RustCrypto's signer, genuine and altered, judged as RustCrypto's verifier
/// (jwt-simple's) judges them.
#[test]
fn agrees_with_rustcrypto_on_genuine_and_altered_signatures() {
    for i in 0..24 {
        let Ok(signer) = p256::ecdsa::SigningKey::from_slice(&stream("key", i)) else {
            continue;
        };
        let verifying = *signer.verifying_key();
        let point = verifying.to_sec1_point(false);
        let (x, y) = (
            point.x().unwrap().as_slice().try_into().unwrap(),
            point.y().unwrap().as_slice().try_into().unwrap(),
        );
        let key = PublicKey::from_coordinates(&x, &y).unwrap();
        let once = OneTimeKey::from_coordinates(&x, &y).unwrap();
        for m in 0..4 {
            let message = stream("message", i * 4 + m);
            let sig: p256::ecdsa::Signature = signer.sign(&message);
            let bytes = sig.to_bytes().to_vec();
            let (r, s) = bytes.split_at(32);
            let n_minus_s = (-*sig.s()).to_bytes().to_vec();
            let mut other_message = message;
            other_message[31] ^= 0x80;
            let cases: Vec<(Vec<u8>, [u8; 32])> = vec![
                (bytes.clone(), message),
                (bytes.clone(), other_message),
                ([r, &n_minus_s].concat(), message),
                ([&add_to_scalar_bytes(r, 1), s].concat(), message),
                ([r, &add_to_scalar_bytes(s, 1)].concat(), message),
                ([s, r].concat(), message),
                ([&[0u8; 32][..], s].concat(), message),
                ([r, &[0u8; 32][..]].concat(), message),
                ([&N[..], s].concat(), message),
                ([r, &N[..]].concat(), message),
                ([&[0xffu8; 32][..], s].concat(), message),
                (bytes[..63].to_vec(), message),
                ([&bytes[..], &[0]].concat(), message),
            ];
            for (case, (sig_bytes, msg)) in cases.iter().enumerate() {
                let expected = p256::ecdsa::Signature::from_slice(sig_bytes)
                    .is_ok_and(|s| verifying.verify(msg, &s).is_ok());
                assert_eq!(
                    key.verify(msg, sig_bytes),
                    expected,
                    "key {i} message {m} case {case}"
                );
                let once_verdict = once.verify(msg, sig_bytes);
                assert_eq!(once_verdict, expected, "one-time key {i} {m} {case}");
                if case == 0 || case == 2 {
                    assert!(expected, "a genuine signature, and its high-s twin, verify");
                }
            }
        }
    }
}

/// A point's coordinate written as itself plus p (the same residue, not an element) is no key.
#[test]
fn coordinates_at_or_above_p_are_refused() {
    // P-256's prime, big-endian; 2²⁵⁶ − p ≈ 2²²⁴, so a point with a small x has an x + p that
    // fits in 32 bytes. y = (x³ − 3x + b)^((p + 1) / 4) when that is a square (p ≡ 3 mod 4).
    let p = hex32("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff");
    let mut exponent = add_be(&p, &{
        let mut one = [0u8; 32];
        one[31] = 1;
        one
    })
    .unwrap_or([0; 32]);
    // (p + 1) / 4: p + 1 does not overflow (p < 2²⁵⁶ − 1); shift right by two.
    let mut carry = 0u8;
    for b in exponent.iter_mut() {
        let next = *b & 3;
        *b = (*b >> 2) | (carry << 6);
        carry = next;
    }
    let pow = |base: &Fe| {
        let mut acc = Fe::ONE;
        for byte in exponent {
            for bit in (0..8).rev() {
                acc = acc.square();
                if (byte >> bit) & 1 == 1 {
                    acc = acc.mul(base);
                }
            }
        }
        acc
    };
    let b = Fe::from_be_bytes(&hex32(
        "5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b",
    ))
    .unwrap();
    let (x, y) = (1u8..)
        .find_map(|small| {
            let mut xb = [0u8; 32];
            xb[31] = small;
            let x = Fe::from_be_bytes(&xb)?;
            let rhs = x.square().mul(&x).sub(&x.double().add(&x)).add(&b);
            let y = pow(&rhs);
            (y.square() == rhs).then_some((xb, y.to_be_bytes()))
        })
        .unwrap();
    assert!(PublicKey::from_coordinates(&x, &y).is_some());
    assert!(OneTimeKey::from_coordinates(&x, &y).is_some());
    let x_plus_p = add_be(&x, &p).unwrap();
    assert!(PublicKey::from_coordinates(&x_plus_p, &y).is_none());
    assert!(OneTimeKey::from_coordinates(&x_plus_p, &y).is_none());
}

#[test]
fn keys_off_the_curve_are_refused() {
    let x = point::GX;
    let mut y = point::GY;
    assert!(PublicKey::from_coordinates(&x, &y).is_some());
    y[0] ^= 1;
    assert!(PublicKey::from_coordinates(&x, &y).is_none());
    assert!(PublicKey::from_coordinates(&[0; 32], &[0; 32]).is_none());
    assert!(OneTimeKey::from_coordinates(&x, &y).is_none());
}

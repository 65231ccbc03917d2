//! The module against curve25519-dalek and ed25519-dalek (an independent implementation of the
//! same arithmetic) and RFC 8032's vectors: the field's laws, the constants, scalar
//! multiplication by the tables, and every verification answer against `verify_strict`,
//! including the edge cases of Chalkias, Garillot and Nikolaenko, "Taming the many EdDSAs"
//! (small-order and mixed-order R and A, non-canonical R and s).

use super::field::{is_canonical, Fe};
use super::point::{mul_sum, naf, Curve, Table};
use super::*;
use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use ed25519_dalek::Verifier as _;

fn hex<const N: usize>(s: &str) -> [u8; N] {
    crate::hex(s).try_into().unwrap()
}

/// Deterministic pseudo-random bytes: SHA-512 of a label and a counter.
fn random(label: &str, i: u64) -> [u8; 64] {
    let mut h = sha2::Sha512::new();
    h.update(label.as_bytes());
    h.update(i.to_le_bytes());
    h.finalize().into()
}

fn random32(label: &str, i: u64) -> [u8; 32] {
    random(label, i)[..32].try_into().unwrap()
}

fn random_scalar(label: &str, i: u64) -> Scalar {
    Scalar::from_bytes_mod_order_wide(&random(label, i))
}

/// p − 1 + j, little-endian, for j up to 19 (non-canonical from j = 1; 2²⁵⁵ − 1 at 19).
fn p_plus(j: i32) -> [u8; 32] {
    let mut bytes = [0xffu8; 32];
    bytes[31] = 0x7f;
    // 2²⁵⁵ − 1 − 19 = p − 1, then + j.
    let low = 0xff - 19 + j;
    bytes[0] = u8::try_from(low).unwrap();
    bytes
}

#[test]
fn field_laws_hold_and_encodings_are_canonical() {
    let curve = Curve::new().unwrap();
    assert!(curve.d2 == curve.d.add(&curve.d));
    for i in 0..200 {
        let (a, b, c) = (
            Fe::from_bytes(&random32("a", i)),
            Fe::from_bytes(&random32("b", i)),
            Fe::from_bytes(&random32("c", i)),
        );
        assert!(a.mul(&b).mul(&c) == a.mul(&b.mul(&c)));
        assert!(a.mul(&b.add(&c)) == a.mul(&b).add(&a.mul(&c)));
        assert!(a.sub(&b).add(&b) == a);
        assert!(a.neg().add(&a).is_zero());
        assert!(a.mul(&a.invert()) == Fe::ONE);
        assert!(a.square() == a.mul(&a));
        // Encoding round-trips, canonical.
        let bytes = a.to_bytes();
        assert!(bytes[31] < 0x80);
        assert_eq!(Fe::from_bytes(&bytes).to_bytes(), bytes);
    }
    // Small products are the integers' own.
    for (x, y) in [
        (0u32, 5u32),
        (1, 1),
        (65_535, 65_537),
        (u32::MAX, u32::MAX),
        (19, 1 << 31),
    ] {
        let mut expected = [0u8; 32];
        expected[..8].copy_from_slice(&(u64::from(x) * u64::from(y)).to_le_bytes());
        assert_eq!(Fe::from_u32(x).mul(&Fe::from_u32(y)).to_bytes(), expected);
    }
    // Values at and around p: p − 1 is canonical; p, p + 1 … 2²⁵⁵ − 1 are not, and reduce.
    assert!(is_canonical(&p_plus(0)));
    assert!(Fe::from_bytes(&p_plus(0)).add(&Fe::ONE).is_zero());
    for j in 1..=19 {
        assert!(!is_canonical(&p_plus(j)), "p - 1 + {j}");
        let mut reduced = [0u8; 32];
        reduced[0] = u8::try_from(j - 1).unwrap();
        assert_eq!(Fe::from_bytes(&p_plus(j)).to_bytes(), reduced);
    }
    // The top bit is not part of the value.
    let mut one_with_sign = [0u8; 32];
    one_with_sign[0] = 1;
    one_with_sign[31] = 0x80;
    assert!(Fe::from_bytes(&one_with_sign) == Fe::ONE);
    assert!(is_canonical(&one_with_sign));
}

#[test]
fn constants_are_rfc_8032s() {
    let curve = Curve::new().unwrap();
    // d and √−1, big-endian as RFC 8032 and the literature print them.
    let be = |fe: &Fe| {
        let mut b = fe.to_bytes();
        b.reverse();
        b
    };
    assert_eq!(
        be(&curve.d),
        hex::<32>("52036cee2b6ffe738cc740797779e89800700a4d4141d8ab75eb4dca135978a3")
    );
    assert_eq!(
        be(&curve.sqrt_m1),
        hex::<32>("2b8324804fc1df0b2b4d00993dfbd7a72f431806ad2fe478c4ee1b274a0ea0b0")
    );
    assert!(curve.sqrt_m1.square() == Fe::ONE.neg());
    assert_eq!(
        curve.base.compress(),
        curve25519_dalek::constants::ED25519_BASEPOINT_COMPRESSED.to_bytes()
    );
}

#[test]
fn decompression_agrees_with_curve25519_dalek() {
    let curve = Curve::new().unwrap();
    let mut points = 0;
    for i in 0..400 {
        let mut bytes = random32("point", i);
        if i % 2 == 0 {
            // Half of them points for sure: a multiple of the base point, or of a torsion point.
            let p = ED25519_BASEPOINT_POINT * random_scalar("k", i)
                + EIGHT_TORSION[usize::try_from(i % 8).unwrap()];
            bytes = p.compress().to_bytes();
        }
        let ours = curve.decompress(&bytes);
        let theirs = CompressedEdwardsY(bytes).decompress();
        assert_eq!(ours.is_some(), theirs.is_some(), "{i}");
        if let (Some(ours), Some(theirs)) = (ours, theirs) {
            points += 1;
            assert_eq!(ours.compress(), theirs.compress().to_bytes());
            assert_eq!(ours.is_small_order(), theirs.is_small_order());
        }
    }
    assert!(points > 250);
    // The eight small-order points are small-order, each other point of a torsion coset not.
    for (i, t) in EIGHT_TORSION.iter().enumerate() {
        let ours = curve.decompress(&t.compress().to_bytes()).unwrap();
        assert!(ours.is_small_order(), "torsion {i}");
        let mixed = ED25519_BASEPOINT_POINT + t;
        assert!(!curve
            .decompress(&mixed.compress().to_bytes())
            .unwrap()
            .is_small_order());
    }
}

#[test]
fn naf_digits_sum_to_the_scalar_and_keep_their_shape() {
    for i in 0..200 {
        let k = if i == 0 {
            -Scalar::ONE
        } else {
            random_scalar("naf", i)
        };
        let digits = naf(&k);
        let mut sum = Scalar::ZERO;
        let mut power = Scalar::ONE;
        let mut last = None;
        for (position, d) in digits.iter().enumerate() {
            if *d != 0 {
                assert!(
                    d % 2 != 0 && d.unsigned_abs() < 1 << (point::WIDTH - 1),
                    "digit {d}"
                );
                if let Some(l) = last {
                    assert!(position - l >= point::WIDTH);
                }
                last = Some(position);
                let m = Scalar::from(u64::from(d.unsigned_abs()));
                sum += if *d < 0 { -(m * power) } else { m * power };
            }
            power += power;
        }
        assert_eq!(sum, k, "{i}");
    }
}

#[test]
fn table_multiplication_agrees_with_curve25519_dalek() {
    let curve = Curve::new().unwrap();
    for i in 0..40 {
        let p = ED25519_BASEPOINT_POINT * random_scalar("P", i)
            + EIGHT_TORSION[usize::try_from(i % 8).unwrap()];
        let q = ED25519_BASEPOINT_POINT * random_scalar("Q", i);
        let (a, b) = (random_scalar("a", i), random_scalar("b", i));
        let ours_p = curve.decompress(&p.compress().to_bytes()).unwrap();
        let ours_q = curve.decompress(&q.compress().to_bytes()).unwrap();
        let (tp, tq) = (Table::new(&ours_p, &curve), Table::new(&ours_q, &curve));
        let (da, db) = (naf(&a), naf(&b));
        let ours = mul_sum(&[(&da, &tp), (&db, &tq)]);
        let theirs: EdwardsPoint = p * a + q * b;
        assert_eq!(ours.compress(), theirs.compress().to_bytes(), "{i}");
        let one = mul_sum(&[(&da, &tp)]);
        assert!(one.equals(&curve.decompress(&(p * a).compress().to_bytes()).unwrap()));
    }
}

/// A key, its secret scalar and encoding, built without ed25519-dalek's signing (so that keys
/// with a torsion component can be made too).
struct TestKey {
    a: Scalar,
    encoded: [u8; 32],
}

impl TestKey {
    fn new(i: u64, torsion: usize) -> TestKey {
        let a = random_scalar("secret", i);
        let point = ED25519_BASEPOINT_POINT * a + EIGHT_TORSION[torsion];
        TestKey {
            a,
            encoded: point.compress().to_bytes(),
        }
    }

    /// (R, s) with R = r·B + T (T of small order, maybe the identity) and s = r + k·a: a valid
    /// signature for T the identity and a key without torsion.
    fn sign(&self, message: &[u8], nonce: u64, r_torsion: usize) -> [u8; 64] {
        let r = random_scalar("nonce", nonce);
        let big_r = (ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[r_torsion])
            .compress()
            .to_bytes();
        let mut h = sha2::Sha512::new();
        h.update(big_r);
        h.update(self.encoded);
        h.update(message);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let s = r + k * self.a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&big_r);
        sig[32..].copy_from_slice(&s.to_bytes());
        sig
    }
}

/// Ours and ed25519-dalek's answer for one key, message and signature, which must agree.
fn both(key: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> bool {
    let theirs = ed25519_dalek::VerifyingKey::from_bytes(key)
        .ok()
        .filter(|k| !k.is_weak());
    let ours = PublicKey::from_bytes(key);
    assert_eq!(ours.is_some(), theirs.is_some(), "key {key:?}");
    let (Some(ours), Some(theirs)) = (ours, theirs) else {
        return false;
    };
    let expected = theirs
        .verify_strict(message, &ed25519_dalek::Signature::from_bytes(sig))
        .is_ok();
    assert_eq!(ours.verify(message, sig), expected, "sig {sig:?}");
    expected
}

#[test]
fn rfc_8032_vectors_verify() {
    // RFC 8032 §7.1, TEST 1 (empty message), TEST 2 (one byte) and TEST 3 (two bytes).
    let vectors = [
        (
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];
    for (key, message, sig) in vectors {
        let message = crate::hex(message);
        let (key, sig) = (hex::<32>(key), hex::<64>(sig));
        assert!(both(&key, &message, &sig));
        let mut other = sig;
        other[10] ^= 4;
        assert!(!both(&key, &message, &other));
    }
}

#[test]
fn verification_agrees_with_ed25519_dalek_verify_strict() {
    let mut valid = 0;
    for i in 0..300 {
        let message = random("message", i)[..usize::try_from(i % 64).unwrap()].to_vec();
        let signing = ed25519_dalek::SigningKey::from_bytes(&random32("seed", i));
        let key = signing.verifying_key().to_bytes();
        let sig = ed25519_dalek::Signer::sign(&signing, &message).to_bytes();
        assert!(both(&key, &message, &sig));
        assert!(signing
            .verifying_key()
            .verify(&message, &sig.into())
            .is_ok());
        valid += 1;
        // One bit of the signature, the message or the key flipped.
        let bit = usize::try_from(i % 512).unwrap();
        let mut flipped = sig;
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(!both(&key, &message, &flipped));
        let mut other = message.clone();
        other.push(0);
        assert!(!both(&key, &other, &sig));
        let mut other_key = key;
        other_key[usize::try_from(i % 32).unwrap()] ^= 2;
        both(&other_key, &message, &sig);
        // s + ℓ: the same equation, a non-canonical s.
        let s = Scalar::from_canonical_bytes(sig[32..].try_into().unwrap()).unwrap();
        let mut s_plus_l = [0u8; 32];
        let l = (-Scalar::ONE).to_bytes(); // ℓ − 1
        let mut carry = 1u16; // + 1, making ℓ
        for j in 0..32 {
            let v = u16::from(s.to_bytes()[j]) + u16::from(l[j]) + carry;
            s_plus_l[j] = v as u8;
            carry = v >> 8;
        }
        let mut malleated = sig;
        malleated[32..].copy_from_slice(&s_plus_l);
        assert!(!both(&key, &message, &malleated));
    }
    assert_eq!(valid, 300);
}

#[test]
fn edge_cases_are_decided_as_verify_strict_decides_them() {
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..64 {
        let (key_torsion, r_torsion) = (
            usize::try_from(i % 8).unwrap(),
            usize::try_from(i / 8).unwrap(),
        );
        let key = TestKey::new(i, key_torsion);
        let message = random("edge", i);
        // Mixed-order A and R: valid without the cofactor only when the torsion parts cancel.
        let sig = key.sign(&message, i, r_torsion);
        if both(&key.encoded, &message, &sig) {
            accepted += 1;
        } else {
            refused += 1;
        }
        // R of small order, with an s from an honest equation for another R.
        let mut small_r = sig;
        small_r[..32].copy_from_slice(&EIGHT_TORSION[r_torsion].compress().to_bytes());
        assert!(!both(&key.encoded, &message, &small_r));
    }
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
    // Small-order keys are no keys, for both.
    for t in EIGHT_TORSION {
        assert!(!both(&t.compress().to_bytes(), b"m", &[0; 64]));
    }
    // Non-canonical R: the identity's y = 1 written as p + 1, and R = (0, −1) as 2p − 1 is not
    // 255 bits; every value p … 2²⁵⁵ − 1 that decodes to a point.
    let key = TestKey::new(1000, 0);
    for j in 1..=19 {
        for sign in [0u8, 0x80] {
            let mut sig = key.sign(b"m", 7, 0);
            let mut r = p_plus(j);
            r[31] |= sign;
            sig[..32].copy_from_slice(&r);
            assert!(!both(&key.encoded, b"m", &sig));
        }
    }
    // A non-canonical key encoding (y ≥ p) that decodes: both hash the bytes as given.
    for j in 1..=19 {
        let encoded = p_plus(j);
        both(&encoded, b"m", &[0; 64]);
    }
}

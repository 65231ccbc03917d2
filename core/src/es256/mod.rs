//! ES256 signature verification (RFC 7518 §3.4: ECDSA over P-256 with SHA-256; the steps of
//! FIPS 186-5 §6.4.2) in arithmetic suited to wasm32, with the work that depends only on the key
//! done once, when the key loads (issue 16).
//!
//! - The field (`field.rs`): 32-bit limbs, whose products are native 64-bit multiplications in
//!   wasm32, reduced with the prime's special form.
//! - The two scalar multiplications of a verification, u₁·G + u₂·Q (`point.rs`): fixed-base
//!   combs, one table for the generator (built when the first P-256 key loads) and one per key
//!   (built when the key loads). A verification is then about 75 mixed additions and no
//!   doubling, where RustCrypto's p256 (which jwt-simple uses) doubles 256 times and adds with
//!   complete, constant-time formulas.
//! - The few operations modulo the group order n (a reduction, an inversion, two products) stay
//!   RustCrypto's `p256::Scalar`.
//! - x(R) is compared with r without an inversion: X = r·Z² (or (r + n)·Z² when r + n < p).
//!
//! The checks are jwt-simple's (RustCrypto's `ecdsa`): a signature is exactly 64 bytes, r and s
//! in [1, n − 1] (a high s is valid, as in RustCrypto and the JOSE libraries), R not infinity.
//! Verification handles only public values, so nothing here runs in constant time.

mod field;
mod point;

use std::sync::OnceLock;

use p256::elliptic_curve::ff::{Field as _, PrimeField as _};
use p256::{FieldBytes, Scalar};
use sha2::Digest as _;

use field::Fe;
use point::{Affine, Jacobian, Table};

/// The group order n, big-endian.
const N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The generator's window: 33 rows of 128 points (264 KiB, once per VM).
const GENERATOR_WINDOW: u32 = 8;
/// A key's window: 43 rows of 32 points (86 KiB a key).
const KEY_WINDOW: u32 = 6;

static GENERATOR: OnceLock<Option<Table>> = OnceLock::new();

/// Builds the generator's table now, when configuration loads, rather than in the first request
/// that verifies a signature (DPoP proofs: `OneTimeKey`). Token keys build it as they load.
pub fn prepare() {
    generator_table();
}

fn generator_table() -> Option<&'static Table> {
    GENERATOR
        .get_or_init(|| Table::new(&Affine::generator()?, GENERATOR_WINDOW))
        .as_ref()
}

/// A P-256 public key with its table.
pub struct PublicKey {
    table: Table,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("es256::PublicKey")
    }
}

impl PublicKey {
    /// The key (x, y), big-endian coordinates; `None` unless the point is on the curve. Builds
    /// the key's table, and the generator's if no key has yet.
    pub fn from_coordinates(x: &[u8; 32], y: &[u8; 32]) -> Option<PublicKey> {
        generator_table()?;
        let q = Affine::new(x, y)?;
        Some(PublicKey {
            table: Table::new(&q, KEY_WINDOW)?,
        })
    }

    /// Whether `signature` (r ‖ s, 64 bytes) is this key's ES256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let digest: [u8; 32] = sha2::Sha256::digest(message).into();
        self.verify_digest(&digest, signature)
    }

    fn verify_digest(&self, digest: &[u8; 32], signature: &[u8]) -> bool {
        verify_digest(digest, signature, |u2, acc| self.table.mul_add(u2, acc))
    }
}

/// A P-256 public key that verifies one signature (a DPoP proof's `jwk`): no table of its own,
/// u₂·Q by doubling and adding (about 256 doublings and 52 additions).
pub struct OneTimeKey {
    point: Affine,
}

impl OneTimeKey {
    /// The key (x, y), big-endian coordinates; `None` unless the point is on the curve.
    pub fn from_coordinates(x: &[u8; 32], y: &[u8; 32]) -> Option<OneTimeKey> {
        Some(OneTimeKey {
            point: Affine::new(x, y)?,
        })
    }

    /// Whether `signature` (r ‖ s, 64 bytes) is this key's ES256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let digest: [u8; 32] = sha2::Sha256::digest(message).into();
        verify_digest(&digest, signature, |u2, acc| {
            Some(point::mul_variable(&self.point, u2)?.add(&acc))
        })
    }
}

/// FIPS 186-5 §6.4.2 from step 2 on, `digest` being the message's SHA-256; `add_u2_q(u₂, acc)`
/// is acc + u₂·Q.
fn verify_digest(
    digest: &[u8; 32],
    signature: &[u8],
    add_u2_q: impl FnOnce(&[u8; 32], Jacobian) -> Option<Jacobian>,
) -> bool {
    let Ok(signature) = <&[u8; 64]>::try_from(signature) else {
        return false;
    };
    let (r_bytes, s_bytes) = signature.split_at(32);
    let (Some(r), Some(s)) = (scalar(r_bytes), scalar(s_bytes)) else {
        return false;
    };
    let Some(w) = Option::<Scalar>::from(s.invert_vartime()) else {
        return false;
    };
    // The digest is as long as n: bits2int takes it whole, then it is reduced mod n.
    let e = <Scalar as p256::elliptic_curve::ops::Reduce<FieldBytes>>::reduce(&FieldBytes::from(
        *digest,
    ));
    let u1: [u8; 32] = (e * w).to_bytes().into();
    let u2: [u8; 32] = (r * w).to_bytes().into();
    let Some(g) = generator_table() else {
        return false;
    };
    let sum = g
        .mul_add(&u1, Jacobian::INFINITY)
        .and_then(|acc| add_u2_q(&u2, acc));
    match sum {
        Some(point) if !point.is_infinity() => x_is(&point, r_bytes),
        _ => false,
    }
}

/// A scalar in [1, n − 1] from 32 big-endian bytes; `None` for 0 or n and above.
fn scalar(bytes: &[u8]) -> Option<Scalar> {
    let bytes = <[u8; 32]>::try_from(bytes).ok()?;
    let s = Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(bytes)))?;
    (!bool::from(s.is_zero())).then_some(s)
}

/// Whether x(point) ≡ r (mod n): x = X/Z² is below p < 2n, so it is r or r + n.
fn x_is(point: &Jacobian, r: &[u8]) -> bool {
    let Ok(r) = <[u8; 32]>::try_from(r) else {
        return false;
    };
    let zz = point.z.square();
    let matches =
        |candidate: [u32; 8]| Fe::from_limbs(candidate).is_some_and(|c| c.mul(&zz) == point.x);
    let r_limbs = field::limbs_from_be(&r);
    if matches(r_limbs) {
        return true;
    }
    // r + n, if it is still below p (from_limbs refuses it otherwise).
    let (r_plus_n, overflow) = field::add_limbs(&r_limbs, &field::limbs_from_be(&N));
    !overflow && matches(r_plus_n)
}

#[cfg(test)]
mod tests;

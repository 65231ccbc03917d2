//! Ed25519 signature verification of tokens (RFC 8032 §5.1.7, the `EdDSA` and `Ed25519` JWS
//! algorithms) in arithmetic suited to wasm32, with the work that depends only on the key done
//! once, when the key loads (issue 16).
//!
//! - The field (`field.rs`): ten limbs of 25½ bits, whose products are native 64-bit
//!   multiplications in wasm32.
//! - The verification equation R = s·B − k·A (`point.rs`): both s·B and k·A from tables of odd
//!   multiples, the base point's built once and each key's when it loads, so that one pass of
//!   31 doublings serves both scalars and each of their eight parts. ed25519-dalek, which this
//!   replaces for token keys, doubles 253 times per verification, builds a table of A each
//!   time, and compresses the result (one inversion) to compare it.
//! - The result is compared with R without an inversion: X = x(R)·Z and Y = y(R)·Z.
//! - The operations modulo the group order ℓ (the reduction of the hash, the range of s) stay
//!   curve25519-dalek's `Scalar`, already built for ed25519-dalek.
//!
//! The checks are `ed25519_dalek::VerifyingKey::verify_strict`'s, which this module is tested
//! against: s below ℓ; R the canonical encoding of a point and not of small order; A not of
//! small order (a weak key is refused when the key loads, `jwks.rs`); and the equation without
//! the cofactor. DPoP proofs, whose key comes in the proof and verifies one signature, keep
//! `verify_strict`. Verification handles only public values: nothing here runs in constant time.

mod field;
mod point;

use std::sync::OnceLock;

use curve25519_dalek::Scalar;
use sha2::Digest as _;

use point::{Curve, Table};

/// The curve's constants and the base point's table (15 KiB, as a key's), built once per VM.
static BASE: OnceLock<Option<(Curve, Table)>> = OnceLock::new();

fn base() -> Option<&'static (Curve, Table)> {
    BASE.get_or_init(|| {
        let curve = Curve::new()?;
        let table = Table::new(&curve.base, &curve);
        Some((curve, table))
    })
    .as_ref()
}

/// An Ed25519 public key with its table.
pub struct PublicKey {
    encoded: [u8; 32],
    table: Table,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ed25519::PublicKey")
    }
}

impl PublicKey {
    /// The key encoded as `bytes` (RFC 8032 §5.1.5); `None` unless they encode a point of the
    /// curve that is not of small order. Builds the key's table, and the base point's if no key
    /// has yet.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<PublicKey> {
        let (curve, _) = base()?;
        let a = curve.decompress(bytes)?;
        if a.is_small_order() {
            return None;
        }
        Some(PublicKey {
            encoded: *bytes,
            table: Table::new(&a, curve),
        })
    }

    /// Whether `signature` (R ‖ s, 64 bytes) is this key's Ed25519 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Some((curve, base_table)) = base() else {
            return false;
        };
        let (r_bytes, s_bytes) = signature.split_at(32);
        let (Ok(r_bytes), Ok(s_bytes)) = (<[u8; 32]>::try_from(r_bytes), s_bytes.try_into()) else {
            return false;
        };
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        // R canonical: y below p (x = 0 with the sign bit set is refused by decompression, and
        // those points are of small order besides).
        if !field::is_canonical(&r_bytes) {
            return false;
        }
        let Some(r) = curve.decompress(&r_bytes) else {
            return false;
        };
        if r.is_small_order() {
            return false;
        }
        let mut hash = sha2::Sha512::new();
        hash.update(r_bytes);
        hash.update(self.encoded);
        hash.update(message);
        let k = Scalar::from_bytes_mod_order_wide(&hash.finalize().into());
        // −k·A as the digits of k negated, not as the digits of ℓ − k: A may have a component
        // of small order (verify_strict allows it), which ℓ − k does not negate.
        let s_digits = point::naf(&s);
        let minus_k_digits = point::naf(&k).map(|d| -d);
        point::mul_sum(&[(&s_digits, base_table), (&minus_k_digits, &self.table)]).equals_affine(&r)
    }
}

#[cfg(test)]
mod tests;

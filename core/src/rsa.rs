//! RSA signature verification, RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.2: RS256, RS384, RS512) and
//! RSASSA-PSS (§8.1.2: PS256, PS384, PS512), in arithmetic suited to wasm32: 32-bit limbs whose
//! products are native 64-bit multiplications (jwt-simple's `rsa` backend multiplies 64-bit
//! digits into emulated 128-bit products), and Montgomery multiplication with the per-key
//! constants (`-n⁻¹ mod 2³²`, `R² mod n`) computed once, when the key loads.
//!
//! Verification handles only public values, so nothing here needs to run in constant time. The
//! checks are the RFC's: the signature is an integer below the modulus; for PKCS #1 v1.5,
//! `s^e mod n` is encoded to `k` bytes and compared whole with the expected `EMSA-PKCS1-v1_5`
//! encoding of the message's digest (nothing of the decrypted block is parsed); for PSS, every
//! step of `EMSA-PSS-VERIFY`, with the salt as long as the hash (RFC 7518 §3.5). Keys are
//! validated by jwt-simple when they load (`jwks.rs`), and again here (2,048 to 4,096 bits, an
//! odd exponent up to 2³²), so that no caller can make one verification arbitrarily slow.

use sha2::Digest;

const MIN_BITS: usize = 2048;
const MAX_BITS: usize = 4096;

/// The digest of an RS* algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// The digest of the concatenation of `parts`.
    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn of<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            Hash::Sha256 => of::<sha2::Sha256>(parts),
            Hash::Sha384 => of::<sha2::Sha384>(parts),
            Hash::Sha512 => of::<sha2::Sha512>(parts),
        }
    }

    /// The DER `DigestInfo` prefix of the digest (RFC 8017 §9.2, note 1).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// A signature scheme: RS256/384/512 (`Pkcs1`) or PS256/384/512 (`Pss`, MGF1 with the same hash
/// and a salt as long as the hash, RFC 7518 §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Pkcs1(Hash),
    Pss(Hash),
}

/// An RSA public key, ready for Montgomery exponentiation.
#[derive(Clone)]
pub struct PublicKey {
    /// The modulus, little-endian 32-bit limbs, no zero limb on top.
    n: Vec<u32>,
    /// Its length in bytes (`k` in RFC 8017).
    k: usize,
    /// The public exponent.
    e: u64,
    /// `-n⁻¹ mod 2³²`.
    n0_inv: u32,
    /// `R² mod n`, with `R = 2^(32·limbs)`: takes a value into Montgomery form.
    r2: Vec<u32>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("rsa::PublicKey")
            .field("bits", &(self.k * 8))
            .field("e", &self.e)
            .finish()
    }
}

impl PublicKey {
    /// From the big-endian modulus and exponent of a JWK (`n`, `e`): a modulus of 2,048 to
    /// 4,096 bits (the cost of a verification grows with its square) and odd, an odd exponent
    /// from 3 to 2³² (jwt-simple, which `jwks.rs` asks first, takes only 65537).
    pub fn from_components(n: &[u8], e: &[u8]) -> Result<PublicKey, &'static str> {
        let key = PublicKey::any_size(n, e)?;
        if !(MIN_BITS..=MAX_BITS).contains(&key.bits()) {
            return Err("the modulus is not of 2048 to 4096 bits");
        }
        if key.e > 1 << 32 || key.e & 1 == 0 {
            return Err("the exponent is even or over 2^32");
        }
        Ok(key)
    }

    /// [`PublicKey::from_components`] without the size and exponent rules (what Montgomery
    /// arithmetic needs: an odd modulus of two words or more, an exponent of 3 or more).
    fn any_size(n: &[u8], e: &[u8]) -> Result<PublicKey, &'static str> {
        let n = limbs(n);
        let low = match n.first() {
            Some(low) if n.len() >= 2 => *low,
            _ => return Err("the modulus is too small"),
        };
        if low & 1 == 0 {
            return Err("the modulus is even");
        }
        let e = e
            .iter()
            .skip_while(|b| **b == 0)
            .try_fold(0u64, |acc, b| {
                acc.checked_mul(256).map(|a| a | u64::from(*b))
            })
            .ok_or("the exponent is longer than 64 bits")?;
        if e < 3 {
            return Err("the exponent is below 3");
        }
        let k = bit_length(&n).div_ceil(8);
        let n0_inv = inverse_mod_2_32(low).wrapping_neg();
        let r2 = r_squared(&n);
        Ok(PublicKey {
            n,
            k,
            e,
            n0_inv,
            r2,
        })
    }

    /// The modulus length in bits.
    pub fn bits(&self) -> usize {
        bit_length(&self.n)
    }

    /// Whether `signature` signs `message` in `scheme`.
    pub fn verify(&self, scheme: Scheme, message: &[u8], signature: &[u8]) -> bool {
        let Some(em) = self.representative(signature) else {
            return false;
        };
        match scheme {
            Scheme::Pkcs1(hash) => self.pkcs1_encoded(hash, message) == Some(em),
            Scheme::Pss(hash) => self.pss_verify(hash, message, &em),
        }
    }

    /// RSAVP1 (§5.2.2) of a signature of exactly the modulus's length (§8.2.2 and §8.1.2 step 1)
    /// below the modulus: `s^e mod n`, `k` bytes.
    fn representative(&self, signature: &[u8]) -> Option<Vec<u8>> {
        if signature.len() != self.k {
            return None;
        }
        let s = limbs_sized(signature, self.n.len());
        if !less_than(&s, &self.n) {
            return None;
        }
        Some(big_endian(&self.pow_e(&s), self.k))
    }

    /// `EMSA-PKCS1-v1_5-ENCODE` (§9.2): `00 01 FF…FF 00 DigestInfo`, `k` bytes. The whole block
    /// is compared; nothing of the signature's is parsed.
    fn pkcs1_encoded(&self, hash: Hash, message: &[u8]) -> Option<Vec<u8>> {
        let prefix = hash.digest_info_prefix();
        let digest = hash.digest(&[message]);
        let t_len = prefix.len() + digest.len();
        // "intended encoded message length too short": at least 8 bytes of padding.
        let ps = self.k.checked_sub(t_len + 3).filter(|ps| *ps >= 8)?;
        let mut em = Vec::with_capacity(self.k);
        em.extend_from_slice(&[0x00, 0x01]);
        em.resize(2 + ps, 0xff);
        em.push(0x00);
        em.extend_from_slice(prefix);
        em.extend_from_slice(&digest);
        Some(em)
    }

    /// `EMSA-PSS-VERIFY` (§9.1.2) with MGF1 of `hash` and a salt of the hash's length. `k_em` is
    /// the representative in `k` bytes; the encoded message is its last `emLen` bytes.
    fn pss_verify(&self, hash: Hash, message: &[u8], k_em: &[u8]) -> bool {
        let em_bits = self.bits() - 1;
        let em_len = em_bits.div_ceil(8);
        // §8.1.2 step 2c: a k-byte representative whose extra top byte is not zero is no EM.
        let Some((extra, em)) = k_em.split_at_checked(k_em.len() - em_len) else {
            return false;
        };
        if extra.iter().any(|b| *b != 0) {
            return false;
        }
        let m_hash = hash.digest(&[message]);
        let h_len = m_hash.len();
        let s_len = h_len;
        // Steps 3 and 4.
        if em_len < h_len + s_len + 2 || em.last() != Some(&0xbc) {
            return false;
        }
        // Step 5.
        let db_len = em_len - h_len - 1;
        let (masked_db, rest) = em.split_at(db_len);
        let Some(h) = rest.get(..h_len) else {
            return false;
        };
        // Step 6: the bits above emBits are zero.
        let top_mask = 0xffu8 >> (8 * em_len - em_bits);
        if masked_db.first().is_some_and(|b| b & !top_mask != 0) {
            return false;
        }
        // Steps 7 to 9.
        let mut db: Vec<u8> = masked_db
            .iter()
            .zip(mgf1(hash, h, db_len))
            .map(|(m, d)| m ^ d)
            .collect();
        if let Some(first) = db.first_mut() {
            *first &= top_mask;
        }
        // Step 10: zeros, 0x01, the salt.
        let ps_len = db_len - s_len - 1;
        let (ps, one_and_salt) = db.split_at(ps_len);
        let Some((&one, salt)) = one_and_salt.split_first() else {
            return false;
        };
        if ps.iter().any(|b| *b != 0) || one != 0x01 {
            return false;
        }
        // Steps 12 to 14.
        hash.digest(&[&[0u8; 8], &m_hash, salt]) == h
    }

    /// `s^e mod n`, left to right, in Montgomery form.
    fn pow_e(&self, s: &[u32]) -> Vec<u32> {
        let len = self.n.len();
        let mut t = vec![0u32; len + 2];
        let base = self.mont_mul(s, &self.r2, &mut t);
        let mut x = base.clone();
        let top = 63 - self.e.leading_zeros();
        for bit in (0..top).rev() {
            x = self.mont_mul(&x, &x, &mut t);
            if (self.e >> bit) & 1 == 1 {
                x = self.mont_mul(&x, &base, &mut t);
            }
        }
        self.mont_mul(&x, &one(len), &mut t)
    }

    /// `a·b·R⁻¹ mod n` for `a, b < n` (CIOS: coarsely integrated operand scanning). `t` is
    /// scratch of `limbs + 2` words. Iterators rather than indices: nothing here can panic.
    fn mont_mul(&self, a: &[u32], b: &[u32], t: &mut [u32]) -> Vec<u32> {
        let n = &self.n;
        t.fill(0);
        let (lo, hi) = t.split_at_mut(n.len());
        let [h0, h1] = hi else {
            return vec![0; n.len()];
        };
        for &bi in b {
            // t += a·b[i]
            let bi = u64::from(bi);
            let mut carry = 0u64;
            for (tj, &aj) in lo.iter_mut().zip(a) {
                let v = u64::from(*tj) + u64::from(aj) * bi + carry;
                *tj = v as u32;
                carry = v >> 32;
            }
            let v = u64::from(*h0) + carry;
            *h0 = v as u32;
            *h1 = (v >> 32) as u32;
            // t = (t + m·n) / 2³², with m making the low word zero.
            let mut words = lo.iter_mut().zip(n);
            let Some((t0, &n0)) = words.next() else {
                break;
            };
            let m = u64::from(t0.wrapping_mul(self.n0_inv));
            let mut carry = (u64::from(*t0) + m * u64::from(n0)) >> 32;
            let mut below = t0;
            for (tj, &nj) in words {
                let v = u64::from(*tj) + m * u64::from(nj) + carry;
                *below = v as u32;
                carry = v >> 32;
                below = tj;
            }
            let v = u64::from(*h0) + carry;
            *below = v as u32;
            *h0 = *h1 + (v >> 32) as u32;
        }
        // t < 2n: one subtraction at most.
        let mut out = lo.to_vec();
        if *h0 != 0 || !less_than(&out, n) {
            sub_in_place(&mut out, n);
        }
        out
    }
}

/// MGF1 (RFC 8017 B.2.1): `len` bytes of `Hash(seed ‖ counter)`.
fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut counter = 0u32;
    while out.len() < len {
        out.extend(hash.digest(&[seed, &counter.to_be_bytes()]));
        counter += 1;
    }
    out.truncate(len);
    out
}

/// The length in bits of little-endian limbs without zero limbs on top.
fn bit_length(x: &[u32]) -> usize {
    let top = x.last().copied().unwrap_or(0);
    32 * x.len() - top.leading_zeros() as usize
}

/// 1 in `len` limbs.
fn one(len: usize) -> Vec<u32> {
    let mut x = vec![0u32; len];
    if let Some(low) = x.first_mut() {
        *low = 1;
    }
    x
}

/// Little-endian limbs of a big-endian byte string, without zero limbs on top.
fn limbs(be: &[u8]) -> Vec<u32> {
    let skip = be.iter().take_while(|b| **b == 0).count();
    let be = be.get(skip..).unwrap_or_default();
    let mut out = limbs_sized(be, be.len().div_ceil(4));
    while out.last() == Some(&0) {
        out.pop();
    }
    out
}

/// Little-endian limbs of a big-endian byte string, `len` limbs (the caller checked it fits, or
/// the excess high bytes are dropped and the comparison with the modulus refuses it).
fn limbs_sized(be: &[u8], len: usize) -> Vec<u32> {
    let mut out = vec![0u32; len.max(1)];
    for (i, b) in be.iter().rev().enumerate() {
        match out.get_mut(i / 4) {
            Some(limb) => *limb |= u32::from(*b) << (8 * (i % 4)),
            // More bytes than limbs: only zeros may be dropped; otherwise saturate, so that the
            // comparison with the modulus refuses it.
            None if *b != 0 => {
                out.fill(u32::MAX);
                return out;
            }
            None => {}
        }
    }
    out
}

/// Big-endian bytes of `x`, `k` bytes (high limbs beyond `k` are zero for `x < n`).
fn big_endian(x: &[u32], k: usize) -> Vec<u8> {
    let mut out = vec![0u8; k];
    for (i, byte) in out.iter_mut().rev().enumerate() {
        let limb = x.get(i / 4).copied().unwrap_or(0);
        *byte = (limb >> (8 * (i % 4))) as u8;
    }
    out
}

/// `a < b`, both of `b`'s length.
fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().zip(b).rev() {
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a -= b` (mod 2^(32·len)).
fn sub_in_place(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0i64;
    for (x, y) in a.iter_mut().zip(b) {
        let v = i64::from(*x) - i64::from(*y) + borrow;
        *x = v as u32;
        borrow = v >> 32;
    }
}

/// `x⁻¹ mod 2³²` for odd `x` (Newton's iteration doubles the correct low bits each step).
fn inverse_mod_2_32(x: u32) -> u32 {
    let mut y = x; // correct to 3 bits for odd x
    for _ in 0..4 {
        y = y.wrapping_mul(2u32.wrapping_sub(x.wrapping_mul(y)));
    }
    y
}

/// `R² mod n`, `R = 2^(32·len)`, by doubling 1 modulo `n`, `2·32·len` times (once per key).
fn r_squared(n: &[u32]) -> Vec<u32> {
    let len = n.len();
    let mut x = one(len);
    for _ in 0..(64 * len) {
        // x = 2x mod n, x < n.
        let mut carry = 0u32;
        for w in x.iter_mut() {
            let next = *w >> 31;
            *w = (*w << 1) | carry;
            carry = next;
        }
        if carry != 0 || !less_than(&x, n) {
            sub_in_place(&mut x, n);
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_mod_2_32_inverts() {
        for x in [1u32, 3, 0xffff_ffff, 0x1234_5679, 65537] {
            assert_eq!(x.wrapping_mul(inverse_mod_2_32(x)), 1, "{x}");
        }
    }

    #[test]
    fn small_modulus_arithmetic_matches_u128() {
        // n = a 61-bit odd modulus in two limbs: s^e mod n checked against u128 arithmetic.
        let n: u64 = 0x1fff_ffff_ffff_ffe7;
        let key = PublicKey::any_size(&n.to_be_bytes(), &[1, 0, 1]).unwrap();
        for s in [2u64, 3, 12345, n - 1, 0x1234_5678_9abc_def0 % n] {
            let mut expected: u128 = 1;
            for _ in 0..65537 {
                expected = expected * u128::from(s) % u128::from(n);
            }
            let got = key.pow_e(&limbs_sized(&s.to_be_bytes(), 2));
            let got = u64::from(got[0]) | u64::from(got[1]) << 32;
            assert_eq!(u128::from(got), expected, "s = {s}");
        }
    }

    #[test]
    fn refuses_what_montgomery_cannot_hold() {
        assert!(PublicKey::any_size(&[0x80, 0, 0, 0, 0, 0, 0, 2], &[1, 0, 1]).is_err());
        assert!(PublicKey::any_size(&[0x80, 0, 0, 0, 0, 0, 0, 3], &[1]).is_err());
        assert!(PublicKey::any_size(&[3], &[3]).is_err());
    }

    #[test]
    fn refuses_keys_outside_the_rules_whoever_calls() {
        let modulus = |bits: usize| {
            let mut n = vec![0xffu8; bits.div_ceil(8)];
            n[0] = 0xff >> (8 * n.len() - bits);
            n
        };
        let f4 = [1, 0, 1];
        assert!(PublicKey::from_components(&modulus(2048), &f4).is_ok());
        assert!(PublicKey::from_components(&modulus(4096), &f4).is_ok());
        assert!(PublicKey::from_components(&modulus(2047), &f4).is_err());
        assert!(PublicKey::from_components(&modulus(4097), &f4).is_err());
        // Leading zero bytes do not make a modulus longer.
        let mut padded = vec![0, 0];
        padded.extend(modulus(2047));
        assert!(PublicKey::from_components(&padded, &f4).is_err());
        assert!(PublicKey::from_components(&modulus(2048), &[1, 0, 0]).is_err());
        assert!(PublicKey::from_components(&modulus(2048), &[1, 0, 0, 0, 1]).is_err());
        assert!(PublicKey::from_components(&modulus(2048), &[3]).is_ok());
    }
}

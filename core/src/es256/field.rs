//! Arithmetic modulo the P-256 prime p = 2²⁵⁶ − 2²²⁴ + 2¹⁹² + 2⁹⁶ − 1, in eight 32-bit limbs:
//! every product of two limbs is one native 64-bit multiplication in wasm32. A product of two
//! elements is reduced with the prime's special form (FIPS 186-4 §D.2.3, "NIST reduction"):
//! sums and differences of its 32-bit words, no division.
//!
//! Every element is kept fully reduced (below p), so equal elements have equal limbs.
//! Verification handles only public values: nothing here runs in constant time.

// Every index below is a constant or a loop counter bounded by the length of a fixed-size array
// (8 or 16 limbs): none can be out of range, and the compiler removes the checks.
#![allow(clippy::indexing_slicing)]

/// An element of the field, limbs least significant first, always below p.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fe([u32; 8]);

/// p, limbs least significant first.
const P: [u32; 8] = [
    0xffff_ffff,
    0xffff_ffff,
    0xffff_ffff,
    0,
    0,
    0,
    1,
    0xffff_ffff,
];

/// One row of a schoolbook product: `wide[k] += x·y[j]` for each pair `j => k`, carried from
/// one to the next, the carry out stored in `wide[top]`. Written out with every index a constant:
/// in loops, wasm32 kept the words of the product in an array in linear memory, and a product
/// cost about a fifth more.
macro_rules! row {
    ($wide:ident, $x:expr, $y:ident: $($j:literal => $k:literal),*; $top:literal) => {{
        let x = $x;
        let mut carry = 0u64;
        $(
            // (2³² − 1)² + 2 (2³² − 1) = 2⁶⁴ − 1: no overflow.
            let t = x * $y[$j] + $wide[$k] + carry;
            $wide[$k] = t & 0xffff_ffff;
            carry = t >> 32;
        )*
        $wide[$top] = carry;
    }};
}

impl Fe {
    pub const ZERO: Fe = Fe([0; 8]);
    pub const ONE: Fe = Fe([1, 0, 0, 0, 0, 0, 0, 0]);

    /// The element whose big-endian encoding is `bytes`; `None` unless it is below p.
    pub fn from_be_bytes(bytes: &[u8; 32]) -> Option<Fe> {
        Fe::from_limbs(limbs_from_be(bytes))
    }

    /// The element with these limbs (least significant first); `None` unless below p.
    pub fn from_limbs(limbs: [u32; 8]) -> Option<Fe> {
        less_than(&limbs, &P).then_some(Fe(limbs))
    }

    /// The element's big-endian encoding.
    #[cfg(test)]
    pub fn to_be_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, limb) in out.chunks_exact_mut(4).zip(self.0.iter().rev()) {
            chunk.copy_from_slice(&limb.to_be_bytes());
        }
        out
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }

    pub fn add(&self, rhs: &Fe) -> Fe {
        let (sum, carry) = add_limbs(&self.0, &rhs.0);
        if carry || !less_than(&sum, &P) {
            Fe(sub_limbs(&sum, &P).0)
        } else {
            Fe(sum)
        }
    }

    pub fn sub(&self, rhs: &Fe) -> Fe {
        let (diff, borrow) = sub_limbs(&self.0, &rhs.0);
        if borrow {
            Fe(add_limbs(&diff, &P).0)
        } else {
            Fe(diff)
        }
    }

    pub fn double(&self) -> Fe {
        self.add(self)
    }

    pub fn neg(&self) -> Fe {
        Fe::ZERO.sub(self)
    }

    /// The schoolbook product, row by row (`row!`), then [`reduce`].
    pub fn mul(&self, rhs: &Fe) -> Fe {
        let (a, b) = (self.0.map(u64::from), rhs.0.map(u64::from));
        let mut wide = [0u64; 16];
        row!(wide, a[0], b: 0 => 0, 1 => 1, 2 => 2, 3 => 3, 4 => 4, 5 => 5, 6 => 6, 7 => 7; 8);
        row!(wide, a[1], b: 0 => 1, 1 => 2, 2 => 3, 3 => 4, 4 => 5, 5 => 6, 6 => 7, 7 => 8; 9);
        row!(wide, a[2], b: 0 => 2, 1 => 3, 2 => 4, 3 => 5, 4 => 6, 5 => 7, 6 => 8, 7 => 9; 10);
        row!(wide, a[3], b: 0 => 3, 1 => 4, 2 => 5, 3 => 6, 4 => 7, 5 => 8, 6 => 9, 7 => 10; 11);
        row!(wide, a[4], b: 0 => 4, 1 => 5, 2 => 6, 3 => 7, 4 => 8, 5 => 9, 6 => 10, 7 => 11; 12);
        row!(wide, a[5], b: 0 => 5, 1 => 6, 2 => 7, 3 => 8, 4 => 9, 5 => 10, 6 => 11, 7 => 12; 13);
        row!(wide, a[6], b: 0 => 6, 1 => 7, 2 => 8, 3 => 9, 4 => 10, 5 => 11, 6 => 12, 7 => 13; 14);
        row!(wide, a[7], b: 0 => 7, 1 => 8, 2 => 9, 3 => 10, 4 => 11, 5 => 12, 6 => 13, 7 => 14; 15);
        reduce(&wide.map(|w| w as u32))
    }

    /// self²: the 28 products a[i]·a[j] with i < j once (`row!`), doubled, plus the 8 squares
    /// a[i]², then [`reduce`].
    // a² < 2⁵¹²: the carry out of the last word, assigned by the last `diagonal!`, is 0.
    #[allow(unused_assignments)]
    pub fn square(&self) -> Fe {
        let a = self.0.map(u64::from);
        let mut wide = [0u64; 16];
        row!(wide, a[0], a: 1 => 1, 2 => 2, 3 => 3, 4 => 4, 5 => 5, 6 => 6, 7 => 7; 8);
        row!(wide, a[1], a: 2 => 3, 3 => 4, 4 => 5, 5 => 6, 6 => 7, 7 => 8; 9);
        row!(wide, a[2], a: 3 => 5, 4 => 6, 5 => 7, 6 => 8, 7 => 9; 10);
        row!(wide, a[3], a: 4 => 7, 5 => 8, 6 => 9, 7 => 10; 11);
        row!(wide, a[4], a: 5 => 9, 6 => 10, 7 => 11; 12);
        row!(wide, a[5], a: 6 => 11, 7 => 12; 13);
        row!(wide, a[6], a: 7 => 13; 14);
        // wide = 2·wide + Σ a[i]²·2^(64·i), carried word by word (each sum is below 3·2³²).
        let mut carry = 0u64;
        macro_rules! diagonal {
            ($i:literal => $low:literal, $high:literal) => {{
                let square = a[$i] * a[$i];
                let t = (wide[$low] << 1) + (square & 0xffff_ffff) + carry;
                wide[$low] = t & 0xffff_ffff;
                let t = (wide[$high] << 1) + (square >> 32) + (t >> 32);
                wide[$high] = t & 0xffff_ffff;
                carry = t >> 32;
            }};
        }
        diagonal!(0 => 0, 1);
        diagonal!(1 => 2, 3);
        diagonal!(2 => 4, 5);
        diagonal!(3 => 6, 7);
        diagonal!(4 => 8, 9);
        diagonal!(5 => 10, 11);
        diagonal!(6 => 12, 13);
        diagonal!(7 => 14, 15);
        reduce(&wide.map(|w| w as u32))
    }

    /// The inverse (Fermat: self^(p − 2)); zero for zero. Used when tables are built, not per
    /// signature.
    pub fn invert(&self) -> Fe {
        // p − 2, limbs least significant first.
        let mut e = P;
        e[0] -= 2;
        let mut acc = Fe::ONE;
        for limb in e.iter().rev() {
            for bit in (0..32).rev() {
                acc = acc.square();
                if (limb >> bit) & 1 == 1 {
                    acc = acc.mul(self);
                }
            }
        }
        acc
    }
}

/// Big-endian bytes as limbs, least significant first (no reduction).
pub fn limbs_from_be(bytes: &[u8; 32]) -> [u32; 8] {
    let mut limbs = [0u32; 8];
    for (limb, chunk) in limbs.iter_mut().rev().zip(bytes.chunks_exact(4)) {
        *limb = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    limbs
}

/// `a < b` for 256-bit numbers.
pub fn less_than(a: &[u32; 8], b: &[u32; 8]) -> bool {
    for i in (0..8).rev() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
    }
    false
}

/// `a + b` and whether it overflowed 2²⁵⁶.
pub fn add_limbs(a: &[u32; 8], b: &[u32; 8]) -> ([u32; 8], bool) {
    let mut out = [0u32; 8];
    let mut carry = 0u64;
    for i in 0..8 {
        let t = u64::from(a[i]) + u64::from(b[i]) + carry;
        out[i] = t as u32;
        carry = t >> 32;
    }
    (out, carry != 0)
}

/// `a − b` (mod 2²⁵⁶) and whether it borrowed.
fn sub_limbs(a: &[u32; 8], b: &[u32; 8]) -> ([u32; 8], bool) {
    let mut out = [0u32; 8];
    let mut borrow = 0i64;
    for i in 0..8 {
        let t = i64::from(a[i]) - i64::from(b[i]) + borrow;
        out[i] = t as u32;
        borrow = t >> 32;
    }
    (out, borrow != 0)
}

/// A 512-bit product (16 words c₀…c₁₅) modulo p: FIPS 186-4 §D.2.3,
/// T + 2S₁ + 2S₂ + S₃ + S₄ − D₁ − D₂ − D₃ − D₄, written out word by word.
fn reduce(c: &[u32; 16]) -> Fe {
    let c: [i64; 16] = c.map(i64::from);
    let words: [i64; 8] = [
        c[0] + c[8] + c[9] - c[11] - c[12] - c[13] - c[14],
        c[1] + c[9] + c[10] - c[12] - c[13] - c[14] - c[15],
        c[2] + c[10] + c[11] - c[13] - c[14] - c[15],
        c[3] + 2 * c[11] + 2 * c[12] + c[13] - c[15] - c[8] - c[9],
        c[4] + 2 * c[12] + 2 * c[13] + c[14] - c[9] - c[10],
        c[5] + 2 * c[13] + 2 * c[14] + c[15] - c[10] - c[11],
        c[6] + 3 * c[14] + 2 * c[15] + c[13] - c[8] - c[9],
        c[7] + 3 * c[15] + c[8] - c[10] - c[11] - c[12] - c[13],
    ];
    let (mut limbs, mut carry) = propagate(words);
    // limbs + carry·2²⁵⁶, with 2²⁵⁶ ≡ 2²²⁴ − 2¹⁹² − 2⁹⁶ + 1 (mod p). Each pass shrinks the
    // carry (|carry| ≤ 7 at first, then at most 1, then 0): a few passes at most.
    while carry != 0 {
        let mut words = limbs.map(i64::from);
        words[0] += carry;
        words[3] -= carry;
        words[6] -= carry;
        words[7] += carry;
        (limbs, carry) = propagate(words);
    }
    // Below 2²⁵⁶ < 2p: one subtraction at most.
    if !less_than(&limbs, &P) {
        limbs = sub_limbs(&limbs, &P).0;
    }
    Fe(limbs)
}

/// Signed 64-bit word sums as 32-bit limbs and the signed carry out of the top one.
fn propagate(words: [i64; 8]) -> ([u32; 8], i64) {
    let mut limbs = [0u32; 8];
    let mut acc = 0i64;
    for i in 0..8 {
        acc += words[i];
        limbs[i] = acc as u32;
        acc >>= 32;
    }
    (limbs, acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a · b mod p` by doubling and adding (only `add`, none of `mul`'s reduction).
    fn mul_by_adding(a: &Fe, b: &Fe) -> Fe {
        let mut acc = Fe::ZERO;
        for limb in b.0.iter().rev() {
            for bit in (0..32).rev() {
                acc = acc.double();
                if (limb >> bit) & 1 == 1 {
                    acc = acc.add(a);
                }
            }
        }
        acc
    }

    fn p_minus(k: u32) -> Fe {
        let mut l = P;
        l[0] -= k;
        Fe(l)
    }

    /// Values whose limbs sit at the edges: all-ones and zero words, p − 1, powers of two.
    fn edge_values() -> Vec<Fe> {
        let mut v = vec![
            Fe::ZERO,
            Fe::ONE,
            Fe([2, 0, 0, 0, 0, 0, 0, 0]),
            p_minus(1),
            p_minus(2),
        ];
        for i in 0..8 {
            let mut l = [0u32; 8];
            l[i] = 0xffff_ffff;
            v.push(Fe(l));
            let mut l = [0u32; 8];
            l[i] = 0x8000_0000;
            v.push(Fe(l));
            let mut l = [0xffff_ffffu32; 8];
            l[7] = 0xffff_fffe;
            l[i] = 0;
            v.push(Fe(l));
        }
        v.push(Fe([
            0xffff_ffff,
            0xffff_ffff,
            0xffff_ffff,
            0,
            0,
            0,
            0,
            0xffff_ffff,
        ]));
        v.push(Fe([
            0,
            0,
            0,
            0xffff_ffff,
            0xffff_ffff,
            0xffff_ffff,
            0,
            0xffff_fffe,
        ]));
        v.retain(|f| less_than(&f.0, &P));
        v
    }

    /// A deterministic stream of field elements (SHA-256 in counter mode).
    fn pseudo_random(count: usize) -> Vec<Fe> {
        use sha2::Digest;
        (0..count)
            .filter_map(|i| {
                let d: [u8; 32] = sha2::Sha256::digest((i as u64).to_le_bytes()).into();
                Fe::from_be_bytes(&d)
            })
            .collect()
    }

    #[test]
    fn products_agree_with_repeated_addition() {
        let mut values = edge_values();
        values.extend(pseudo_random(40));
        for a in &values {
            for b in &values {
                assert_eq!(a.mul(b), mul_by_adding(a, b), "{a:?} · {b:?}");
            }
        }
    }

    #[test]
    fn squares_are_products_with_themselves() {
        let mut values = edge_values();
        values.extend(pseudo_random(200));
        for a in &values {
            assert_eq!(a.square(), a.mul(a), "{a:?}");
        }
    }

    #[test]
    fn sums_differences_and_inverses_are_consistent() {
        let mut values = edge_values();
        values.extend(pseudo_random(200));
        for a in &values {
            for b in values.iter().take(20) {
                assert_eq!(a.add(b).sub(b), *a);
                assert_eq!(a.sub(b).add(b), *a);
            }
            assert_eq!(a.add(&a.neg()), Fe::ZERO);
            if !a.is_zero() {
                assert_eq!(a.mul(&a.invert()), Fe::ONE, "{a:?}");
            }
        }
    }

    #[test]
    fn encodings_at_and_above_p_are_refused() {
        let p = p_minus(0).to_be_bytes();
        assert_eq!(Fe::from_be_bytes(&p), None);
        assert_eq!(Fe::from_be_bytes(&[0xff; 32]), None);
        let below = p_minus(1).to_be_bytes();
        assert_eq!(Fe::from_be_bytes(&below), Some(p_minus(1)));
    }
}

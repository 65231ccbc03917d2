//! Arithmetic modulo p = 2²⁵⁵ − 19 in ten limbs of 26 and 25 bits, alternating (radix 2^25.5):
//! limb i holds the bits from ⌈25.5·i⌉ on. Every product of two limbs is one native 64-bit
//! multiplication in wasm32, and a product of two elements (100 of those) sums in 64 bits
//! without overflow while every limb stays below 2²⁷. Since 2²⁵⁵ ≡ 19, the part of a product
//! above 2²⁵⁵ folds back multiplied by 19.
//!
//! Elements are kept carried (every limb below 2²⁶), not fully reduced: equal elements may
//! have different limbs, so comparisons go through the canonical encoding ([`Fe::to_bytes`]).
//! Verification handles only public values: nothing here runs in constant time.

// Every index below is a loop counter bounded by the length of a fixed-size array (10 limbs,
// 4 words): none can be out of range, and the compiler removes the checks.
#![allow(clippy::indexing_slicing)]

/// Width in bits of limb i.
const fn width(i: usize) -> u32 {
    if i.is_multiple_of(2) {
        26
    } else {
        25
    }
}

/// The bit limb i starts at.
const fn offset(i: usize) -> u32 {
    (51 * (i / 2) + 26 * (i % 2)) as u32
}

/// 4·p in limbs, each above any carried limb: subtracting from it never goes below zero.
const FOUR_P: [u64; 10] = {
    let mut out = [0u64; 10];
    let mut i = 0;
    while i < 10 {
        out[i] = 4 * ((1u64 << width(i)) - 1);
        i += 1;
    }
    out[0] = 4 * ((1u64 << 26) - 19);
    out
};

/// An element of the field, limbs least significant first, each below 2²⁶.
#[derive(Clone, Copy, Debug)]
pub struct Fe([u32; 10]);

impl PartialEq for Fe {
    fn eq(&self, other: &Fe) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl Eq for Fe {}

impl Fe {
    pub const ZERO: Fe = Fe([0; 10]);
    pub const ONE: Fe = Fe([1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

    pub fn from_u32(n: u32) -> Fe {
        carry([u64::from(n), 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    /// The element whose little-endian encoding is `bytes`, the top bit ignored. A value of p
    /// or above (a non-canonical encoding) is taken modulo p; [`is_canonical`] tells them apart.
    pub fn from_bytes(bytes: &[u8; 32]) -> Fe {
        let mut words = le_words(bytes);
        words[3] &= (1 << 63) - 1;
        let mut limbs = [0u32; 10];
        for (i, limb) in limbs.iter_mut().enumerate() {
            let (at, len) = (offset(i) as usize, width(i));
            let (word, shift) = (at / 64, at % 64);
            let mut v = words[word] >> shift;
            if shift > 0 {
                v |= words[word + 1] << (64 - shift);
            }
            *limb = (v & ((1 << len) - 1)) as u32;
        }
        Fe(limbs)
    }

    /// The canonical encoding: the value below p, little-endian, top bit clear.
    pub fn to_bytes(self) -> [u8; 32] {
        // Every limb in range, except limb 1 (limb 0's carry after the top's folded back): the
        // value is now below 2²⁵⁵ + 2⁵², so below 2p.
        let mut h = carry(self.0.map(u64::from)).0.map(u64::from);
        // q = 1 if the value is p or above, i.e. if value + 19 reaches 2²⁵⁵.
        let mut q = (h[0] + 19) >> 26;
        for (i, limb) in h.iter().enumerate().skip(1) {
            q = (limb + q) >> width(i);
        }
        // value − q·p = value + 19q − q·2²⁵⁵: add 19q, carry, drop the bit at 2²⁵⁵.
        h[0] += 19 * q;
        for i in 0..9 {
            h[i + 1] += h[i] >> width(i);
            h[i] &= (1 << width(i)) - 1;
        }
        h[9] &= (1 << 25) - 1;
        let mut words = [0u64; 4];
        for (i, limb) in h.iter().enumerate() {
            let at = offset(i) as usize;
            let (word, shift) = (at / 64, at % 64);
            words[word] |= limb << shift;
            if shift + width(i) as usize > 64 {
                words[word + 1] |= limb >> (64 - shift);
            }
        }
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    pub fn is_zero(&self) -> bool {
        self.to_bytes() == [0; 32]
    }

    /// Whether the canonical value is odd ("negative" in RFC 8032 §5.1.2's sign convention).
    pub fn is_negative(&self) -> bool {
        self.to_bytes()[0] & 1 == 1
    }

    pub fn add(&self, rhs: &Fe) -> Fe {
        carry(std::array::from_fn(|i| {
            u64::from(self.0[i]) + u64::from(rhs.0[i])
        }))
    }

    pub fn sub(&self, rhs: &Fe) -> Fe {
        carry(std::array::from_fn(|i| {
            u64::from(self.0[i]) + FOUR_P[i] - u64::from(rhs.0[i])
        }))
    }

    pub fn neg(&self) -> Fe {
        Fe::ZERO.sub(self)
    }

    pub fn mul(&self, rhs: &Fe) -> Fe {
        let [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9] = self.0.map(u64::from);
        let [g0, g1, g2, g3, g4, g5, g6, g7, g8, g9] = rhs.0.map(u64::from);
        let (f1_2, f3_2, f5_2, f7_2, f9_2) = (2 * f1, 2 * f3, 2 * f5, 2 * f7, 2 * f9);
        let (g1_19, g2_19, g3_19, g4_19, g5_19) = (19 * g1, 19 * g2, 19 * g3, 19 * g4, 19 * g5);
        let (g6_19, g7_19, g8_19, g9_19) = (19 * g6, 19 * g7, 19 * g8, 19 * g9);
        carry([
            f0 * g0
                + f1_2 * g9_19
                + f2 * g8_19
                + f3_2 * g7_19
                + f4 * g6_19
                + f5_2 * g5_19
                + f6 * g4_19
                + f7_2 * g3_19
                + f8 * g2_19
                + f9_2 * g1_19,
            f0 * g1
                + f1 * g0
                + f2 * g9_19
                + f3 * g8_19
                + f4 * g7_19
                + f5 * g6_19
                + f6 * g5_19
                + f7 * g4_19
                + f8 * g3_19
                + f9 * g2_19,
            f0 * g2
                + f1_2 * g1
                + f2 * g0
                + f3_2 * g9_19
                + f4 * g8_19
                + f5_2 * g7_19
                + f6 * g6_19
                + f7_2 * g5_19
                + f8 * g4_19
                + f9_2 * g3_19,
            f0 * g3
                + f1 * g2
                + f2 * g1
                + f3 * g0
                + f4 * g9_19
                + f5 * g8_19
                + f6 * g7_19
                + f7 * g6_19
                + f8 * g5_19
                + f9 * g4_19,
            f0 * g4
                + f1_2 * g3
                + f2 * g2
                + f3_2 * g1
                + f4 * g0
                + f5_2 * g9_19
                + f6 * g8_19
                + f7_2 * g7_19
                + f8 * g6_19
                + f9_2 * g5_19,
            f0 * g5
                + f1 * g4
                + f2 * g3
                + f3 * g2
                + f4 * g1
                + f5 * g0
                + f6 * g9_19
                + f7 * g8_19
                + f8 * g7_19
                + f9 * g6_19,
            f0 * g6
                + f1_2 * g5
                + f2 * g4
                + f3_2 * g3
                + f4 * g2
                + f5_2 * g1
                + f6 * g0
                + f7_2 * g9_19
                + f8 * g8_19
                + f9_2 * g7_19,
            f0 * g7
                + f1 * g6
                + f2 * g5
                + f3 * g4
                + f4 * g3
                + f5 * g2
                + f6 * g1
                + f7 * g0
                + f8 * g9_19
                + f9 * g8_19,
            f0 * g8
                + f1_2 * g7
                + f2 * g6
                + f3_2 * g5
                + f4 * g4
                + f5_2 * g3
                + f6 * g2
                + f7_2 * g1
                + f8 * g0
                + f9_2 * g9_19,
            f0 * g9
                + f1 * g8
                + f2 * g7
                + f3 * g6
                + f4 * g5
                + f5 * g4
                + f6 * g3
                + f7 * g2
                + f8 * g1
                + f9 * g0,
        ])
    }

    /// self², each product of two different limbs computed once (55 products, not 100).
    pub fn square(&self) -> Fe {
        let [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9] = self.0.map(u64::from);
        let f0_2 = 2 * f0;
        let f1_2 = 2 * f1;
        let f2_2 = 2 * f2;
        let f3_2 = 2 * f3;
        let f4_2 = 2 * f4;
        let f5_2 = 2 * f5;
        let f6_2 = 2 * f6;
        let f7_2 = 2 * f7;
        let f8_2 = 2 * f8;
        let f9_2 = 2 * f9;
        let f1_4 = 4 * f1;
        let f3_4 = 4 * f3;
        let f5_4 = 4 * f5;
        let f7_4 = 4 * f7;
        let f5_19 = 19 * f5;
        let f6_19 = 19 * f6;
        let f7_19 = 19 * f7;
        let f8_19 = 19 * f8;
        let f9_19 = 19 * f9;
        carry([
            f0 * f0 + f1_4 * f9_19 + f2_2 * f8_19 + f3_4 * f7_19 + f4_2 * f6_19 + f5_2 * f5_19,
            f0_2 * f1 + f2_2 * f9_19 + f3_2 * f8_19 + f4_2 * f7_19 + f5_2 * f6_19,
            f0_2 * f2 + f1_2 * f1 + f3_4 * f9_19 + f4_2 * f8_19 + f5_4 * f7_19 + f6 * f6_19,
            f0_2 * f3 + f1_2 * f2 + f4_2 * f9_19 + f5_2 * f8_19 + f6_2 * f7_19,
            f0_2 * f4 + f1_4 * f3 + f2 * f2 + f5_4 * f9_19 + f6_2 * f8_19 + f7_2 * f7_19,
            f0_2 * f5 + f1_2 * f4 + f2_2 * f3 + f6_2 * f9_19 + f7_2 * f8_19,
            f0_2 * f6 + f1_4 * f5 + f2_2 * f4 + f3_2 * f3 + f7_4 * f9_19 + f8 * f8_19,
            f0_2 * f7 + f1_2 * f6 + f2_2 * f5 + f3_2 * f4 + f8_2 * f9_19,
            f0_2 * f8 + f1_4 * f7 + f2_2 * f6 + f3_4 * f5 + f4 * f4 + f9_2 * f9_19,
            f0_2 * f9 + f1_2 * f8 + f2_2 * f7 + f3_2 * f6 + f4_2 * f5,
        ])
    }

    /// self^(2^k).
    pub fn pow2k(&self, k: u32) -> Fe {
        let mut x = *self;
        for _ in 0..k {
            x = x.square();
        }
        x
    }

    /// (self^(2²⁵⁰ − 1), self^11): the common start of [`Fe::invert`] and [`Fe::pow_p58`].
    fn pow22501(&self) -> (Fe, Fe) {
        let t2 = self.square();
        let t9 = self.mul(&t2.pow2k(2));
        let t11 = t2.mul(&t9);
        let t5_1 = t9.mul(&t11.square()); // 2⁵ − 1
        let t10_1 = t5_1.pow2k(5).mul(&t5_1);
        let t20_1 = t10_1.pow2k(10).mul(&t10_1);
        let t40_1 = t20_1.pow2k(20).mul(&t20_1);
        let t50_1 = t40_1.pow2k(10).mul(&t10_1);
        let t100_1 = t50_1.pow2k(50).mul(&t50_1);
        let t200_1 = t100_1.pow2k(100).mul(&t100_1);
        let t250_1 = t200_1.pow2k(50).mul(&t50_1);
        (t250_1, t11)
    }

    /// self^(p − 2) = self⁻¹ (and 0 for 0).
    pub fn invert(&self) -> Fe {
        let (t250_1, t11) = self.pow22501();
        // 2²⁵⁵ − 2⁵ + 11 = p − 2.
        t250_1.pow2k(5).mul(&t11)
    }

    /// self^((p − 5)/8) = self^(2²⁵² − 3), for square roots.
    pub fn pow_p58(&self) -> Fe {
        let (t250_1, _) = self.pow22501();
        t250_1.pow2k(2).mul(self)
    }
}

/// 32 little-endian bytes as four 64-bit words, least significant first, and a fifth word of
/// zeros, so that reading bits across a word boundary never runs off the end.
pub fn le_words(bytes: &[u8; 32]) -> [u64; 5] {
    let mut words = [0u64; 5];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *word = u64::from_le_bytes(b);
    }
    words
}

/// Whether `bytes` (the top bit ignored) encode a value below p.
pub fn is_canonical(bytes: &[u8; 32]) -> bool {
    let mut low = *bytes;
    low[31] &= 0x7f;
    Fe::from_bytes(&low).to_bytes() == low
}

/// Carries every limb into the next, the top's back into limb 0 times 19. Each input limb
/// below 2⁶³; every output limb below 2²⁶. (Written out like `mul`, it measured no faster in
/// wasm32.)
fn carry(mut h: [u64; 10]) -> Fe {
    for i in 0..9 {
        h[i + 1] += h[i] >> width(i);
        h[i] &= (1 << width(i)) - 1;
    }
    h[0] += 19 * (h[9] >> 25);
    h[9] &= (1 << 25) - 1;
    h[1] += h[0] >> 26;
    h[0] &= (1 << 26) - 1;
    Fe(h.map(|x| x as u32))
}

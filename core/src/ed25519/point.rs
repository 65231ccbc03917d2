//! Points of edwards25519 (−x² + y² = 1 + d·x²·y² over the field of `field.rs`), their encoding
//! (RFC 8032 §5.1.2–5.1.3) and the tables of a fixed point.
//!
//! Formulas: extended coordinates (x = X/Z, y = Y/Z, x·y = T/Z) from Hisil, Wong, Carter and
//! Dawson, "Twisted Edwards curves revisited" (2008), as the Explicit-Formulas Database has them
//! for a = −1: `add-2008-hwcd-3`, its mixed form with a point given as (y + x, y − x, 2d·x·y),
//! and `dbl-2008-hwcd`. With a = −1 a square and d not one, the addition is complete: no
//! exceptional case, no branch.
//!
//! A table holds, for one point P, the odd multiples 1·Q … 31·Q of each Q = 2^(32·i)·P,
//! i = 0…7, normalized to (y + x, y − x, 2d·x·y): 128 points, 15 KiB. With a scalar's digits in
//! non-adjacent form (odd, |digit| < 32, any two nonzero digits at least six positions apart),
//! k·P is then 31 doublings, shared by every part of the scalar and by every scalar of a sum,
//! and one mixed addition per nonzero digit: a 253-bit scalar has about 36 of them.

// Indices are NAF positions (below 256) and halved digit magnitudes (below MULTIPLES): in range by
// construction.
#![allow(clippy::indexing_slicing)]

use curve25519_dalek::Scalar;

use super::field::{le_words, Fe};

/// Width of the non-adjacent form: odd digits of magnitude below 2^(WIDTH − 1).
pub const WIDTH: usize = 6;
// Digits and the window as `i8` (`naf`): at most 8 bits.
const _: () = assert!(WIDTH >= 2 && WIDTH <= 8);
/// Odd multiples kept per part: 1, 3, …, 2^(WIDTH − 1) − 1.
const MULTIPLES: usize = 1 << (WIDTH - 2);
/// A scalar's 256 digit positions in PARTS parts of SPAN.
const PARTS: usize = 8;
const SPAN: usize = 256 / PARTS;

/// d and 2d of the curve equation, √−1, and the base point: derived once, from their
/// definitions (RFC 8032 §5.1), not copied as constants.
pub struct Curve {
    pub d: Fe,
    pub d2: Fe,
    pub sqrt_m1: Fe,
    pub base: Extended,
}

impl Curve {
    pub fn new() -> Option<Curve> {
        // d = −121665/121666.
        let d = Fe::from_u32(121_665)
            .neg()
            .mul(&Fe::from_u32(121_666).invert());
        // √−1 = 2^((p − 1)/4) = (2^((p − 5)/8))² · 2.
        let two = Fe::from_u32(2);
        let sqrt_m1 = two.pow_p58().square().mul(&two);
        let mut curve = Curve {
            d,
            d2: d.add(&d),
            sqrt_m1,
            base: Extended::IDENTITY,
        };
        // The base point: y = 4/5, x even (positive).
        let y = Fe::from_u32(4).mul(&Fe::from_u32(5).invert());
        curve.base = curve.decompress(&y.to_bytes())?;
        Some(curve)
    }

    /// RFC 8032 §5.1.3: the point `bytes` encode, `None` if there is none. As ed25519-dalek,
    /// a y of p or above is taken modulo p (for keys; a signature's R is checked canonical on
    /// its own), and x = 0 with the sign bit set is refused.
    pub fn decompress(&self, bytes: &[u8; 32]) -> Option<Extended> {
        let y = Fe::from_bytes(bytes);
        let sign = bytes[31] >> 7 == 1;
        let yy = y.square();
        let u = yy.sub(&Fe::ONE);
        let v = self.d.mul(&yy).add(&Fe::ONE);
        // x = u·v³·(u·v⁷)^((p − 5)/8), a square root of u/v if there is one.
        let v3 = v.square().mul(&v);
        let v7 = v3.square().mul(&v);
        let mut x = u.mul(&v3).mul(&u.mul(&v7).pow_p58());
        let vxx = v.mul(&x.square());
        if vxx != u {
            if vxx != u.neg() {
                return None;
            }
            x = x.mul(&self.sqrt_m1);
        }
        if x.is_zero() && sign {
            return None;
        }
        if x.is_negative() != sign {
            x = x.neg();
        }
        Some(Extended {
            x,
            y,
            z: Fe::ONE,
            t: x.mul(&y),
        })
    }
}

/// A point in extended coordinates.
#[derive(Clone, Copy, Debug)]
pub struct Extended {
    x: Fe,
    y: Fe,
    z: Fe,
    t: Fe,
}

/// An affine point as (y + x, y − x, 2d·x·y), the operand of a mixed addition.
#[derive(Clone, Copy, Debug)]
pub struct Niels {
    y_plus_x: Fe,
    y_minus_x: Fe,
    xy2d: Fe,
}

impl Niels {
    const IDENTITY: Niels = Niels {
        y_plus_x: Fe::ONE,
        y_minus_x: Fe::ONE,
        xy2d: Fe::ZERO,
    };
}

impl Extended {
    pub const IDENTITY: Extended = Extended {
        x: Fe::ZERO,
        y: Fe::ONE,
        z: Fe::ONE,
        t: Fe::ZERO,
    };

    /// 2·self (`dbl-2008-hwcd`, a = −1).
    pub fn double(&self) -> Extended {
        let a = self.x.square();
        let b = self.y.square();
        let c = self.z.square();
        let c = c.add(&c);
        let e = self.x.add(&self.y).square().sub(&a).sub(&b);
        let g = b.sub(&a); // a·A + B
        let f = g.sub(&c);
        let h = a.add(&b).neg(); // a·A − B
        Extended {
            x: e.mul(&f),
            y: g.mul(&h),
            z: f.mul(&g),
            t: e.mul(&h),
        }
    }

    /// self + other (`add-2008-hwcd-3`).
    pub fn add(&self, other: &Extended, d2: &Fe) -> Extended {
        let a = self.y.sub(&self.x).mul(&other.y.sub(&other.x));
        let b = self.y.add(&self.x).mul(&other.y.add(&other.x));
        let c = self.t.mul(d2).mul(&other.t);
        let d = self.z.mul(&other.z);
        let d = d.add(&d);
        Extended::finish(a, b, c, d)
    }

    /// self + q, or self − q when `negate`: the mixed form of `add-2008-hwcd-3`.
    fn add_niels(&self, q: &Niels, negate: bool) -> Extended {
        let (q_plus, q_minus) = if negate {
            (&q.y_minus_x, &q.y_plus_x)
        } else {
            (&q.y_plus_x, &q.y_minus_x)
        };
        let a = self.y.sub(&self.x).mul(q_minus);
        let b = self.y.add(&self.x).mul(q_plus);
        let c = self.t.mul(&q.xy2d);
        let c = if negate { c.neg() } else { c };
        let d = self.z.add(&self.z);
        Extended::finish(a, b, c, d)
    }

    fn finish(a: Fe, b: Fe, c: Fe, d: Fe) -> Extended {
        let (e, f, g, h) = (b.sub(&a), d.sub(&c), d.add(&c), b.add(&a));
        Extended {
            x: e.mul(&f),
            y: g.mul(&h),
            z: f.mul(&g),
            t: e.mul(&h),
        }
    }

    /// Whether 8·self is the identity: the point's order divides the cofactor.
    pub fn is_small_order(&self) -> bool {
        self.double().double().double().x.is_zero()
    }

    /// Whether self is the affine point `other` (whose Z is 1), without an inversion.
    pub fn equals_affine(&self, other: &Extended) -> bool {
        self.x == other.x.mul(&self.z) && self.y == other.y.mul(&self.z)
    }

    /// Whether self and other are the same point (tests).
    #[cfg(test)]
    pub fn equals(&self, other: &Extended) -> bool {
        self.x.mul(&other.z) == other.x.mul(&self.z) && self.y.mul(&other.z) == other.y.mul(&self.z)
    }

    /// The encoding (tests: verification compares without one).
    #[cfg(test)]
    pub fn compress(&self) -> [u8; 32] {
        let zi = self.z.invert();
        let (x, y) = (self.x.mul(&zi), self.y.mul(&zi));
        let mut out = y.to_bytes();
        out[31] |= u8::from(x.is_negative()) << 7;
        out
    }
}

/// The odd multiples of a point's parts (see the module's documentation).
pub struct Table(Box<[[Niels; MULTIPLES]; PARTS]>);

impl Table {
    pub fn new(p: &Extended, curve: &Curve) -> Table {
        let mut points = [[Extended::IDENTITY; MULTIPLES]; PARTS];
        let mut part = *p;
        for row in points.iter_mut() {
            let twice = part.double();
            let mut multiple = part;
            for slot in row.iter_mut() {
                *slot = multiple;
                multiple = multiple.add(&twice, &curve.d2);
            }
            for _ in 0..SPAN {
                part = part.double();
            }
        }
        // One inversion for all of them (Montgomery's trick): prefix products of the Zs, the
        // inverse of their product, then each inverse from the back.
        let flat: Vec<&Extended> = points.iter().flatten().collect();
        let mut prefix = Vec::with_capacity(flat.len());
        let mut acc = Fe::ONE;
        for q in &flat {
            prefix.push(acc);
            acc = acc.mul(&q.z);
        }
        let mut inverse = acc.invert();
        let mut rows = Box::new([[Niels::IDENTITY; MULTIPLES]; PARTS]);
        for (i, q) in flat.iter().enumerate().rev() {
            let zi = inverse.mul(&prefix[i]);
            inverse = inverse.mul(&q.z);
            let (x, y) = (q.x.mul(&zi), q.y.mul(&zi));
            rows[i / MULTIPLES][i % MULTIPLES] = Niels {
                y_plus_x: y.add(&x),
                y_minus_x: y.sub(&x),
                xy2d: x.mul(&y).mul(&curve.d2),
            };
        }
        Table(rows)
    }
}

/// Σ digits[i]·P[i] over pairs of a scalar in non-adjacent form ([`naf`]) and a point's table.
pub fn mul_sum(terms: &[(&[i8; 256], &Table)]) -> Extended {
    let mut acc = Extended::IDENTITY;
    for position in (0..SPAN).rev() {
        if position + 1 < SPAN {
            acc = acc.double();
        }
        for (digits, table) in terms {
            for (part, row) in table.0.iter().enumerate() {
                let digit = digits[part * SPAN + position];
                if digit != 0 {
                    let index = usize::from(digit.unsigned_abs() / 2);
                    acc = acc.add_niels(&row[index], digit < 0);
                }
            }
        }
    }
    acc
}

/// The width-[`WIDTH`] non-adjacent form of a scalar (below ℓ < 2²⁵³, as every `Scalar` is):
/// digits d[i], each 0 or odd with |d[i]| < 2^(WIDTH − 1), Σ d[i]·2^i the scalar, and any two
/// nonzero digits at least WIDTH positions apart. (A digit that leaves a carry reads no bit
/// above 252, so the carry lands below position 256.)
pub fn naf(scalar: &Scalar) -> [i8; 256] {
    let words = le_words(scalar.as_bytes());
    let window = 1u64 << WIDTH;
    let mut digits = [0i8; 256];
    let mut position = 0;
    let mut carry = 0u64;
    while position < 256 {
        let (word, shift) = (position / 64, position % 64);
        let mut bits = words[word] >> shift;
        if shift + WIDTH > 64 {
            bits |= words[word + 1] << (64 - shift);
        }
        let value = carry + (bits & (window - 1));
        if value.is_multiple_of(2) {
            position += 1;
            continue;
        }
        if value < window / 2 {
            carry = 0;
            digits[position] = value as i8;
        } else {
            carry = 1;
            digits[position] = (value as i16 - window as i16) as i8;
        }
        position += WIDTH;
    }
    digits
}

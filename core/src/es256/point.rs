//! Points of P-256 (y² = x³ − 3x + b over the field of `field.rs`) and fixed-base tables.
//!
//! A table holds, for one point P and a window of w bits, the multiples j·2^(w·i)·P for
//! j = 1…2^(w−1) and every window i, in affine coordinates. With the scalar written in signed
//! digits of w bits, k·P is then one mixed addition per nonzero digit and no doubling at all
//! (a fixed-base comb). The tables are built once: the generator's when the first P-256 key
//! loads, a key's when that key loads.
//!
//! Formulas: Jacobian coordinates (x = X/Z², y = Y/Z³, Z = 0 the point at infinity), from the
//! Explicit-Formulas Database: `dbl-2001-b` (a = −3), `madd-2007-bl`, `add-2007-bl`. Their
//! exceptional cases (doubling through addition, a point plus its negation) are taken by branch:
//! these are public values, nothing here runs in constant time.

use super::field::Fe;

/// b of the curve equation.
const B: [u8; 32] = [
    0x5a, 0xc6, 0x35, 0xd8, 0xaa, 0x3a, 0x93, 0xe7, 0xb3, 0xeb, 0xbd, 0x55, 0x76, 0x98, 0x86, 0xbc,
    0x65, 0x1d, 0x06, 0xb0, 0xcc, 0x53, 0xb0, 0xf6, 0x3b, 0xce, 0x3c, 0x3e, 0x27, 0xd2, 0x60, 0x4b,
];

/// The generator's coordinates.
pub const GX: [u8; 32] = [
    0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2,
    0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96,
];
pub const GY: [u8; 32] = [
    0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16,
    0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5,
];

/// A point other than infinity, in affine coordinates.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Affine {
    pub x: Fe,
    pub y: Fe,
}

impl Affine {
    /// The point (x, y) if it is on the curve. (P-256 has prime order and cofactor 1: every
    /// point on the curve other than infinity generates the whole group.)
    pub fn new(x: &[u8; 32], y: &[u8; 32]) -> Option<Affine> {
        let (x, y) = (Fe::from_be_bytes(x)?, Fe::from_be_bytes(y)?);
        let b = Fe::from_be_bytes(&B)?;
        let three_x = x.double().add(&x);
        let rhs = x.square().mul(&x).sub(&three_x).add(&b);
        (y.square() == rhs).then_some(Affine { x, y })
    }

    pub fn generator() -> Option<Affine> {
        Affine::new(&GX, &GY)
    }

    fn neg(&self) -> Affine {
        Affine {
            x: self.x,
            y: self.y.neg(),
        }
    }
}

/// A point in Jacobian coordinates; `z == 0` is the point at infinity.
#[derive(Clone, Copy, Debug)]
pub struct Jacobian {
    pub x: Fe,
    pub y: Fe,
    pub z: Fe,
}

impl Jacobian {
    pub const INFINITY: Jacobian = Jacobian {
        x: Fe::ONE,
        y: Fe::ONE,
        z: Fe::ZERO,
    };

    pub fn is_infinity(&self) -> bool {
        self.z.is_zero()
    }

    pub fn from_affine(p: &Affine) -> Jacobian {
        Jacobian {
            x: p.x,
            y: p.y,
            z: Fe::ONE,
        }
    }

    fn neg(&self) -> Jacobian {
        Jacobian {
            x: self.x,
            y: self.y.neg(),
            z: self.z,
        }
    }

    /// 2·self (`dbl-2001-b`, a = −3).
    pub fn double(&self) -> Jacobian {
        if self.is_infinity() || self.y.is_zero() {
            return Jacobian::INFINITY;
        }
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x.mul(&gamma);
        let t = self.x.sub(&delta).mul(&self.x.add(&delta));
        let alpha = t.double().add(&t);
        let beta4 = beta.double().double();
        let x3 = alpha.square().sub(&beta4.double());
        let z3 = self.y.add(&self.z).square().sub(&gamma).sub(&delta);
        let gamma2_8 = gamma.square().double().double().double();
        let y3 = alpha.mul(&beta4.sub(&x3)).sub(&gamma2_8);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// self + q (`madd-2007-bl`).
    pub fn add_affine(&self, q: &Affine) -> Jacobian {
        if self.is_infinity() {
            return Jacobian::from_affine(q);
        }
        let z1z1 = self.z.square();
        let u2 = q.x.mul(&z1z1);
        let s2 = q.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&self.x);
        let r = s2.sub(&self.y).double();
        if h.is_zero() {
            return if r.is_zero() {
                self.double()
            } else {
                Jacobian::INFINITY
            };
        }
        let hh = h.square();
        let i = hh.double().double();
        let j = h.mul(&i);
        let v = self.x.mul(&i);
        let x3 = r.square().sub(&j).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&self.y.mul(&j).double());
        let z3 = self.z.add(&h).square().sub(&z1z1).sub(&hh);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// self + q (`add-2007-bl`).
    pub fn add(&self, q: &Jacobian) -> Jacobian {
        if self.is_infinity() {
            return *q;
        }
        if q.is_infinity() {
            return *self;
        }
        let z1z1 = self.z.square();
        let z2z2 = q.z.square();
        let u1 = self.x.mul(&z2z2);
        let u2 = q.x.mul(&z1z1);
        let s1 = self.y.mul(&q.z).mul(&z2z2);
        let s2 = q.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&u1);
        let r = s2.sub(&s1).double();
        if h.is_zero() {
            return if r.is_zero() {
                self.double()
            } else {
                Jacobian::INFINITY
            };
        }
        let i = h.double().square();
        let j = h.mul(&i);
        let v = u1.mul(&i);
        let x3 = r.square().sub(&j).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&s1.mul(&j).double());
        let z3 = self.z.add(&q.z).square().sub(&z1z1).sub(&z2z2).mul(&h);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// The affine point, `None` for infinity (tests: tables are normalized all at once).
    #[cfg(test)]
    pub fn to_affine(self) -> Option<Affine> {
        if self.is_infinity() {
            return None;
        }
        let zi = self.z.invert();
        let zi2 = zi.square();
        Some(Affine {
            x: self.x.mul(&zi2),
            y: self.y.mul(&zi2).mul(&zi),
        })
    }
}

/// The multiples j·2^(w·i)·P of one point P (see the module's documentation).
pub struct Table {
    window: u32,
    /// Row i holds j·2^(w·i)·P at index j − 1, for j = 1…2^(w−1).
    points: Vec<Affine>,
}

impl Table {
    /// The table of `p` for windows of `window` bits (2 to 8). `None` only if a multiple were
    /// infinity, which cannot happen for a point of prime order n > 2²⁵⁵ (every multiple here is
    /// below 2²⁶⁴ and not divisible by n).
    pub fn new(p: &Affine, window: u32) -> Option<Table> {
        if !(2..=8).contains(&window) {
            return None;
        }
        let half = 1usize << (window - 1);
        let rows = windows(window);
        let mut points = Vec::with_capacity(rows * half);
        // Normalized a batch of rows at a time (one inversion each): the Jacobian points of the
        // whole generator's table would take 400 KiB more of linear memory while it is built.
        let mut jacobian = Vec::with_capacity(NORMALIZED_AT_ONCE.max(half));
        let mut base = Jacobian::from_affine(p);
        for _ in 0..rows {
            let mut multiple = base;
            jacobian.push(multiple);
            for _ in 1..half {
                multiple = multiple.add(&base);
                jacobian.push(multiple);
            }
            // half·base doubled: 2^w·base, the next row's base.
            base = multiple.double();
            if jacobian.len() + half > NORMALIZED_AT_ONCE {
                points.extend(normalize(&jacobian)?);
                jacobian.clear();
            }
        }
        points.extend(normalize(&jacobian)?);
        Some(Table { window, points })
    }

    /// `acc + k·P`, with `k` a 256-bit big-endian integer.
    pub fn mul_add(&self, k: &[u8; 32], mut acc: Jacobian) -> Option<Jacobian> {
        let half = 1usize << (self.window - 1);
        for (row, digit) in signed_digits(k, self.window).into_iter().enumerate() {
            if digit == 0 {
                continue;
            }
            let index = row * half + digit.unsigned_abs() as usize - 1;
            let point = self.points.get(index)?;
            acc = if digit < 0 {
                acc.add_affine(&point.neg())
            } else {
                acc.add_affine(point)
            };
        }
        Some(acc)
    }
}

/// The window of [`mul_variable`]: 52 digits, a table of 16 points.
const VARIABLE_WINDOW: u32 = 5;

/// `k·P` for a point used once (no table of its own kept): the signed digits of `k`, most
/// significant first, each after five doublings (Horner), from the multiples P…16·P.
pub fn mul_variable(p: &Affine, k: &[u8; 32]) -> Option<Jacobian> {
    let half = 1usize << (VARIABLE_WINDOW - 1);
    let base = Jacobian::from_affine(p);
    let mut multiples = Vec::with_capacity(half);
    let mut multiple = base;
    multiples.push(multiple);
    for _ in 1..half {
        multiple = multiple.add(&base);
        multiples.push(multiple);
    }
    let mut acc = Jacobian::INFINITY;
    for digit in signed_digits(k, VARIABLE_WINDOW).into_iter().rev() {
        for _ in 0..VARIABLE_WINDOW {
            acc = acc.double();
        }
        if digit == 0 {
            continue;
        }
        let m = multiples.get(digit.unsigned_abs() as usize - 1)?;
        acc = if digit < 0 {
            acc.add(&m.neg())
        } else {
            acc.add(m)
        };
    }
    Some(acc)
}

/// Jacobian points normalized together while a table is built (96 KiB).
const NORMALIZED_AT_ONCE: usize = 1024;

/// How many signed digits of `window` bits a 256-bit scalar takes: w·rows > 256, so the carry
/// out of the top digit is always absorbed.
fn windows(window: u32) -> usize {
    256 / window as usize + 1
}

/// `k` (256-bit, big-endian) as digits d_i in [−2^(w−1), 2^(w−1)], k = Σ d_i·2^(w·i).
fn signed_digits(k: &[u8; 32], window: u32) -> Vec<i32> {
    let bit = |i: usize| -> i32 {
        match k.get(31usize.wrapping_sub(i / 8)) {
            Some(byte) if i < 256 => i32::from((byte >> (i % 8)) & 1),
            _ => 0,
        }
    };
    let rows = windows(window);
    let (full, half) = (1i32 << window, 1i32 << (window - 1));
    let mut digits = Vec::with_capacity(rows);
    let mut carry = 0;
    for row in 0..rows {
        let start = row * window as usize;
        let mut v = carry;
        for b in 0..window as usize {
            v += bit(start + b) << b;
        }
        if v > half {
            digits.push(v - full);
            carry = 1;
        } else {
            digits.push(v);
            carry = 0;
        }
    }
    digits
}

/// Jacobian points (none at infinity) in affine coordinates, with one inversion for all
/// (Montgomery's trick).
fn normalize(points: &[Jacobian]) -> Option<Vec<Affine>> {
    let mut prefix = Vec::with_capacity(points.len());
    let mut acc = Fe::ONE;
    for p in points {
        if p.is_infinity() {
            return None;
        }
        acc = acc.mul(&p.z);
        prefix.push(acc);
    }
    let mut inv = acc.invert();
    let mut out = vec![
        Affine {
            x: Fe::ZERO,
            y: Fe::ZERO
        };
        points.len()
    ];
    for i in (0..points.len()).rev() {
        let (p, slot) = (points.get(i)?, out.get_mut(i)?);
        // inv = 1 / (z₀·…·zᵢ); 1/zᵢ = inv · (z₀·…·zᵢ₋₁).
        let zi = match i.checked_sub(1) {
            Some(prev) => inv.mul(prefix.get(prev)?),
            None => inv,
        };
        inv = inv.mul(&p.z);
        let zi2 = zi.square();
        *slot = Affine {
            x: p.x.mul(&zi2),
            y: p.y.mul(&zi2).mul(&zi),
        };
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::sec1::ToSec1Point;
    use p256::elliptic_curve::PrimeField;

    /// k·G as RustCrypto's p256 computes it, as affine coordinates (`None` for infinity).
    fn reference(k: &[u8; 32]) -> Option<([u8; 32], [u8; 32])> {
        let s = Option::<p256::Scalar>::from(p256::Scalar::from_repr((*k).into()))?;
        let point = (p256::ProjectivePoint::GENERATOR * s).to_affine();
        let enc = point.to_sec1_point(false);
        Some((
            enc.x()?.as_slice().try_into().ok()?,
            enc.y()?.as_slice().try_into().ok()?,
        ))
    }

    fn coordinates(p: &Jacobian) -> Option<([u8; 32], [u8; 32])> {
        p.to_affine()
            .map(|a| (a.x.to_be_bytes(), a.y.to_be_bytes()))
    }

    fn scalars() -> Vec<[u8; 32]> {
        use sha2::Digest;
        // n − 1, n − 2, small values, powers of two, then pseudo-random ones.
        let n_minus = |k: u8| {
            let mut n = super::super::N;
            n[31] -= k;
            n
        };
        let mut v = vec![n_minus(1), n_minus(2), [0; 32]];
        for small in [1u8, 2, 3, 127, 128, 129, 255] {
            let mut k = [0u8; 32];
            k[31] = small;
            v.push(k);
        }
        for i in 0..32 {
            let mut k = [0u8; 32];
            k[i] = 0x80;
            v.push(k);
            let mut k = [0xffu8; 32];
            k[0] = 0x7f;
            k[i] &= 0x7f;
            v.push(k);
        }
        v.extend((0u32..64).map(|i| -> [u8; 32] { sha2::Sha256::digest(i.to_le_bytes()).into() }));
        v
    }

    #[test]
    fn comb_multiples_agree_with_p256() {
        let g = Affine::generator().unwrap();
        for window in [4, 6, 8] {
            let table = Table::new(&g, window).unwrap();
            for k in scalars() {
                let Some(expected) = reference(&k) else {
                    continue; // k ≥ n: not a scalar
                };
                let got = table.mul_add(&k, Jacobian::INFINITY).unwrap();
                if k == [0; 32] {
                    assert!(got.is_infinity());
                } else {
                    assert_eq!(coordinates(&got), Some(expected), "w={window} k={k:02x?}");
                }
            }
        }
    }

    #[test]
    fn variable_base_multiples_agree_with_p256() {
        let g = Affine::generator().unwrap();
        for k in scalars() {
            let Some(expected) = reference(&k) else {
                continue;
            };
            let got = mul_variable(&g, &k).unwrap();
            if k == [0; 32] {
                assert!(got.is_infinity());
            } else {
                assert_eq!(coordinates(&got), Some(expected), "k={k:02x?}");
            }
        }
    }

    #[test]
    fn exceptional_additions_double_or_cancel() {
        let g = Affine::generator().unwrap();
        let jg = Jacobian::from_affine(&g);
        let two_g = jg.double();
        // G + G through both additions is 2G; G + (−G) is infinity.
        assert_eq!(coordinates(&jg.add_affine(&g)), coordinates(&two_g));
        assert_eq!(coordinates(&jg.add(&jg)), coordinates(&two_g));
        assert!(jg.add_affine(&g.neg()).is_infinity());
        // 2G in non-trivial Z plus its own affine form, and 3G − 3G.
        let two_g_affine = two_g.to_affine().unwrap();
        assert_eq!(
            coordinates(&two_g.add_affine(&two_g_affine)),
            coordinates(&two_g.double())
        );
        let three_g = two_g.add_affine(&g);
        assert!(three_g
            .add_affine(&three_g.to_affine().unwrap().neg())
            .is_infinity());
        let mut k = [0u8; 32];
        k[31] = 3;
        assert_eq!(coordinates(&three_g), reference(&k));
    }

    #[test]
    fn points_off_the_curve_are_refused() {
        let mut y = GY;
        y[31] ^= 1;
        assert!(Affine::new(&GX, &y).is_none());
        assert!(Affine::new(&GX, &GY).is_some());
        assert!(Affine::new(&[0xff; 32], &GY).is_none());
    }

    #[test]
    fn signed_digits_sum_to_the_scalar() {
        for window in 2..=8 {
            for k in scalars() {
                let digits = signed_digits(&k, window);
                let half = 1 << (window - 1);
                assert!(digits.iter().all(|d| d.abs() <= half));
                // Σ d_i 2^(w i) as a big integer, in 16-bit words.
                let mut words = [0i64; 24];
                for (i, d) in digits.iter().enumerate() {
                    let shift = i * window as usize;
                    words[shift / 16] += i64::from(*d) << (shift % 16);
                }
                let mut carry = 0i64;
                let mut bytes = Vec::new();
                for w in words {
                    let t = w + carry;
                    bytes.push((t & 0xffff) as u16);
                    carry = t >> 16;
                }
                assert_eq!(carry, 0);
                let expected: Vec<u16> = k
                    .rchunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .chain(std::iter::repeat(0))
                    .take(24)
                    .collect();
                assert_eq!(bytes, expected, "w={window}");
            }
        }
    }
}

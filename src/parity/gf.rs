//! Arithmetic in GF(2^8) with the RAID-6 polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d) and
//! generator {02}, the field Linux md's raid6 and ISA-L use.
//!
//! Every table here is computed at compile time (`const fn`), so nothing is built at run time
//! and the kernels never allocate.

/// The field polynomial, x^8 + x^4 + x^3 + x^2 + 1.
pub const POLY: u16 = 0x11d;

/// The low byte of [`POLY`]: what multiplying by {02} XORs in when the top bit falls off.
pub const POLY_LOW: u8 = 0x1d;

/// The multiplicative order of the generator {02}: g^i for i in 0..255 are all distinct.
pub const ORDER: usize = 255;

/// Bitwise ("Russian peasant") multiplication: slow, obviously correct, usable in `const`.
pub const fn mul_slow(a: u8, b: u8) -> u8 {
    let mut a = a as u16;
    let mut b = b;
    let mut r: u16 = 0;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        a <<= 1;
        if a & 0x100 != 0 {
            a ^= POLY;
        }
        b >>= 1;
    }
    r as u8
}

const fn build_exp() -> [u8; 2 * ORDER] {
    let mut t = [0u8; 2 * ORDER];
    let mut x: u8 = 1;
    let mut i = 0;
    while i < 2 * ORDER {
        t[i] = x;
        x = mul_slow(x, 2);
        i += 1;
    }
    t
}

const fn build_log() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut x: u8 = 1;
    let mut i = 0;
    while i < ORDER {
        t[x as usize] = i as u8;
        x = mul_slow(x, 2);
        i += 1;
    }
    t
}

/// `EXP[i]` = g^i for i in 0..510 (doubled so a sum of two logs needs no reduction).
pub static EXP: [u8; 2 * ORDER] = build_exp();
/// `LOG[a]` = i with g^i = a, for a != 0 (`LOG[0]` is meaningless and set to 0).
pub static LOG: [u8; 256] = build_log();

/// a * b in GF(2^8).
#[inline]
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        0
    } else {
        EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
    }
}

/// The multiplicative inverse of `a`. Panics if `a` is 0.
#[inline]
pub fn inv(a: u8) -> u8 {
    assert!(a != 0, "GF(2^8): 0 has no inverse");
    EXP[(ORDER - LOG[a as usize] as usize) % ORDER]
}

/// g^i = {02}^i, for any i (taken modulo the generator's order, 255).
#[inline]
pub fn exp2(i: usize) -> u8 {
    EXP[i % ORDER]
}

/// Nibble tables for multiplying by one constant c: c * v = `lo[v & 15] ^ hi[v >> 4]`.
///
/// This is the layout PSHUFB wants (16-entry byte lookups), the technique of ISA-L's
/// gf_vect_mul and md's raid6 AVX2 recovery. 32-byte aligned so a kernel can load it whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct MulTable {
    /// c * n for n in 0..16.
    pub lo: [u8; 16],
    /// c * (n << 4) for n in 0..16.
    pub hi: [u8; 16],
}

impl MulTable {
    /// Tables for multiplying by `c`.
    pub const fn new(c: u8) -> MulTable {
        let mut lo = [0u8; 16];
        let mut hi = [0u8; 16];
        let mut n = 0;
        while n < 16 {
            lo[n] = mul_slow(c, n as u8);
            hi[n] = mul_slow(c, (n as u8) << 4);
            n += 1;
        }
        MulTable { lo, hi }
    }

    /// c * v, one byte at a time (the scalar kernels' multiply).
    #[inline(always)]
    pub fn mul(&self, v: u8) -> u8 {
        self.lo[(v & 15) as usize] ^ self.hi[(v >> 4) as usize]
    }
}

const fn build_mul_tables() -> [MulTable; 256] {
    let mut t = [MulTable {
        lo: [0; 16],
        hi: [0; 16],
    }; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = MulTable::new(c as u8);
        c += 1;
    }
    t
}

/// `MUL_TABLES[c]` multiplies by c (8 KiB, built at compile time), so no kernel computes
/// tables at run time.
pub static MUL_TABLES: [MulTable; 256] = build_mul_tables();

/// Tables multiplying by `c`.
#[inline]
pub fn mul_table(c: u8) -> &'static MulTable {
    &MUL_TABLES[c as usize]
}

/// Tables multiplying by g^i, for any i (modulo 255): the Q coefficient of data block i.
#[inline]
pub fn pow_table(i: usize) -> &'static MulTable {
    mul_table(exp2(i))
}

/// Tables multiplying by g^-i, for any i (modulo 255): used to recover a block from Q.
#[inline]
pub fn inv_pow_table(i: usize) -> &'static MulTable {
    mul_table(exp2(ORDER - i % ORDER))
}

/// Multiplication by `c` as the 8x8 bit matrix GF2P8AFFINEQB takes (GFNI): multiplying by
/// a constant is linear over GF(2) in any field representation, so one instruction does it
/// for this field's polynomial too (GF2P8MULB is fixed to AES's 0x11b).
///
/// Byte 7 - i of the matrix is the row of output bit i: bit j of it is set when input bit j
/// contributes to output bit i, that is when bit i of c * 2^j is set.
pub const fn affine_matrix(c: u8) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < 8 {
        let mut row = 0u64;
        let mut j = 0;
        while j < 8 {
            if (mul_slow(c, 1 << j) >> i) & 1 == 1 {
                row |= 1 << j;
            }
            j += 1;
        }
        m |= row << (8 * (7 - i));
        i += 1;
    }
    m
}

const fn build_affine() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = affine_matrix(c as u8);
        c += 1;
    }
    t
}

/// `AFFINE[c]` multiplies by c with GF2P8AFFINEQB (2 KiB, built at compile time).
pub static AFFINE: [u64; 256] = build_affine();

/// The affine matrix multiplying by g^i (modulo 255).
#[inline]
pub fn pow_affine(i: usize) -> u64 {
    AFFINE[exp2(i) as usize]
}

/// The affine matrix multiplying by g^-i (modulo 255).
#[inline]
pub fn inv_pow_affine(i: usize) -> u64 {
    AFFINE[exp2(ORDER - i % ORDER) as usize]
}

/// The affine model of GF2P8AFFINEQB on one byte (no constant term): output bit i is the
/// parity of `x` and byte 7 - i of `m`. The unit tests check [`AFFINE`] against [`mul`]
/// with it; the kernel tests check the instruction itself.
pub const fn affine_apply(m: u64, x: u8) -> u8 {
    let mut out = 0u8;
    let mut i = 0;
    while i < 8 {
        let row = (m >> (8 * (7 - i))) as u8;
        if (row & x).count_ones() % 2 == 1 {
            out |= 1 << i;
        }
        i += 1;
    }
    out
}

/// The two coefficients that rebuild data blocks x and y (x != y) from
/// Pxy = P ^ P' = Dx ^ Dy and Qxy = Q ^ Q' = g^x Dx ^ g^y Dy, where P' and Q' are the parities
/// of the surviving data blocks alone:
///
/// Dx = a * Pxy ^ b * Qxy with b = (g^x ^ g^y)^-1 and a = g^y * b; then Dy = Pxy ^ Dx.
pub fn two_data_coefficients(x: usize, y: usize) -> (u8, u8) {
    let gx = exp2(x);
    let gy = exp2(y);
    assert!(
        gx != gy,
        "two_data_coefficients: x and y must differ modulo 255"
    );
    let b = inv(gx ^ gy);
    let a = mul(gy, b);
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_matrices_multiply_by_their_constant() {
        for c in 0..=255u8 {
            for x in 0..=255u8 {
                assert_eq!(affine_apply(AFFINE[c as usize], x), mul(c, x), "{c} * {x}");
            }
        }
        assert_eq!(AFFINE[1], 0x0102_0408_1020_4080, "the identity");
    }

    #[test]
    fn mul_matches_bitwise_for_every_pair() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), mul_slow(a, b), "{a} * {b}");
            }
        }
    }

    #[test]
    fn generator_has_order_255_and_logs_invert_exps() {
        let mut seen = [false; 256];
        for i in 0..ORDER {
            let g = exp2(i);
            assert!(!seen[g as usize], "g^{i} repeats");
            seen[g as usize] = true;
            assert_eq!(LOG[g as usize] as usize, i);
        }
        assert!(!seen[0]);
        assert_eq!(exp2(255), 1);
        // Spot values of the 0x11d field: 2^8 = 0x1d, 2^25 = 3 per md's tables, 2^-1 = 0x8e.
        assert_eq!(exp2(8), 0x1d);
        assert_eq!(exp2(25), 0x03);
        assert_eq!(inv(2), 0x8e);
    }

    #[test]
    fn inverses() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "inv({a})");
        }
    }

    #[test]
    fn nibble_tables_multiply() {
        for c in 0..=255u8 {
            let t = MulTable::new(c);
            for v in 0..=255u8 {
                assert_eq!(t.mul(v), mul_slow(c, v));
            }
        }
        for c in 0..=255u8 {
            assert_eq!(*mul_table(c), MulTable::new(c));
        }
        for i in 0..600 {
            assert_eq!(*pow_table(i), MulTable::new(exp2(i)));
            assert_eq!(
                mul(pow_table(i).mul(0x5a), inv_pow_table(i).mul(1)),
                mul(0x5a, 1)
            );
        }
    }

    #[test]
    fn two_data_coefficients_solve_the_system() {
        for x in 0..40 {
            for y in 0..40 {
                if x == y {
                    continue;
                }
                let (a, b) = two_data_coefficients(x, y);
                for (dx, dy) in [(1u8, 0u8), (0, 1), (0x37, 0xc4), (0xff, 0xff)] {
                    let pxy = dx ^ dy;
                    let qxy = mul(exp2(x), dx) ^ mul(exp2(y), dy);
                    let rx = mul(a, pxy) ^ mul(b, qxy);
                    assert_eq!(rx, dx);
                    assert_eq!(pxy ^ rx, dy);
                }
            }
        }
    }
}

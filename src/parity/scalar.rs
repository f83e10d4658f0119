//! Portable kernels: the fallback on CPUs without AVX2 and the reference the tests compare
//! the SIMD kernels against.
//!
//! XOR and multiply-by-{02} work on 64-bit words (eight bytes at once, as md's raid6 int64
//! code does); multiplication by other constants goes byte by byte through nibble tables.
//! Blocks are walked in 64-byte chunks so that each chunk of every block is read once.
//!
//! Callers (the checked wrappers in `super`) guarantee: every block read has at least
//! `len` bytes, `len` is the length of the first output and a multiple of 64, and indices
//! are in range and distinct. Blocks at "missing" indices are never touched.

use super::gf::{self, MulTable};
use super::Update;

const CHUNK: usize = 64;
const WORDS: usize = CHUNK / 8;

type Chunk = [u64; WORDS];

#[inline(always)]
fn load(b: &[u8], off: usize) -> Chunk {
    let mut c = [0u64; WORDS];
    for (w, bytes) in c.iter_mut().zip(b[off..off + CHUNK].chunks_exact(8)) {
        *w = u64::from_ne_bytes(bytes.try_into().unwrap());
    }
    c
}

#[inline(always)]
fn store(b: &mut [u8], off: usize, c: &Chunk) {
    for (w, bytes) in c.iter().zip(b[off..off + CHUNK].chunks_exact_mut(8)) {
        bytes.copy_from_slice(&w.to_ne_bytes());
    }
}

#[inline(always)]
fn xor_into(acc: &mut Chunk, c: &Chunk) {
    for (a, v) in acc.iter_mut().zip(c) {
        *a ^= v;
    }
}

/// Multiply each byte of a word by {02}: shift left, and XOR 0x1d into every byte whose top
/// bit fell off.
#[inline(always)]
fn mul2_word(v: u64) -> u64 {
    const HI: u64 = 0x8080_8080_8080_8080;
    let hi = v & HI;
    ((v & !HI) << 1) ^ ((hi >> 7) * gf::POLY_LOW as u64)
}

#[inline(always)]
fn mul2(c: &mut Chunk) {
    for w in c.iter_mut() {
        *w = mul2_word(*w);
    }
}

#[inline(always)]
fn mul_const(t: &MulTable, c: &Chunk) -> Chunk {
    let mut r = [0u64; WORDS];
    for (o, w) in r.iter_mut().zip(c) {
        let mut b = w.to_ne_bytes();
        for x in b.iter_mut() {
            *x = t.mul(*x);
        }
        *o = u64::from_ne_bytes(b);
    }
    r
}

/// Horner step over data blocks `hi - 1` down to `lo`: q = q * {02} ^ D_i (and p ^= D_i).
#[inline(always)]
fn horner(
    data: &[&[u8]],
    lo: usize,
    hi: usize,
    off: usize,
    q: &mut Chunk,
    p: &mut Chunk,
    with_p: bool,
) {
    for i in (lo..hi).rev() {
        let d = load(data[i], off);
        mul2(q);
        xor_into(q, &d);
        if with_p {
            xor_into(p, &d);
        }
    }
}

/// P = XOR of all data blocks.
pub fn xor_gen(data: &[&[u8]], p: &mut [u8]) {
    let len = p.len();
    for off in (0..len).step_by(CHUNK) {
        let mut acc = load(data[0], off);
        for d in &data[1..] {
            xor_into(&mut acc, &load(d, off));
        }
        store(p, off, &acc);
    }
}

/// Q = sum g^i D_i (and P when given), by Horner's rule from the highest index down.
pub fn pq_gen(data: &[&[u8]], mut p: Option<&mut [u8]>, q: &mut [u8]) {
    let len = q.len();
    let k = data.len();
    for off in (0..len).step_by(CHUNK) {
        let mut qa = load(data[k - 1], off);
        let mut pa = qa;
        horner(data, 0, k - 1, off, &mut qa, &mut pa, p.is_some());
        if let Some(p) = p.as_deref_mut() {
            store(p, off, &pa);
        }
        store(q, off, &qa);
    }
}

/// P ^= sum (old ^ new), Q ^= sum g^index (old ^ new), for whichever of P and Q is given.
pub fn update(updates: &[Update<'_>], mut p: Option<&mut [u8]>, mut q: Option<&mut [u8]>) {
    let len = match (&p, &q) {
        (Some(p), _) => p.len(),
        (None, Some(q)) => q.len(),
        (None, None) => return,
    };
    for off in (0..len).step_by(CHUNK) {
        let mut pa = [0u64; WORDS];
        let mut qa = [0u64; WORDS];
        for u in updates {
            let mut d = load(u.old, off);
            xor_into(&mut d, &load(u.new, off));
            xor_into(&mut pa, &d);
            if q.is_some() {
                xor_into(&mut qa, &mul_const(gf::pow_table(u.index), &d));
            }
        }
        if let Some(p) = p.as_deref_mut() {
            let mut v = load(p, off);
            xor_into(&mut v, &pa);
            store(p, off, &v);
        }
        if let Some(q) = q.as_deref_mut() {
            let mut v = load(q, off);
            xor_into(&mut v, &qa);
            store(q, off, &v);
        }
    }
}

/// Dx = P ^ (XOR of the other data blocks); with `q_out`, also Q regenerated.
pub fn recover_from_p(
    data: &[&[u8]],
    x: usize,
    p: &[u8],
    dx: &mut [u8],
    mut q_out: Option<&mut [u8]>,
) {
    let len = dx.len();
    let k = data.len();
    let with_q = q_out.is_some();
    for off in (0..len).step_by(CHUNK) {
        let mut qa = [0u64; WORDS];
        let mut pa = load(p, off);
        if with_q {
            horner(data, x + 1, k, off, &mut qa, &mut pa, true);
            mul2(&mut qa);
            horner(data, 0, x, off, &mut qa, &mut pa, true);
        } else {
            for (i, d) in data.iter().enumerate() {
                if i != x {
                    xor_into(&mut pa, &load(d, off));
                }
            }
        }
        store(dx, off, &pa);
        if let Some(q) = q_out.as_deref_mut() {
            xor_into(&mut qa, &mul_const(gf::pow_table(x), &pa));
            store(q, off, &qa);
        }
    }
}

/// Dx = g^-x (Q ^ Q') where Q' is the Q of the other data blocks; with `p_out`, also P.
pub fn recover_from_q(
    data: &[&[u8]],
    x: usize,
    q: &[u8],
    dx: &mut [u8],
    mut p_out: Option<&mut [u8]>,
) {
    let len = dx.len();
    let k = data.len();
    let inv = gf::inv_pow_table(x);
    for off in (0..len).step_by(CHUNK) {
        let mut qa = [0u64; WORDS];
        let mut pa = [0u64; WORDS];
        let with_p = p_out.is_some();
        horner(data, x + 1, k, off, &mut qa, &mut pa, with_p);
        mul2(&mut qa);
        horner(data, 0, x, off, &mut qa, &mut pa, with_p);
        xor_into(&mut qa, &load(q, off));
        let d = mul_const(inv, &qa);
        store(dx, off, &d);
        if let Some(p) = p_out.as_deref_mut() {
            xor_into(&mut pa, &d);
            store(p, off, &pa);
        }
    }
}

/// Data blocks x < y from P and Q; see [`gf::two_data_coefficients`].
#[allow(clippy::too_many_arguments)]
pub fn recover_two(
    data: &[&[u8]],
    x: usize,
    y: usize,
    p: &[u8],
    q: &[u8],
    dx: &mut [u8],
    dy: &mut [u8],
) {
    let len = dx.len();
    let k = data.len();
    let (a, b) = gf::two_data_coefficients(x, y);
    let (ta, tb) = (gf::mul_table(a), gf::mul_table(b));
    for off in (0..len).step_by(CHUNK) {
        let mut qa = [0u64; WORDS];
        let mut pa = [0u64; WORDS];
        horner(data, y + 1, k, off, &mut qa, &mut pa, true);
        mul2(&mut qa);
        horner(data, x + 1, y, off, &mut qa, &mut pa, true);
        mul2(&mut qa);
        horner(data, 0, x, off, &mut qa, &mut pa, true);
        xor_into(&mut pa, &load(p, off));
        xor_into(&mut qa, &load(q, off));
        let mut rx = mul_const(ta, &pa);
        xor_into(&mut rx, &mul_const(tb, &qa));
        store(dx, off, &rx);
        xor_into(&mut pa, &rx);
        store(dy, off, &pa);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mul2_word_matches_field() {
        for v in 0..=255u8 {
            let w = u64::from_ne_bytes([v, v ^ 0x80, 0, 0xff, 1, v.wrapping_mul(7), 0x80, 0x7f]);
            let r = mul2_word(w).to_ne_bytes();
            for (i, b) in w.to_ne_bytes().iter().enumerate() {
                assert_eq!(r[i], gf::mul(*b, 2));
            }
        }
    }

    #[test]
    fn q_of_known_blocks() {
        // D0 = 1, D1 = 1, D2 = 1: P = 1, Q = 1 ^ 2 ^ 4 = 7.
        let d = [1u8; 64];
        let data: Vec<&[u8]> = vec![&d, &d, &d];
        let (mut p, mut q) = ([0u8; 64], [0u8; 64]);
        pq_gen(&data, Some(&mut p), &mut q);
        assert!(p.iter().all(|&b| b == 1));
        assert!(q.iter().all(|&b| b == 7));
    }
}

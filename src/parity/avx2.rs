//! AVX2 kernels (x86-64, 256-bit registers).
//!
//! * XOR: eight 32-byte accumulators (256 bytes per pass over the blocks), so each block's
//!   pointer is fetched once per 256 bytes and the loads (folded into VPXOR) run back to back;
//!   four (128 bytes) with non-temporal stores.
//! * Q: Horner's rule from the highest data index down,
//!   Q = (..((D_{k-1} * 2) ^ D_{k-2}) * 2 ..) ^ D_0, with multiply-by-{02} as "add each byte
//!   to itself, XOR 0x1d into the bytes whose top bit was set" (VPADDB, VPBLENDVB, VPXOR):
//!   md's raid6 AVX2 gen_syndrome technique. Four accumulators each for P and Q (128 bytes
//!   per pass), which keeps four independent dependency chains in flight.
//! * Multiplication by any other constant: two 16-entry PSHUFB lookups on the low and high
//!   nibbles (the technique of ISA-L's gf_vect_mul), tables from [`gf::MUL_TABLES`].
//! * Recovery is fused into one pass: the surviving blocks' P' and Q' are accumulated in
//!   registers, combined with the stored P and Q and solved for the lost blocks before
//!   anything is written, so every input is read once and every output written once.
//! * Big stripes stream with prefetch or non-temporal stores (see [`super::stream`]).
//!
//! Loads and stores are unaligned (VMOVDQU), which costs nothing on aligned addresses, so
//! any alignment is correct; 64-byte aligned blocks avoid cache-line-split accesses.
//! Lengths are multiples of 64: 128-byte passes, then at most one 64-byte pass.
//!
//! Every `pub unsafe fn` here has the same contract, checked by the safe wrappers in
//! `super`: the CPU supports AVX2, every block that is read has at least `len` bytes (the
//! length of the first output), `len` is a multiple of 64, indices are in range and
//! distinct, and blocks at missing indices are never read.

// The kernels index several register arrays by the same vector number `u`.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

use super::gf::{self, MulTable};
use super::stream::{at, prefetch, stream, with_stream, Stream};
use super::Update;

/// Bytes per 256-bit vector.
const V: usize = 32;

// ---- small helpers, inlined into the #[target_feature(enable = "avx2")] kernels ----

/// # Safety
/// `p..p + 32` is readable; AVX2 is available.
#[inline(always)]
unsafe fn ld(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// # Safety
/// `p..p + 32` is writable; AVX2 is available.
#[inline(always)]
unsafe fn st(p: *mut u8, v: __m256i) {
    // SAFETY: the caller guarantees 32 writable bytes; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(p as *mut __m256i, v) }
}

/// # Safety
/// AVX2 is available.
#[inline(always)]
unsafe fn xor(a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: register-only; the caller guarantees AVX2.
    unsafe { _mm256_xor_si256(a, b) }
}

/// Store, non-temporally (around the caches) when `NT`.
///
/// # Safety
/// `p..p + 32` is writable and, when `NT`, 32-byte aligned; AVX2 is available.
#[inline(always)]
unsafe fn stn<const NT: bool>(p: *mut u8, v: __m256i) {
    // SAFETY: the caller guarantees 32 writable bytes, aligned for the streaming store.
    unsafe {
        if NT {
            _mm256_stream_si256(p as *mut __m256i, v)
        } else {
            _mm256_storeu_si256(p as *mut __m256i, v)
        }
    }
}

/// Multiply 32 bytes by {02}: v + v drops each byte's top bit, and VPBLENDVB puts 0x1d in
/// the bytes whose top bit was set (it selects on the top bit of each mask byte).
///
/// The blend is inline assembly because LLVM rewrites the blend intrinsic into VPCMPGTB +
/// VPAND: one more instruction per block and vector in the Horner loop, which measured ~5%
/// slower on Zen 3. A `#[target_feature]` function (asm! needs the feature for ymm
/// registers), inlined into every kernel (the callers all enable AVX2).
///
/// # Safety
/// AVX2 is available.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn mul2(v: __m256i, poly: __m256i) -> __m256i {
    let red: __m256i;
    // SAFETY: one register-only AVX2 instruction, no memory, stack or flags touched.
    unsafe {
        core::arch::asm!(
            "vpblendvb {r}, {z}, {p}, {m}",
            r = lateout(ymm_reg) red,
            z = in(ymm_reg) _mm256_setzero_si256(),
            p = in(ymm_reg) poly,
            m = in(ymm_reg) v,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    _mm256_xor_si256(_mm256_add_epi8(v, v), red)
}

/// Nibble tables of one constant, broadcast to both 128-bit lanes (PSHUFB looks up within
/// each lane).
#[derive(Clone, Copy)]
struct Tbl {
    lo: __m256i,
    hi: __m256i,
}

/// # Safety
/// AVX2 is available.
#[inline(always)]
unsafe fn tbl(t: &MulTable) -> Tbl {
    // SAFETY: `t.lo` and `t.hi` are 16 readable bytes each; the caller guarantees AVX2.
    unsafe {
        Tbl {
            lo: _mm256_broadcastsi128_si256(_mm_loadu_si128(t.lo.as_ptr() as *const __m128i)),
            hi: _mm256_broadcastsi128_si256(_mm_loadu_si128(t.hi.as_ptr() as *const __m128i)),
        }
    }
}

/// c * v for the constant whose tables are `t`: lo[v & 15] ^ hi[v >> 4] in every byte.
///
/// # Safety
/// AVX2 is available.
#[inline(always)]
unsafe fn mulc(t: Tbl, v: __m256i) -> __m256i {
    // SAFETY: register-only; the caller guarantees AVX2.
    unsafe {
        let m = _mm256_set1_epi8(0x0f);
        let l = _mm256_and_si256(v, m);
        let h = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
        _mm256_xor_si256(_mm256_shuffle_epi8(t.lo, l), _mm256_shuffle_epi8(t.hi, h))
    }
}

/// Horner steps for data blocks `hi - 1` down to `lo` on U vectors at `off`:
/// q = q * {02} ^ D_i, and p ^= D_i when `P`.
///
/// # Safety
/// AVX2; blocks lo..hi have at least off + 32 * U bytes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn horner<const U: usize, const P: bool, const PF: bool>(
    data: &[&[u8]],
    lo: usize,
    hi: usize,
    off: usize,
    poly: __m256i,
    q: &mut [__m256i; U],
    p: &mut [__m256i; U],
) {
    // SAFETY: indices lo..hi and 32 * U bytes at `off` are in bounds per the contract.
    unsafe {
        let mut i = hi;
        while i > lo {
            i -= 1;
            let s = at(data, i, off);
            prefetch::<PF>(s);
            for u in 0..U {
                let d = ld(s.add(u * V));
                q[u] = xor(mul2(q[u], poly), d);
                if P {
                    p[u] = xor(p[u], d);
                }
            }
        }
    }
}

/// q = q * {02} on all U vectors (the Horner step of a lost block, whose contribution is 0).
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn skip<const U: usize>(q: &mut [__m256i; U], poly: __m256i) {
    for v in q.iter_mut() {
        // SAFETY: register-only; the caller guarantees AVX2.
        *v = unsafe { mul2(*v, poly) };
    }
}

/// Run `$body` on 128-byte steps (`$u` = 4 vectors), then on one 64-byte step (`$u` = 2) if
/// `len` is an odd number of 64-byte units, so each gets a fully unrolled body.
macro_rules! passes {
    ($len:expr, |$off:ident, $u:ident| $body:expr) => {{
        let len = $len;
        let mut $off = 0usize;
        while $off + 4 * V <= len {
            {
                const $u: usize = 4;
                $body;
            }
            $off += 4 * V;
        }
        if $off < len {
            const $u: usize = 2;
            $body;
        }
    }};
}

// ---- XOR ----

/// # Safety
/// AVX2; every block and `p` have at least off + 32 * U bytes; `p + off` 32-byte aligned
/// when `NT`.
#[inline(always)]
unsafe fn xor_pass<const U: usize, const NT: bool>(data: &[&[u8]], p: *mut u8, off: usize) {
    // SAFETY: per the contract, every block and `p` have 32 * U bytes at `off`.
    unsafe {
        let s = at(data, 0, off);
        let mut acc: [__m256i; U] = [_mm256_setzero_si256(); U];
        for u in 0..U {
            acc[u] = ld(s.add(u * V));
        }
        for i in 1..data.len() {
            let s = at(data, i, off);
            for u in 0..U {
                acc[u] = xor(acc[u], ld(s.add(u * V)));
            }
        }
        for u in 0..U {
            stn::<NT>(p.add(off + u * V), acc[u]);
        }
    }
}

/// # Safety
/// See the module contract; `p` 32-byte aligned when `NT`.
#[target_feature(enable = "avx2")]
unsafe fn xor_gen_impl<const NT: bool>(data: &[&[u8]], p: *mut u8, len: usize) {
    // Cached: 256-byte passes (fewer pointer fetches). Non-temporal: 128-byte passes, which
    // measured faster on memory-bound stripes.
    let mut off = 0;
    // SAFETY (all passes): `off + 32 * U <= len` and every block has `len` bytes.
    unsafe {
        if NT {
            while off + 4 * V <= len {
                xor_pass::<4, NT>(data, p, off);
                off += 4 * V;
            }
        } else {
            while off + 8 * V <= len {
                xor_pass::<8, NT>(data, p, off);
                off += 8 * V;
            }
        }
        while off < len {
            xor_pass::<2, NT>(data, p, off);
            off += 2 * V;
        }
    }
    if NT {
        _mm_sfence();
    }
}

/// P = XOR of the data blocks.
///
/// # Safety
/// See the module contract.
pub unsafe fn xor_gen(data: &[&[u8]], p: &mut [u8]) {
    let len = p.len();
    let pp = p.as_mut_ptr();
    // SAFETY: forwarded contract; NT only for a 32-byte aligned P (`stream`).
    unsafe {
        match stream(data, len, &[pp], V) {
            Stream::NonTemporal => xor_gen_impl::<true>(data, pp, len),
            _ => xor_gen_impl::<false>(data, pp, len),
        }
    }
}

// ---- P + Q ----

/// Q = sum g^i D_i; also P = XOR D_i when `WP`.
///
/// # Safety
/// See the module contract; `p` non-null with `len` bytes when `WP`; outputs 32-byte
/// aligned when `NT`.
#[target_feature(enable = "avx2")]
unsafe fn pq_gen_impl<const WP: bool, const PF: bool, const NT: bool>(
    data: &[&[u8]],
    p: *mut u8,
    q: *mut u8,
    len: usize,
) {
    let k = data.len();
    let poly = _mm256_set1_epi8(gf::POLY_LOW as i8);
    // SAFETY (all passes): `off + 32 * U <= len`, and every block, P and Q have `len` bytes.
    passes!(len, |off, U| unsafe {
        let s = at(data, k - 1, off);
        prefetch::<PF>(s);
        let mut qv: [__m256i; U] = [_mm256_setzero_si256(); U];
        for u in 0..U {
            qv[u] = ld(s.add(u * V));
        }
        let mut pv = qv;
        horner::<U, WP, PF>(data, 0, k - 1, off, poly, &mut qv, &mut pv);
        for u in 0..U {
            if WP {
                stn::<NT>(p.add(off + u * V), pv[u]);
            }
            stn::<NT>(q.add(off + u * V), qv[u]);
        }
    });
    if NT {
        _mm_sfence();
    }
}

/// Q (and P when given) of the data blocks.
///
/// # Safety
/// See the module contract.
pub unsafe fn pq_gen(data: &[&[u8]], p: Option<&mut [u8]>, q: &mut [u8]) {
    let len = q.len();
    let qp = q.as_mut_ptr();
    // SAFETY: forwarded contract; P, when present, has `len` bytes (checked by the wrapper);
    // NT only for 32-byte aligned outputs (`stream`).
    unsafe {
        match p {
            Some(p) => {
                let pp = p.as_mut_ptr();
                with_stream!(
                    stream(data, len, &[pp, qp], V),
                    pq_gen_impl[true](data, pp, qp, len)
                )
            }
            None => with_stream!(
                stream(data, len, &[qp], V),
                pq_gen_impl[false](data, core::ptr::null_mut(), qp, len)
            ),
        }
    }
}

// ---- read-modify-write ----

/// P ^= sum (old ^ new) when `WP`; Q ^= sum g^index (old ^ new) when `WQ`.
///
/// # Safety
/// See the module contract; P and Q non-null with `len` bytes when used.
#[target_feature(enable = "avx2")]
unsafe fn update_impl<const WP: bool, const WQ: bool>(
    updates: &[Update<'_>],
    p: *mut u8,
    q: *mut u8,
    len: usize,
) {
    // SAFETY (all passes): `off + 32 * U <= len`, and every old/new block, P and Q have
    // `len` bytes; update indices were checked to be below 255 (pow_table takes them mod 255
    // anyway).
    if let [u0] = updates {
        // One block (the common case): its tables stay in registers.
        let t = unsafe { tbl(gf::pow_table(u0.index)) };
        let (o, n) = (u0.old.as_ptr(), u0.new.as_ptr());
        passes!(len, |off, U| unsafe {
            for u in 0..U {
                let d = xor(ld(o.add(off + u * V)), ld(n.add(off + u * V)));
                if WP {
                    let pp = p.add(off + u * V);
                    st(pp, xor(ld(pp), d));
                }
                if WQ {
                    let qp = q.add(off + u * V);
                    st(qp, xor(ld(qp), mulc(t, d)));
                }
            }
        });
        return;
    }
    passes!(len, |off, U| unsafe {
        let mut pa: [__m256i; U] = [_mm256_setzero_si256(); U];
        let mut qa: [__m256i; U] = [_mm256_setzero_si256(); U];
        for up in updates {
            let t = tbl(gf::pow_table(up.index));
            let (o, n) = (up.old.as_ptr().add(off), up.new.as_ptr().add(off));
            for u in 0..U {
                let d = xor(ld(o.add(u * V)), ld(n.add(u * V)));
                if WP {
                    pa[u] = xor(pa[u], d);
                }
                if WQ {
                    qa[u] = xor(qa[u], mulc(t, d));
                }
            }
        }
        for u in 0..U {
            if WP {
                let pp = p.add(off + u * V);
                st(pp, xor(ld(pp), pa[u]));
            }
            if WQ {
                let qp = q.add(off + u * V);
                st(qp, xor(ld(qp), qa[u]));
            }
        }
    });
}

/// RMW update of P and/or Q.
///
/// # Safety
/// See the module contract.
pub unsafe fn update(updates: &[Update<'_>], p: Option<&mut [u8]>, q: Option<&mut [u8]>) {
    let null = core::ptr::null_mut();
    // SAFETY: forwarded contract; present outputs have `len` bytes (checked by the wrapper).
    unsafe {
        match (p, q) {
            (Some(p), Some(q)) => {
                update_impl::<true, true>(updates, p.as_mut_ptr(), q.as_mut_ptr(), q.len())
            }
            (Some(p), None) => update_impl::<true, false>(updates, p.as_mut_ptr(), null, p.len()),
            (None, Some(q)) => update_impl::<false, true>(updates, null, q.as_mut_ptr(), q.len()),
            (None, None) => {}
        }
    }
}

// ---- recovery ----

/// Dx = P ^ XOR of the other blocks; Q regenerated too when `WQ`.
///
/// # Safety
/// See the module contract; `q` non-null with `len` bytes when `WQ`; outputs 32-byte
/// aligned when `NT`.
#[target_feature(enable = "avx2")]
unsafe fn recover_from_p_impl<const WQ: bool, const PF: bool, const NT: bool>(
    data: &[&[u8]],
    x: usize,
    p: *const u8,
    dx: *mut u8,
    q: *mut u8,
    len: usize,
) {
    let k = data.len();
    let poly = _mm256_set1_epi8(gf::POLY_LOW as i8);
    let gx = unsafe { tbl(gf::pow_table(x)) };
    // SAFETY (all passes): `off + 32 * U <= len`; every block but x, P, Dx and Q have `len`
    // bytes; block x is never read.
    passes!(len, |off, U| unsafe {
        let mut pv: [__m256i; U] = [_mm256_setzero_si256(); U];
        for u in 0..U {
            pv[u] = ld(p.add(off + u * V));
        }
        if WQ {
            let mut qv: [__m256i; U] = [_mm256_setzero_si256(); U];
            horner::<U, true, PF>(data, x + 1, k, off, poly, &mut qv, &mut pv);
            skip(&mut qv, poly);
            horner::<U, true, PF>(data, 0, x, off, poly, &mut qv, &mut pv);
            for u in 0..U {
                stn::<NT>(dx.add(off + u * V), pv[u]);
                stn::<NT>(q.add(off + u * V), xor(qv[u], mulc(gx, pv[u])));
            }
        } else {
            for i in (0..k).filter(|&i| i != x) {
                let s = at(data, i, off);
                for u in 0..U {
                    pv[u] = xor(pv[u], ld(s.add(u * V)));
                }
            }
            for u in 0..U {
                stn::<NT>(dx.add(off + u * V), pv[u]);
            }
        }
    });
    if NT {
        _mm_sfence();
    }
}

/// # Safety
/// See the module contract.
pub unsafe fn recover_from_p(
    data: &[&[u8]],
    x: usize,
    p: &[u8],
    dx: &mut [u8],
    q: Option<&mut [u8]>,
) {
    let len = dx.len();
    let (pp, xp) = (p.as_ptr(), dx.as_mut_ptr());
    // SAFETY: forwarded contract; Q, when present, has `len` bytes (checked by the wrapper);
    // NT only for 32-byte aligned outputs (`stream`).
    unsafe {
        match q {
            Some(q) => {
                let qp = q.as_mut_ptr();
                with_stream!(
                    stream(data, len, &[xp, qp], V),
                    recover_from_p_impl[true](data, x, pp, xp, qp, len)
                )
            }
            // No Horner loop, so nothing to prefetch for: a plain XOR.
            None => match stream(data, len, &[xp], V) {
                Stream::NonTemporal => recover_from_p_impl::<false, false, true>(
                    data,
                    x,
                    pp,
                    xp,
                    core::ptr::null_mut(),
                    len,
                ),
                _ => recover_from_p_impl::<false, false, false>(
                    data,
                    x,
                    pp,
                    xp,
                    core::ptr::null_mut(),
                    len,
                ),
            },
        }
    }
}

/// Dx = g^-x (Q ^ Q'), Q' the Q of the other blocks; P regenerated too when `WP`.
///
/// # Safety
/// See the module contract; `p` non-null with `len` bytes when `WP`; outputs 32-byte
/// aligned when `NT`.
#[target_feature(enable = "avx2")]
unsafe fn recover_from_q_impl<const WP: bool, const PF: bool, const NT: bool>(
    data: &[&[u8]],
    x: usize,
    q: *const u8,
    dx: *mut u8,
    p: *mut u8,
    len: usize,
) {
    let k = data.len();
    let poly = _mm256_set1_epi8(gf::POLY_LOW as i8);
    let ginv = unsafe { tbl(gf::inv_pow_table(x)) };
    // SAFETY (all passes): `off + 32 * U <= len`; every block but x, Q, Dx and P have `len`
    // bytes; block x is never read.
    passes!(len, |off, U| unsafe {
        let mut qv: [__m256i; U] = [_mm256_setzero_si256(); U];
        let mut pv: [__m256i; U] = [_mm256_setzero_si256(); U];
        horner::<U, WP, PF>(data, x + 1, k, off, poly, &mut qv, &mut pv);
        skip(&mut qv, poly);
        horner::<U, WP, PF>(data, 0, x, off, poly, &mut qv, &mut pv);
        for u in 0..U {
            let d = mulc(ginv, xor(qv[u], ld(q.add(off + u * V))));
            stn::<NT>(dx.add(off + u * V), d);
            if WP {
                stn::<NT>(p.add(off + u * V), xor(pv[u], d));
            }
        }
    });
    if NT {
        _mm_sfence();
    }
}

/// # Safety
/// See the module contract.
pub unsafe fn recover_from_q(
    data: &[&[u8]],
    x: usize,
    q: &[u8],
    dx: &mut [u8],
    p: Option<&mut [u8]>,
) {
    let len = dx.len();
    let (qp, xp) = (q.as_ptr(), dx.as_mut_ptr());
    // SAFETY: forwarded contract; P, when present, has `len` bytes (checked by the wrapper);
    // NT only for 32-byte aligned outputs (`stream`).
    unsafe {
        match p {
            Some(p) => {
                let pp = p.as_mut_ptr();
                with_stream!(
                    stream(data, len, &[xp, pp], V),
                    recover_from_q_impl[true](data, x, qp, xp, pp, len)
                )
            }
            None => with_stream!(
                stream(data, len, &[xp], V),
                recover_from_q_impl[false](data, x, qp, xp, core::ptr::null_mut(), len)
            ),
        }
    }
}

/// Data blocks x < y from P and Q in one pass; see [`gf::two_data_coefficients`].
///
/// # Safety
/// See the module contract; `x < y < data.len()`; Dx and Dy 32-byte aligned when `NT`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn recover_two_impl<const PF: bool, const NT: bool>(
    data: &[&[u8]],
    x: usize,
    y: usize,
    pp: *const u8,
    qp: *const u8,
    xp: *mut u8,
    yp: *mut u8,
    len: usize,
) {
    let k = data.len();
    let poly = _mm256_set1_epi8(gf::POLY_LOW as i8);
    let (a, b) = gf::two_data_coefficients(x, y);
    let (ta, tb) = unsafe { (tbl(gf::mul_table(a)), tbl(gf::mul_table(b))) };
    // SAFETY (all passes): `off + 32 * U <= len`; every block but x and y, P, Q, Dx and Dy
    // have `len` bytes; blocks x and y are never read.
    passes!(len, |off, U| unsafe {
        let mut qv: [__m256i; U] = [_mm256_setzero_si256(); U];
        let mut pv: [__m256i; U] = [_mm256_setzero_si256(); U];
        horner::<U, true, PF>(data, y + 1, k, off, poly, &mut qv, &mut pv);
        skip(&mut qv, poly);
        horner::<U, true, PF>(data, x + 1, y, off, poly, &mut qv, &mut pv);
        skip(&mut qv, poly);
        horner::<U, true, PF>(data, 0, x, off, poly, &mut qv, &mut pv);
        prefetch::<PF>(pp.add(off));
        prefetch::<PF>(qp.add(off));
        for u in 0..U {
            let pd = xor(pv[u], ld(pp.add(off + u * V)));
            let qd = xor(qv[u], ld(qp.add(off + u * V)));
            let rx = xor(mulc(ta, pd), mulc(tb, qd));
            stn::<NT>(xp.add(off + u * V), rx);
            stn::<NT>(yp.add(off + u * V), xor(pd, rx));
        }
    });
    if NT {
        _mm_sfence();
    }
}

/// # Safety
/// See the module contract; `x < y < data.len()`.
pub unsafe fn recover_two(
    data: &[&[u8]],
    x: usize,
    y: usize,
    p: &[u8],
    q: &[u8],
    dx: &mut [u8],
    dy: &mut [u8],
) {
    let len = dx.len();
    let (pp, qp, xp, yp) = (p.as_ptr(), q.as_ptr(), dx.as_mut_ptr(), dy.as_mut_ptr());
    // SAFETY: forwarded contract; NT only for 32-byte aligned outputs (`stream`).
    unsafe {
        with_stream!(stream(data, len, &[xp, yp], V), recover_two_impl [] (data, x, y, pp, qp, xp, yp, len))
    }
}

// ---- row-diagonal parity ----

/// Run a row-diagonal parity schedule, 64 bytes (two registers) of every cell at a time.
///
/// # Safety
/// See [`super::rdp::run_scalar`]; the CPU supports AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn rdp_run(sched: &super::rdp::Schedule, strips: &super::rdp::Strips) {
    type Y = (__m256i, __m256i);
    let load = |p: *const u8| -> Y { unsafe { (ld(p), ld(p.add(V))) } };
    let store = |p: *mut u8, v: Y| unsafe {
        st(p, v.0);
        st(p.add(V), v.1);
    };
    let x = |a: Y, b: Y| -> Y { unsafe { (xor(a.0, b.0), xor(a.1, b.1)) } };
    super::rdp::rdp_loop!(
        sched,
        strips,
        (_mm256_setzero_si256(), _mm256_setzero_si256()),
        load,
        x,
        store
    )
}

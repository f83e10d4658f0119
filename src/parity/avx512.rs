//! AVX-512 + GFNI kernels (x86-64, 512-bit registers): Intel since Ice Lake, AMD since Zen 4.
//!
//! * Multiplication by a constant, {02} included, is one GF2P8AFFINEQB with the constant's
//!   bit matrix ([`gf::AFFINE`]): multiplying by a constant is linear over GF(2), so the
//!   affine instruction does it for the RAID-6 polynomial 0x11d (GF2P8MULB is fixed to
//!   AES's 0x11b). The Horner step q = q * {02} ^ D is two instructions; the AVX2 kernels
//!   need four, and two table lookups plus masks for any other constant.
//! * XOR: VPTERNLOGQ folds two blocks into the accumulator per instruction; eight 64-byte
//!   accumulators (512 bytes per pass) for up to 8 blocks, four for more blocks and with
//!   non-temporal stores.
//! * Q: Horner's rule from the highest data index down, four accumulators each for P and Q
//!   (256 bytes per pass).
//! * Recovery is fused into one pass, as in the AVX2 kernels.
//! * Big stripes stream with prefetch or non-temporal stores (see [`super::stream`]).
//!
//! Loads and stores are unaligned (VMOVDQU8), so any alignment is correct; 64-byte aligned
//! blocks avoid cache-line-split accesses. Lengths are multiples of 64: 256-byte passes,
//! then 64-byte ones.
//!
//! Every `pub unsafe fn` here has the same contract, checked by the safe wrappers in
//! `super`: the CPU supports AVX-512F, AVX-512BW and GFNI, every block that is read has at
//! least `len` bytes (the length of the first output), `len` is a multiple of 64, indices
//! are in range and distinct, and blocks at missing indices are never read.

// The kernels index several register arrays by the same vector number `u`.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

use super::gf;
use super::stream::{at, prefetch, stream, with_stream, Stream};
use super::Update;

/// Bytes per 512-bit vector.
const V: usize = 64;

/// # Safety
/// `p..p + 64` is readable; AVX-512F is available.
#[inline(always)]
unsafe fn ld(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 64 readable bytes; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(p as *const _) }
}

/// Store, non-temporally (around the caches) when `NT`.
///
/// # Safety
/// `p..p + 64` is writable and, when `NT`, 64-byte aligned; AVX-512F is available.
#[inline(always)]
unsafe fn stn<const NT: bool>(p: *mut u8, v: __m512i) {
    // SAFETY: the caller guarantees 64 writable bytes, aligned for the streaming store.
    unsafe {
        if NT {
            _mm512_stream_si512(p as *mut _, v)
        } else {
            _mm512_storeu_si512(p as *mut _, v)
        }
    }
}

/// # Safety
/// `p..p + 64` is writable; AVX-512F is available.
#[inline(always)]
unsafe fn st(p: *mut u8, v: __m512i) {
    // SAFETY: forwarded.
    unsafe { stn::<false>(p, v) }
}

/// # Safety
/// AVX-512F is available.
#[inline(always)]
unsafe fn xor(a: __m512i, b: __m512i) -> __m512i {
    // SAFETY: register-only; the caller guarantees AVX-512F.
    unsafe { _mm512_xor_si512(a, b) }
}

/// a ^ b ^ c in one VPTERNLOGQ.
///
/// # Safety
/// AVX-512F is available.
#[inline(always)]
unsafe fn xor3(a: __m512i, b: __m512i, c: __m512i) -> __m512i {
    // SAFETY: register-only; the caller guarantees AVX-512F.
    unsafe { _mm512_ternarylogic_epi64::<0x96>(a, b, c) }
}

/// The broadcast bit matrix of one constant.
///
/// # Safety
/// AVX-512F is available.
#[inline(always)]
unsafe fn matrix(m: u64) -> __m512i {
    // SAFETY: register-only; the caller guarantees AVX-512F.
    unsafe { _mm512_set1_epi64(m as i64) }
}

/// c * v in every byte, `m` the broadcast matrix of c.
///
/// # Safety
/// AVX-512F and GFNI are available.
#[inline(always)]
unsafe fn mulc(m: __m512i, v: __m512i) -> __m512i {
    // SAFETY: register-only; the caller guarantees AVX-512F and GFNI.
    unsafe { _mm512_gf2p8affine_epi64_epi8::<0>(v, m) }
}

/// Horner steps for data blocks `hi - 1` down to `lo` on U vectors at `off`:
/// q = q * {02} ^ D_i, and p ^= D_i when `P`.
///
/// # Safety
/// AVX-512F and GFNI; blocks lo..hi have at least off + 64 * U bytes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn horner<const U: usize, const P: bool, const PF: bool>(
    data: &[&[u8]],
    lo: usize,
    hi: usize,
    off: usize,
    two: __m512i,
    q: &mut [__m512i; U],
    p: &mut [__m512i; U],
) {
    // SAFETY: indices lo..hi and 64 * U bytes at `off` are in bounds per the contract.
    unsafe {
        let mut i = hi;
        while i > lo {
            i -= 1;
            let s = at(data, i, off);
            prefetch::<PF>(s);
            for u in 0..U {
                let d = ld(s.add(u * V));
                q[u] = xor(mulc(two, q[u]), d);
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
/// AVX-512F and GFNI.
#[inline(always)]
unsafe fn skip<const U: usize>(q: &mut [__m512i; U], two: __m512i) {
    for v in q.iter_mut() {
        // SAFETY: register-only; the caller guarantees the features.
        *v = unsafe { mulc(two, *v) };
    }
}

/// Run `$body` on 256-byte steps (`$u` = 4 vectors), then on 64-byte steps (`$u` = 1), so
/// each gets a fully unrolled body.
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
        while $off < len {
            {
                const $u: usize = 1;
                $body;
            }
            $off += V;
        }
    }};
}

// ---- XOR ----

/// # Safety
/// AVX-512F; every block and `p` have at least off + 64 * U bytes; `p + off` 64-byte
/// aligned when `NT`.
#[inline(always)]
unsafe fn xor_pass<const U: usize, const NT: bool>(data: &[&[u8]], p: *mut u8, off: usize) {
    // SAFETY: per the contract, every block and `p` have 64 * U bytes at `off`.
    unsafe {
        let s = at(data, 0, off);
        let mut acc: [__m512i; U] = [_mm512_setzero_si512(); U];
        for u in 0..U {
            acc[u] = ld(s.add(u * V));
        }
        let k = data.len();
        let mut i = 1;
        while i + 1 < k {
            let (a, b) = (at(data, i, off), at(data, i + 1, off));
            for u in 0..U {
                acc[u] = xor3(acc[u], ld(a.add(u * V)), ld(b.add(u * V)));
            }
            i += 2;
        }
        if i < k {
            let a = at(data, i, off);
            for u in 0..U {
                acc[u] = xor(acc[u], ld(a.add(u * V)));
            }
        }
        for u in 0..U {
            stn::<NT>(p.add(off + u * V), acc[u]);
        }
    }
}

/// # Safety
/// See the module contract; `p` 64-byte aligned when `NT`.
#[target_feature(enable = "avx512f,avx512bw,gfni")]
unsafe fn xor_gen_impl<const NT: bool>(data: &[&[u8]], p: *mut u8, len: usize) {
    let mut off = 0;
    // SAFETY (all passes): `off + 64 * U <= len` and every block has `len` bytes.
    unsafe {
        if NT {
            while off + 4 * V <= len {
                xor_pass::<4, NT>(data, p, off);
                off += 4 * V;
            }
        } else if data.len() <= 8 {
            while off + 8 * V <= len {
                xor_pass::<8, NT>(data, p, off);
                off += 8 * V;
            }
        } else {
            // More blocks than that at the same page offsets would evict each other's
            // lines from L1 within one 512-byte pass: 256-byte passes measured faster.
            while off + 4 * V <= len {
                xor_pass::<4, NT>(data, p, off);
                off += 4 * V;
            }
        }
        while off < len {
            xor_pass::<1, NT>(data, p, off);
            off += V;
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
    // SAFETY: forwarded contract; NT only for a 64-byte aligned P (`stream`).
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
/// See the module contract; `p` non-null with `len` bytes when `WP`; outputs 64-byte
/// aligned when `NT`.
#[target_feature(enable = "avx512f,avx512bw,gfni")]
unsafe fn pq_gen_impl<const WP: bool, const PF: bool, const NT: bool>(
    data: &[&[u8]],
    p: *mut u8,
    q: *mut u8,
    len: usize,
) {
    let k = data.len();
    let two = matrix(gf::AFFINE[2]);
    // SAFETY (all passes): `off + 64 * U <= len`, and every block, P and Q have `len` bytes.
    passes!(len, |off, U| unsafe {
        let s = at(data, k - 1, off);
        prefetch::<PF>(s);
        let mut qv: [__m512i; U] = [_mm512_setzero_si512(); U];
        for u in 0..U {
            qv[u] = ld(s.add(u * V));
        }
        let mut pv = qv;
        horner::<U, WP, PF>(data, 0, k - 1, off, two, &mut qv, &mut pv);
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
    // NT only for 64-byte aligned outputs (`stream`).
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
#[target_feature(enable = "avx512f,avx512bw,gfni")]
unsafe fn update_impl<const WP: bool, const WQ: bool>(
    updates: &[Update<'_>],
    p: *mut u8,
    q: *mut u8,
    len: usize,
) {
    // SAFETY (all passes): `off + 64 * U <= len`, and every old/new block, P and Q have
    // `len` bytes.
    passes!(len, |off, U| unsafe {
        let mut pa: [__m512i; U] = [_mm512_setzero_si512(); U];
        let mut qa: [__m512i; U] = [_mm512_setzero_si512(); U];
        for up in updates {
            let m = matrix(gf::pow_affine(up.index));
            let (o, n) = (up.old.as_ptr().add(off), up.new.as_ptr().add(off));
            for u in 0..U {
                let d = xor(ld(o.add(u * V)), ld(n.add(u * V)));
                if WP {
                    pa[u] = xor(pa[u], d);
                }
                if WQ {
                    qa[u] = xor(qa[u], mulc(m, d));
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
/// See the module contract; `q` non-null with `len` bytes when `WQ`; outputs 64-byte
/// aligned when `NT`.
#[target_feature(enable = "avx512f,avx512bw,gfni")]
unsafe fn recover_from_p_impl<const WQ: bool, const PF: bool, const NT: bool>(
    data: &[&[u8]],
    x: usize,
    p: *const u8,
    dx: *mut u8,
    q: *mut u8,
    len: usize,
) {
    let k = data.len();
    let two = matrix(gf::AFFINE[2]);
    let gx = matrix(gf::pow_affine(x));
    // SAFETY (all passes): `off + 64 * U <= len`; every block but x, P, Dx and Q have `len`
    // bytes; block x is never read.
    passes!(len, |off, U| unsafe {
        let mut pv: [__m512i; U] = [_mm512_setzero_si512(); U];
        for u in 0..U {
            pv[u] = ld(p.add(off + u * V));
        }
        if WQ {
            let mut qv: [__m512i; U] = [_mm512_setzero_si512(); U];
            horner::<U, true, PF>(data, x + 1, k, off, two, &mut qv, &mut pv);
            skip(&mut qv, two);
            horner::<U, true, PF>(data, 0, x, off, two, &mut qv, &mut pv);
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
    let null = core::ptr::null_mut();
    // SAFETY: forwarded contract; Q, when present, has `len` bytes (checked by the wrapper);
    // NT only for 64-byte aligned outputs (`stream`).
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
                Stream::NonTemporal => {
                    recover_from_p_impl::<false, false, true>(data, x, pp, xp, null, len)
                }
                _ => recover_from_p_impl::<false, false, false>(data, x, pp, xp, null, len),
            },
        }
    }
}

/// Dx = g^-x (Q ^ Q'), Q' the Q of the other blocks; P regenerated too when `WP`.
///
/// # Safety
/// See the module contract; `p` non-null with `len` bytes when `WP`; outputs 64-byte
/// aligned when `NT`.
#[target_feature(enable = "avx512f,avx512bw,gfni")]
unsafe fn recover_from_q_impl<const WP: bool, const PF: bool, const NT: bool>(
    data: &[&[u8]],
    x: usize,
    q: *const u8,
    dx: *mut u8,
    p: *mut u8,
    len: usize,
) {
    let k = data.len();
    let two = matrix(gf::AFFINE[2]);
    let ginv = matrix(gf::inv_pow_affine(x));
    // SAFETY (all passes): `off + 64 * U <= len`; every block but x, Q, Dx and P have `len`
    // bytes; block x is never read.
    passes!(len, |off, U| unsafe {
        let mut qv: [__m512i; U] = [_mm512_setzero_si512(); U];
        let mut pv: [__m512i; U] = [_mm512_setzero_si512(); U];
        horner::<U, WP, PF>(data, x + 1, k, off, two, &mut qv, &mut pv);
        skip(&mut qv, two);
        horner::<U, WP, PF>(data, 0, x, off, two, &mut qv, &mut pv);
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
    // NT only for 64-byte aligned outputs (`stream`).
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
/// See the module contract; `x < y < data.len()`; Dx and Dy 64-byte aligned when `NT`.
#[target_feature(enable = "avx512f,avx512bw,gfni")]
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
    let two = matrix(gf::AFFINE[2]);
    let (a, b) = gf::two_data_coefficients(x, y);
    let (ma, mb) = (
        matrix(gf::AFFINE[a as usize]),
        matrix(gf::AFFINE[b as usize]),
    );
    // SAFETY (all passes): `off + 64 * U <= len`; every block but x and y, P, Q, Dx and Dy
    // have `len` bytes; blocks x and y are never read.
    passes!(len, |off, U| unsafe {
        let mut qv: [__m512i; U] = [_mm512_setzero_si512(); U];
        let mut pv: [__m512i; U] = [_mm512_setzero_si512(); U];
        horner::<U, true, PF>(data, y + 1, k, off, two, &mut qv, &mut pv);
        skip(&mut qv, two);
        horner::<U, true, PF>(data, x + 1, y, off, two, &mut qv, &mut pv);
        skip(&mut qv, two);
        horner::<U, true, PF>(data, 0, x, off, two, &mut qv, &mut pv);
        prefetch::<PF>(pp.add(off));
        prefetch::<PF>(qp.add(off));
        for u in 0..U {
            let pd = xor(pv[u], ld(pp.add(off + u * V)));
            let qd = xor(qv[u], ld(qp.add(off + u * V)));
            let rx = xor(mulc(ma, pd), mulc(mb, qd));
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
    // SAFETY: forwarded contract; NT only for 64-byte aligned outputs (`stream`).
    unsafe {
        with_stream!(stream(data, len, &[xp, yp], V), recover_two_impl [] (data, x, y, pp, qp, xp, yp, len))
    }
}

// ---- row-diagonal parity ----

/// Run a row-diagonal parity schedule, 64 bytes (one register) of every cell at a time.
///
/// # Safety
/// See [`super::rdp::run_scalar`]; the CPU supports AVX-512F.
#[target_feature(enable = "avx512f,avx512bw,gfni")]
pub unsafe fn rdp_run(sched: &super::rdp::Schedule, strips: &super::rdp::Strips) {
    let load = |p: *const u8| unsafe { ld(p) };
    let store = |p: *mut u8, v: __m512i| unsafe { st(p, v) };
    let x = |a: __m512i, b: __m512i| unsafe { xor(a, b) };
    super::rdp::rdp_loop!(sched, strips, _mm512_setzero_si512(), load, x, store)
}

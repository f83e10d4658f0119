//! AVX2 kernels (x86-64, 256-bit registers).
//!
//! * XOR: eight 32-byte accumulators (256 bytes per pass over the blocks), so each source
//!   pointer is fetched once per 256 bytes and the loads run back to back.
//! * Q: Horner's rule from the highest data index down, Q = (..((D_{k-1} * 2) ^ D_{k-2}) * 2 ..) ^ D_0,
//!   with multiply-by-{02} as "add the byte to itself, XOR 0x1d where the top bit was set"
//!   (VPADDB + VPBLENDVB/VPXOR), md's raid6 AVX2 gen_syndrome technique. Four accumulators
//!   each for P and Q (128 bytes per pass).
//! * Multiplication by any other constant: two 16-entry PSHUFB lookups on the low and high
//!   nibbles (ISA-L's gf_vect_mul technique), tables from [`super::gf::MulTable`].
//! * Recovery is fused into one pass: the surviving blocks' P' and Q' are accumulated in
//!   registers, combined with the stored P and Q and solved for the lost blocks before
//!   anything is written, so every input is read once and every output written once.
//!
//! Loads and stores are unaligned (VMOVDQU), which costs nothing on aligned addresses, so
//! any alignment is correct; 64-byte aligned blocks avoid cache-line-split accesses.
//! Lengths are multiples of 64: 128-byte passes, then at most one 64-byte pass.
//!
//! Every `pub unsafe fn` here has the same contract, checked by the safe wrappers in
//! `super`: the CPU supports AVX2, every block that is read has at least `len` bytes (the
//! length of the first output), `len` is a multiple of 64, indices are in range and
//! distinct, and blocks at missing indices are never read.

use core::arch::x86_64::*;

use super::gf::{self, MulTable};
use super::Update;

/// Bytes per 256-bit vector.
const V: usize = 32;

// ---- small helpers: inlined into the #[target_feature(enable = "avx2")] kernels ----

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

/// Store, non-temporally (bypassing the caches) when `NT`.
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

/// Hint the cache lines `PF` bytes past `p` (`PF` = 0: nothing). Prefetches never fault, so
/// the address may lie past the block's end; `wrapping_add` keeps that defined.
///
/// # Safety
/// SSE is available (always, on x86-64).
#[inline(always)]
unsafe fn prefetch<const PF: usize, const LINES: usize>(p: *const u8) {
    if PF > 0 {
        for l in 0..LINES {
            // SAFETY: a prefetch is a hint; it never faults or reads into the program.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF + 64 * l) as *const i8) }
        }
    }
}

/// # Safety
/// AVX2 is available.
#[inline(always)]
unsafe fn xor(a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: register-only; the caller guarantees AVX2.
    unsafe { _mm256_xor_si256(a, b) }
}

/// Multiply 32 bytes by {02}: v + v drops each byte's top bit; the blend puts 0x1d in the
/// bytes whose top bit was set (VPBLENDVB selects on the mask byte's top bit).
///
/// # Safety
/// AVX2 is available.
#[inline(always)]
unsafe fn mul2(v: __m256i, poly: __m256i) -> __m256i {
    // SAFETY: register-only; the caller guarantees AVX2.
    unsafe {
        let red = _mm256_blendv_epi8(_mm256_setzero_si256(), poly, v);
        _mm256_xor_si256(_mm256_add_epi8(v, v), red)
    }
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

/// c * v for the constant whose tables are `t`: lo[v & 15] ^ hi[v >> 4] per byte.
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

/// Pointer to byte `off` of data block `i`.
///
/// # Safety
/// `i < data.len()` and `off <= data[i].len()`.
#[inline(always)]
unsafe fn at(data: &[&[u8]], i: usize, off: usize) -> *const u8 {
    // SAFETY: the caller guarantees the index and offset are in bounds.
    unsafe { data.get_unchecked(i).as_ptr().add(off) }
}

/// Horner steps for data blocks `hi - 1` down to `lo` on U vectors at `off`:
/// q = q * {02} ^ D_i, and p ^= D_i when `P`; prefetching `PF` bytes ahead.
///
/// # Safety
/// AVX2; blocks lo..hi have at least off + 32 * U bytes.
#[inline(always)]
unsafe fn horner<const U: usize, const P: bool, const PF: usize>(
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
            prefetch::<PF, 2>(s);
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

/// How a call streams: prefetch distance and non-temporal stores. Chosen per call from the
/// block length and the stripe's size; see `choose`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Cached,
    Prefetch,
    PrefetchNt,
}

/// Experimental tunables (temporary).
pub static PF_MIN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);
pub static NT_MIN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

const PF_DIST: usize = 1024;

fn choose(total: usize, outs: &[*mut u8]) -> Mode {
    use std::sync::atomic::Ordering::Relaxed;
    let aligned = outs.iter().all(|p| (*p as usize) % 32 == 0);
    if total >= NT_MIN.load(Relaxed) && aligned {
        Mode::PrefetchNt
    } else if total >= PF_MIN.load(Relaxed) {
        Mode::Prefetch
    } else {
        Mode::Cached
    }
}

// ---- XOR ----

/// # Safety
/// AVX2; blocks have at least off + 32 * U bytes; `p + off` 32-byte aligned when `NT`.
#[inline(always)]
unsafe fn xor_pass<const U: usize, const PF: usize, const NT: bool>(data: &[&[u8]], p: *mut u8, off: usize) {
    // SAFETY: per the contract, every block and `p` have 32 * U bytes at `off`.
    unsafe {
        let s = at(data, 0, off);
        prefetch::<PF, 4>(s);
        let mut acc: [__m256i; U] = [_mm256_setzero_si256(); U];
        for u in 0..U {
            acc[u] = ld(s.add(u * V));
        }
        for i in 1..data.len() {
            let s = at(data, i, off);
            prefetch::<PF, 4>(s);
            for u in 0..U {
                acc[u] = xor(acc[u], ld(s.add(u * V)));
            }
        }
        for u in 0..U {
            stn::<NT>(p.add(off + u * V), acc[u]);
        }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn xor_gen_impl<const PF: usize, const NT: bool>(data: &[&[u8]], pp: *mut u8, len: usize) {
    let mut off = 0;
    // SAFETY (all passes): `off + 32 * U <= len` and every block has `len` bytes.
    unsafe {
        while off + 8 * V <= len {
            xor_pass::<8, PF, NT>(data, pp, off);
            off += 8 * V;
        }
        while off < len {
            xor_pass::<2, 0, NT>(data, pp, off);
            off += 2 * V;
        }
        if NT {
            _mm_sfence();
        }
    }
}

/// P = XOR of the data blocks.
///
/// # Safety
/// See the module contract.
pub unsafe fn xor_gen(data: &[&[u8]], p: &mut [u8]) {
    let len = p.len();
    let pp = p.as_mut_ptr();
    // SAFETY: forwarded contract; NT only when P is 32-byte aligned (`choose`).
    unsafe {
        match choose(data.len() * len, &[pp]) {
            Mode::Cached => xor_gen_impl::<0, false>(data, pp, len),
            Mode::Prefetch => xor_gen_impl::<PF_DIST, false>(data, pp, len),
            Mode::PrefetchNt => xor_gen_impl::<PF_DIST, true>(data, pp, len),
        }
    }
}

// ---- P + Q ----

/// Q = sum g^i D_i; also P = XOR D_i when `WITH_P`.
///
/// # Safety
/// See the module contract; `p` is non-null with `len` bytes when `WITH_P`; P and Q 32-byte
/// aligned when `NT`.
#[target_feature(enable = "avx2")]
unsafe fn pq_gen_impl<const WITH_P: bool, const PF: usize, const NT: bool>(
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
        prefetch::<PF, 2>(s);
        let mut qv: [__m256i; U] = [_mm256_setzero_si256(); U];
        for u in 0..U {
            qv[u] = ld(s.add(u * V));
        }
        let mut pv = qv;
        horner::<U, WITH_P, PF>(data, 0, k - 1, off, poly, &mut qv, &mut pv);
        for u in 0..U {
            if WITH_P {
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
    // NT only when the outputs are 32-byte aligned (`choose`).
    unsafe {
        match p {
            Some(p) => {
                let pp = p.as_mut_ptr();
                match choose(data.len() * len, &[pp, qp]) {
                    Mode::Cached => pq_gen_impl::<true, 0, false>(data, pp, qp, len),
                    Mode::Prefetch => pq_gen_impl::<true, PF_DIST, false>(data, pp, qp, len),
                    Mode::PrefetchNt => pq_gen_impl::<true, PF_DIST, true>(data, pp, qp, len),
                }
            }
            None => {
                let pp = core::ptr::null_mut();
                match choose(data.len() * len, &[qp]) {
                    Mode::Cached => pq_gen_impl::<false, 0, false>(data, pp, qp, len),
                    Mode::Prefetch => pq_gen_impl::<false, PF_DIST, false>(data, pp, qp, len),
                    Mode::PrefetchNt => pq_gen_impl::<false, PF_DIST, true>(data, pp, qp, len),
                }
            }
        }
    }
}

// ---- read-modify-write ----

/// P ^= sum (old ^ new) when `WP`; Q ^= sum g^index (old ^ new) when `WQ`.
///
/// # Safety
/// See the module contract; P and Q non-null with `len` bytes when used.
#[target_feature(enable = "avx2")]
unsafe fn update_impl<const WP: bool, const WQ: bool>(updates: &[Update<'_>], p: *mut u8, q: *mut u8, len: usize) {
    // SAFETY (all passes): `off + 32 * U <= len`, and every old/new block, P and Q have
    // `len` bytes; the update index was checked to be below 255 so the table exists.
    if let [u0] = updates {
        // One block (the common case): keep its tables in registers.
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
                pa[u] = xor(pa[u], d);
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
                let len = p.len();
                update_impl::<true, true>(updates, p.as_mut_ptr(), q.as_mut_ptr(), len)
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
/// See the module contract; `q` non-null with `len` bytes when `WQ`.
#[target_feature(enable = "avx2")]
unsafe fn recover_from_p_impl<const WQ: bool>(
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
            horner::<U, true, 0>(data, x + 1, k, off, poly, &mut qv, &mut pv);
            for u in 0..U {
                qv[u] = mul2(qv[u], poly);
            }
            horner::<U, true, 0>(data, 0, x, off, poly, &mut qv, &mut pv);
            for u in 0..U {
                st(dx.add(off + u * V), pv[u]);
                st(q.add(off + u * V), xor(qv[u], mulc(gx, pv[u])));
            }
        } else {
            for i in (0..k).filter(|&i| i != x) {
                let s = at(data, i, off);
                for u in 0..U {
                    pv[u] = xor(pv[u], ld(s.add(u * V)));
                }
            }
            for u in 0..U {
                st(dx.add(off + u * V), pv[u]);
            }
        }
    });
}

/// # Safety
/// See the module contract.
pub unsafe fn recover_from_p(data: &[&[u8]], x: usize, p: &[u8], dx: &mut [u8], q: Option<&mut [u8]>) {
    let len = dx.len();
    // SAFETY: forwarded contract; Q, when present, has `len` bytes (checked by the wrapper).
    unsafe {
        match q {
            Some(q) => recover_from_p_impl::<true>(data, x, p.as_ptr(), dx.as_mut_ptr(), q.as_mut_ptr(), len),
            None => recover_from_p_impl::<false>(data, x, p.as_ptr(), dx.as_mut_ptr(), core::ptr::null_mut(), len),
        }
    }
}

/// Dx = g^-x (Q ^ Q'), Q' the Q of the other blocks; P regenerated too when `WP`.
///
/// # Safety
/// See the module contract; `p` non-null with `len` bytes when `WP`.
#[target_feature(enable = "avx2")]
unsafe fn recover_from_q_impl<const WP: bool>(
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
        horner::<U, WP, 0>(data, x + 1, k, off, poly, &mut qv, &mut pv);
        for u in 0..U {
            qv[u] = mul2(qv[u], poly);
        }
        horner::<U, WP, 0>(data, 0, x, off, poly, &mut qv, &mut pv);
        for u in 0..U {
            let d = mulc(ginv, xor(qv[u], ld(q.add(off + u * V))));
            st(dx.add(off + u * V), d);
            if WP {
                st(p.add(off + u * V), xor(pv[u], d));
            }
        }
    });
}

/// # Safety
/// See the module contract.
pub unsafe fn recover_from_q(data: &[&[u8]], x: usize, q: &[u8], dx: &mut [u8], p: Option<&mut [u8]>) {
    let len = dx.len();
    // SAFETY: forwarded contract; P, when present, has `len` bytes (checked by the wrapper).
    unsafe {
        match p {
            Some(p) => recover_from_q_impl::<true>(data, x, q.as_ptr(), dx.as_mut_ptr(), p.as_mut_ptr(), len),
            None => recover_from_q_impl::<false>(data, x, q.as_ptr(), dx.as_mut_ptr(), core::ptr::null_mut(), len),
        }
    }
}

/// Data blocks x < y from P and Q in one pass; see [`gf::two_data_coefficients`].
///
/// # Safety
/// See the module contract; `x < y < data.len()`; Dx and Dy 32-byte aligned when `NT`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn recover_two_impl<const PF: usize, const NT: bool>(
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
    let (ta, tb) = (MulTable::new(a), MulTable::new(b));
    let (ta, tb) = unsafe { (tbl(&ta), tbl(&tb)) };
    // SAFETY (all passes): `off + 32 * U <= len`; every block but x and y, P, Q, Dx and Dy
    // have `len` bytes; blocks x and y are never read.
    passes!(len, |off, U| unsafe {
        let mut qv: [__m256i; U] = [_mm256_setzero_si256(); U];
        let mut pv: [__m256i; U] = [_mm256_setzero_si256(); U];
        horner::<U, true, PF>(data, y + 1, k, off, poly, &mut qv, &mut pv);
        for u in 0..U {
            qv[u] = mul2(qv[u], poly);
        }
        horner::<U, true, PF>(data, x + 1, y, off, poly, &mut qv, &mut pv);
        for u in 0..U {
            qv[u] = mul2(qv[u], poly);
        }
        horner::<U, true, PF>(data, 0, x, off, poly, &mut qv, &mut pv);
        prefetch::<PF, 2>(pp.add(off));
        prefetch::<PF, 2>(qp.add(off));
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
pub unsafe fn recover_two(data: &[&[u8]], x: usize, y: usize, p: &[u8], q: &[u8], dx: &mut [u8], dy: &mut [u8]) {
    let len = dx.len();
    let (pp, qp, xp, yp) = (p.as_ptr(), q.as_ptr(), dx.as_mut_ptr(), dy.as_mut_ptr());
    // SAFETY: forwarded contract; NT only when the outputs are 32-byte aligned (`choose`).
    unsafe {
        match choose(data.len() * len, &[xp, yp]) {
            Mode::Cached => recover_two_impl::<0, false>(data, x, y, pp, qp, xp, yp, len),
            Mode::Prefetch => recover_two_impl::<PF_DIST, false>(data, x, y, pp, qp, xp, yp, len),
            Mode::PrefetchNt => recover_two_impl::<PF_DIST, true>(data, x, y, pp, qp, xp, yp, len),
        }
    }
}

//! How the SIMD kernels move a stripe's data, chosen per call: shared by the AVX2 and
//! AVX-512 kernels.
//!
//! Stripes of [`BIG_STRIPE`] bytes or more (k * len) stream differently, depending on the
//! blocks' layout: when at least [`L1_WAYS`] blocks start at the same offset within a 4 KiB
//! page, their lines compete for the same L1 sets and the hardware prefetchers fall behind,
//! so the Horner kernels prefetch each block [`PREFETCH_AHEAD`] bytes ahead; otherwise the
//! outputs are written with non-temporal stores (no read for ownership, no cache space
//! taken from the inputs), as ISA-L does. Smaller stripes use plain loads and stores: their
//! data and outputs fit in the caches. The thresholds come from measurements on Zen 3
//! (docs/parity.md).

/// Stripes (k * block length) at least this large stream with prefetch or non-temporal
/// stores; half of a 32 MiB L3.
pub const BIG_STRIPE: usize = 16 << 20;

/// Associativity of the L1 data cache (Zen 3, and most x86 cores since): this many blocks at
/// the same page offset fill a set.
pub const L1_WAYS: usize = 8;

/// How far ahead of the current offset each block is prefetched.
pub const PREFETCH_AHEAD: usize = 512;

/// How a kernel moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Plain loads and stores.
    Cached,
    /// Software prefetch ahead of the loads (Horner kernels), plain stores.
    Prefetch,
    /// Plain loads, non-temporal stores (followed by SFENCE).
    NonTemporal,
}

/// The streaming mode for a stripe of `k` blocks of `len` bytes (`blocks`; lost ones may be
/// empty) written to `outs`, whose non-temporal stores need `align`-byte alignment.
pub fn stream(blocks: &[&[u8]], len: usize, outs: &[*mut u8], align: usize) -> Stream {
    if blocks.len() * len < BIG_STRIPE {
        return Stream::Cached;
    }
    let offset = |p: *const u8| p as usize % 4096;
    let mut present = blocks.iter().filter(|b| !b.is_empty());
    let first = present.clone().next().map_or(0, |b| offset(b.as_ptr()));
    let aliased = present
        .by_ref()
        .filter(|b| offset(b.as_ptr()) == first)
        .count()
        >= L1_WAYS;
    if aliased {
        Stream::Prefetch
    } else if outs.iter().all(|p| (*p as usize).is_multiple_of(align)) {
        Stream::NonTemporal
    } else {
        Stream::Cached
    }
}

/// Call `f::<G.., PF, NT>(args..)` with the (PF, NT) pair of a [`Stream`]:
/// `with_stream!(mode, f [G..] (args..))`.
macro_rules! with_stream {
    ($mode:expr, $f:ident [$($g:tt),*] ($($a:expr),* $(,)?)) => {
        match $mode {
            Stream::Cached => $f::<$($g,)* false, false>($($a),*),
            Stream::Prefetch => $f::<$($g,)* true, false>($($a),*),
            Stream::NonTemporal => $f::<$($g,)* false, true>($($a),*),
        }
    };
}
pub(crate) use with_stream;

/// Hint the two cache lines [`PREFETCH_AHEAD`] bytes past `p`, when `PF`.
///
/// # Safety
/// None beyond x86-64: a prefetch never faults, and `wrapping_add` keeps the address
/// computation defined even past the end of the block.
#[inline(always)]
pub unsafe fn prefetch<const PF: bool>(p: *const u8) {
    use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    if PF {
        // SAFETY: prefetches are hints; they never fault or make data visible to the program.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD + 64) as *const i8);
        }
    }
}

/// Pointer to byte `off` of data block `i`.
///
/// # Safety
/// `i < data.len()` and `off <= data[i].len()`.
#[inline(always)]
pub unsafe fn at(data: &[&[u8]], i: usize, off: usize) -> *const u8 {
    // SAFETY: the caller guarantees the index and offset are in bounds.
    unsafe { data.get_unchecked(i).as_ptr().add(off) }
}

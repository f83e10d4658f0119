//! Parity kernels: SIMD against the scalar reference, the scalar reference against a naive
//! byte-at-a-time model, every RAID-6 loss case, read-modify-write, and bit-exactness
//! against Intel ISA-L (libisal, linked into this test binary only).
//!
//! Without libisal-dev the ISA-L comparisons are reported as ignored, with the reason;
//! scripts/test.sh installs the package and makes its absence a build error.

use std::ffi::{c_int, c_void};

use nvmf_raid::parity::{self, gf, Isa, Kernels, Update};
use proptest::prelude::*;

mod common;
mod isal;

// ---------- helpers ----------

/// A byte buffer whose data starts `skew` (< 4096) bytes past a page boundary.
struct Buf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    fn new(len: usize, skew: usize) -> Buf {
        assert!(skew < 4096);
        let mem = vec![0u8; len + 8192];
        let base = mem.as_ptr() as usize;
        let start = (4096 - base % 4096) % 4096 + skew;
        Buf { mem, start, len }
    }
    fn random(len: usize, skew: usize, seed: u64) -> Buf {
        let mut b = Buf::new(len, skew);
        fill(seed, b.as_mut());
        b
    }
    fn as_ref(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
    fn ptr(&mut self) -> *mut u8 {
        self.as_mut().as_mut_ptr()
    }
}

/// Deterministic pseudo-random bytes (xorshift64), fast enough for MiB-sized blocks.
fn fill(seed: u64, buf: &mut [u8]) {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        c.copy_from_slice(&s.to_le_bytes());
    }
    for b in chunks.into_remainder() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = s as u8;
    }
}

fn stripe(k: usize, len: usize, seed: u64) -> Vec<Buf> {
    (0..k)
        .map(|i| Buf::random(len, 0, seed.wrapping_add(i as u64 * 7919)))
        .collect()
}

fn refs(bufs: &[Buf]) -> Vec<&[u8]> {
    bufs.iter().map(|b| b.as_ref()).collect()
}

/// Every path this CPU runs: each is checked against the scalar reference.
fn kernels() -> Vec<Kernels> {
    Kernels::all()
}

/// First differing offset, for readable failures on MiB-sized blocks.
fn diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(usize::MAX);
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

macro_rules! same {
    ($a:expr, $b:expr, $($ctx:tt)*) => {
        if let Some(at) = diff($a, $b) {
            panic!("{} (first difference at byte {at})", format!($($ctx)*));
        }
    };
}

/// Naive model, independent of the library's tables: bitwise GF(2^8) multiply, Q by direct
/// sum of g^i * D_i (not Horner).
fn naive_mul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1d;
        }
        b >>= 1;
    }
    r
}

fn naive_pq(data: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
    let len = data[0].len();
    let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
    let mut g = 1u8;
    for d in data {
        for j in 0..len {
            p[j] ^= d[j];
            q[j] ^= naive_mul(g, d[j]);
        }
        g = naive_mul(g, 2);
    }
    (p, q)
}

/// Check every loss of up to two members of a stripe with kernels `kern`; outputs start
/// `out_skew` bytes into a page.
fn check_all_losses(
    kern: &Kernels,
    bufs: &[Buf],
    pairs: &[(usize, usize)],
    singles: &[usize],
    out_skew: usize,
) {
    let k = bufs.len();
    let len = bufs[0].len;
    let data = refs(bufs);
    let isa = kern.isa();
    let (mut pb, mut qb) = (Buf::new(len, out_skew), Buf::new(len, out_skew));
    kern.pq_gen(&data, pb.as_mut(), qb.as_mut());
    let (p, q) = (pb.as_ref().to_vec(), qb.as_ref().to_vec());

    // P, Q, and P + Q lost.
    let mut t = Buf::new(len, out_skew);
    t.as_mut().fill(0xa5);
    kern.xor_gen(&data, t.as_mut());
    same!(t.as_ref(), &p, "{isa:?} k={k} len={len}: P regenerated");
    t.as_mut().fill(0xa5);
    kern.q_gen(&data, t.as_mut());
    same!(t.as_ref(), &q, "{isa:?} k={k} len={len}: Q regenerated");

    let mut ob = Buf::new(len, out_skew);
    let mut pab = Buf::new(len, out_skew);
    let out = ob.as_mut();
    let par = pab.as_mut();
    for &x in singles {
        let mut d = data.clone();
        d[x] = &[];
        // D_x alone, D_x + Q, D_x + P.
        out.fill(0x5a);
        kern.recover_data_from_p(&d, x, &p, out, None);
        same!(out, data[x], "{isa:?} k={k} len={len}: D{x} from P");
        out.fill(0x5a);
        par.fill(0x5a);
        kern.recover_data_from_p(&d, x, &p, out, Some(&mut *par));
        same!(out, data[x], "{isa:?} k={k} len={len}: D{x}+Q lost, D{x}");
        same!(par, &q, "{isa:?} k={k} len={len}: D{x}+Q lost, Q");
        out.fill(0x5a);
        kern.recover_data_from_q(&d, x, &q, out, None);
        same!(out, data[x], "{isa:?} k={k} len={len}: D{x} from Q");
        out.fill(0x5a);
        par.fill(0x5a);
        kern.recover_data_from_q(&d, x, &q, out, Some(&mut *par));
        same!(out, data[x], "{isa:?} k={k} len={len}: D{x}+P lost, D{x}");
        same!(par, &p, "{isa:?} k={k} len={len}: D{x}+P lost, P");
    }
    for &(x, y) in pairs {
        let mut d = data.clone();
        d[x] = &[];
        d[y] = &[];
        out.fill(0x5a);
        par.fill(0x5a);
        kern.recover_two_data(&d, x, y, &p, &q, out, par);
        same!(
            out,
            data[x],
            "{isa:?} k={k} len={len}: D{x}+D{y} lost, D{x}"
        );
        same!(
            par,
            data[y],
            "{isa:?} k={k} len={len}: D{x}+D{y} lost, D{y}"
        );
    }
}

fn all_pairs(k: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for x in 0..k {
        for y in 0..k {
            if x != y {
                v.push((x, y));
            }
        }
    }
    v
}

/// Block lengths from 64 B to 1 MiB, mostly small so the suite stays fast.
fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => (1usize..=8).prop_map(|m| m * 64),
        3 => (9usize..=256).prop_map(|m| m * 64),
        1 => (257usize..=16384).prop_map(|m| m * 64),
    ]
}

// ---------- the field and the reference ----------

#[test]
#[cfg_attr(
    not(have_isal),
    ignore = "ISA-L (libisal-dev) is not installed: comparison with ISA-L not built"
)]
fn field_matches_isal_and_naive_multiply() {
    for a in 0..=255u8 {
        for b in 0..=255u8 {
            // SAFETY: pure function of two bytes.
            let i = unsafe { isal::gf_mul(a, b) };
            assert_eq!(gf::mul(a, b), i, "{a} * {b}");
            assert_eq!(naive_mul(a, b), i, "{a} * {b}");
        }
        if a != 0 {
            // SAFETY: pure function of one byte.
            assert_eq!(gf::inv(a), unsafe { isal::gf_inv(a) });
        }
    }
}

#[test]
fn dispatch_uses_the_fastest_path_this_cpu_runs_unless_forced() {
    let has = |f: &str| match f {
        "avx2" => std::arch::is_x86_feature_detected!("avx2"),
        _ => {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("gfni")
        }
    };
    let want = if has("avx512") {
        Isa::Avx512Gfni
    } else if has("avx2") {
        Isa::Avx2
    } else {
        Isa::Scalar
    };
    assert_eq!(Kernels::detect().isa(), want);
    assert_eq!(Kernels::avx2().is_some(), has("avx2"));
    assert_eq!(Kernels::avx512_gfni().is_some(), has("avx512"));
    match std::env::var(nvmf_raid::parity::PATH_ENV) {
        Ok(forced) if !forced.is_empty() => assert_eq!(Kernels::get().isa().name(), forced),
        _ => assert_eq!(Kernels::get().isa(), want),
    }
    for k in Kernels::all() {
        assert_eq!(Kernels::by_name(k.isa().name()).unwrap().isa(), k.isa());
    }
    let e = Kernels::by_name("sse9").unwrap_err();
    assert!(
        e.contains("NVMF_RAID_PARITY=sse9") && e.contains("unknown"),
        "{e}"
    );
    if !has("avx512") {
        let e = Kernels::by_name("avx512-gfni").unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
    }
}

#[test]
fn scalar_reference_matches_naive_model() {
    let scalar = Kernels::scalar();
    for k in [1, 2, 3, 5, 8, 13, 16, 31, 32] {
        for len in [64, 128, 192, 1024] {
            let bufs = stripe(k, len, (k * 31 + len) as u64);
            let data = refs(&bufs);
            let (np, nq) = naive_pq(&data);
            let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
            scalar.pq_gen(&data, &mut p, &mut q);
            same!(&p, &np, "scalar P, k={k} len={len}");
            same!(&q, &nq, "scalar Q, k={k} len={len}");
        }
    }
}

// ---------- every failure combination ----------

/// k = 1..=32 with every ordered pair of data indices, every single data block with and
/// without P or Q, and P, Q, P+Q, for both implementations. Lengths 192 (a 128-byte and a
/// 64-byte pass) and 4096.
#[test]
fn every_failure_combination_for_k_1_to_32() {
    for kern in kernels() {
        for k in 1..=32 {
            for len in [192, 4096] {
                let bufs = stripe(k, len, 1000 + k as u64);
                let singles: Vec<usize> = (0..k).collect();
                check_all_losses(&kern, &bufs, &all_pairs(k), &singles, 0);
            }
        }
    }
}

/// The largest stripe: 255 data blocks (g's order), including the highest indices.
#[test]
fn largest_stripe_of_255_blocks() {
    let k = parity::MAX_DATA_BLOCKS;
    let bufs = stripe(k, 128, 255);
    let data = refs(&bufs);
    let (np, nq) = naive_pq(&data);
    for kern in kernels() {
        let (mut p, mut q) = (vec![0u8; 128], vec![0u8; 128]);
        kern.pq_gen(&data, &mut p, &mut q);
        same!(&p, &np, "{:?} P, k=255", kern.isa());
        same!(&q, &nq, "{:?} Q, k=255", kern.isa());
        check_all_losses(
            &kern,
            &bufs,
            &[(0, 254), (253, 254), (254, 1), (127, 128)],
            &[0, 128, 254],
            0,
        );
    }
}

#[test]
#[should_panic(expected = "256 data blocks")]
fn rejects_256_blocks() {
    let d = [0u8; 64];
    let data = vec![&d[..]; 256];
    let (mut p, mut q) = ([0u8; 64], [0u8; 64]);
    parity::pq_gen(&data, &mut p, &mut q);
}

/// Stripes of 16 MiB and more stream differently in the AVX2 kernels: blocks sharing a page
/// offset take the prefetching path, blocks at distinct offsets with 32-byte aligned outputs
/// the non-temporal one, and with unaligned outputs the plain one. All must agree with the
/// scalar reference and recover every kind of loss.
#[test]
fn large_stripes_every_streaming_path() {
    let len = 1 << 20;
    for (k, stagger, out_skew) in [
        (16, 0, 0),
        (19, 0, 64),
        (16, 320, 0),
        (17, 192, 96),
        (16, 320, 8),
    ] {
        let bufs: Vec<Buf> = (0..k)
            .map(|i| Buf::random(len, (i * stagger) % 4096, 77 + i as u64))
            .collect();
        let data = refs(&bufs);
        let (mut sp, mut sq) = (vec![0u8; len], vec![0u8; len]);
        Kernels::scalar().pq_gen(&data, &mut sp, &mut sq);
        let (mut p, mut q) = (Buf::new(len, out_skew), Buf::new(len, out_skew));
        parity::pq_gen(&data, p.as_mut(), q.as_mut());
        same!(
            p.as_ref(),
            &sp,
            "P k={k} stagger={stagger} out_skew={out_skew}"
        );
        same!(
            q.as_ref(),
            &sq,
            "Q k={k} stagger={stagger} out_skew={out_skew}"
        );
        check_all_losses(
            Kernels::get(),
            &bufs,
            &[(0, k - 1), (3, 7)],
            &[0, k / 2, k - 1],
            out_skew,
        );
    }
}

// ---------- property tests: SIMD against the scalar reference ----------

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// xor_gen, pq_gen and q_gen of random stripes, at any alignment, equal the scalar
    /// kernels' output.
    #[test]
    fn generation_matches_scalar(
        k in 1usize..=32,
        len in len_strategy(),
        seed in any::<u64>(),
        skews in proptest::collection::vec(0usize..64, 35),
    ) {
        let bufs: Vec<Buf> = (0..k).map(|i| Buf::random(len, skews[i], seed ^ i as u64)).collect();
        let data = refs(&bufs);
        let scalar = Kernels::scalar();
        let (mut rp, mut rq) = (vec![0u8; len], vec![0u8; len]);
        scalar.pq_gen(&data, &mut rp, &mut rq);
        let mut rx = vec![0u8; len];
        scalar.xor_gen(&data, &mut rx);
        prop_assert!(rx == rp);

        let (mut p, mut q) = (Buf::new(len, skews[32]), Buf::new(len, skews[33]));
        parity::pq_gen(&data, p.as_mut(), q.as_mut());
        prop_assert!(diff(p.as_ref(), &rp).is_none(), "P differs at {:?}", diff(p.as_ref(), &rp));
        prop_assert!(diff(q.as_ref(), &rq).is_none(), "Q differs at {:?}", diff(q.as_ref(), &rq));
        let mut x = Buf::new(len, skews[34]);
        parity::xor_gen(&data, x.as_mut());
        prop_assert!(diff(x.as_ref(), &rp).is_none());
        let mut q2 = Buf::new(len, skews[34]);
        parity::q_gen(&data, q2.as_mut());
        prop_assert!(diff(q2.as_ref(), &rq).is_none());
    }

    /// Random stripes and lengths: a random pair of lost data blocks, and a random single
    /// block lost alone or with P or with Q, all rebuilt exactly, by both implementations.
    #[test]
    fn recovery_of_random_losses(
        k in 1usize..=32,
        len in len_strategy(),
        seed in any::<u64>(),
        a in any::<usize>(),
        b in any::<usize>(),
        out_skew in 0usize..64,
    ) {
        let bufs = stripe(k, len, seed);
        let x = a % k;
        let pairs = if k >= 2 {
            let y = (x + 1 + b % (k - 1)) % k;
            vec![(x, y)]
        } else {
            vec![]
        };
        for kern in kernels() {
            check_all_losses(&kern, &bufs, &pairs, &[x], out_skew);
        }
    }

    /// Read-modify-write of 1 to 4 distinct blocks gives the parity of the new stripe, for
    /// P alone (RAID-5) and P + Q (RAID-6).
    #[test]
    fn rmw_update_equals_regeneration(
        k in 1usize..=32,
        len in len_strategy(),
        seed in any::<u64>(),
        picks in proptest::collection::vec(any::<usize>(), 1..=4),
    ) {
        let old = stripe(k, len, seed);
        let mut idx: Vec<usize> = picks.iter().map(|p| p % k).collect();
        idx.sort_unstable();
        idx.dedup();
        let new: Vec<Buf> = idx.iter().map(|&i| Buf::random(len, i % 7, seed ^ 0xdead ^ i as u64)).collect();
        let mut after: Vec<&[u8]> = refs(&old);
        for (j, &i) in idx.iter().enumerate() {
            after[i] = new[j].as_ref();
        }
        let updates: Vec<Update> = idx
            .iter()
            .enumerate()
            .map(|(j, &i)| Update { index: i, old: old[i].as_ref(), new: new[j].as_ref() })
            .collect();
        let scalar = Kernels::scalar();
        let (mut ep, mut eq) = (vec![0u8; len], vec![0u8; len]);
        scalar.pq_gen(&after, &mut ep, &mut eq);
        for kern in kernels() {
            let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
            kern.pq_gen(&refs(&old), &mut p, &mut q);
            let mut p5 = p.clone();
            kern.pq_update(&updates, &mut p, &mut q);
            prop_assert!(diff(&p, &ep).is_none(), "{:?} P after RMW of {:?}", kern.isa(), idx);
            prop_assert!(diff(&q, &eq).is_none(), "{:?} Q after RMW of {:?}", kern.isa(), idx);
            kern.p_update(&updates, &mut p5);
            prop_assert!(diff(&p5, &ep).is_none(), "{:?} RAID-5 P after RMW of {:?}", kern.isa(), idx);
        }
    }
}

// ---------- bit-exactness against ISA-L ----------

/// ISA-L's xor_gen and pq_gen (its runtime-dispatched versions) on random 64-byte aligned
/// stripes, k = 2..=32 (ISA-L needs at least two sources), give the same P and Q as ours,
/// byte for byte, for both our implementations.
#[test]
#[cfg_attr(
    not(have_isal),
    ignore = "ISA-L (libisal-dev) is not installed: comparison with ISA-L not built"
)]
fn bit_exact_with_isal_xor_gen_and_pq_gen() {
    let mut cases = Vec::new();
    for k in 2..=32 {
        for len in [64, 128, 192, 4096, 64 * 1024 + 64] {
            cases.push((k, len));
        }
    }
    cases.extend([(4, 1 << 20), (16, 1 << 20), (17, 1 << 20)]);
    for (k, len) in cases {
        let mut bufs = stripe(k, len, (k * 1_000_003 + len) as u64);
        let (mut ip, mut iq) = (Buf::new(len, 0), Buf::new(len, 0));

        let mut arr: Vec<*mut c_void> = bufs.iter_mut().map(|b| b.ptr().cast()).collect();
        arr.push(ip.ptr().cast());
        // SAFETY: k sources and P, each `len` bytes and 64-byte aligned, outliving the call.
        let rc = unsafe { isal::xor_gen((k + 1) as c_int, len as c_int, arr.as_mut_ptr()) };
        assert_eq!(rc, 0, "ISA-L xor_gen k={k} len={len}");
        let ixor = ip.as_ref().to_vec();

        arr.push(iq.ptr().cast());
        // SAFETY: k sources, P and Q, each `len` bytes (a multiple of 32), 64-byte aligned.
        let rc = unsafe { isal::pq_gen((k + 2) as c_int, len as c_int, arr.as_mut_ptr()) };
        assert_eq!(rc, 0, "ISA-L pq_gen k={k} len={len}");
        same!(
            ip.as_ref(),
            &ixor,
            "ISA-L's own P from xor_gen and pq_gen, k={k} len={len}"
        );

        let data = refs(&bufs);
        for kern in kernels() {
            let isa = kern.isa();
            let (mut p, mut q) = (Buf::new(len, 0), Buf::new(len, 0));
            kern.xor_gen(&data, p.as_mut());
            same!(
                p.as_ref(),
                &ixor,
                "{isa:?} xor_gen vs ISA-L, k={k} len={len}"
            );
            p.as_mut().fill(0);
            kern.pq_gen(&data, p.as_mut(), q.as_mut());
            same!(
                p.as_ref(),
                ip.as_ref(),
                "{isa:?} P vs ISA-L pq_gen, k={k} len={len}"
            );
            same!(
                q.as_ref(),
                iq.as_ref(),
                "{isa:?} Q vs ISA-L pq_gen, k={k} len={len}"
            );
        }
    }
}

/// ISA-L's erasure decoder, given the RAID-6 encode matrix (identity, all ones, g^j) and two
/// lost data blocks, produces the same blocks as our recover_two_data.
#[test]
#[cfg_attr(
    not(have_isal),
    ignore = "ISA-L (libisal-dev) is not installed: comparison with ISA-L not built"
)]
fn recovery_agrees_with_isal_decoder() {
    let len = 4096;
    for k in [2, 3, 4, 8, 16, 32] {
        let bufs = stripe(k, len, 4242 + k as u64);
        let data = refs(&bufs);
        let (mut p, mut q) = (Buf::new(len, 0), Buf::new(len, 0));
        parity::pq_gen(&data, p.as_mut(), q.as_mut());
        for (x, y) in [(0, 1), (0, k - 1), (k / 2, k - 1), (k - 2, k / 3)] {
            if x == y {
                continue;
            }
            let mut dec = isal::raid6_decode_rows(k, x, y);
            let mut tbls = vec![0u8; 32 * k * 2];
            let mut srcs: Vec<*mut u8> = isal::raid6_survivors(k, x, y)
                .iter()
                .map(|&r| match r {
                    r if r < k => data[r].as_ptr() as *mut u8,
                    r if r == k => p.ptr(),
                    _ => q.ptr(),
                })
                .collect();
            let (mut ix, mut iy) = (Buf::new(len, 0), Buf::new(len, 0));
            let mut outs = [ix.ptr(), iy.ptr()];
            // SAFETY: 2 x k coefficients, 32 * k * 2 table bytes; k sources and 2 outputs of
            // `len` bytes (ISA-L only reads the sources).
            unsafe {
                isal::ec_init_tables(k as c_int, 2, dec.as_mut_ptr(), tbls.as_mut_ptr());
                isal::ec_encode_data(
                    len as c_int,
                    k as c_int,
                    2,
                    tbls.as_mut_ptr(),
                    srcs.as_mut_ptr(),
                    outs.as_mut_ptr(),
                );
            }
            let mut d = data.clone();
            d[x] = &[];
            d[y] = &[];
            let (mut ox, mut oy) = (vec![0u8; len], vec![0u8; len]);
            parity::recover_two_data(&d, x, y, p.as_ref(), q.as_ref(), &mut ox, &mut oy);
            same!(&ox, ix.as_ref(), "k={k} D{x} vs ISA-L decode");
            same!(&oy, iy.as_ref(), "k={k} D{y} vs ISA-L decode");
            same!(&ox, data[x], "k={k} D{x}");
        }
    }
}

// ---- row-diagonal parity (RAID-6 DP) ----

/// Row and diagonal parity straight from the definition, a byte at a time: cell (r, c) of
/// the p - 1 by p array (data columns, zero columns past k, row parity at column p - 1) is
/// on diagonal (r + c) mod p; diagonal p - 1 is not stored.
fn naive_rdp(p: usize, data: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
    let rows = p - 1;
    let len = data[0].len();
    let c = len / rows;
    let mut row = vec![0u8; len];
    for d in data {
        row.iter_mut().zip(d).for_each(|(x, y)| *x ^= y);
    }
    let cell = |col: usize, r: usize, b: usize| -> u8 {
        if col == p - 1 {
            row[r * c + b]
        } else if col < data.len() {
            data[col][r * c + b]
        } else {
            0
        }
    };
    let mut diag = vec![0u8; len];
    for d in 0..rows {
        for r in 0..rows {
            for col in 0..p {
                if (r + col) % p == d {
                    for b in 0..c {
                        diag[d * c + b] ^= cell(col, r, b);
                    }
                }
            }
        }
    }
    (row, diag)
}

#[test]
fn rdp_matches_the_definition_and_rebuilds_every_pair_for_every_prime_up_to_17() {
    use nvmf_raid::parity::rdp;
    for p in [3usize, 5, 7, 11, 13, 17] {
        let ks: Vec<usize> = if p <= 7 {
            (1..p).collect()
        } else {
            vec![1, 2, p / 2, p - 2, p - 1]
        };
        for k in ks {
            for cell in [64usize, 192] {
                let len = cell * (p - 1);
                let data: Vec<Vec<u8>> = (0..k)
                    .map(|i| common::pattern((p * 1000 + k * 10 + i) as u64, len))
                    .collect();
                let (nrow, ndiag) = naive_rdp(p, &data);
                for kern in kernels() {
                    let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
                    let (mut row, mut diag) = (vec![0u8; len], vec![0u8; len]);
                    kern.rdp_gen(p, &refs, &mut row, &mut diag);
                    assert!(
                        row == nrow && diag == ndiag,
                        "{:?} p={p} k={k}: rdp_gen differs from the definition",
                        kern.isa()
                    );
                    let full: Vec<Vec<u8>> = data
                        .iter()
                        .cloned()
                        .chain([row.clone(), diag.clone()])
                        .collect();
                    let n = k + 2;
                    let mut losses: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
                    for i in 0..n {
                        for j in i + 1..n {
                            losses.push(vec![i, j]);
                            losses.push(vec![j, i]);
                        }
                    }
                    for lost in losses {
                        let mut work: Vec<Vec<u8>> = full.clone();
                        for &l in &lost {
                            work[l].fill(0xA5);
                        }
                        let mut strips: Vec<&mut [u8]> =
                            work.iter_mut().map(|w| w.as_mut_slice()).collect();
                        kern.rdp_recover(p, &mut strips, &lost);
                        for &l in &lost {
                            assert!(work[l] == full[l], "{:?} p={p} k={k} cell={cell}: lost {lost:?}, strip {l} rebuilt wrong (row {}, diag {})", kern.isa(), rdp::row_column(k), rdp::diag_column(k));
                        }
                    }
                }
            }
        }
    }
}

/// A read-modify-write of any piece of any data strip (crossing cells, at any 64-byte
/// offset) leaves the row and diagonal parity the definition gives for the new data, on
/// every path.
#[test]
fn rdp_update_equals_regeneration_for_every_piece() {
    for (p, k) in [(5usize, 4usize), (5, 2), (17, 5), (17, 16)] {
        let cell = 128;
        let len = cell * (p - 1);
        let mut data: Vec<Vec<u8>> = (0..k)
            .map(|i| common::pattern((p * 100 + i) as u64, len))
            .collect();
        for kern in kernels() {
            let (mut row, mut diag) = naive_rdp(p, &data);
            let mut seed = 7u64;
            for index in 0..k {
                for (at, n) in [
                    (0, len),
                    (64, 64),
                    (cell - 64, 128),
                    (len - 192, 192),
                    (cell, 3 * cell),
                ] {
                    seed += 1;
                    let new = common::pattern(seed, n);
                    let old = data[index][at..at + n].to_vec();
                    kern.rdp_update(p, k, index, at, &old, &new, &mut row, &mut diag);
                    data[index][at..at + n].copy_from_slice(&new);
                    let (nrow, ndiag) = naive_rdp(p, &data);
                    assert!(
                        row == nrow && diag == ndiag,
                        "{:?} p={p} k={k}: update of strip {index} bytes {at}..+{n}",
                        kern.isa()
                    );
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "not a prime")]
fn rdp_rejects_a_non_prime() {
    let d = vec![0u8; 64 * 5];
    Kernels::scalar().rdp_gen(6, &[&d], &mut vec![0u8; 64 * 5], &mut vec![0u8; 64 * 5]);
}

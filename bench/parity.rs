//! Parity kernel throughput: nvmf_raid::parity against Intel ISA-L, in one run.
//!
//!   cargo bench --bench parity                 # full run (about a minute or two)
//!   cargo bench --bench parity -- --short      # short run (well under a minute)
//!   PARITY_BENCH_SHORT=1 cargo bench --bench parity
//!   cargo bench --bench parity -- --stagger 320   # block i starts (i * 320) % 4096 into its page
//!
//! For k in {4, 8, 16} data blocks and block sizes {4 KiB, 64 KiB, 1 MiB} it times:
//! * xor: our xor_gen vs ISA-L xor_gen (bytes = k * block).
//! * pq: our pq_gen vs ISA-L pq_gen (bytes = k * block).
//! * rec2: our recover_two_data vs ISA-L ec_encode_data with the decode matrix of the two
//!   lost data blocks, reading k - 2 data blocks + P + Q (bytes = k * block).
//! * rmw: our pq_update of one block (old, new -> P, Q) vs ISA-L ec_encode_data_update
//!   called on the old then the new contents: the same inputs and outputs (bytes = 1 block).
//! * rmw-delta: as rmw, but ISA-L gets old ^ new precomputed (untimed) and makes one call:
//!   an upper bound for ISA-L, shown for transparency.
//!
//! and memcpy of k * block bytes as the machine's physical reference.
//!
//! Buffers are page-aligned by default (as O_DIRECT buffers are; ISA-L needs 32 bytes), which
//! puts every block's bytes at the same page offset, so the k + 2 streams of a stripe compete
//! for the same L1 sets; `--stagger N` offsets block i by (i * N) % 4096 bytes to show the
//! effect.
//! Every row first checks that both implementations produce identical output. Each
//! measurement is the best of several repetitions, ours and ISA-L's alternating, each
//! repetition long enough (tens of ms) for the clock to be negligible.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::c_int;
use std::hint::black_box;
use std::time::{Duration, Instant};

use nvmf_raid::parity::{self, gf, Update};

#[path = "../tests/isal/mod.rs"]
mod isal;

/// A zeroed byte buffer starting `skew` bytes past a page boundary.
struct Buf {
    base: *mut u8,
    ptr: *mut u8,
    len: usize,
}

impl Buf {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len + 4096, 4096).unwrap()
    }
    fn skewed(len: usize, skew: usize) -> Buf {
        assert!(skew < 4096 && skew.is_multiple_of(64));
        // SAFETY: non-zero size; checked for null.
        let base = unsafe { alloc_zeroed(Self::layout(len)) };
        assert!(!base.is_null());
        // SAFETY: skew < 4096, inside the allocation.
        Buf {
            base,
            ptr: unsafe { base.add(skew) },
            len,
        }
    }
    fn new(len: usize) -> Buf {
        Buf::skewed(len, 0)
    }
    fn random_skewed(len: usize, skew: usize, seed: u64) -> Buf {
        let mut b = Buf::skewed(len, skew);
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for w in b.as_mut().chunks_exact_mut(8) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            w.copy_from_slice(&s.to_le_bytes());
        }
        b
    }
    fn random(len: usize, seed: u64) -> Buf {
        Buf::random_skewed(len, 0, seed)
    }
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `len` initialised bytes owned exclusively by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `skewed` with this layout.
        unsafe { dealloc(self.base, Self::layout(self.len)) }
    }
}

struct Cfg {
    reps: usize,
    rep_time: Duration,
}

/// Calls of `f` needed for one repetition to last about `cfg.rep_time`.
fn calibrate(f: &mut dyn FnMut(), cfg: &Cfg) -> u64 {
    f();
    let mut n = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        let e = t.elapsed();
        if e >= cfg.rep_time / 4 {
            let per = e.as_secs_f64() / n as f64;
            return ((cfg.rep_time.as_secs_f64() / per).ceil() as u64).max(1);
        }
        n *= 2;
    }
}

/// Best GB/s of each closure over `cfg.reps` alternating repetitions.
fn race(fs: &mut [&mut dyn FnMut()], bytes: usize, cfg: &Cfg) -> Vec<f64> {
    let iters: Vec<u64> = fs.iter_mut().map(|f| calibrate(*f, cfg)).collect();
    let mut best = vec![0f64; fs.len()];
    for _ in 0..cfg.reps {
        for (i, f) in fs.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..iters[i] {
                f();
            }
            let gbs = (bytes as f64 * iters[i] as f64) / t.elapsed().as_secs_f64() / 1e9;
            best[i] = best[i].max(gbs);
        }
    }
    best
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

struct Stripe {
    data: Vec<Buf>,
    p: Buf,
    q: Buf,
}

/// The installed ISA-L's version, as Debian's package database has it.
fn isal_version() -> String {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "libisal2"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|| "(version unknown)".into())
}

/// What ISA-L's run-time dispatcher picks for xor_gen, pq_gen and the erasure-code
/// kernels on this CPU: its AVX-512 versions need F, VL, BW, DQ and CD, else AVX2, else SSE.
fn isal_path() -> &'static str {
    let f = |s: &str| {
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.split_whitespace().any(|w| w == s))
    };
    if ["avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512cd"]
        .iter()
        .all(|x| f(x))
    {
        "its avx512 kernels"
    } else if f("avx2") {
        "its avx2 kernels"
    } else {
        "its sse kernels"
    }
}

fn main() {
    if !isal::AVAILABLE {
        eprintln!("the parity benchmark races our kernels against ISA-L, which is not installed: apt-get install libisal-dev, then build again");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().collect();
    let short = args.iter().any(|a| a == "--short")
        || std::env::var("PARITY_BENCH_SHORT").is_ok_and(|v| !v.is_empty() && v != "0");
    // Block i of a stripe starts (i * stagger) % 4096 bytes into its page (P and Q follow
    // the data blocks); 0 = every block page-aligned.
    let stagger: usize = args
        .iter()
        .position(|a| a == "--stagger")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("PARITY_BENCH_STAGGER").ok())
        .map(|v| {
            v.parse()
                .expect("--stagger takes a byte count, a multiple of 64")
        })
        .unwrap_or(0);
    assert!(
        stagger.is_multiple_of(64),
        "--stagger must be a multiple of 64"
    );
    let skew = |i: usize| (i * stagger) % 4096;
    let cfg = if short {
        Cfg {
            reps: 3,
            rep_time: Duration::from_millis(15),
        }
    } else {
        Cfg {
            reps: 9,
            rep_time: Duration::from_millis(60),
        }
    };
    let started = Instant::now();
    let paths: Vec<&str> = parity::Kernels::all()
        .iter()
        .map(|k| k.isa().name())
        .collect();
    println!(
        "parity benchmark ({} mode): cpu {}, best of {} x ~{} ms per cell",
        if short { "short" } else { "full" },
        cpu_model(),
        cfg.reps,
        cfg.rep_time.as_millis()
    );
    println!(
        "our path: {} (this CPU runs {}; {}=<path> forces one); ISA-L {}: {}",
        parity::Kernels::get().isa().name(),
        paths.join(", "),
        parity::PATH_ENV,
        isal_version(),
        isal_path()
    );
    println!(
        "block layout: {}",
        if stagger == 0 {
            "every block page-aligned".to_string()
        } else {
            format!("block i at (i * {stagger}) % 4096 bytes into its page")
        }
    );
    println!("load average at start: {}", loadavg());
    println!();
    println!("| op | k | block | ours GB/s | ISA-L GB/s | ours/ISA-L | memcpy GB/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");

    let mut worst: Vec<(String, f64)> = Vec::new();
    let mut dp_rows: Vec<String> = Vec::new();
    for &k in &[4usize, 8, 16] {
        for &bs in &[4096usize, 65536, 1 << 20] {
            let label = if bs >= 1 << 20 {
                format!("{} MiB", bs >> 20)
            } else {
                format!("{} KiB", bs >> 10)
            };
            let mut st = Stripe {
                data: (0..k)
                    .map(|i| Buf::random_skewed(bs, skew(i), (k * 100 + i) as u64 + bs as u64))
                    .collect(),
                p: Buf::skewed(bs, skew(k)),
                q: Buf::skewed(bs, skew(k + 1)),
            };
            let mut ip = Buf::skewed(bs, skew(k));
            let mut iq = Buf::skewed(bs, skew(k + 1));

            // memcpy of k * bs bytes.
            let src = Buf::random(k * bs, 7);
            let mut dst = Buf::new(k * bs);
            let memcpy = race(
                &mut [&mut || {
                    dst.as_mut().copy_from_slice(src.as_ref());
                    black_box(dst.ptr);
                }],
                k * bs,
                &cfg,
            )[0];
            drop((src, dst));

            let mut row = |op: &str, ours: f64, isal: f64| {
                let r = ours / isal;
                println!("| {op} | {k} | {label} | {ours:.2} | {isal:.2} | {r:.2} | {memcpy:.2} |");
                worst.push((format!("{op} k={k} {label}"), r));
            };

            // ---- xor ----
            {
                let data: Vec<&[u8]> = st.data.iter().map(|b| b.as_ref()).collect();
                let mut arr: Vec<*mut std::ffi::c_void> =
                    st.data.iter().map(|b| b.ptr.cast()).collect();
                arr.push(ip.ptr.cast());
                // SAFETY: k + 1 valid, 32-byte-aligned pointers of bs bytes.
                let rc = unsafe { isal::xor_gen((k + 1) as c_int, bs as c_int, arr.as_mut_ptr()) };
                assert_eq!(rc, 0);
                let p = st.p.as_mut();
                parity::xor_gen(&data, p);
                assert!(p == ip.as_ref(), "xor_gen differs from ISA-L");
                let r = race(
                    &mut [
                        &mut || {
                            parity::xor_gen(&data, &mut *p);
                            black_box(p.as_ptr());
                        },
                        &mut || unsafe {
                            // SAFETY: as above.
                            isal::xor_gen((k + 1) as c_int, bs as c_int, arr.as_mut_ptr());
                        },
                    ],
                    k * bs,
                    &cfg,
                );
                row("xor", r[0], r[1]);
            }

            // ---- pq ----
            {
                let data: Vec<&[u8]> = st.data.iter().map(|b| b.as_ref()).collect();
                let mut arr: Vec<*mut std::ffi::c_void> =
                    st.data.iter().map(|b| b.ptr.cast()).collect();
                arr.push(ip.ptr.cast());
                arr.push(iq.ptr.cast());
                // SAFETY: k + 2 valid, 32-byte-aligned pointers of bs bytes; bs % 32 == 0.
                let rc = unsafe { isal::pq_gen((k + 2) as c_int, bs as c_int, arr.as_mut_ptr()) };
                assert_eq!(rc, 0);
                let (p, q) = (st.p.as_mut(), st.q.as_mut());
                parity::pq_gen(&data, p, q);
                assert!(
                    p == ip.as_ref() && q == iq.as_ref(),
                    "pq_gen differs from ISA-L"
                );
                let r = race(
                    &mut [
                        &mut || {
                            parity::pq_gen(&data, &mut *p, &mut *q);
                            black_box((p.as_ptr(), q.as_ptr()));
                        },
                        &mut || unsafe {
                            // SAFETY: as above.
                            isal::pq_gen((k + 2) as c_int, bs as c_int, arr.as_mut_ptr());
                        },
                    ],
                    k * bs,
                    &cfg,
                );
                row("pq", r[0], r[1]);
            }
            // st.p / st.q now hold the stripe's true P and Q.

            // ---- rec2: lose data blocks x and y ----
            {
                let (x, y) = (1usize, k / 2);
                let mut d: Vec<&[u8]> = st.data.iter().map(|b| b.as_ref()).collect();
                d[x] = &[];
                d[y] = &[];
                let mut ox = Buf::skewed(bs, skew(x));
                let mut oy = Buf::skewed(bs, skew(y));
                let (p, q) = (st.p.as_ref(), st.q.as_ref());

                let mut dec = isal::raid6_decode_rows(k, x, y);
                let mut tbls = vec![0u8; 32 * k * 2];
                // SAFETY: 2 rows of k coefficients; tables of 32 * k * 2 bytes.
                unsafe { isal::ec_init_tables(k as c_int, 2, dec.as_mut_ptr(), tbls.as_mut_ptr()) };
                let mut srcs: Vec<*mut u8> = isal::raid6_survivors(k, x, y)
                    .iter()
                    .map(|&r| match r {
                        r if r < k => st.data[r].ptr,
                        r if r == k => st.p.ptr,
                        _ => st.q.ptr,
                    })
                    .collect();
                let mut outs = [ip.ptr, iq.ptr];
                // SAFETY: k source and 2 output pointers of bs bytes; tables built above.
                unsafe {
                    isal::ec_encode_data(
                        bs as c_int,
                        k as c_int,
                        2,
                        tbls.as_mut_ptr(),
                        srcs.as_mut_ptr(),
                        outs.as_mut_ptr(),
                    )
                };
                assert!(
                    ip.as_ref() == st.data[x].as_ref() && iq.as_ref() == st.data[y].as_ref(),
                    "ISA-L decode wrong"
                );
                let (dx, dy) = (ox.as_mut(), oy.as_mut());
                parity::recover_two_data(&d, x, y, p, q, dx, dy);
                assert!(
                    dx == st.data[x].as_ref() && dy == st.data[y].as_ref(),
                    "recover_two_data wrong"
                );
                let r = race(
                    &mut [
                        &mut || {
                            parity::recover_two_data(&d, x, y, p, q, &mut *dx, &mut *dy);
                            black_box((dx.as_ptr(), dy.as_ptr()));
                        },
                        &mut || unsafe {
                            // SAFETY: as above.
                            isal::ec_encode_data(
                                bs as c_int,
                                k as c_int,
                                2,
                                tbls.as_mut_ptr(),
                                srcs.as_mut_ptr(),
                                outs.as_mut_ptr(),
                            )
                        },
                    ],
                    k * bs,
                    &cfg,
                );
                row("rec2", r[0], r[1]);
                let ours_rec2 = r[0];

                // ---- RAID-6 DP (row-diagonal parity) of the same k data blocks ----
                // p: the smallest prime with p - 1 >= k whose p - 1 cells divide the block
                // (5 for k = 4, 17 for k = 8, padded with zero columns, and for k = 16).
                let prime = [3usize, 5, 17, 257]
                    .into_iter()
                    .find(|&p| p > k && bs % (64 * (p - 1)) == 0)
                    .expect("a Fermat prime fits");
                let kern = parity::Kernels::get();
                let data: Vec<&[u8]> = st.data.iter().map(|b| b.as_ref()).collect();
                let mut row_p = Buf::skewed(bs, skew(k));
                let mut diag = Buf::skewed(bs, skew(k + 1));
                kern.rdp_gen(prime, &data, row_p.as_mut(), diag.as_mut());
                let mut iarr: Vec<*mut std::ffi::c_void> =
                    st.data.iter().map(|b| b.ptr.cast()).collect();
                iarr.push(ip.ptr.cast());
                iarr.push(iq.ptr.cast());
                let (pp, qq) = (st.p.as_mut(), st.q.as_mut());
                let r = race(
                    &mut [
                        &mut || {
                            kern.rdp_gen(prime, &data, row_p.as_mut(), diag.as_mut());
                            black_box(diag.ptr);
                        },
                        &mut || unsafe {
                            // SAFETY: k + 2 valid, 32-byte-aligned pointers of bs bytes.
                            isal::pq_gen((k + 2) as c_int, bs as c_int, iarr.as_mut_ptr());
                        },
                        &mut || {
                            parity::pq_gen(&data, &mut *pp, &mut *qq);
                            black_box(qq.as_ptr());
                        },
                    ],
                    k * bs,
                    &cfg,
                );
                row("dp-gen", r[0], r[1]);
                let (dp_gen, our_pq) = (r[0], r[2]);
                // Two data blocks lost, rebuilt from row and diagonal parity.
                let mut work: Vec<Buf> = (0..k + 2).map(|i| Buf::skewed(bs, skew(i))).collect();
                let (x, y) = (1usize, k / 2);
                let rdp_once = |work: &mut Vec<Buf>| {
                    for (i, w) in work.iter_mut().enumerate().take(k) {
                        if i != x && i != y {
                            w.as_mut().copy_from_slice(st.data[i].as_ref());
                        }
                    }
                };
                rdp_once(&mut work);
                work[k].as_mut().copy_from_slice(row_p.as_ref());
                work[k + 1].as_mut().copy_from_slice(diag.as_ref());
                {
                    let mut strips: Vec<&mut [u8]> = work.iter_mut().map(|w| w.as_mut()).collect();
                    kern.rdp_recover(prime, &mut strips, &[x, y]);
                }
                assert!(
                    work[x].as_ref() == st.data[x].as_ref()
                        && work[y].as_ref() == st.data[y].as_ref(),
                    "rdp_recover wrong"
                );
                let r = race(
                    &mut [
                        &mut || {
                            let mut strips: [&mut [u8]; 18] = Default::default();
                            for (s, w) in strips.iter_mut().zip(work.iter_mut()) {
                                *s = w.as_mut();
                            }
                            kern.rdp_recover(prime, &mut strips[..k + 2], &[x, y]);
                            black_box(work[x].ptr);
                        },
                        &mut || unsafe {
                            // SAFETY: as in rec2 above.
                            isal::ec_encode_data(
                                bs as c_int,
                                k as c_int,
                                2,
                                tbls.as_mut_ptr(),
                                srcs.as_mut_ptr(),
                                outs.as_mut_ptr(),
                            )
                        },
                    ],
                    k * bs,
                    &cfg,
                );
                row("dp-rec2", r[0], r[1]);
                dp_rows.push(format!("| {k} | {label} | {prime} | {dp_gen:.2} | {our_pq:.2} | {:.2} | {:.2} | {ours_rec2:.2} | {:.2} |", dp_gen / our_pq, r[0], r[0] / ours_rec2));
            }

            // ---- rmw: rewrite block i ----
            {
                let i = k / 2;
                let new = Buf::random_skewed(bs, skew(i), 99);
                let old = &st.data[i];
                let mut delta = Buf::new(bs);
                for (d, (a, b)) in delta
                    .as_mut()
                    .iter_mut()
                    .zip(old.as_ref().iter().zip(new.as_ref()))
                {
                    *d = a ^ b;
                }
                // ISA-L parity rows: [1 .. 1] and [g^0 .. g^(k-1)].
                let mut coef: Vec<u8> = (0..k).map(|_| 1u8).chain((0..k).map(gf::exp2)).collect();
                let mut tbls = vec![0u8; 32 * k * 2];
                // SAFETY: 2 rows of k coefficients; tables of 32 * k * 2 bytes.
                unsafe {
                    isal::ec_init_tables(k as c_int, 2, coef.as_mut_ptr(), tbls.as_mut_ptr())
                };

                // Expected P, Q after the write.
                let mut nd: Vec<&[u8]> = st.data.iter().map(|b| b.as_ref()).collect();
                nd[i] = new.as_ref();
                let (mut ep, mut eq) = (Buf::new(bs), Buf::new(bs));
                parity::pq_gen(&nd, ep.as_mut(), eq.as_mut());

                ip.as_mut().copy_from_slice(st.p.as_ref());
                iq.as_mut().copy_from_slice(st.q.as_ref());
                let mut outs = [ip.ptr, iq.ptr];
                // SAFETY: one source and two outputs of bs bytes; tables built above.
                unsafe {
                    isal::ec_encode_data_update(
                        bs as c_int,
                        k as c_int,
                        2,
                        i as c_int,
                        tbls.as_mut_ptr(),
                        old.ptr,
                        outs.as_mut_ptr(),
                    );
                    isal::ec_encode_data_update(
                        bs as c_int,
                        k as c_int,
                        2,
                        i as c_int,
                        tbls.as_mut_ptr(),
                        new.ptr,
                        outs.as_mut_ptr(),
                    );
                }
                assert!(
                    ip.as_ref() == ep.as_ref() && iq.as_ref() == eq.as_ref(),
                    "ISA-L update wrong"
                );
                let (p, q) = (st.p.as_mut(), st.q.as_mut());
                let ups = [Update {
                    index: i,
                    old: old.as_ref(),
                    new: new.as_ref(),
                }];
                parity::pq_update(&ups, p, q);
                assert!(p == ep.as_ref() && q == eq.as_ref(), "pq_update wrong");

                let (tp, op) = (tbls.as_mut_ptr(), outs.as_mut_ptr());
                let mut ours = || {
                    parity::pq_update(&ups, &mut *p, &mut *q);
                    black_box((p.as_ptr(), q.as_ptr()));
                };
                let r = race(
                    &mut [
                        &mut ours,
                        &mut || unsafe {
                            // SAFETY: as above.
                            isal::ec_encode_data_update(
                                bs as c_int,
                                k as c_int,
                                2,
                                i as c_int,
                                tp,
                                old.ptr,
                                op,
                            );
                            isal::ec_encode_data_update(
                                bs as c_int,
                                k as c_int,
                                2,
                                i as c_int,
                                tp,
                                new.ptr,
                                op,
                            );
                        },
                        &mut || unsafe {
                            // SAFETY: as above.
                            isal::ec_encode_data_update(
                                bs as c_int,
                                k as c_int,
                                2,
                                i as c_int,
                                tp,
                                delta.ptr,
                                op,
                            );
                        },
                    ],
                    bs,
                    &cfg,
                );
                row("rmw", r[0], r[1]);
                row("rmw-delta", r[0], r[2]);
            }
        }
    }
    println!();
    println!(
        "RAID-6 DP (row-diagonal parity, XOR only) against our P+Q, same k data blocks, same run:"
    );
    println!("| k | block | p | DP encode GB/s | P+Q encode GB/s | DP/P+Q | DP rec2 GB/s | P+Q rec2 GB/s | DP/P+Q |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &dp_rows {
        println!("{r}");
    }
    println!();
    println!("load average at end: {}", loadavg());
    worst.sort_by(|a, b| a.1.total_cmp(&b.1));
    println!(
        "lowest ratios: {}",
        worst
            .iter()
            .take(4)
            .map(|(n, r)| format!("{n} {r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("elapsed: {:.1} s", started.elapsed().as_secs_f64());
}

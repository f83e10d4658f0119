//! RAID parity kernels: RAID-5 P (XOR) and RAID-6 P+Q over GF(2^8), read-modify-write
//! updates, and the recovery of every combination of up to two lost members.
//!
//! A stripe has `k` data blocks D_0 .. D_{k-1} of equal length and two parity blocks:
//!
//! * P = D_0 ^ D_1 ^ ... ^ D_{k-1}
//! * Q = g^0 D_0 ^ g^1 D_1 ^ ... ^ g^{k-1} D_{k-1} over GF(2^8) with polynomial 0x11d and
//!   generator g = {02}: the layout of Linux md raid6 and ISA-L's `pq_gen`, bit for bit.
//!
//! The free functions use the best kernels for this CPU ([`Kernels::get`], chosen once: AVX2
//! when `is_x86_feature_detected!("avx2")`, else the portable scalar code); a [`Kernels`]
//! value runs one particular implementation (the tests compare them).
//!
//! Contract for every function:
//! * All blocks passed (data, parity, outputs) have the same length, a multiple of
//!   [`LEN_MULTIPLE`] (64) bytes; 0 is allowed and does nothing.
//! * `1 <= k <= MAX_DATA_BLOCKS` (255, the order of g: beyond it Q coefficients repeat).
//! * Recovery functions take the stripe's full list of `k` data blocks; the entries at the
//!   lost indices are never read and may be anything (an empty slice is typical).
//! * Any alignment is correct. 64-byte aligned blocks are fastest (no access straddles a
//!   cache line); the kernels never require more.
//! * Violations panic (they are bugs in the caller, not I/O errors). Nothing allocates.
//!
//! Which function rebuilds what:
//!
//! | lost                  | call                                                        |
//! |-----------------------|-------------------------------------------------------------|
//! | P                     | [`xor_gen`]                                                 |
//! | Q                     | [`q_gen`]                                                   |
//! | P and Q               | [`pq_gen`]                                                  |
//! | D_x                   | [`recover_data_from_p`] (`q_out` = None)                    |
//! | D_x and Q             | [`recover_data_from_p`] (`q_out` = Some)                    |
//! | D_x and P             | [`recover_data_from_q`] (`p_out` = Some)                    |
//! | D_x and D_y           | [`recover_two_data`]                                        |

pub mod gf;
pub mod rdp;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod stream;

use std::sync::OnceLock;

/// Block lengths must be multiples of this many bytes.
pub const LEN_MULTIPLE: usize = 64;

/// Most data blocks in one stripe: the order of the generator {02}.
pub const MAX_DATA_BLOCKS: usize = gf::ORDER;

/// One data block rewritten in place, for [`p_update`] and [`pq_update`].
#[derive(Clone, Copy, Debug)]
pub struct Update<'a> {
    /// The block's index in the stripe (its Q coefficient is g^index).
    pub index: usize,
    /// Its contents before the write.
    pub old: &'a [u8],
    /// Its contents after the write.
    pub new: &'a [u8],
}

/// Which instruction set a [`Kernels`] value uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust (64-bit words and table lookups).
    Scalar,
    /// x86-64 AVX2.
    Avx2,
    /// x86-64 AVX-512 (F, BW) with GFNI.
    Avx512Gfni,
}

impl Isa {
    /// The name [`PATH_ENV`] takes and the benchmarks print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Gfni => "avx512-gfni",
        }
    }
}

/// Environment variable that forces the kernels the free functions use: `scalar`, `avx2`
/// or `avx512-gfni` (one this CPU runs); unset, the fastest this CPU runs.
pub const PATH_ENV: &str = "NVMF_RAID_PARITY";

type XorFn = unsafe fn(&[&[u8]], &mut [u8]);
type PqFn = unsafe fn(&[&[u8]], Option<&mut [u8]>, &mut [u8]);
type UpdateFn = unsafe fn(&[Update<'_>], Option<&mut [u8]>, Option<&mut [u8]>);
type RecoverOneFn = unsafe fn(&[&[u8]], usize, &[u8], &mut [u8], Option<&mut [u8]>);
type RecoverTwoFn = unsafe fn(&[&[u8]], usize, usize, &[u8], &[u8], &mut [u8], &mut [u8]);
type RdpRunFn = unsafe fn(&rdp::Schedule, &rdp::Strips);

/// One implementation of every kernel. Its methods check the contract (see the module
/// docs), then call the kernel; the free functions of this module call [`Kernels::get`]'s.
#[derive(Clone, Copy)]
pub struct Kernels {
    isa: Isa,
    xor_gen: XorFn,
    pq_gen: PqFn,
    update: UpdateFn,
    recover_from_p: RecoverOneFn,
    recover_from_q: RecoverOneFn,
    recover_two: RecoverTwoFn,
    rdp_run: RdpRunFn,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("isa", &self.isa).finish()
    }
}

impl Kernels {
    /// The portable kernels (every CPU).
    pub fn scalar() -> Kernels {
        Kernels {
            isa: Isa::Scalar,
            xor_gen: scalar::xor_gen,
            pq_gen: scalar::pq_gen,
            update: scalar::update,
            recover_from_p: scalar::recover_from_p,
            recover_from_q: scalar::recover_from_q,
            recover_two: scalar::recover_two,
            rdp_run: rdp::run_scalar,
        }
    }

    /// The AVX2 kernels, if this CPU has AVX2.
    pub fn avx2() -> Option<Kernels> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // The fn pointers are only reachable through a value built here, after the
            // feature check: that is what makes calling them (unsafe fns) sound.
            return Some(Kernels {
                isa: Isa::Avx2,
                xor_gen: avx2::xor_gen,
                pq_gen: avx2::pq_gen,
                update: avx2::update,
                recover_from_p: avx2::recover_from_p,
                recover_from_q: avx2::recover_from_q,
                recover_two: avx2::recover_two,
                rdp_run: avx2::rdp_run,
            });
        }
        None
    }

    /// The AVX-512 + GFNI kernels, if this CPU has AVX-512F, AVX-512BW and GFNI.
    pub fn avx512_gfni() -> Option<Kernels> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("gfni")
        {
            // The fn pointers are only reachable through a value built here, after the
            // feature check: that is what makes calling them (unsafe fns) sound.
            return Some(Kernels {
                isa: Isa::Avx512Gfni,
                xor_gen: avx512::xor_gen,
                pq_gen: avx512::pq_gen,
                update: avx512::update,
                recover_from_p: avx512::recover_from_p,
                recover_from_q: avx512::recover_from_q,
                recover_two: avx512::recover_two,
                rdp_run: avx512::rdp_run,
            });
        }
        None
    }

    /// Every implementation this CPU runs, the reference (scalar) first, the fastest last.
    pub fn all() -> Vec<Kernels> {
        let mut v = vec![Self::scalar()];
        v.extend(Self::avx2());
        v.extend(Self::avx512_gfni());
        v
    }

    /// The fastest kernels this CPU supports.
    pub fn detect() -> Kernels {
        Self::all().pop().expect("scalar always runs")
    }

    /// The kernels named `name` (see [`Isa::name`]), if this CPU runs them.
    pub fn by_name(name: &str) -> Result<Kernels, String> {
        let all = Self::all();
        let names: Vec<&str> = all.iter().map(|k| k.isa.name()).collect();
        all.iter()
            .find(|k| k.isa.name() == name)
            .copied()
            .ok_or_else(|| {
                let known = ["scalar", "avx2", "avx512-gfni"];
                if known.contains(&name) {
                    format!(
                        "{PATH_ENV}={name}: this CPU cannot run it (it runs: {})",
                        names.join(", ")
                    )
                } else {
                    format!("{PATH_ENV}={name}: unknown parity path (scalar, avx2 or avx512-gfni)")
                }
            })
    }

    /// The kernels [`PATH_ENV`] asks for, or the fastest this CPU runs when it is unset.
    pub fn from_env() -> Result<Kernels, String> {
        match std::env::var(PATH_ENV) {
            Ok(name) if !name.is_empty() => Self::by_name(&name),
            _ => Ok(Self::detect()),
        }
    }

    /// The kernels the free functions use: [`Kernels::from_env`], once per process. The
    /// server checks the variable at start, so this panics only in a program that did not.
    pub fn get() -> &'static Kernels {
        static K: OnceLock<Kernels> = OnceLock::new();
        K.get_or_init(|| Self::from_env().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Which instruction set these kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// P = XOR of `data`. See [`xor_gen`].
    pub fn xor_gen(&self, data: &[&[u8]], p: &mut [u8]) {
        let len = check_len(p.len());
        check_blocks("xor_gen", data, len, &[]);
        if len == 0 {
            return;
        }
        // SAFETY: `self` was built for a CPU with this ISA; lengths checked above.
        unsafe { (self.xor_gen)(data, p) }
    }

    /// P and Q of `data`. See [`pq_gen`].
    pub fn pq_gen(&self, data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
        let len = check_len(q.len());
        check_out("pq_gen", "P", p.len(), len);
        check_blocks("pq_gen", data, len, &[]);
        if len == 0 {
            return;
        }
        // SAFETY: `self` was built for a CPU with this ISA; lengths checked above.
        unsafe { (self.pq_gen)(data, Some(p), q) }
    }

    /// Q of `data`. See [`q_gen`].
    pub fn q_gen(&self, data: &[&[u8]], q: &mut [u8]) {
        let len = check_len(q.len());
        check_blocks("q_gen", data, len, &[]);
        if len == 0 {
            return;
        }
        // SAFETY: `self` was built for a CPU with this ISA; lengths checked above.
        unsafe { (self.pq_gen)(data, None, q) }
    }

    /// RAID-5 read-modify-write. See [`p_update`].
    pub fn p_update(&self, updates: &[Update<'_>], p: &mut [u8]) {
        let len = check_len(p.len());
        check_updates("p_update", updates, len);
        if len == 0 || updates.is_empty() {
            return;
        }
        // SAFETY: `self` was built for a CPU with this ISA; lengths and indices checked.
        unsafe { (self.update)(updates, Some(p), None) }
    }

    /// RAID-6 read-modify-write. See [`pq_update`].
    pub fn pq_update(&self, updates: &[Update<'_>], p: &mut [u8], q: &mut [u8]) {
        let len = check_len(p.len());
        check_out("pq_update", "Q", q.len(), len);
        check_updates("pq_update", updates, len);
        if len == 0 || updates.is_empty() {
            return;
        }
        // SAFETY: `self` was built for a CPU with this ISA; lengths and indices checked.
        unsafe { (self.update)(updates, Some(p), Some(q)) }
    }

    /// D_x from P (and Q regenerated into `q_out`). See [`recover_data_from_p`].
    pub fn recover_data_from_p(
        &self,
        data: &[&[u8]],
        x: usize,
        p: &[u8],
        dx: &mut [u8],
        q_out: Option<&mut [u8]>,
    ) {
        let len = check_len(dx.len());
        check_out("recover_data_from_p", "P", p.len(), len);
        if let Some(q) = &q_out {
            check_out("recover_data_from_p", "Q", q.len(), len);
        }
        check_index("recover_data_from_p", x, data.len());
        check_blocks("recover_data_from_p", data, len, &[x]);
        if len == 0 {
            return;
        }
        // SAFETY: `self` was built for a CPU with this ISA; lengths and index checked.
        unsafe { (self.recover_from_p)(data, x, p, dx, q_out) }
    }

    /// D_x from Q (and P regenerated into `p_out`). See [`recover_data_from_q`].
    pub fn recover_data_from_q(
        &self,
        data: &[&[u8]],
        x: usize,
        q: &[u8],
        dx: &mut [u8],
        p_out: Option<&mut [u8]>,
    ) {
        let len = check_len(dx.len());
        check_out("recover_data_from_q", "Q", q.len(), len);
        if let Some(p) = &p_out {
            check_out("recover_data_from_q", "P", p.len(), len);
        }
        check_index("recover_data_from_q", x, data.len());
        check_blocks("recover_data_from_q", data, len, &[x]);
        if len == 0 {
            return;
        }
        // SAFETY: `self` was built for a CPU with this ISA; lengths and index checked.
        unsafe { (self.recover_from_q)(data, x, q, dx, p_out) }
    }

    /// D_x and D_y from P and Q. See [`recover_two_data`].
    #[allow(clippy::too_many_arguments)]
    pub fn recover_two_data(
        &self,
        data: &[&[u8]],
        x: usize,
        y: usize,
        p: &[u8],
        q: &[u8],
        dx: &mut [u8],
        dy: &mut [u8],
    ) {
        let len = check_len(dx.len());
        for (what, l) in [("P", p.len()), ("Q", q.len()), ("D_y", dy.len())] {
            check_out("recover_two_data", what, l, len);
        }
        check_index("recover_two_data", x, data.len());
        check_index("recover_two_data", y, data.len());
        assert!(x != y, "recover_two_data: x and y are both {x}");
        check_blocks("recover_two_data", data, len, &[x, y]);
        if len == 0 {
            return;
        }
        // SAFETY: `self` was built for a CPU with this ISA; lengths and indices checked,
        // and the kernel gets x < y as it requires.
        unsafe {
            if x < y {
                (self.recover_two)(data, x, y, p, q, dx, dy)
            } else {
                (self.recover_two)(data, y, x, p, q, dy, dx)
            }
        }
    }
}

#[track_caller]
fn check_len(len: usize) -> usize {
    assert!(
        len.is_multiple_of(LEN_MULTIPLE),
        "parity: block length {len} is not a multiple of {LEN_MULTIPLE}"
    );
    len
}

#[track_caller]
fn check_out(f: &str, what: &str, got: usize, len: usize) {
    assert!(
        got == len,
        "{f}: {what} has {got} bytes, the other blocks {len}"
    );
}

#[track_caller]
fn check_index(f: &str, i: usize, k: usize) {
    assert!(
        i < k,
        "{f}: index {i} is outside the stripe's {k} data blocks"
    );
}

#[track_caller]
fn check_blocks(f: &str, data: &[&[u8]], len: usize, missing: &[usize]) {
    let k = data.len();
    assert!(
        (1..=MAX_DATA_BLOCKS).contains(&k),
        "{f}: {k} data blocks (1 to {MAX_DATA_BLOCKS} supported)"
    );
    for (i, d) in data.iter().enumerate() {
        if !missing.contains(&i) {
            assert!(
                d.len() == len,
                "{f}: data block {i} has {} bytes, expected {len}",
                d.len()
            );
        }
    }
}

#[track_caller]
fn check_updates(f: &str, updates: &[Update<'_>], len: usize) {
    for u in updates {
        assert!(
            u.index < MAX_DATA_BLOCKS,
            "{f}: block index {} >= {MAX_DATA_BLOCKS}",
            u.index
        );
        assert!(
            u.old.len() == len && u.new.len() == len,
            "{f}: block {} has old {} / new {} bytes, parity {len}",
            u.index,
            u.old.len(),
            u.new.len()
        );
    }
}

/// RAID-5 parity: P = D_0 ^ ... ^ D_{k-1}. Also rebuilds a lost P.
pub fn xor_gen(data: &[&[u8]], p: &mut [u8]) {
    Kernels::get().xor_gen(data, p)
}

/// RAID-6 parity: P = XOR of `data`, Q = sum g^i D_i. Also rebuilds lost P and Q together.
pub fn pq_gen(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
    Kernels::get().pq_gen(data, p, q)
}

/// Q alone (rebuilds a lost Q when P is intact).
pub fn q_gen(data: &[&[u8]], q: &mut [u8]) {
    Kernels::get().q_gen(data, q)
}

/// Row-diagonal parity (RAID-6 DP) of `data` over prime `prime`: see [`rdp`].
pub fn rdp_gen(prime: usize, data: &[&[u8]], row: &mut [u8], diag: &mut [u8]) {
    Kernels::get().rdp_gen(prime, data, row, diag)
}

/// Rebuild one or two lost strips of a RAID-6 DP stripe: see [`Kernels::rdp_recover`].
pub fn rdp_recover(prime: usize, strips: &mut [&mut [u8]], lost: &[usize]) {
    Kernels::get().rdp_recover(prime, strips, lost)
}

/// RAID-5 read-modify-write: P ^= old ^ new for each rewritten block, without reading the
/// stripe's other data blocks. Updates must name distinct blocks; an empty list does nothing.
pub fn p_update(updates: &[Update<'_>], p: &mut [u8]) {
    Kernels::get().p_update(updates, p)
}

/// RAID-6 read-modify-write: P ^= old ^ new and Q ^= g^index (old ^ new) for each rewritten
/// block, without reading the stripe's other data blocks. Updates must name distinct blocks.
pub fn pq_update(updates: &[Update<'_>], p: &mut [u8], q: &mut [u8]) {
    Kernels::get().pq_update(updates, p, q)
}

/// Rebuild data block `x` from P and the other data blocks (`data[x]` is not read). With
/// `q_out`, Q is regenerated in the same pass (for a stripe that lost D_x and Q).
pub fn recover_data_from_p(
    data: &[&[u8]],
    x: usize,
    p: &[u8],
    dx: &mut [u8],
    q_out: Option<&mut [u8]>,
) {
    Kernels::get().recover_data_from_p(data, x, p, dx, q_out)
}

/// Rebuild data block `x` from Q and the other data blocks (`data[x]` is not read):
/// D_x = g^-x (Q ^ sum_{i != x} g^i D_i). With `p_out`, P is regenerated in the same pass (for
/// a stripe that lost D_x and P).
pub fn recover_data_from_q(
    data: &[&[u8]],
    x: usize,
    q: &[u8],
    dx: &mut [u8],
    p_out: Option<&mut [u8]>,
) {
    Kernels::get().recover_data_from_q(data, x, q, dx, p_out)
}

/// Rebuild data blocks `x` and `y` (distinct, any order) from P, Q and the other data blocks
/// (`data[x]` and `data[y]` are not read), in one pass over the inputs.
#[allow(clippy::too_many_arguments)]
pub fn recover_two_data(
    data: &[&[u8]],
    x: usize,
    y: usize,
    p: &[u8],
    q: &[u8],
    dx: &mut [u8],
    dy: &mut [u8],
) {
    Kernels::get().recover_two_data(data, x, y, p, q, dx, dy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(seed: u64, buf: &mut [u8]) {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for b in buf.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *b = (s >> 24) as u8;
        }
    }

    fn all_kernels() -> Vec<Kernels> {
        Kernels::all()
    }

    #[test]
    fn detect_prefers_the_widest_path_present() {
        let want = if let Some(k) = Kernels::avx512_gfni() {
            k.isa()
        } else if let Some(k) = Kernels::avx2() {
            k.isa()
        } else {
            Isa::Scalar
        };
        assert_eq!(Kernels::detect().isa(), want);
        assert_eq!(
            Kernels::all().first().map(|k| k.isa()),
            Some(Isa::Scalar),
            "the reference first"
        );
    }

    #[test]
    fn every_loss_of_a_small_stripe_round_trips() {
        for kern in all_kernels() {
            for k in 1..=6 {
                for len in [0, 64, 128, 192, 320] {
                    let mut bufs = vec![vec![0u8; len]; k];
                    for (i, b) in bufs.iter_mut().enumerate() {
                        fill((k * 1000 + len + i) as u64, b);
                    }
                    let data: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
                    let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
                    kern.pq_gen(&data, &mut p, &mut q);
                    let mut p2 = vec![1u8; len];
                    kern.xor_gen(&data, &mut p2);
                    assert_eq!(p, p2);
                    for x in 0..k {
                        let mut d = data.clone();
                        d[x] = &[];
                        let (mut dx, mut q2, mut p3) =
                            (vec![0u8; len], vec![0u8; len], vec![0u8; len]);
                        kern.recover_data_from_p(&d, x, &p, &mut dx, Some(&mut q2));
                        assert_eq!(dx, bufs[x], "{:?} k={k} len={len} D{x}+Q", kern.isa());
                        assert_eq!(q2, q);
                        kern.recover_data_from_q(&d, x, &q, &mut dx, Some(&mut p3));
                        assert_eq!(dx, bufs[x], "{:?} k={k} len={len} D{x}+P", kern.isa());
                        assert_eq!(p3, p);
                        for y in 0..k {
                            if y == x {
                                continue;
                            }
                            let mut d = d.clone();
                            d[y] = &[];
                            let (mut dx, mut dy) = (vec![0u8; len], vec![0u8; len]);
                            kern.recover_two_data(&d, x, y, &p, &q, &mut dx, &mut dy);
                            assert_eq!(dx, bufs[x], "{:?} k={k} len={len} D{x}+D{y}", kern.isa());
                            assert_eq!(dy, bufs[y]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "not a multiple of 64")]
    fn rejects_length_not_multiple_of_64() {
        let d = [0u8; 96];
        let mut p = [0u8; 96];
        xor_gen(&[&d], &mut p);
    }

    #[test]
    #[should_panic(expected = "data block 1 has 64 bytes")]
    fn rejects_mismatched_lengths() {
        let (a, b) = ([0u8; 128], [0u8; 64]);
        let (mut p, mut q) = ([0u8; 128], [0u8; 128]);
        pq_gen(&[&a, &b], &mut p, &mut q);
    }

    #[test]
    #[should_panic(expected = "x and y are both 1")]
    fn rejects_same_index_twice() {
        let a = [0u8; 64];
        let (p, q) = ([0u8; 64], [0u8; 64]);
        let (mut dx, mut dy) = ([0u8; 64], [0u8; 64]);
        recover_two_data(&[&a, &[], &a], 1, 1, &p, &q, &mut dx, &mut dy);
    }

    #[test]
    #[should_panic(expected = "0 data blocks")]
    fn rejects_empty_stripe() {
        let mut p = [0u8; 64];
        xor_gen(&[], &mut p);
    }
}

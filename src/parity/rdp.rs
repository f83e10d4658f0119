//! Row-diagonal parity (RAID-6 DP; Corbett et al., "Row-Diagonal Parity for Double Disk
//! Failure Correction", FAST 2004): two parity strips from XOR alone.
//!
//! For a prime `p`, a stripe is an array of p - 1 rows and p + 1 columns: data columns
//! 0 .. p - 2, the row-parity column p - 1, and the diagonal-parity column. Every strip is
//! split into p - 1 equal cells, cell r of a strip being row r. Cell (r, c) of the data and
//! row-parity columns lies on diagonal (r + c) mod p. The row parity of row r is the XOR of
//! the data cells of row r; diagonal-parity cell d is the XOR of the cells (data and row
//! parity) on diagonal d, for d = 0 .. p - 2; diagonal p - 1 is stored nowhere. Arrays with
//! fewer than p - 1 data columns are padded with columns of zeroes, as the paper does: the
//! caller passes k <= p - 1 data strips and the missing ones count as zero.
//!
//! Any two lost strips are rebuilt. The decoder peels: a row, or a stored diagonal, with
//! exactly one unknown cell gives that cell, which completes another diagonal or row, and
//! so on. For two lost data columns this is the paper's chain: it starts at the diagonal
//! that misses one of them, recovers a cell, then the row through it, then the next
//! diagonal, until both columns are rebuilt. A lost diagonal strip is regenerated last.
//!
//! Encoding and every recovery are a [`Schedule`]: a list of steps "cell t = XOR of cells
//! s1, s2, ..", computed once per call from (p, k, lost) alone. The kernels run a schedule
//! 64 bytes of every cell at a time (one ISA-specific loop, `run` in the scalar, AVX2 and
//! AVX-512 modules): every strip is read from memory once and written once, and a cell
//! written by one step and read by a later one is still in L1.

/// The largest prime supported: 16 data columns. RAID-6 DP volumes use p = 5 or 17 (p - 1
/// a power of two, so a strip splits into equal cells).
pub const MAX_PRIME: usize = 17;
const ROWS: usize = MAX_PRIME - 1;
/// Bytes of every cell a kernel runs the whole schedule over before the next: the cells of
/// one chunk (up to 18 x 16 of them) stay in L2.
pub const CHUNK: usize = 1024;
/// Strips of a stripe: data, row parity, diagonal parity.
pub const MAX_STRIPS: usize = ROWS + 2;
/// Steps: every cell of the two parity strips (encode), or of two lost strips.
const MAX_STEPS: usize = 2 * ROWS;
/// Sources of one step: the other cells of a row (data and row parity) or of a diagonal
/// (data, row parity, and the diagonal-parity cell).
pub const MAX_SOURCES: usize = MAX_STRIPS;

/// Column of the row parity and the diagonal parity in the `strips` the functions take
/// for a stripe of `k` data strips: data 0 .. k - 1, then row parity `k`, diagonal `k + 1`.
pub fn row_column(k: usize) -> usize {
    k
}

pub fn diag_column(k: usize) -> usize {
    k + 1
}

/// The prime a RAID-6 DP volume of `k` data members uses: 5 up to four data members, 17
/// up to sixteen (p - 1 a power of two, so a power-of-two strip splits into equal cells).
pub fn prime_for(k: usize) -> usize {
    assert!(
        (1..MAX_PRIME).contains(&k),
        "rdp: {k} data strips (1 to {} supported)",
        MAX_PRIME - 1
    );
    if k <= 4 {
        5
    } else {
        MAX_PRIME
    }
}

pub fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..n)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// One cell: (strip, row).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cell {
    pub strip: u8,
    pub row: u8,
}

/// One step: `target` = XOR of `sources[..n]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Step {
    pub target: Cell,
    pub n: u8,
    pub sources: [Cell; MAX_SOURCES],
}

/// What a kernel runs: the steps, in order.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub steps: [Step; MAX_STEPS],
    pub len: usize,
}

impl Schedule {
    fn new() -> Schedule {
        Schedule {
            steps: [Step::default(); MAX_STEPS],
            len: 0,
        }
    }

    fn push(&mut self, target: Cell, sources: impl Iterator<Item = Cell>) {
        let mut s = Step {
            target,
            ..Step::default()
        };
        for c in sources {
            s.sources[s.n as usize] = c;
            s.n += 1;
        }
        self.steps[self.len] = s;
        self.len += 1;
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps[..self.len]
    }
}

/// A stripe's geometry: the prime and the number of data strips.
#[derive(Clone, Copy, Debug)]
struct Array {
    prime: usize,
    k: usize,
}

impl Array {
    fn rows(self) -> usize {
        self.prime - 1
    }

    /// The array column of strip `s` (data, or p - 1 for the row parity).
    fn column(self, s: usize) -> usize {
        if s == row_column(self.k) {
            self.prime - 1
        } else {
            s
        }
    }

    fn cell(s: usize, r: usize) -> Cell {
        Cell {
            strip: s as u8,
            row: r as u8,
        }
    }

    /// The cells of row `r` (data and row parity) other than strip `except`'s.
    fn row_cells(self, r: usize, except: usize) -> impl Iterator<Item = Cell> {
        (0..=self.k)
            .filter(move |&s| s != except)
            .map(move |s| Self::cell(s, r))
    }

    /// The data and row-parity cells on diagonal `d` other than strip `except`'s.
    fn diag_cells(self, d: usize, except: usize) -> impl Iterator<Item = Cell> {
        let p = self.prime;
        (0..=self.k)
            .filter(move |&s| s != except)
            .map(move |s| (s, (d + p - self.column(s)) % p))
            .filter(move |&(_, r)| r != p - 1)
            .map(|(s, r)| Self::cell(s, r))
    }

    /// The diagonal of cell (r, strip s).
    fn diagonal(self, s: usize, r: usize) -> usize {
        (r + self.column(s)) % self.prime
    }
}

/// Row parity, then diagonal parity.
pub fn encode_schedule(prime: usize, k: usize) -> Schedule {
    let a = Array { prime, k };
    let mut s = Schedule::new();
    for r in 0..a.rows() {
        s.push(Array::cell(row_column(k), r), a.row_cells(r, row_column(k)));
    }
    push_diagonals(a, &mut s);
    s
}

/// The encode schedule of every (p, k), built once per process: encoding is on the write
/// path, and building a schedule costs more than running it on small strips.
fn encode_schedule_cached(prime: usize, k: usize) -> &'static Schedule {
    static ALL: std::sync::OnceLock<Vec<Schedule>> = std::sync::OnceLock::new();
    let all = ALL.get_or_init(|| {
        (0..(MAX_PRIME + 1) * MAX_PRIME)
            .map(|i| {
                let (p, k) = (i / MAX_PRIME, i % MAX_PRIME);
                if is_prime(p) && (1..p).contains(&k) {
                    encode_schedule(p, k)
                } else {
                    Schedule::new()
                }
            })
            .collect()
    });
    &all[prime * MAX_PRIME + k]
}

/// The recovery schedule of every loss of a (p, k) stripe, built at its first recovery:
/// building one costs about as much as recovering a 4 KiB stripe. Index x * MAX_STRIPS + y
/// for the pair (x, y), x * MAX_STRIPS + x for x alone.
fn recovery_schedule_cached(prime: usize, k: usize, lost: &[usize]) -> &'static Schedule {
    type Table = std::sync::OnceLock<Box<[Schedule]>>;
    static ALL: std::sync::LazyLock<Box<[Table]>> = std::sync::LazyLock::new(|| {
        (0..(MAX_PRIME + 1) * MAX_PRIME)
            .map(|_| Table::new())
            .collect()
    });
    let table = ALL[prime * MAX_PRIME + k].get_or_init(|| {
        (0..MAX_STRIPS * MAX_STRIPS)
            .map(|i| {
                let (x, y) = (i / MAX_STRIPS, i % MAX_STRIPS);
                match (x < k + 2, y < k + 2) {
                    (true, true) if x == y => recovery_schedule(prime, k, &[x]),
                    (true, true) => recovery_schedule(prime, k, &[x, y]),
                    _ => Schedule::new(),
                }
            })
            .collect()
    });
    let (x, y) = (lost[0], *lost.last().expect("one or two lost"));
    &table[x * MAX_STRIPS + y]
}

fn push_diagonals(a: Array, s: &mut Schedule) {
    for d in 0..a.rows() {
        s.push(
            Array::cell(diag_column(a.k), d),
            a.diag_cells(d, usize::MAX),
        );
    }
}

/// The steps that rebuild the strips `lost` (one or two distinct indices: data
/// 0 .. k - 1, row parity k, diagonal parity k + 1).
pub fn recovery_schedule(prime: usize, k: usize, lost: &[usize]) -> Schedule {
    let a = Array { prime, k };
    let diag = diag_column(k);
    let mut s = Schedule::new();
    let mut peel_lost = [usize::MAX; 2];
    let mut n = 0;
    for &l in lost.iter().filter(|&&l| l != diag) {
        peel_lost[n] = l;
        n += 1;
    }
    peel(a, &peel_lost[..n], n == lost.len(), &mut s);
    if lost.contains(&diag) {
        push_diagonals(a, &mut s);
    }
    s
}

/// Rebuild the data or row-parity strips `lost` cell by cell: a row, or a stored diagonal
/// when `use_diag`, with exactly one unknown cell gives it. A worklist of the rows and
/// diagonals down to one unknown cell keeps this linear in the number of cells.
fn peel(a: Array, lost: &[usize], use_diag: bool, s: &mut Schedule) {
    let (rows, p) = (a.rows(), a.prime);
    let mut known = [[false; ROWS]; 2];
    // Unknown cells per row and per diagonal (diagonal p - 1 is never used).
    let mut in_row = [0u8; ROWS];
    let mut in_diag = [0u8; MAX_PRIME];
    for &x in lost {
        for r in 0..rows {
            in_row[r] += 1;
            in_diag[a.diagonal(x, r)] += 1;
        }
    }
    // Work items: (is_row, index).
    let mut work = [(false, 0usize); 2 * MAX_PRIME + 2 * MAX_STEPS];
    let (mut head, mut tail) = (0, 0);
    let push = |work: &mut [(bool, usize)], tail: &mut usize, item: (bool, usize)| {
        work[*tail] = item;
        *tail += 1;
    };
    for (r, _) in in_row[..rows].iter().enumerate().filter(|(_, &n)| n == 1) {
        push(&mut work, &mut tail, (true, r));
    }
    if use_diag {
        for (d, _) in in_diag[..p - 1].iter().enumerate().filter(|(_, &n)| n == 1) {
            push(&mut work, &mut tail, (false, d));
        }
    }
    let mut remaining = lost.len() * rows;
    while head < tail {
        let (is_row, i) = work[head];
        head += 1;
        // The one unknown cell left on this row or diagonal, if it is still unknown.
        let found = lost.iter().enumerate().find_map(|(j, &x)| {
            let r = if is_row { i } else { (i + p - a.column(x)) % p };
            (r != p - 1 && !known[j][r]).then_some((j, x, r))
        });
        let Some((j, x, r)) = found else { continue };
        if is_row {
            s.push(Array::cell(x, r), a.row_cells(r, x));
        } else {
            s.push(
                Array::cell(x, r),
                a.diag_cells(i, x).chain([Array::cell(diag_column(a.k), i)]),
            );
        }
        known[j][r] = true;
        remaining -= 1;
        in_row[r] -= 1;
        if in_row[r] == 1 {
            push(&mut work, &mut tail, (true, r));
        }
        let d = a.diagonal(x, r);
        in_diag[d] -= 1;
        if use_diag && d != p - 1 && in_diag[d] == 1 {
            push(&mut work, &mut tail, (false, d));
        }
    }
    assert!(
        remaining == 0,
        "rdp: peeling stalled for p = {p}, lost {lost:?} (a decoder bug)"
    );
}

#[track_caller]
fn check(prime: usize, k: usize, len: usize) -> usize {
    assert!(
        is_prime(prime) && prime <= MAX_PRIME,
        "rdp: {prime} is not a prime up to {MAX_PRIME}"
    );
    assert!(
        (1..prime).contains(&k),
        "rdp: {k} data strips do not fit p = {prime} (at most {})",
        prime - 1
    );
    let rows = prime - 1;
    assert!(
        len.is_multiple_of(rows * super::LEN_MULTIPLE),
        "rdp: strips of {len} bytes do not split into {rows} cells of a multiple of {} bytes",
        super::LEN_MULTIPLE
    );
    len / rows
}

/// The strips' base pointers and the cell size a kernel's `run` needs.
pub struct Strips {
    pub base: [*mut u8; MAX_STRIPS],
    pub cell: usize,
}

impl super::Kernels {
    /// Row parity and diagonal parity of `data` (k <= p - 1 strips of equal length, a
    /// multiple of 64 * (p - 1)).
    pub fn rdp_gen(&self, prime: usize, data: &[&[u8]], row: &mut [u8], diag: &mut [u8]) {
        let len = row.len();
        let k = data.len();
        let cell = check(prime, k, len);
        assert!(
            diag.len() == len && data.iter().all(|d| d.len() == len),
            "rdp_gen: every strip has {len} bytes"
        );
        if len == 0 {
            return;
        }
        let mut base = [std::ptr::null_mut(); MAX_STRIPS];
        for (b, d) in base.iter_mut().zip(data) {
            // Only read through: the encode schedule writes row and diagonal cells only.
            *b = d.as_ptr() as *mut u8;
        }
        base[row_column(k)] = row.as_mut_ptr();
        base[diag_column(k)] = diag.as_mut_ptr();
        // SAFETY: every strip has `len` = (p - 1) * cell bytes; the schedule writes only the
        // row and diagonal strips, which are exclusively borrowed, and reads the rest.
        unsafe { (self.rdp_run)(encode_schedule_cached(prime, k), &Strips { base, cell }) }
    }

    /// Rebuild the strips at `lost` (one or two distinct indices into `strips`: data
    /// 0 .. k - 1, row parity k, diagonal parity k + 1) from the others. `strips` holds all
    /// k + 2 strips of the stripe; the lost ones are overwritten and never read.
    pub fn rdp_recover(&self, prime: usize, strips: &mut [&mut [u8]], lost: &[usize]) {
        assert!(
            (3..=MAX_STRIPS).contains(&strips.len()),
            "rdp_recover: a stripe has k + 2 = 3 to {MAX_STRIPS} strips"
        );
        let k = strips.len() - 2;
        let len = strips[0].len();
        let cell = check(prime, k, len);
        assert!(
            strips.iter().all(|s| s.len() == len),
            "rdp_recover: every strip has {len} bytes"
        );
        assert!(
            (1..=2).contains(&lost.len())
                && lost.iter().all(|&l| l < k + 2)
                && (lost.len() == 1 || lost[0] != lost[1]),
            "rdp_recover: lost {lost:?} must name one or two distinct strips of {}",
            k + 2
        );
        if len == 0 {
            return;
        }
        let mut base = [std::ptr::null_mut(); MAX_STRIPS];
        for (b, s) in base.iter_mut().zip(strips.iter_mut()) {
            *b = s.as_mut_ptr();
        }
        let sched = recovery_schedule_cached(prime, k, lost);
        // SAFETY: every strip has `len` bytes and is exclusively borrowed through `strips`;
        // a step's target cell is never one of its sources.
        unsafe { (self.rdp_run)(sched, &Strips { base, cell }) }
    }
}

/// The bytes of the diagonal-parity strip that a read-modify-write of bytes `at .. at +
/// len` of data strip `index` changes (see [`super::Kernels::rdp_update`]), as one range
/// from the first to the last: what such a write must read and write back of that strip.
/// Strips have `strip_len` bytes. `len` > 0.
pub fn touched_diagonal_bytes(
    prime: usize,
    strip_len: usize,
    index: usize,
    at: usize,
    len: usize,
) -> std::ops::Range<usize> {
    let cell = strip_len / (prime - 1);
    assert!(
        len > 0 && at + len <= strip_len && index < prime - 1,
        "touched_diagonal_bytes: bytes {at}..+{len} of a {strip_len}-byte data strip {index}"
    );
    // Data column `index`; the row parity is column p - 1 (cf. `Array::diagonal`).
    let (mut lo, mut hi) = (usize::MAX, 0);
    let (first, last) = (at / cell, (at + len - 1) / cell);
    for r in first..=last {
        let start = at.max(r * cell) - r * cell;
        let end = (at + len).min((r + 1) * cell) - r * cell;
        for d in [(r + index) % prime, (r + prime - 1) % prime] {
            if d != prime - 1 {
                lo = lo.min(d * cell + start);
                hi = hi.max(d * cell + end);
            }
        }
    }
    lo..hi
}

impl super::Kernels {
    /// Read-modify-write of one rewritten piece of data strip `index`: bytes `at ..
    /// at + old.len()` of the strip change from `old` to `new`. Each cell-sized part folds
    /// old ^ new into its row's parity cell, its diagonal's cell, and the diagonal cell of
    /// the row-parity cell it changed, leaving the other cells of `row` and `diag` (whole
    /// strips) as they were.
    #[allow(clippy::too_many_arguments)]
    pub fn rdp_update(
        &self,
        prime: usize,
        k: usize,
        index: usize,
        at: usize,
        old: &[u8],
        new: &[u8],
        row: &mut [u8],
        diag: &mut [u8],
    ) {
        let len = row.len();
        let cell = check(prime, k, len);
        assert!(
            index < k && diag.len() == len && old.len() == new.len() && at + old.len() <= len,
            "rdp_update: data strip {index} of {k}, bytes {at}..+{} of {len}",
            old.len()
        );
        let a = Array { prime, k };
        let mut done = 0;
        while done < old.len() {
            let (r, off) = ((at + done) / cell, (at + done) % cell);
            let n = (cell - off).min(old.len() - done);
            let u = [super::Update {
                index: 0,
                old: &old[done..done + n],
                new: &new[done..done + n],
            }];
            let place = |cell_row: usize| cell_row * cell + off..cell_row * cell + off + n;
            self.p_update(&u, &mut row[place(r)]);
            for d in [a.diagonal(index, r), a.diagonal(row_column(k), r)] {
                if d != prime - 1 {
                    self.p_update(&u, &mut diag[place(d)]);
                }
            }
            done += n;
        }
    }
}

/// Run `sched` over every 64-byte column of the cells: the shared loop of the ISA
/// modules' `rdp_run`, given their 64-byte load, XOR and store.
macro_rules! rdp_loop {
    ($sched:expr, $strips:expr, $zero:expr, $load:expr, $xor:expr, $store:expr) => {{
        let (sched, strips): (&$crate::parity::rdp::Schedule, &$crate::parity::rdp::Strips) =
            ($sched, $strips);
        let at = |c: $crate::parity::rdp::Cell| -> *mut u8 {
            // SAFETY (for the caller): row < p - 1, so the cell lies within its strip.
            unsafe { strips.base[c.strip as usize].add(c.row as usize * strips.cell) }
        };
        // Every step over a chunk of each cell, chunk after chunk: the cells a later step
        // reads stay in the caches, and each step streams its sources side by side.
        let chunk = strips.cell.min($crate::parity::rdp::CHUNK);
        let mut base = 0;
        while base < strips.cell {
            for step in sched.steps() {
                let n = step.n as usize;
                let mut src = [std::ptr::null::<u8>(); $crate::parity::rdp::MAX_SOURCES];
                for (p, c) in src.iter_mut().zip(&step.sources[..n]) {
                    *p = at(*c);
                }
                let t = at(step.target);
                let mut off = base;
                while off < (base + chunk).min(strips.cell) {
                    // SAFETY: per the contract, each cell has `cell` bytes and off + 64 <= cell.
                    unsafe {
                        let mut acc = if n == 0 {
                            $zero
                        } else {
                            $load(src[0].add(off))
                        };
                        for p in &src[1..n] {
                            acc = $xor(acc, $load(p.add(off)));
                        }
                        $store(t.add(off), acc);
                    }
                    off += 64;
                }
            }
            base += chunk;
        }
    }};
}
pub(crate) use rdp_loop;

/// The portable kernel: eight 64-bit words at a time.
///
/// # Safety
/// Every strip the schedule names has `(p - 1) * cell` bytes, readable, and writable where
/// a step targets it; `cell` is a multiple of 64; a target is never a source of its step.
pub unsafe fn run_scalar(sched: &Schedule, strips: &Strips) {
    type W = [u64; 8];
    let load = |p: *const u8| -> W {
        std::array::from_fn(|i| unsafe { (p as *const u64).add(i).read_unaligned() })
    };
    let store = |p: *mut u8, v: W| {
        for (i, w) in v.iter().enumerate() {
            unsafe { (p as *mut u64).add(i).write_unaligned(*w) }
        }
    };
    let xor = |a: W, b: W| -> W { std::array::from_fn(|i| a[i] ^ b[i]) };
    rdp_loop!(sched, strips, [0u64; 8], load, xor, store)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The range is exactly from the first to the last diagonal byte a read-modify-write
    /// changes: every changed byte inside, both ends changed.
    #[test]
    fn touched_diagonal_bytes_bound_what_an_update_changes() {
        let k = super::super::Kernels::scalar();
        for (p, cell) in [(5usize, 256usize), (17, 64)] {
            let len_all = cell * (p - 1);
            for index in [0, 1, p - 2] {
                for (at, n) in [
                    (0, 64),
                    (cell - 64, 128),
                    (64, len_all - 128),
                    (3 * cell, cell),
                ] {
                    let (mut row, mut diag) = (vec![0u8; len_all], vec![0u8; len_all]);
                    // Random new bytes: two cells folding into one diagonal byte do not cancel.
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (at * 31 + n) as u64;
                    let new: Vec<u8> = (0..n)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            (x >> 24) as u8 | 1
                        })
                        .collect();
                    let old = vec![0u8; n];
                    k.rdp_update(p, p - 1, index, at, &old, &new, &mut row, &mut diag);
                    let r = touched_diagonal_bytes(p, len_all, index, at, n);
                    let changed: Vec<usize> = (0..len_all).filter(|&b| diag[b] != 0).collect();
                    assert_eq!(
                        (changed[0], changed[changed.len() - 1] + 1),
                        (r.start, r.end),
                        "p={p} strip {index} bytes {at}..+{n}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_pair_of_lost_strips_has_a_complete_schedule() {
        for p in [3usize, 5, 7, 11, 13, 17] {
            for k in 1..p {
                for x in 0..k + 2 {
                    for y in (0..k + 2).filter(|&y| y != x) {
                        let s = recovery_schedule(p, k, &[x, y]);
                        // Each lost cell rebuilt exactly once, none read before it is.
                        let mut done = vec![[false; ROWS]; k + 2];
                        for st in s.steps() {
                            for src in &st.sources[..st.n as usize] {
                                let s = src.strip as usize;
                                assert!(
                                    s != x && s != y || done[s][src.row as usize],
                                    "p={p} k={k} lost {x},{y}: read before rebuilt"
                                );
                            }
                            let t = &mut done[st.target.strip as usize][st.target.row as usize];
                            assert!(!*t);
                            *t = true;
                        }
                        assert_eq!(s.len, 2 * (p - 1), "p={p} k={k} lost {x},{y}");
                    }
                }
            }
        }
    }
}

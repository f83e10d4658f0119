//! Intel ISA-L (libisal), linked only into tests/parity.rs and bench/parity.rs (which
//! includes this file by path), never into the library or the server. Optional: without
//! it (build.rs decides) the functions are stubs that are never called.
#![allow(dead_code)]

use std::ffi::{c_int, c_void};

use nvmf_raid::parity::gf;

// Signatures from /usr/include/isa-l/raid.h and erasure_code.h.
#[cfg(have_isal)]
#[link(name = "isal")]
extern "C" {
    /// vects = sources + 1; array = sources then P; 32-byte aligned buffers.
    pub fn xor_gen(vects: c_int, len: c_int, array: *mut *mut c_void) -> c_int;
    /// vects = sources + 2; array = sources then P then Q; len % 32 == 0; 32-byte aligned.
    pub fn pq_gen(vects: c_int, len: c_int, array: *mut *mut c_void) -> c_int;
    pub fn gf_mul(a: u8, b: u8) -> u8;
    pub fn gf_inv(a: u8) -> u8;
    pub fn gf_invert_matrix(inp: *mut u8, out: *mut u8, n: c_int) -> c_int;
    pub fn ec_init_tables(k: c_int, rows: c_int, a: *mut u8, gftbls: *mut u8);
    pub fn ec_encode_data(
        len: c_int,
        k: c_int,
        rows: c_int,
        gftbls: *mut u8,
        data: *mut *mut u8,
        coding: *mut *mut u8,
    );
    pub fn ec_encode_data_update(
        len: c_int,
        k: c_int,
        rows: c_int,
        vec_i: c_int,
        g_tbls: *mut u8,
        data: *mut u8,
        coding: *mut *mut u8,
    );
}

/// Whether ISA-L was found at build time (see build.rs).
pub const AVAILABLE: bool = cfg!(have_isal);

/// Without ISA-L the comparisons are not run; these keep the callers compiling.
#[cfg(not(have_isal))]
#[allow(clippy::missing_safety_doc, unused_variables)]
mod missing {
    use std::ffi::{c_int, c_void};
    pub unsafe fn xor_gen(vects: c_int, len: c_int, array: *mut *mut c_void) -> c_int {
        unreachable!("ISA-L is not installed")
    }
    pub unsafe fn pq_gen(vects: c_int, len: c_int, array: *mut *mut c_void) -> c_int {
        unreachable!("ISA-L is not installed")
    }
    pub unsafe fn gf_mul(a: u8, b: u8) -> u8 {
        unreachable!("ISA-L is not installed")
    }
    pub unsafe fn gf_inv(a: u8) -> u8 {
        unreachable!("ISA-L is not installed")
    }
    pub unsafe fn gf_invert_matrix(inp: *mut u8, out: *mut u8, n: c_int) -> c_int {
        unreachable!("ISA-L is not installed")
    }
    pub unsafe fn ec_init_tables(k: c_int, rows: c_int, a: *mut u8, gftbls: *mut u8) {
        unreachable!("ISA-L is not installed")
    }
    pub unsafe fn ec_encode_data(
        len: c_int,
        k: c_int,
        rows: c_int,
        gftbls: *mut u8,
        data: *mut *mut u8,
        coding: *mut *mut u8,
    ) {
        unreachable!("ISA-L is not installed")
    }
    pub unsafe fn ec_encode_data_update(
        len: c_int,
        k: c_int,
        rows: c_int,
        vec_i: c_int,
        g_tbls: *mut u8,
        data: *mut u8,
        coding: *mut *mut u8,
    ) {
        unreachable!("ISA-L is not installed")
    }
}
#[cfg(not(have_isal))]
pub use missing::*;

/// Survivors of a stripe that lost data blocks x and y, as encode-matrix rows: the other
/// data blocks in order, then P (row k), then Q (row k + 1).
pub fn raid6_survivors(k: usize, x: usize, y: usize) -> Vec<usize> {
    (0..k)
        .filter(|&i| i != x && i != y)
        .chain([k, k + 1])
        .collect()
}

/// The 2 x k decode matrix that rebuilds data blocks x and y of a RAID-6 stripe from its
/// survivors (the other data blocks in order, then P, then Q): the rows x and y of the
/// inverse of the survivors' rows of the encode matrix [identity; 1 .. 1; g^0 .. g^(k-1)].
pub fn raid6_decode_rows(k: usize, x: usize, y: usize) -> Vec<u8> {
    let row = |r: usize| -> Vec<u8> {
        (0..k)
            .map(|j| match r {
                r if r < k => (r == j) as u8,
                r if r == k => 1,
                _ => gf::exp2(j),
            })
            .collect()
    };
    let mut m: Vec<u8> = raid6_survivors(k, x, y)
        .iter()
        .flat_map(|&r| row(r))
        .collect();
    let mut inv = vec![0u8; k * k];
    // SAFETY: both matrices are k x k.
    let rc = unsafe { gf_invert_matrix(m.as_mut_ptr(), inv.as_mut_ptr(), k as c_int) };
    assert_eq!(rc, 0, "decode matrix not invertible");
    inv[x * k..(x + 1) * k]
        .iter()
        .chain(&inv[y * k..(y + 1) * k])
        .copied()
        .collect()
}

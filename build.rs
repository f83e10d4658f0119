//! Optional test references, found at build time so that a plain `cargo test` works on a
//! fresh machine: ISA-L (libisal), which the parity tests and benchmark compare with, and
//! the etcd binary, which the witness tests start. Without one, the tests that need it are
//! reported as ignored with the reason (and the parity benchmark refuses to run).
//! scripts/test.sh installs both and sets NVMF_RAID_REQUIRE_ISAL=1 and
//! NVMF_RAID_REQUIRE_ETCD=1, which turn an absence into a build error, so the full run
//! never silently leaves them out.

use std::path::Path;

const LIB_DIRS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
];

const BIN_DIRS: [&str; 3] = ["/usr/bin", "/usr/local/bin", "/usr/sbin"];

fn required(var: &str) -> bool {
    println!("cargo::rerun-if-env-changed={var}");
    std::env::var(var).is_ok_and(|v| v == "1")
}

fn main() {
    isal();
    etcd();
}

fn etcd() {
    println!("cargo::rustc-check-cfg=cfg(have_etcd)");
    for d in BIN_DIRS {
        // A directory's time changes when a file is added to it: etcd installed later.
        println!("cargo::rerun-if-changed={d}");
    }
    match BIN_DIRS.iter().map(|d| Path::new(d).join("etcd")).find(|p| p.exists()) {
        Some(_) => println!("cargo::rustc-cfg=have_etcd"),
        None if required("NVMF_RAID_REQUIRE_ETCD") => panic!("NVMF_RAID_REQUIRE_ETCD=1 but etcd is not installed (Debian package etcd-server)"),
        None => println!("cargo::warning=etcd (etcd-server) not found: the witness tests against a real etcd are not run"),
    }
}

fn isal() {
    println!("cargo::rustc-check-cfg=cfg(have_isal)");
    let found = LIB_DIRS
        .iter()
        .map(Path::new)
        .find(|d| d.join("libisal.so").exists() || d.join("libisal.a").exists());
    match found {
        Some(dir) => {
            println!("cargo::rerun-if-changed={}", dir.join("libisal.so").display());
            println!("cargo::rustc-cfg=have_isal");
        }
        None if required("NVMF_RAID_REQUIRE_ISAL") => {
            panic!("NVMF_RAID_REQUIRE_ISAL=1 but ISA-L is not installed (Debian package libisal-dev)")
        }
        None => println!("cargo::warning=ISA-L (libisal-dev) not found: the parity comparisons with ISA-L are not built"),
    }
}

//! ISA-L (libisal) is the reference the parity tests and benchmark compare with. It is
//! optional for building: without it the comparison tests are reported as ignored (with
//! the reason) and the benchmark refuses to run, so a plain `cargo test` works on a fresh
//! machine. scripts/test.sh installs it and sets NVMF_RAID_REQUIRE_ISAL=1, which turns its
//! absence into a build error so the full run never silently leaves the comparison out.

use std::path::Path;

const LIB_DIRS: [&str; 4] = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(have_isal)");
    println!("cargo::rerun-if-env-changed=NVMF_RAID_REQUIRE_ISAL");
    let found = LIB_DIRS.iter().map(Path::new).find(|d| d.join("libisal.so").exists() || d.join("libisal.a").exists());
    match found {
        Some(dir) => {
            println!("cargo::rerun-if-changed={}", dir.join("libisal.so").display());
            println!("cargo::rustc-cfg=have_isal");
        }
        None if std::env::var("NVMF_RAID_REQUIRE_ISAL").is_ok_and(|v| v == "1") => {
            panic!("NVMF_RAID_REQUIRE_ISAL=1 but ISA-L is not installed (Debian package libisal-dev)")
        }
        None => println!("cargo::warning=ISA-L (libisal-dev) not found: the parity comparisons with ISA-L are not built"),
    }
}

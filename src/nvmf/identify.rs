//! Identify data structures and log pages, built into caller-provided buffers.

use super::ana;
use super::subsystem::{Controller, Namespace, Subsystem, SubsystemKind, Target};
use super::TransportLimits;

pub const IDENTIFY_LEN: usize = 4096;
pub const VERSION_1_3: u32 = 0x0001_0300;
const IEEE_OUI: [u8; 3] = [0x6a, 0x52, 0x41];

fn put_str(out: &mut [u8], at: usize, len: usize, s: &str) {
    // Identify strings are space padded ASCII.
    let field = &mut out[at..at + len];
    field.fill(b' ');
    let n = s.len().min(len);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// NUL-padded string field (NQNs and discovery addresses), always NUL terminated.
fn put_zero_padded(out: &mut [u8], at: usize, len: usize, s: &str) {
    let field = &mut out[at..at + len];
    field.fill(0);
    let n = s.len().min(len - 1);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn put_nqn(out: &mut [u8], at: usize, s: &str) {
    put_zero_padded(out, at, 256, s);
}

fn put16(out: &mut [u8], at: usize, v: u16) {
    out[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// CNS 01h: Identify Controller.
pub fn controller(out: &mut [u8; IDENTIFY_LEN], ctrl: &Controller, lim: &TransportLimits) {
    let subsys = &ctrl.subsys;
    let nvm = subsys.kind == SubsystemKind::Nvm;
    out.fill(0);
    put16(out, 0, 0x1b36); // vid
    put16(out, 2, 0x1b36); // ssvid
    put_str(out, 4, 20, &subsys.serial);
    put_str(out, 24, 40, &subsys.model);
    put_str(out, 64, 8, env!("CARGO_PKG_VERSION"));
    out[72] = 6; // rab
    out[73..76].copy_from_slice(&IEEE_OUI);
    // cmic: may be reached through several controllers, reports ANA (multipath).
    out[76] = if nvm { (1 << 1) | (1 << 3) } else { 0 };
    out[77] = lim.mdts_shift();
    put16(out, 78, ctrl.cntlid);
    put32(out, 80, VERSION_1_3);
    // oaes: namespace attribute and ANA change notices.
    put32(
        out,
        92,
        if nvm {
            (1 << 8) | ana::AEC_ANA_CHANGE
        } else {
            0
        },
    );
    put32(out, 96, 1 | (1 << 6)); // ctratt: 128-bit host identifier, traffic-based keep-alive
    out[111] = if nvm { 1 } else { 2 }; // cntrltype
    out[258] = 3; // acl
    out[259] = 3; // aerl: four outstanding AERs
    out[260] = 0x3; // frmw: one slot, slot 1 read-only
    out[261] = 0x7; // lpa: per-ns SMART, command effects, extended data
    out[262] = 0; // elpe
    put16(out, 266, 0x0157); // wctemp
    put16(out, 268, 0x0175); // cctemp
    put16(out, 320, 10); // kas: 100 ms units -> 1 s granularity
    if nvm {
        out[342] = ana::ANATT_SECS; // anatt
        out[343] = ana::ANACAP; // anacap
        put32(out, 344, ana::GROUPS_PER_SUBSYSTEM); // anagrpmax: largest ANAGRPID
        put32(out, 348, ana::GROUPS_PER_SUBSYSTEM); // nanagrpid: groups in the subsystem
    }
    out[512] = 0x66; // sqes
    out[513] = 0x44; // cqes
    put16(out, 514, lim.queue_depth);
    let nn = subsys.namespaces.iter().map(|n| n.nsid).max().unwrap_or(0);
    put32(out, 516, nn);
    put16(out, 520, if nvm { (1 << 2) | (1 << 3) } else { 0 }); // oncs: DSM, write zeroes
    out[525] = if nvm { 1 } else { 0 }; // vwc present: hosts must flush
                                        // sgls: supported, with the address field as an in-capsule offset.
    put32(out, 536, (1 << 0) | (1 << 20));
    put32(out, 540, nn); // mnan
    put_nqn(out, 768, &subsys.nqn);
    put32(out, 1792, (lim.inline_data as u32 + 64) / 16); // ioccsz
    put32(out, 1796, 1); // iorcsz
    put16(out, 1800, 0); // icdoff
    out[1802] = 0; // fcatt: dynamic controller model
    out[1803] = 1; // msdbd
                   // Power state 0: 25 W, as the kernel target reports.
    put16(out, 2048, 0x09c4);
    put32(out, 2052, 0x10);
    put32(out, 2056, 0x4);
}

/// CNS 00h: Identify Namespace. An inactive NSID yields a zeroed page.
pub fn namespace(out: &mut [u8; IDENTIFY_LEN], ns: Option<&Namespace>) {
    out.fill(0);
    let Some(ns) = ns else { return };
    put64(out, 0, ns.num_blocks); // nsze
    put64(out, 8, ns.num_blocks); // ncap
    put64(out, 16, ns.num_blocks); // nuse
    out[25] = 0; // nlbaf: one format
    out[26] = 0; // flbas
    out[30] = 1; // nmic: may be shared between controllers
    put32(out, 92, ns.anagrpid); // anagrpid
    out[104..120].copy_from_slice(&ns.nguid);
    out[120..128].copy_from_slice(&ns.eui64);
    out[128 + 2] = ns.lba_shift() as u8; // lbaf0.lbads
}

/// CNS 02h/07h: active namespace IDs greater than `after`.
pub fn active_ns_list(out: &mut [u8; IDENTIFY_LEN], subsys: &Subsystem, after: u32) {
    out.fill(0);
    let mut ids: Vec<u32> = subsys
        .namespaces
        .iter()
        .map(|n| n.nsid)
        .filter(|&id| id > after)
        .collect();
    ids.sort_unstable();
    for (i, id) in ids.iter().take(IDENTIFY_LEN / 4).enumerate() {
        put32(out, i * 4, *id);
    }
}

/// CNS 03h: namespace identification descriptors (EUI-64, NGUID, UUID, CSI).
pub fn ns_descriptors(out: &mut [u8; IDENTIFY_LEN], ns: &Namespace) {
    out.fill(0);
    let mut at = 0;
    let mut put = |nidt: u8, id: &[u8]| {
        out[at] = nidt;
        out[at + 1] = id.len() as u8;
        out[at + 4..at + 4 + id.len()].copy_from_slice(id);
        at += 4 + id.len();
    };
    put(1, &ns.eui64);
    put(2, &ns.nguid);
    put(3, &ns.uuid);
    put(4, &[0]); // CSI: NVM command set
}

/// CNS 08h: I/O command set independent namespace data.
pub fn ns_cs_independent(out: &mut [u8; IDENTIFY_LEN], ns: Option<&Namespace>) {
    out.fill(0);
    if let Some(ns) = ns {
        out[1] = 1; // nmic
        put32(out, 4, ns.anagrpid); // anagrpid
        out[14] = 1; // nstat: ready
    }
}

// ---------------------------------------------------------------------------------------
// Log pages. Each builder appends the complete page; the caller copies out the window
// the host asked for (offset and length).

pub fn smart_log(page: &mut Vec<u8>, counters: &crate::nvmf::NsCounterTotals) {
    page.resize(512, 0);
    put16(page, 1, 0); // composite temperature unknown
    page[3] = 100; // available spare
    page[4] = 10; // spare threshold
                  // Data units are thousands of 512-byte units, rounded up.
    let units = |bytes: u64| (bytes / 512).div_ceil(1000);
    put64(page, 32, units(counters.bytes_read));
    put64(page, 48, units(counters.bytes_written));
    put64(page, 64, counters.reads);
    put64(page, 80, counters.writes);
}

pub fn firmware_log(page: &mut Vec<u8>) {
    page.resize(512, 0);
    page[0] = 1; // active slot 1
    put_str(page, 8, 8, env!("CARGO_PKG_VERSION"));
}

pub fn command_effects_log(page: &mut Vec<u8>, nvm: bool) {
    use super::spec::{admin, io};
    page.resize(4096, 0);
    const CSUPP: u32 = 1;
    const LBCC: u32 = 1 << 1;
    for op in [
        admin::GET_LOG_PAGE,
        admin::IDENTIFY,
        admin::ABORT,
        admin::SET_FEATURES,
        admin::GET_FEATURES,
        admin::ASYNC_EVENT_REQUEST,
        admin::KEEP_ALIVE,
    ] {
        put32(page, op as usize * 4, CSUPP);
    }
    if nvm {
        put32(page, 1024 + io::READ as usize * 4, CSUPP);
        for op in [
            io::FLUSH,
            io::WRITE,
            io::WRITE_ZEROES,
            io::DATASET_MANAGEMENT,
        ] {
            put32(page, 1024 + op as usize * 4, CSUPP | LBCC);
        }
    }
}

/// Size of the ANA log page header and of a group descriptor without its NSIDs.
pub const ANA_LOG_HEADER: usize = 16;
pub const ANA_GROUP_DESCRIPTOR: usize = 32;

/// ANA log (0Ch) as `ctrl` reports it: the state of each of its subsystem's groups on
/// the port it is connected through. `groups_only` (RGO) leaves out the NSID lists.
pub fn ana_log(page: &mut Vec<u8>, target: &Target, ctrl: &Controller, groups_only: bool) {
    let subsys = &ctrl.subsys;
    let groups = subsys.ana_groups();
    page.resize(ANA_LOG_HEADER, 0);
    put64(page, 0, target.ana.change_count());
    put16(page, 8, groups.len() as u16);
    for g in groups {
        let st = target.ana_group(ctrl, g);
        let mut nsids: Vec<u32> = if groups_only {
            Vec::new()
        } else {
            subsys
                .namespaces
                .iter()
                .filter(|n| n.anagrpid == g)
                .map(|n| n.nsid)
                .collect()
        };
        nsids.sort_unstable();
        let mut d = [0u8; ANA_GROUP_DESCRIPTOR];
        put32(&mut d, 0, g); // anagrpid
        put32(&mut d, 4, nsids.len() as u32); // number of NSIDs
        put64(&mut d, 8, st.change_count);
        d[16] = st.state.code();
        page.extend_from_slice(&d);
        for id in nsids {
            page.extend_from_slice(&id.to_le_bytes());
        }
    }
}

/// Discovery log (70h): one entry per NVM subsystem per port, plus the discovery
/// subsystem itself on each port.
pub fn discovery_log(page: &mut Vec<u8>, target: &Target, hostnqn: &str) {
    let mut entries = 0u64;
    page.resize(1024, 0);
    for port in &target.ports {
        for subsys in &target.subsystems {
            if subsys.kind == SubsystemKind::Nvm && !subsys.host_allowed(hostnqn) {
                continue;
            }
            let mut e = [0u8; 1024];
            e[0] = 3; // trtype TCP
            e[1] = if port.addr.is_ipv4() { 1 } else { 2 }; // adrfam
            e[2] = if subsys.kind == SubsystemKind::Nvm {
                2
            } else {
                3
            }; // subtype
            e[3] = 0x2; // treq: secure channel not required
            put16(&mut e, 4, port.id);
            put16(&mut e, 6, 0xFFFF); // cntlid: dynamic
            put16(&mut e, 8, 128); // asqsz
            put_zero_padded(&mut e, 32, 32, &port.addr.port().to_string());
            put_nqn(&mut e, 256, &subsys.nqn);
            put_zero_padded(&mut e, 512, 256, &port.addr.ip().to_string());
            e[768] = 1; // tsas.sectype: none
            page.extend_from_slice(&e);
            entries += 1;
        }
    }
    put64(
        page,
        0,
        target
            .discovery_genctr
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    put64(page, 8, entries);
}

/// Trailing-space trimmed string out of an identify field (used by the host side).
pub fn field_str(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

//! Admin queue commands (and fabrics Property Get/Set): pure logic over controller state.
//!
//! `execute` takes a command and the buffer its data goes to, and returns what to complete
//! the command with. Connect is not here: it binds a queue and lives with the connection.

use std::sync::atomic::Ordering;

use super::command::Sqe;
use super::identify::{self, IDENTIFY_LEN};
use super::spec::{admin, cns, fabrics, feature, log, property, status};
use super::subsystem::{Controller, SubsystemKind, Target};
use super::{NsCounterTotals, TransportLimits};

/// How to complete an admin command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminResult {
    /// `result` is CQE dw0 and dw1 (8-byte properties use both).
    Done { status: u16, result: u64, data_len: usize },
    /// An Asynchronous Event Request: held until an event occurs.
    Deferred,
}

impl AdminResult {
    fn ok(result: u32) -> Self {
        AdminResult::Done { status: status::SUCCESS, result: result as u64, data_len: 0 }
    }
    fn data(len: usize) -> Self {
        AdminResult::Done { status: status::SUCCESS, result: 0, data_len: len }
    }
    fn err(sc: u16) -> Self {
        AdminResult::Done { status: sc | status::DNR, result: 0, data_len: 0 }
    }
}

pub struct AdminCtx<'a> {
    pub target: &'a Target,
    pub ctrl: &'a Controller,
    pub limits: &'a TransportLimits,
    /// AERs already outstanding on this admin queue.
    pub outstanding_aers: usize,
}

pub const MAX_OUTSTANDING_AERS: usize = 4;

pub fn execute(cx: &AdminCtx, sqe: &Sqe, data: &mut [u8]) -> AdminResult {
    if sqe.is_fabrics() {
        return fabrics_property(cx, sqe);
    }
    let discovery = cx.ctrl.subsys.kind == SubsystemKind::Discovery;
    match sqe.opcode {
        admin::IDENTIFY => identify(cx, sqe, data),
        admin::GET_LOG_PAGE => get_log_page(cx, sqe, data),
        admin::SET_FEATURES => set_features(cx, sqe),
        admin::GET_FEATURES => get_features(cx, sqe, data),
        admin::KEEP_ALIVE => {
            cx.ctrl.touch_keepalive();
            AdminResult::ok(0)
        }
        admin::ASYNC_EVENT_REQUEST if cx.outstanding_aers >= MAX_OUTSTANDING_AERS => {
            AdminResult::err(status::ASYNC_EVENT_LIMIT_EXCEEDED)
        }
        admin::ASYNC_EVENT_REQUEST => AdminResult::Deferred,
        // Commands finish quickly here; report "not aborted" (dw0 bit 0).
        admin::ABORT if !discovery => AdminResult::ok(1),
        _ => AdminResult::err(status::INVALID_OPCODE),
    }
}

fn fabrics_property(cx: &AdminCtx, sqe: &Sqe) -> AdminResult {
    let size8 = sqe.cdw10() & 0x7 == 1;
    let offset = sqe.cdw11();
    match sqe.fctype {
        fabrics::PROPERTY_GET => match (offset, size8) {
            (property::CAP, true) => AdminResult::Done { status: status::SUCCESS, result: cx.limits.cap(), data_len: 0 },
            (property::VS, false) => AdminResult::ok(identify::VERSION_1_3),
            (property::CC, false) => AdminResult::ok(cx.ctrl.cc.load(Ordering::Relaxed)),
            (property::CSTS, false) => AdminResult::ok(cx.ctrl.csts.load(Ordering::Relaxed)),
            _ => AdminResult::err(status::INVALID_FIELD),
        },
        fabrics::PROPERTY_SET if offset == property::CC && !size8 => {
            set_cc(cx.ctrl, sqe.cdw12());
            AdminResult::ok(0)
        }
        _ => AdminResult::err(status::INVALID_FIELD),
    }
}

/// CC write: enabling makes the controller ready; a shutdown request completes at once
/// because nothing is cached in the controller.
fn set_cc(ctrl: &Controller, cc: u32) {
    let old = ctrl.cc.swap(cc, Ordering::Relaxed);
    let mut csts = ctrl.csts.load(Ordering::Relaxed);
    let enable = cc & 1 != 0;
    if enable && old & 1 == 0 {
        csts |= 1;
    }
    if !enable && old & 1 != 0 {
        csts &= !1;
    }
    if (cc >> 14) & 0x3 != 0 {
        csts = (csts & !(0x3 << 2)) | (2 << 2); // SHST: shutdown complete
    } else {
        csts &= !(0x3 << 2);
    }
    ctrl.csts.store(csts, Ordering::Relaxed);
}

fn identify(cx: &AdminCtx, sqe: &Sqe, data: &mut [u8]) -> AdminResult {
    let cns = (sqe.cdw10() & 0xFF) as u8;
    let csi = (sqe.cdw11() >> 24) as u8;
    let subsys = &cx.ctrl.subsys;
    let mut page = Box::new([0u8; IDENTIFY_LEN]);
    let discovery = subsys.kind == SubsystemKind::Discovery;
    match cns {
        cns::CONTROLLER => identify::controller(&mut page, cx.ctrl, cx.limits),
        _ if discovery => return AdminResult::err(status::INVALID_FIELD),
        cns::NAMESPACE => {
            if sqe.nsid == 0 || sqe.nsid == u32::MAX {
                return AdminResult::err(status::INVALID_NAMESPACE);
            }
            identify::namespace(&mut page, subsys.namespace(sqe.nsid));
        }
        cns::ACTIVE_NS_LIST => identify::active_ns_list(&mut page, subsys, sqe.nsid),
        cns::CSI_ACTIVE_NS_LIST if csi == 0 => identify::active_ns_list(&mut page, subsys, sqe.nsid),
        cns::NS_DESCRIPTORS => match subsys.namespace(sqe.nsid) {
            Some(ns) => identify::ns_descriptors(&mut page, ns),
            None => return AdminResult::err(status::INVALID_NAMESPACE),
        },
        // NVM command set specific structures: nothing beyond the defaults to report.
        cns::CSI_CONTROLLER | cns::CSI_NAMESPACE if csi == 0 => {}
        cns::NS_CS_INDEPENDENT => identify::ns_cs_independent(&mut page, subsys.namespace(sqe.nsid)),
        _ => return AdminResult::err(status::INVALID_FIELD),
    }
    copy_out(&page[..], 0, data)
}

/// Copy the window [offset, offset + data.len()) of `src` to the host buffer.
fn copy_out(src: &[u8], offset: usize, data: &mut [u8]) -> AdminResult {
    if offset > src.len() {
        return AdminResult::err(status::INVALID_FIELD);
    }
    let n = (src.len() - offset).min(data.len());
    data[..n].copy_from_slice(&src[offset..offset + n]);
    data[n..].fill(0);
    AdminResult::data(data.len())
}

fn get_log_page(cx: &AdminCtx, sqe: &Sqe, data: &mut [u8]) -> AdminResult {
    let lid = (sqe.cdw10() & 0xFF) as u8;
    let numd = ((sqe.cdw11() & 0xFFFF) << 16 | (sqe.cdw10() >> 16)) as usize + 1;
    let offset = sqe.cdw12() as u64 | (sqe.cdw13() as u64) << 32;
    if numd * 4 != data.len() || !offset.is_multiple_of(4) {
        return AdminResult::err(status::INVALID_FIELD);
    }
    let subsys = &cx.ctrl.subsys;
    let discovery = subsys.kind == SubsystemKind::Discovery;
    let mut page = Vec::with_capacity(4096);
    match lid {
        log::DISCOVERY if discovery => identify::discovery_log(&mut page, cx.target, &cx.ctrl.hostnqn),
        _ if discovery => return AdminResult::err(status::INVALID_LOG_PAGE),
        log::ERROR => page.resize(64, 0),
        log::SMART => identify::smart_log(&mut page, &NsCounterTotals::of(&subsys.namespaces)),
        log::FIRMWARE_SLOT => identify::firmware_log(&mut page),
        log::CHANGED_NS => page.resize(4096, 0),
        log::COMMAND_EFFECTS => identify::command_effects_log(&mut page, true),
        log::ANA => identify::ana_log(&mut page, subsys),
        _ => return AdminResult::err(status::INVALID_LOG_PAGE),
    }
    copy_out(&page, offset.min(usize::MAX as u64) as usize, data)
}

fn set_features(cx: &AdminCtx, sqe: &Sqe) -> AdminResult {
    let fid = (sqe.cdw10() & 0xFF) as u8;
    if sqe.cdw10() & (1 << 31) != 0 {
        return AdminResult::err(status::FEATURE_NOT_SAVEABLE);
    }
    let ctrl = cx.ctrl;
    match fid {
        feature::NUMBER_OF_QUEUES if ctrl.subsys.kind == SubsystemKind::Nvm => {
            let (nsq, ncq) = (sqe.cdw11() & 0xFFFF, sqe.cdw11() >> 16);
            if nsq == 0xFFFF || ncq == 0xFFFF {
                return AdminResult::err(status::INVALID_FIELD);
            }
            let granted = (nsq.min(ncq) + 1).min(cx.target.max_io_queues as u32);
            ctrl.io_queues_granted.store(granted as u16, Ordering::Relaxed);
            AdminResult::ok(number_of_queues_dw0(granted))
        }
        feature::ASYNC_EVENT_CONFIG => {
            ctrl.aen_config.store(sqe.cdw11(), Ordering::Relaxed);
            AdminResult::ok(0)
        }
        feature::KEEP_ALIVE_TIMER => {
            ctrl.kato_ms.store(sqe.cdw11(), Ordering::Relaxed);
            ctrl.touch_keepalive();
            AdminResult::ok(0)
        }
        _ => AdminResult::err(status::INVALID_FIELD),
    }
}

fn number_of_queues_dw0(granted: u32) -> u32 {
    let n = granted.max(1) - 1;
    n | n << 16
}

fn get_features(cx: &AdminCtx, sqe: &Sqe, data: &mut [u8]) -> AdminResult {
    let fid = (sqe.cdw10() & 0xFF) as u8;
    let ctrl = cx.ctrl;
    let nvm = ctrl.subsys.kind == SubsystemKind::Nvm;
    match fid {
        feature::NUMBER_OF_QUEUES if nvm => {
            AdminResult::ok(number_of_queues_dw0(ctrl.io_queues_granted.load(Ordering::Relaxed) as u32))
        }
        feature::ASYNC_EVENT_CONFIG => AdminResult::ok(ctrl.aen_config.load(Ordering::Relaxed)),
        feature::KEEP_ALIVE_TIMER => AdminResult::ok(ctrl.kato_ms.load(Ordering::Relaxed)),
        feature::VOLATILE_WRITE_CACHE if nvm => AdminResult::ok(1),
        feature::ARBITRATION | feature::POWER_MANAGEMENT if nvm => AdminResult::ok(0),
        feature::HOST_IDENTIFIER => {
            // Only the 128-bit form (EXHID) is supported.
            if sqe.cdw11() & 1 == 0 || data.len() < 16 {
                return AdminResult::err(status::INVALID_FIELD);
            }
            copy_out(&ctrl.hostid, 0, data)
        }
        _ => AdminResult::err(status::INVALID_FIELD),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::subsystem::{Namespace, Port, Subsystem};
    use std::sync::{Arc, RwLock};

    fn target() -> Target {
        let ns = Namespace::new("nqn.test:a", 1, 0, 512, 2048);
        let s = Subsystem {
            nqn: "nqn.test:a".into(),
            kind: SubsystemKind::Nvm,
            serial: "SN1".into(),
            model: "M".into(),
            allow_any_host: false,
            hosts: RwLock::new(vec!["nqn.host:1".into()]),
            namespaces: vec![ns],
        };
        let port = Port { id: 1, addr: "127.0.0.1:4420".parse().unwrap() };
        Target::new(vec![Arc::new(s)], vec![port], 8, 16)
    }

    fn run(t: &Target, c: &Controller, sqe: &Sqe, data: &mut [u8]) -> AdminResult {
        let lim = TransportLimits::default();
        execute(&AdminCtx { target: t, ctrl: c, limits: &lim, outstanding_aers: 0 }, sqe, data)
    }

    fn identify_sqe(cns: u8, nsid: u32) -> Sqe {
        let mut s = Sqe { opcode: admin::IDENTIFY, nsid, sgl_len: 4096, ..Default::default() };
        s.cdw[0] = cns as u32;
        s
    }

    #[test]
    fn identify_controller_fields_the_host_checks() {
        let t = target();
        let c = t.create_controller("nqn.test:a", "nqn.host:1", [0; 16], 1, 5000).unwrap();
        let mut d = vec![0u8; 4096];
        assert_eq!(run(&t, &c, &identify_sqe(1, 0), &mut d), AdminResult::data(4096));
        assert_eq!(u16::from_le_bytes([d[78], d[79]]), c.cntlid);
        assert_ne!(u16::from_le_bytes([d[320], d[321]]), 0, "KAS");
        assert!(u32::from_le_bytes(d[1792..1796].try_into().unwrap()) >= 4, "ioccsz");
        assert_eq!(u16::from_le_bytes([d[514], d[515]]), 128, "maxcmd");
        assert_eq!(d[77], 8, "MDTS 1 MiB");
        assert_eq!(&d[768..778], b"nqn.test:a");
    }

    #[test]
    fn inactive_namespace_is_zeroed_and_unknown_cns_invalid() {
        let t = target();
        let c = t.create_controller("nqn.test:a", "nqn.host:1", [0; 16], 1, 0).unwrap();
        let mut d = vec![0xFFu8; 4096];
        assert_eq!(run(&t, &c, &identify_sqe(0, 9), &mut d), AdminResult::data(4096));
        assert!(d.iter().all(|b| *b == 0));
        assert_eq!(run(&t, &c, &identify_sqe(0x55, 1), &mut d), AdminResult::err(status::INVALID_FIELD));
        assert_eq!(run(&t, &c, &identify_sqe(0, 1), &mut d), AdminResult::data(4096));
        assert_eq!(u64::from_le_bytes(d[0..8].try_into().unwrap()), 2048);
    }

    #[test]
    fn number_of_queues_is_capped() {
        let t = target();
        let c = t.create_controller("nqn.test:a", "nqn.host:1", [0; 16], 1, 0).unwrap();
        let mut s = Sqe { opcode: admin::SET_FEATURES, ..Default::default() };
        s.cdw[0] = feature::NUMBER_OF_QUEUES as u32;
        s.cdw[1] = 63 | 63 << 16;
        assert_eq!(run(&t, &c, &s, &mut []), AdminResult::ok(7 | 7 << 16));
        assert!(c.claim_queue(8));
        assert!(!c.claim_queue(8), "second connect on the same qid");
        assert!(!c.claim_queue(9), "beyond the granted count");
    }

    #[test]
    fn properties_enable_and_shutdown() {
        let t = target();
        let c = t.create_controller("nqn.test:a", "nqn.host:1", [0; 16], 1, 0).unwrap();
        let mut s = Sqe { opcode: admin::FABRICS, fctype: fabrics::PROPERTY_SET, ..Default::default() };
        s.cdw[1] = property::CC;
        s.cdw[2] = 1 | (6 << 16) | (4 << 20);
        run(&t, &c, &s, &mut []);
        assert_eq!(c.csts.load(Ordering::Relaxed) & 1, 1);
        s.cdw[2] |= 1 << 14;
        run(&t, &c, &s, &mut []);
        assert_eq!((c.csts.load(Ordering::Relaxed) >> 2) & 3, 2);
        let mut g = Sqe { opcode: admin::FABRICS, fctype: fabrics::PROPERTY_GET, ..Default::default() };
        g.cdw[0] = 1;
        g.cdw[1] = property::CAP;
        let AdminResult::Done { result, .. } = run(&t, &c, &g, &mut []) else { panic!() };
        assert_eq!(result & 0xFFFF, 127);
        assert_eq!(result >> 37 & 1, 1, "CSS NVM");
    }

    #[test]
    fn log_pages_and_unknown_lid() {
        let t = target();
        let c = t.create_controller("nqn.test:a", "nqn.host:1", [0; 16], 1, 0).unwrap();
        let mut s = Sqe { opcode: admin::GET_LOG_PAGE, ..Default::default() };
        s.cdw[0] = log::SMART as u32 | (127 << 16);
        let mut d = vec![0u8; 512];
        assert_eq!(run(&t, &c, &s, &mut d), AdminResult::data(512));
        s.cdw[0] = 0x42 | (127 << 16);
        assert_eq!(run(&t, &c, &s, &mut d), AdminResult::err(status::INVALID_LOG_PAGE));
        s.cdw[0] = log::DISCOVERY as u32 | (127 << 16);
        assert_eq!(run(&t, &c, &s, &mut d), AdminResult::err(status::INVALID_LOG_PAGE));
    }

    #[test]
    fn discovery_log_lists_allowed_subsystems_per_port() {
        let t = target();
        let disc = t.create_controller(crate::nvmf::spec::DISCOVERY_NQN, "nqn.host:1", [0; 16], 1, 0).unwrap();
        let mut s = Sqe { opcode: admin::GET_LOG_PAGE, ..Default::default() };
        s.cdw[0] = log::DISCOVERY as u32 | (((3 * 1024 / 4) - 1) << 16);
        let mut d = vec![0u8; 3072];
        assert_eq!(run(&t, &disc, &s, &mut d), AdminResult::data(3072));
        assert_eq!(u64::from_le_bytes(d[8..16].try_into().unwrap()), 2);
        let other = t.create_controller(crate::nvmf::spec::DISCOVERY_NQN, "nqn.host:other", [0; 16], 1, 0).unwrap();
        run(&t, &other, &s, &mut d);
        assert_eq!(u64::from_le_bytes(d[8..16].try_into().unwrap()), 1, "disallowed host sees only discovery");
    }

    #[test]
    fn disallowed_host_cannot_create_controller() {
        let t = target();
        assert!(t.create_controller("nqn.test:a", "nqn.host:evil", [0; 16], 1, 0).is_err());
        assert!(t.create_controller("nqn.test:none", "nqn.host:1", [0; 16], 1, 0).is_err());
    }

    #[test]
    fn aer_limit() {
        let t = target();
        let c = t.create_controller("nqn.test:a", "nqn.host:1", [0; 16], 1, 0).unwrap();
        let lim = TransportLimits::default();
        let s = Sqe { opcode: admin::ASYNC_EVENT_REQUEST, ..Default::default() };
        let cx = AdminCtx { target: &t, ctrl: &c, limits: &lim, outstanding_aers: 4 };
        assert_eq!(execute(&cx, &s, &mut []), AdminResult::err(status::ASYNC_EVENT_LIMIT_EXCEEDED));
        let cx = AdminCtx { outstanding_aers: 0, ..cx };
        assert_eq!(execute(&cx, &s, &mut []), AdminResult::Deferred);
    }
}

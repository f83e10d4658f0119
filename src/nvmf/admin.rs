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
    Done {
        status: u16,
        result: u64,
        data_len: usize,
    },
    /// An Asynchronous Event Request: held until an event occurs.
    Deferred,
}

impl AdminResult {
    fn ok(result: u32) -> Self {
        AdminResult::Done {
            status: status::SUCCESS,
            result: result as u64,
            data_len: 0,
        }
    }
    fn data(len: usize) -> Self {
        AdminResult::Done {
            status: status::SUCCESS,
            result: 0,
            data_len: len,
        }
    }
    fn err(sc: u16) -> Self {
        AdminResult::Done {
            status: sc | status::DNR,
            result: 0,
            data_len: 0,
        }
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

/// Receives the messages a peer site sends over its link (admin opcode SITE_MESSAGE).
pub trait SiteMessages: Send + Sync + std::fmt::Debug {
    /// Answer one message: the two completion dwords, or a status.
    fn message(&self, data: &[u8]) -> Result<(u32, u32), u16>;
}

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
        admin::SITE_MESSAGE if !discovery => match cx.target.site_messages.get() {
            Some(h) => match h.message(data) {
                Ok((dw0, dw1)) => AdminResult::Done {
                    status: status::SUCCESS,
                    result: dw0 as u64 | (dw1 as u64) << 32,
                    data_len: 0,
                },
                Err(sc) => AdminResult::err(sc),
            },
            None => AdminResult::err(status::INVALID_OPCODE),
        },
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
            (property::CAP, true) => AdminResult::Done {
                status: status::SUCCESS,
                result: cx.limits.cap(),
                data_len: 0,
            },
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
        cns::CSI_ACTIVE_NS_LIST if csi == 0 => {
            identify::active_ns_list(&mut page, subsys, sqe.nsid)
        }
        cns::NS_DESCRIPTORS => match subsys.namespace(sqe.nsid) {
            Some(ns) => identify::ns_descriptors(&mut page, ns),
            None => return AdminResult::err(status::INVALID_NAMESPACE),
        },
        // NVM command set specific structures: nothing beyond the defaults to report.
        cns::CSI_CONTROLLER | cns::CSI_NAMESPACE if csi == 0 => {}
        cns::NS_CS_INDEPENDENT => {
            identify::ns_cs_independent(&mut page, subsys.namespace(sqe.nsid))
        }
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
        log::DISCOVERY if discovery => {
            identify::discovery_log(&mut page, cx.target, &cx.ctrl.hostnqn)
        }
        _ if discovery => return AdminResult::err(status::INVALID_LOG_PAGE),
        log::ERROR => page.resize(64, 0),
        log::SMART => identify::smart_log(&mut page, &NsCounterTotals::of(&subsys.namespaces)),
        log::FIRMWARE_SLOT => identify::firmware_log(&mut page),
        log::CHANGED_NS => page.resize(4096, 0),
        log::COMMAND_EFFECTS => identify::command_effects_log(&mut page, true),
        log::ANA => {
            // LSP bit 0 (cdw10 bit 8): return groups only; RAE (bit 15): keep the event.
            identify::ana_log(&mut page, cx.target, cx.ctrl, sqe.cdw10() & (1 << 8) != 0);
            if sqe.cdw10() & (1 << 15) == 0 {
                cx.ctrl.ana_log_read();
            }
        }
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
            ctrl.io_queues_granted
                .store(granted as u16, Ordering::Relaxed);
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
        feature::NUMBER_OF_QUEUES if nvm => AdminResult::ok(number_of_queues_dw0(
            ctrl.io_queues_granted.load(Ordering::Relaxed) as u32,
        )),
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
            cntlid_min: crate::nvmf::subsystem::CNTLID_MIN,
            cntlid_max: crate::nvmf::subsystem::CNTLID_MAX,
        };
        let port = Port {
            id: 1,
            addr: "127.0.0.1:4420".parse().unwrap(),
        };
        Target::new(vec![Arc::new(s)], vec![port], 8, 16)
    }

    /// Two ports, one subsystem with namespaces 3, 1 and 7 (in that order).
    fn two_port_target() -> Target {
        let nqn = "nqn.test:ana";
        let s = Subsystem {
            nqn: nqn.into(),
            kind: SubsystemKind::Nvm,
            serial: "SN2".into(),
            model: "M".into(),
            allow_any_host: true,
            hosts: RwLock::new(vec![]),
            namespaces: [3, 1, 7]
                .iter()
                .map(|&id| Namespace::new(nqn, id, 0, 512, 2048))
                .collect(),
            cntlid_min: 0x10,
            cntlid_max: 0x1F,
        };
        let ports = vec![
            Port {
                id: 1,
                addr: "127.0.0.1:4420".parse().unwrap(),
            },
            Port {
                id: 2,
                addr: "127.0.0.1:4421".parse().unwrap(),
            },
        ];
        Target::new(vec![Arc::new(s)], ports, 8, 16)
    }

    fn ana_log_sqe(len: usize, offset: u64, rgo: bool, rae: bool) -> Sqe {
        let mut s = Sqe {
            opcode: admin::GET_LOG_PAGE,
            nsid: u32::MAX,
            ..Default::default()
        };
        let numd = (len / 4 - 1) as u32;
        s.cdw[0] = log::ANA as u32 | (rgo as u32) << 8 | (rae as u32) << 15 | (numd & 0xFFFF) << 16;
        s.cdw[1] = numd >> 16;
        s.cdw[2] = offset as u32;
        s.cdw[3] = (offset >> 32) as u32;
        s
    }

    fn le32(d: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
    }
    fn le64(d: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
    }

    fn run(t: &Target, c: &Controller, sqe: &Sqe, data: &mut [u8]) -> AdminResult {
        let lim = TransportLimits::default();
        execute(
            &AdminCtx {
                target: t,
                ctrl: c,
                limits: &lim,
                outstanding_aers: 0,
            },
            sqe,
            data,
        )
    }

    fn identify_sqe(cns: u8, nsid: u32) -> Sqe {
        let mut s = Sqe {
            opcode: admin::IDENTIFY,
            nsid,
            sgl_len: 4096,
            ..Default::default()
        };
        s.cdw[0] = cns as u32;
        s
    }

    #[test]
    fn identify_controller_fields_the_host_checks() {
        let t = target();
        let c = t
            .create_controller("nqn.test:a", "nqn.host:1", [0; 16], 1, 5000)
            .unwrap();
        let mut d = vec![0u8; 4096];
        assert_eq!(
            run(&t, &c, &identify_sqe(1, 0), &mut d),
            AdminResult::data(4096)
        );
        assert_eq!(u16::from_le_bytes([d[78], d[79]]), c.cntlid);
        assert_ne!(u16::from_le_bytes([d[320], d[321]]), 0, "KAS");
        assert!(
            u32::from_le_bytes(d[1792..1796].try_into().unwrap()) >= 4,
            "ioccsz"
        );
        assert_eq!(u16::from_le_bytes([d[514], d[515]]), 128, "maxcmd");
        assert_eq!(d[77], 8, "MDTS 1 MiB");
        assert_eq!(&d[768..778], b"nqn.test:a");
    }

    #[test]
    fn identify_reports_ana_for_nvm_subsystems_only() {
        let t = two_port_target();
        let c = t
            .create_controller("nqn.test:ana", "nqn.host:1", [0; 16], 2, 0)
            .unwrap();
        assert!(
            (0x10..=0x1F).contains(&c.cntlid),
            "cntlid {} from the subsystem's range",
            c.cntlid
        );
        let mut d = vec![0u8; 4096];
        run(&t, &c, &identify_sqe(1, 0), &mut d);
        assert_eq!(u16::from_le_bytes([d[78], d[79]]), c.cntlid);
        assert_eq!(d[76], 0b1010, "CMIC: several controllers, ANA reporting");
        assert_eq!(
            le32(&d, 92) & (1 << 11),
            1 << 11,
            "OAES: ANA change notices"
        );
        assert_eq!(
            le32(&d, 92) & (1 << 8),
            1 << 8,
            "OAES: namespace attribute notices"
        );
        assert_eq!(d[342], 10, "ANATT");
        assert_eq!(
            d[343], 0xDF,
            "ANACAP: all five states, constant and non-zero ANAGRPID"
        );
        assert_eq!(le32(&d, 344), 1, "ANAGRPMAX");
        assert_eq!(le32(&d, 348), 1, "NANAGRPID");
        assert_eq!(le32(&d, 540), 7, "MNAN");

        run(&t, &c, &identify_sqe(0, 7), &mut d);
        assert_eq!(d[30] & 1, 1, "NMIC shared");
        assert_eq!(le32(&d, 92), 1, "ANAGRPID");
        run(&t, &c, &identify_sqe(cns::NS_CS_INDEPENDENT, 7), &mut d);
        assert_eq!(
            (d[1], le32(&d, 4)),
            (1, 1),
            "NMIC and ANAGRPID of the I/O command set independent page"
        );

        let disc = t
            .create_controller(
                crate::nvmf::spec::DISCOVERY_NQN,
                "nqn.host:1",
                [0; 16],
                1,
                0,
            )
            .unwrap();
        run(&t, &disc, &identify_sqe(1, 0), &mut d);
        assert_eq!(
            (d[76], d[342], d[343], le32(&d, 344), le32(&d, 92)),
            (0, 0, 0, 0, 0),
            "no ANA on discovery"
        );
    }

    #[test]
    fn ana_log_page_layout_follows_the_port() {
        let t = two_port_target();
        t.ana
            .set_initial(2, crate::nvmf::ana::AnaState::NonOptimized);
        let c1 = t
            .create_controller("nqn.test:ana", "nqn.host:1", [0; 16], 1, 0)
            .unwrap();
        let c2 = t
            .create_controller("nqn.test:ana", "nqn.host:1", [0; 16], 2, 0)
            .unwrap();
        let mut d = vec![0xEEu8; 64];
        assert_eq!(
            run(&t, &c1, &ana_log_sqe(64, 0, false, false), &mut d),
            AdminResult::data(64)
        );
        assert_eq!(le64(&d, 0), 0, "header change count");
        assert_eq!(u16::from_le_bytes([d[8], d[9]]), 1, "one group descriptor");
        assert!(d[10..16].iter().all(|b| *b == 0), "reserved");
        assert_eq!(le32(&d, 16), 1, "ANAGRPID");
        assert_eq!(le32(&d, 20), 3, "NSIDs in the group");
        assert_eq!(le64(&d, 24), 0, "group change count");
        assert_eq!(d[32], 0x01, "optimized on port 1");
        assert!(d[33..48].iter().all(|b| *b == 0), "reserved");
        assert_eq!(
            [le32(&d, 48), le32(&d, 52), le32(&d, 56)],
            [1, 3, 7],
            "NSIDs, ascending"
        );
        assert_eq!(le32(&d, 60), 0, "zero past the page");
        run(&t, &c2, &ana_log_sqe(64, 0, false, false), &mut d);
        assert_eq!(d[32], 0x02, "non-optimized on port 2");

        let ch = t
            .set_ana_state(1, None, crate::nvmf::ana::AnaState::Inaccessible)
            .unwrap();
        assert_eq!(ch.len(), 1);
        run(&t, &c1, &ana_log_sqe(64, 0, false, false), &mut d);
        assert_eq!(
            (le64(&d, 0), le64(&d, 24), d[32]),
            (1, 1, 0x03),
            "port 1 changed"
        );
        run(&t, &c2, &ana_log_sqe(64, 0, false, false), &mut d);
        assert_eq!(
            (le64(&d, 0), le64(&d, 24), d[32]),
            (1, 0, 0x02),
            "port 2: only the global count moved"
        );

        // Return Groups Only: the descriptor without its NSIDs.
        run(&t, &c1, &ana_log_sqe(64, 0, true, false), &mut d);
        assert_eq!((le32(&d, 16), le32(&d, 20), d[32]), (1, 0, 0x03));
        assert!(d[48..].iter().all(|b| *b == 0), "no NSIDs after RGO");

        // Offset and length: a window into the same page.
        let mut w = vec![0u8; 8];
        assert_eq!(
            run(&t, &c1, &ana_log_sqe(8, 48, false, false), &mut w),
            AdminResult::data(8)
        );
        assert_eq!([le32(&w, 0), le32(&w, 4)], [1, 3]);
        assert_eq!(
            run(&t, &c1, &ana_log_sqe(8, 64, false, false), &mut w),
            AdminResult::err(status::INVALID_FIELD),
            "past the end"
        );
        assert_eq!(
            run(&t, &c1, &ana_log_sqe(8, 2, false, false), &mut w),
            AdminResult::err(status::INVALID_FIELD),
            "unaligned"
        );
    }

    #[test]
    fn reading_the_ana_log_rearms_the_notice_unless_retained() {
        let t = two_port_target();
        let c = t
            .create_controller("nqn.test:ana", "nqn.host:1", [0; 16], 1, 0)
            .unwrap();
        let mut s = Sqe {
            opcode: admin::SET_FEATURES,
            ..Default::default()
        };
        s.cdw[0] = feature::ASYNC_EVENT_CONFIG as u32;
        s.cdw[1] = 1 << 11;
        assert_eq!(run(&t, &c, &s, &mut []), AdminResult::ok(0));
        use crate::nvmf::ana::AnaState::*;
        t.set_ana_state(1, None, Inaccessible).unwrap();
        assert!(c.take_ana_change_event());
        t.set_ana_state(1, None, Optimized).unwrap();
        assert!(
            !c.take_ana_change_event(),
            "masked until the log page is read"
        );
        let mut d = vec![0u8; 64];
        run(&t, &c, &ana_log_sqe(64, 0, false, true), &mut d);
        t.set_ana_state(1, None, Inaccessible).unwrap();
        assert!(!c.take_ana_change_event(), "RAE keeps it masked");
        run(&t, &c, &ana_log_sqe(64, 0, false, false), &mut d);
        assert_eq!(d[32], 0x03);
        t.set_ana_state(1, None, Optimized).unwrap();
        assert!(c.take_ana_change_event(), "read without RAE: notices again");
    }

    #[test]
    fn inactive_namespace_is_zeroed_and_unknown_cns_invalid() {
        let t = target();
        let c = t
            .create_controller("nqn.test:a", "nqn.host:1", [0; 16], 1, 0)
            .unwrap();
        let mut d = vec![0xFFu8; 4096];
        assert_eq!(
            run(&t, &c, &identify_sqe(0, 9), &mut d),
            AdminResult::data(4096)
        );
        assert!(d.iter().all(|b| *b == 0));
        assert_eq!(
            run(&t, &c, &identify_sqe(0x55, 1), &mut d),
            AdminResult::err(status::INVALID_FIELD)
        );
        assert_eq!(
            run(&t, &c, &identify_sqe(0, 1), &mut d),
            AdminResult::data(4096)
        );
        assert_eq!(u64::from_le_bytes(d[0..8].try_into().unwrap()), 2048);
    }

    #[test]
    fn number_of_queues_is_capped() {
        let t = target();
        let c = t
            .create_controller("nqn.test:a", "nqn.host:1", [0; 16], 1, 0)
            .unwrap();
        let mut s = Sqe {
            opcode: admin::SET_FEATURES,
            ..Default::default()
        };
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
        let c = t
            .create_controller("nqn.test:a", "nqn.host:1", [0; 16], 1, 0)
            .unwrap();
        let mut s = Sqe {
            opcode: admin::FABRICS,
            fctype: fabrics::PROPERTY_SET,
            ..Default::default()
        };
        s.cdw[1] = property::CC;
        s.cdw[2] = 1 | (6 << 16) | (4 << 20);
        run(&t, &c, &s, &mut []);
        assert_eq!(c.csts.load(Ordering::Relaxed) & 1, 1);
        s.cdw[2] |= 1 << 14;
        run(&t, &c, &s, &mut []);
        assert_eq!((c.csts.load(Ordering::Relaxed) >> 2) & 3, 2);
        let mut g = Sqe {
            opcode: admin::FABRICS,
            fctype: fabrics::PROPERTY_GET,
            ..Default::default()
        };
        g.cdw[0] = 1;
        g.cdw[1] = property::CAP;
        let AdminResult::Done { result, .. } = run(&t, &c, &g, &mut []) else {
            panic!()
        };
        assert_eq!(result & 0xFFFF, 127);
        assert_eq!(result >> 37 & 1, 1, "CSS NVM");
    }

    #[test]
    fn log_pages_and_unknown_lid() {
        let t = target();
        let c = t
            .create_controller("nqn.test:a", "nqn.host:1", [0; 16], 1, 0)
            .unwrap();
        let mut s = Sqe {
            opcode: admin::GET_LOG_PAGE,
            ..Default::default()
        };
        s.cdw[0] = log::SMART as u32 | (127 << 16);
        let mut d = vec![0u8; 512];
        assert_eq!(run(&t, &c, &s, &mut d), AdminResult::data(512));
        s.cdw[0] = 0x42 | (127 << 16);
        assert_eq!(
            run(&t, &c, &s, &mut d),
            AdminResult::err(status::INVALID_LOG_PAGE)
        );
        s.cdw[0] = log::DISCOVERY as u32 | (127 << 16);
        assert_eq!(
            run(&t, &c, &s, &mut d),
            AdminResult::err(status::INVALID_LOG_PAGE)
        );
    }

    #[test]
    fn discovery_log_lists_allowed_subsystems_per_port() {
        let t = target();
        let disc = t
            .create_controller(
                crate::nvmf::spec::DISCOVERY_NQN,
                "nqn.host:1",
                [0; 16],
                1,
                0,
            )
            .unwrap();
        let mut s = Sqe {
            opcode: admin::GET_LOG_PAGE,
            ..Default::default()
        };
        s.cdw[0] = log::DISCOVERY as u32 | (((3 * 1024 / 4) - 1) << 16);
        let mut d = vec![0u8; 3072];
        assert_eq!(run(&t, &disc, &s, &mut d), AdminResult::data(3072));
        assert_eq!(u64::from_le_bytes(d[8..16].try_into().unwrap()), 2);
        let other = t
            .create_controller(
                crate::nvmf::spec::DISCOVERY_NQN,
                "nqn.host:other",
                [0; 16],
                1,
                0,
            )
            .unwrap();
        run(&t, &other, &s, &mut d);
        assert_eq!(
            u64::from_le_bytes(d[8..16].try_into().unwrap()),
            1,
            "disallowed host sees only discovery"
        );
    }

    #[test]
    fn disallowed_host_cannot_create_controller() {
        let t = target();
        assert!(t
            .create_controller("nqn.test:a", "nqn.host:evil", [0; 16], 1, 0)
            .is_err());
        assert!(t
            .create_controller("nqn.test:none", "nqn.host:1", [0; 16], 1, 0)
            .is_err());
    }

    #[test]
    fn aer_limit() {
        let t = target();
        let c = t
            .create_controller("nqn.test:a", "nqn.host:1", [0; 16], 1, 0)
            .unwrap();
        let lim = TransportLimits::default();
        let s = Sqe {
            opcode: admin::ASYNC_EVENT_REQUEST,
            ..Default::default()
        };
        let cx = AdminCtx {
            target: &t,
            ctrl: &c,
            limits: &lim,
            outstanding_aers: 4,
        };
        assert_eq!(
            execute(&cx, &s, &mut []),
            AdminResult::err(status::ASYNC_EVENT_LIMIT_EXCEEDED)
        );
        let cx = AdminCtx {
            outstanding_aers: 0,
            ..cx
        };
        assert_eq!(execute(&cx, &s, &mut []), AdminResult::Deferred);
    }
}

//! Command execution for one queue: Fabrics Connect, admin commands and namespace I/O.
//!
//! The transport (`conn.rs`) owns bytes, request slots and data buffers; it hands each
//! command here with its data buffer once the data is in, and turns the `Outcome` into a
//! response. This layer owns what a command means: the queue's binding to a controller,
//! namespace lookup and bounds, which block I/O a command becomes and which NVMe status a
//! block I/O result maps to. Access checks (ANA, later authentication) go here too.

use std::sync::Arc;

use tracing::{info, warn};

use super::admin::{self, AdminCtx, AdminResult};
use super::command::{ConnectCmd, Sqe};
use super::spec::{self, connect_data, fabrics, io, status};
use super::subsystem::{ConnectError, Controller, Namespace, Target};
use super::TransportLimits;
use crate::bdev::{BdevChannel, BdevIo, BdevOp, SqeSink, Submitted};
use crate::stats::OpClass;

/// What a command needs from the reactor while it executes.
pub struct ExecEnv<'a> {
    pub sq: &'a mut dyn SqeSink,
    pub channels: &'a mut [Box<dyn BdevChannel>],
    pub target: &'a Target,
    pub limits: &'a TransportLimits,
}

/// One command as the transport hands it over: its data buffer (write data already in,
/// room for read data) and where block I/O completions must be addressed.
pub struct Request<'a> {
    pub sqe: Sqe,
    pub data: &'a mut [u8],
    /// Index of `data` in the ring's registered buffer table, when it is registered.
    pub buf_index: Option<u16>,
    /// `user_data` for the block I/Os this command submits.
    pub user_data: u64,
}

/// Namespace I/O to record at completion: (statistics index, class, bytes).
pub type IoStat = (u32, OpClass, u32);

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Finished: respond with `status`, `result` and the first `data_out` bytes of data.
    Done {
        status: u16,
        result: u64,
        data_out: u32,
    },
    /// Block I/O submitted: `pending` completions follow (through `io_status`), each
    /// folded into `status` (already non-success if a synchronous part failed).
    Io {
        pending: u16,
        status: u16,
        stat: Option<IoStat>,
    },
    /// An Asynchronous Event Request: held until an event completes it.
    Parked,
}

impl Outcome {
    fn done(status: u16) -> Outcome {
        Outcome::Done {
            status,
            result: 0,
            data_out: 0,
        }
    }
}

/// The queue's association with a controller, set by its Fabrics Connect.
pub struct Binding {
    pub ctrl: Arc<Controller>,
    pub qid: u16,
    pub depth: u16,
    /// The host disabled SQ flow control at connect (see `CATTR_DISABLE_SQFLOW`).
    pub no_sq_flow: bool,
}

/// The command-level state of one queue.
pub struct Session {
    port_id: u16,
    binding: Option<Binding>,
    /// Asynchronous Event Requests parked on this (admin) queue.
    aers: usize,
}

impl Session {
    pub fn new(port_id: u16) -> Session {
        Session {
            port_id,
            binding: None,
            aers: 0,
        }
    }

    pub fn binding(&self) -> Option<&Binding> {
        self.binding.as_ref()
    }

    pub fn is_bound(&self) -> bool {
        self.binding.is_some()
    }

    /// A parked Asynchronous Event Request was released (completed or dropped).
    pub fn aer_released(&mut self) {
        self.aers -= 1;
    }

    pub fn execute(&mut self, req: Request, env: &mut ExecEnv) -> Outcome {
        let sqe = req.sqe;
        let is_connect = sqe.is_fabrics() && sqe.fctype == fabrics::CONNECT;
        match self.binding.as_ref().map(|b| b.qid == 0) {
            None if is_connect => self.connect(req, env),
            None => Outcome::done(status::COMMAND_SEQUENCE_ERROR | status::DNR),
            Some(_) if is_connect => Outcome::done(status::COMMAND_SEQUENCE_ERROR | status::DNR),
            Some(true) => self.admin(req, env),
            Some(false) if sqe.is_fabrics() => Outcome::done(status::INVALID_OPCODE | status::DNR),
            Some(false) => self.namespace_io(req, env),
        }
    }

    /// Periodic controller-level check; Some(reason) means the connection must close.
    /// `active` says whether a command arrived since the last check (traffic-based
    /// keep-alive, CTRATT.TBKAS: any command on any queue counts).
    pub fn tick(&self, active: bool) -> Option<&'static str> {
        let b = self.binding.as_ref()?;
        if active {
            b.ctrl.touch_keepalive();
        }
        if b.ctrl.is_dead() {
            return Some("association ended");
        }
        if b.qid == 0 && b.ctrl.keepalive_expired() {
            warn!(cntlid = b.ctrl.cntlid, host = %b.ctrl.hostnqn, "keep-alive timeout: ending association");
            b.ctrl.kill();
            return Some("keep-alive timeout");
        }
        None
    }

    /// An asynchronous event to report on a parked Asynchronous Event Request (its
    /// completion dword 0), taken from the controller: today the ANA change notice.
    pub fn take_event(&self) -> Option<u32> {
        let b = self
            .binding
            .as_ref()
            .filter(|b| b.qid == 0 && self.aers > 0)?;
        b.ctrl
            .take_ana_change_event()
            .then(super::ana::aen_completion_dw0)
    }

    /// The queue is gone: the admin queue ends its controller, an I/O queue frees its qid.
    pub fn release(&mut self, target: &Target) {
        if let Some(b) = self.binding.take() {
            if b.qid == 0 {
                info!(cntlid = b.ctrl.cntlid, host = %b.ctrl.hostnqn, "controller association ended");
                target.remove_controller(b.ctrl.cntlid);
            } else {
                b.ctrl.release_queue(b.qid);
            }
        }
    }

    // ----------------------------------------------------------------- admin

    fn admin(&mut self, req: Request, env: &mut ExecEnv) -> Outcome {
        let ctrl = self
            .binding
            .as_ref()
            .expect("admin queue is bound")
            .ctrl
            .clone();
        let cx = AdminCtx {
            target: env.target,
            ctrl: &ctrl,
            limits: env.limits,
            outstanding_aers: self.aers,
        };
        match admin::execute(&cx, &req.sqe, req.data) {
            AdminResult::Done {
                status,
                result,
                data_len,
            } => Outcome::Done {
                status,
                result,
                data_out: data_len as u32,
            },
            AdminResult::Deferred => {
                self.aers += 1;
                Outcome::Parked
            }
        }
    }

    // ----------------------------------------------------------------- connect

    fn connect(&mut self, req: Request, env: &ExecEnv) -> Outcome {
        let c = ConnectCmd::from_sqe(&req.sqe);
        let data = &*req.data;
        if data.len() != fabrics::CONNECT_DATA_LEN {
            return Outcome::done(status::SGL_DATA_LENGTH_INVALID | status::DNR);
        }
        let nqn = |off: usize| -> String {
            let f = &data[off..off + connect_data::NQN_LEN];
            let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).into_owned()
        };
        let (subnqn, hostnqn) = (nqn(connect_data::SUBNQN), nqn(connect_data::HOSTNQN));
        let hostid: [u8; 16] = data[..16].try_into().unwrap();
        let cntlid =
            u16::from_le_bytes([data[connect_data::CNTLID], data[connect_data::CNTLID + 1]]);
        match self.bind_queue(&c, &subnqn, &hostnqn, hostid, cntlid, env) {
            Ok(ctrl_id) => Outcome::Done {
                status: status::SUCCESS,
                result: ctrl_id as u64,
                data_out: 0,
            },
            Err((sc, result)) => {
                info!(
                    subnqn,
                    hostnqn,
                    qid = c.qid,
                    status = format_args!("{sc:#x}"),
                    "connect refused"
                );
                Outcome::Done {
                    status: sc | status::DNR,
                    result: result as u64,
                    data_out: 0,
                }
            }
        }
    }

    /// Attach this queue to a controller; Err carries (status, result dw0).
    fn bind_queue(
        &mut self,
        c: &ConnectCmd,
        subnqn: &str,
        hostnqn: &str,
        hostid: [u8; 16],
        cntlid: u16,
        env: &ExecEnv,
    ) -> Result<u16, (u16, u32)> {
        let invalid = |off: usize| {
            (
                status::CONNECT_INVALID_PARAMETERS,
                spec::connect_invalid_data_field(off as u16),
            )
        };
        if c.recfmt != 0 {
            return Err((status::CONNECT_INCOMPATIBLE_FORMAT, 0));
        }
        let max_depth = if c.qid == 0 {
            env.limits.admin_queue_depth
        } else {
            env.limits.queue_depth
        };
        if c.sqsize == 0 || c.sqsize >= max_depth {
            return Err((
                status::CONNECT_INVALID_PARAMETERS,
                spec::connect_invalid_cmd_field(44),
            ));
        }
        let map_err = |e: ConnectError| match e {
            ConnectError::UnknownSubsystem => invalid(connect_data::SUBNQN),
            ConnectError::HostNotAllowed => (
                status::CONNECT_INVALID_HOST,
                spec::connect_invalid_data_field(connect_data::HOSTNQN as u16),
            ),
            ConnectError::UnknownController => invalid(connect_data::CNTLID),
            ConnectError::QueueInUse | ConnectError::TooManyControllers => {
                (status::CONNECT_CONTROLLER_BUSY, 0)
            }
        };
        let ctrl = if c.qid == 0 {
            if cntlid != 0xFFFF {
                return Err(invalid(connect_data::CNTLID));
            }
            let ctrl = env
                .target
                .create_controller(subnqn, hostnqn, hostid, self.port_id, c.kato_ms)
                .map_err(map_err)?;
            info!(
                cntlid = ctrl.cntlid,
                subnqn,
                hostnqn,
                kato_ms = c.kato_ms,
                "controller created"
            );
            ctrl
        } else {
            env.target
                .attach_io_queue(cntlid, subnqn, hostnqn, c.qid)
                .map_err(map_err)?
        };
        let id = ctrl.cntlid;
        let no_sq_flow = c.sq_flow_control_disabled();
        if no_sq_flow {
            info!(
                cntlid = id,
                qid = c.qid,
                "queue without SQ flow control: clean reads complete in their data PDU"
            );
        }
        self.binding = Some(Binding {
            ctrl,
            qid: c.qid,
            depth: c.sqsize + 1,
            no_sq_flow,
        });
        Ok(id)
    }

    // ----------------------------------------------------------------- namespace I/O

    /// The bound subsystem's namespace `nsid`.
    fn namespace<'n>(&self, nsid: u32) -> Option<&'n Namespace> {
        let ns = self.binding.as_ref()?.ctrl.subsys.namespace(nsid)?;
        // SAFETY: the binding's Arc<Controller> keeps the subsystem and its namespaces
        // alive; the binding is dropped only by `release`, never while a command runs.
        Some(unsafe { &*(ns as *const Namespace) })
    }

    fn namespace_io(&mut self, req: Request, env: &mut ExecEnv) -> Outcome {
        let sqe = req.sqe;
        let Some(ns) = self.namespace(sqe.nsid) else {
            return Outcome::done(status::INVALID_NAMESPACE | status::DNR);
        };
        // The path's ANA state: an inaccessible or transitioning path executes nothing, and
        // the host retries on another path (no DNR).
        let ctrl = &self.binding.as_ref().expect("I/O queue is bound").ctrl;
        if let Some(refused) = env.target.ana_io_status(ctrl, ns) {
            return Outcome::done(refused);
        }
        let lba_range_ok = |slba: u64, nlb: u64| {
            slba.checked_add(nlb)
                .is_some_and(|end| end <= ns.num_blocks)
        };
        let shift = ns.lba_shift();
        let (op, offset, len) = match sqe.opcode {
            io::READ | io::WRITE => {
                let (slba, nlb) = (sqe.slba(), sqe.nlb() as u64);
                if !lba_range_ok(slba, nlb) {
                    return Outcome::done(status::LBA_OUT_OF_RANGE | status::DNR);
                }
                if nlb << shift != req.data.len() as u64 {
                    return Outcome::done(status::SGL_DATA_LENGTH_INVALID | status::DNR);
                }
                let op = if sqe.opcode == io::READ {
                    BdevOp::Read
                } else {
                    BdevOp::Write
                };
                ns.counters.record(op == BdevOp::Write, nlb << shift);
                (op, slba << shift, nlb << shift)
            }
            io::FLUSH => (BdevOp::Flush, 0, 0),
            io::WRITE_ZEROES => {
                let (slba, nlb) = (sqe.slba(), sqe.nlb() as u64);
                if !lba_range_ok(slba, nlb) {
                    return Outcome::done(status::LBA_OUT_OF_RANGE | status::DNR);
                }
                (BdevOp::WriteZeroes, slba << shift, nlb << shift)
            }
            io::DATASET_MANAGEMENT => return dataset_management(ns, req, env),
            _ => return Outcome::done(status::INVALID_OPCODE | status::DNR),
        };
        let stat = Some((ns.stats_index as u32, OpClass::of(op), len as u32));
        let mut io = Submission::new(&sqe, req.data.len() as u32, stat);
        io.submit(ns.device, op, offset, len as u32, &req, env);
        io.outcome()
    }
}

/// Deallocate each range; other DSM attributes are hints we may ignore.
fn dataset_management(ns: &Namespace, req: Request, env: &mut ExecEnv) -> Outcome {
    let sqe = req.sqe;
    if sqe.cdw11() & (1 << 2) == 0 {
        return Outcome::done(status::SUCCESS);
    }
    let nr = (sqe.cdw10() & 0xFF) as usize + 1;
    let mut ranges = [(0u64, 0u64); 256];
    if req.data.len() < nr * 16 {
        return Outcome::done(status::SGL_DATA_LENGTH_INVALID | status::DNR);
    }
    for (i, r) in req.data.chunks_exact(16).take(nr).enumerate() {
        ranges[i] = (
            u64::from_le_bytes(r[8..16].try_into().unwrap()),
            u32::from_le_bytes(r[4..8].try_into().unwrap()) as u64,
        );
    }
    if ranges[..nr]
        .iter()
        .any(|&(slba, nlb)| slba.checked_add(nlb).is_none_or(|end| end > ns.num_blocks))
    {
        return Outcome::done(status::LBA_OUT_OF_RANGE | status::DNR);
    }
    let shift = ns.lba_shift();
    let mut io = Submission::new(&sqe, req.data.len() as u32, None);
    for &(slba, nlb) in &ranges[..nr] {
        if nlb > 0 {
            io.submit(
                ns.device,
                BdevOp::Discard,
                slba << shift,
                (nlb << shift) as u32,
                &req,
                env,
            );
        }
    }
    io.outcome()
}

/// The block I/Os of one command as they are submitted.
struct Submission {
    opcode: u8,
    xfer_len: u32,
    pending: u16,
    status: u16,
    stat: Option<IoStat>,
}

impl Submission {
    fn new(sqe: &Sqe, xfer_len: u32, stat: Option<IoStat>) -> Submission {
        Submission {
            opcode: sqe.opcode,
            xfer_len,
            pending: 0,
            status: status::SUCCESS,
            stat,
        }
    }

    fn submit(
        &mut self,
        device: usize,
        op: BdevOp,
        offset: u64,
        len: u32,
        req: &Request,
        env: &mut ExecEnv,
    ) {
        let buf = if matches!(op, BdevOp::Read | BdevOp::Write) {
            req.data.as_ptr() as *mut u8
        } else {
            std::ptr::null_mut()
        };
        let bio = BdevIo {
            op,
            offset,
            len,
            buf,
            buf_index: req.buf_index,
            user_data: req.user_data,
        };
        match env.channels[device].submit(&bio, env.sq) {
            Submitted::Queued => self.pending += 1,
            Submitted::Done(res) => {
                self.status = io_status(self.opcode, self.xfer_len, res, self.status)
            }
        }
    }

    fn outcome(self) -> Outcome {
        Outcome::Io {
            pending: self.pending,
            status: self.status,
            stat: self.stat,
        }
    }
}

/// Fold one block I/O result into a command's status: the first failure decides.
pub fn io_status(opcode: u8, xfer_len: u32, res: i32, current: u16) -> u16 {
    let expect = match opcode {
        io::READ | io::WRITE => xfer_len as i32,
        _ => 0,
    };
    if res == expect || current != status::SUCCESS {
        return current;
    }
    if res != crate::site::stretch::REFUSED {
        crate::warn_limited!(opcode, res, "block I/O failed");
    }
    match opcode {
        // A volume that lost more members than it tolerates serves nothing.
        _ if res == -libc::ENXIO => status::NAMESPACE_NOT_READY | status::DNR,
        // A stretched volume this site may not serve: the host retries on the other path.
        _ if res == crate::site::stretch::REFUSED => status::ANA_INACCESSIBLE,
        io::READ => status::UNRECOVERED_READ_ERROR,
        io::WRITE => status::WRITE_FAULT,
        _ => status::INTERNAL_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_block_io_failure_decides_the_status() {
        let s = io_status(io::WRITE, 4096, 4096, status::SUCCESS);
        assert_eq!(s, status::SUCCESS);
        let s = io_status(io::WRITE, 4096, -libc::EIO, s);
        assert_eq!(s, status::WRITE_FAULT);
        assert_eq!(
            io_status(io::WRITE, 4096, -libc::ENXIO, s),
            status::WRITE_FAULT
        );
        assert_eq!(
            io_status(io::READ, 4096, 512, status::SUCCESS),
            status::UNRECOVERED_READ_ERROR
        );
        assert_eq!(
            io_status(io::READ, 4096, -libc::ENXIO, status::SUCCESS),
            status::NAMESPACE_NOT_READY | status::DNR
        );
        assert_eq!(
            io_status(io::FLUSH, 0, -libc::EIO, status::SUCCESS),
            status::INTERNAL_ERROR
        );
        assert_eq!(
            io_status(io::DATASET_MANAGEMENT, 16, 0, status::SUCCESS),
            status::SUCCESS
        );
        assert_eq!(
            io_status(
                io::WRITE,
                4096,
                crate::site::stretch::REFUSED,
                status::SUCCESS
            ),
            status::ANA_INACCESSIBLE,
            "no DNR: the host tries the other site"
        );
    }
}

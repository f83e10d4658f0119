//! The NVMe/TCP target: PDU codec, queue-pair state machine, admin and I/O commands.

pub mod admin;
pub mod ana;
pub mod command;
pub mod conn;
pub mod exec;
pub mod identify;
pub mod pdu;
pub mod sendsize;
pub mod spec;
pub mod subsystem;

use std::sync::atomic::Ordering;

/// Transport limits a controller advertises; every one bounds a resource.
#[derive(Debug, Clone, Copy)]
pub struct TransportLimits {
    /// Commands per queue (CAP.MQES + 1, MAXCMD).
    pub queue_depth: u16,
    /// Largest admin queue the host may ask for.
    pub admin_queue_depth: u16,
    /// In-capsule data bytes per command (IOCCSZ * 16 - 64).
    pub inline_data: usize,
    /// Largest data transfer of one command (MDTS).
    pub max_transfer: usize,
    /// Largest H2CData PDU the host may send (ICResp MAXH2CDATA).
    pub max_h2c_data: u32,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            queue_depth: 128,
            admin_queue_depth: 32,
            inline_data: 8192,
            max_transfer: 1 << 20,
            max_h2c_data: 128 * 1024,
        }
    }
}

impl TransportLimits {
    /// MDTS in units of the 4 KiB minimum page size, as a power of two.
    pub fn mdts_shift(&self) -> u8 {
        (self.max_transfer / 4096).trailing_zeros() as u8
    }

    /// CAP property: MQES, CQR, TO, CSS=NVM, MPSMIN=MPSMAX=4 KiB.
    pub fn cap(&self) -> u64 {
        (self.queue_depth as u64 - 1) | (1 << 16) | (15 << 24) | (1 << 37)
    }
}

/// Sum of a namespace's counters at one instant.
#[derive(Debug, Default, Clone, Copy)]
pub struct NsCounterTotals {
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl NsCounterTotals {
    pub fn of(ns: &[subsystem::Namespace]) -> Self {
        let mut t = NsCounterTotals::default();
        for n in ns {
            let c = &n.counters;
            t.reads += c.reads.load(Ordering::Relaxed);
            t.writes += c.writes.load(Ordering::Relaxed);
            t.bytes_read += c.bytes_read.load(Ordering::Relaxed);
            t.bytes_written += c.bytes_written.load(Ordering::Relaxed);
        }
        t
    }
}

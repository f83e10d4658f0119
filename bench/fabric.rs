//! The loopback fabric's own ceiling: a minimal request/response exchange with the byte
//! counts of NVMe/TCP I/O (a 72-byte command capsule; a 24-byte response, preceded for reads
//! by a 24-byte data header and the data; for writes the data rides in the capsule), over
//! one TCP connection on 127.0.0.1, the "target" on one core and the "initiator" on
//! another, at a fixed queue depth. No NVMe parsing and no storage: the IOPS a perfect
//! target could reach on this machine with plain socket calls. Both sides poll their
//! non-blocking sockets, as busy reactors do, so no time goes to sleeping and waking.
//!
//!   cargo bench --bench fabric -- [read|write] [IO_BYTES] [QD] [SECONDS]
//!
//! Prints IOPS and MiB/s; bench/suite.sh compares nvmf-raid against it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const CAPSULE: usize = 72;
const RESPONSE: usize = 24;
const DATA_HEADER: usize = 24;

fn pin(core: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

/// Read what is there (0 when nothing is); None once the peer has closed.
fn poll_read(s: &mut TcpStream, buf: &mut [u8]) -> Option<usize> {
    match s.read(buf) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(0),
        Err(_) => None,
    }
}

/// Write all of `buf`, polling while the socket is full; false once the peer has closed.
fn poll_write_all(s: &mut TcpStream, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return false,
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(_) => return false,
        }
    }
    true
}

/// Send with MSG_ZEROCOPY (FABRIC_ZEROCOPY=1): the pages are pinned instead of copied,
/// and completion notices arrive on the error queue, drained here. The response bytes
/// never change, so no send waits for its notice.
fn zerocopy_write_all(s: &TcpStream, mut buf: &[u8]) -> bool {
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    while !buf.is_empty() {
        // SAFETY: buf is valid for its length; the kernel pins its pages until the notice.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                libc::MSG_ZEROCOPY | libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            buf = &buf[n as usize..];
            continue;
        }
        let e = std::io::Error::last_os_error().raw_os_error();
        if n == 0 || !matches!(e, Some(libc::EAGAIN) | Some(libc::ENOBUFS)) {
            return false;
        }
        drain_error_queue(fd);
    }
    drain_error_queue(fd);
    true
}

fn drain_error_queue(fd: i32) {
    let mut control = [0u8; 256];
    loop {
        // SAFETY: a msghdr with only a control buffer, which outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len();
        if unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) } < 0 {
            return;
        }
    }
}

/// The target side: answer every request as soon as it is read, until the peer closes.
fn serve(mut s: TcpStream, read: bool, io: usize) {
    let zerocopy = std::env::var_os("FABRIC_ZEROCOPY").is_some();
    if zerocopy {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid int option on our socket.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ZEROCOPY,
                &one as *const _ as *const libc::c_void,
                4,
            )
        };
        assert_eq!(r, 0, "SO_ZEROCOPY: {}", std::io::Error::last_os_error());
    }
    let request = if read { CAPSULE } else { CAPSULE + io };
    let response = if read {
        DATA_HEADER + io + RESPONSE
    } else {
        RESPONSE
    };
    let mut rx = vec![0u8; request * 64];
    let tx = vec![0u8; response * 64];
    let mut pending = 0usize;
    while let Some(n) = poll_read(&mut s, &mut rx) {
        pending += n;
        let whole = pending / request;
        pending %= request;
        for chunk in 0..whole.div_ceil(64) {
            let k = (whole - chunk * 64).min(64);
            let sent = if zerocopy {
                zerocopy_write_all(&s, &tx[..k * response])
            } else {
                poll_write_all(&mut s, &tx[..k * response])
            };
            if !sent {
                return;
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let read = args.first().is_none_or(|a| a != "write");
    let io: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4096);
    let qd: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(32);
    let secs: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        pin(0);
        let (s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        serve(s, read, io);
    });
    pin(1);
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_nonblocking(true).unwrap();
    let request = if read { CAPSULE } else { CAPSULE + io };
    let response = if read {
        DATA_HEADER + io + RESPONSE
    } else {
        RESPONSE
    };
    let req = vec![0u8; request * qd];
    let mut resp = vec![0u8; response * qd];
    // Keep `qd` requests outstanding: send a batch, then top up as responses arrive.
    assert!(poll_write_all(&mut s, &req));
    let start = Instant::now();
    let (mut done, mut partial) = (0u64, 0usize);
    while start.elapsed() < Duration::from_secs(secs) {
        let n = poll_read(&mut s, &mut resp).expect("the target side closed");
        partial += n;
        let whole = partial / response;
        partial %= response;
        done += whole as u64;
        assert!(poll_write_all(&mut s, &req[..whole * request]));
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(s);
    server.join().unwrap();
    let iops = done as f64 / elapsed;
    println!(
        "fabric ceiling: {} {io} B QD {qd}: {:.0} IOPS, {:.1} MiB/s ({secs} s, target on core 0, initiator on core 1)",
        if read { "read" } else { "write" },
        iops,
        iops * io as f64 / (1 << 20) as f64
    );
}

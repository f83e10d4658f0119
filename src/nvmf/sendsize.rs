//! How much of a connection's queued output one send should take.
//!
//! The kernel cuts a send into socket buffers of at most its "size goal": a multiple of
//! the MSS up to 64 KiB less the headers. A send slightly over a multiple of it leaves a
//! small buffer at the end, which travels as a packet of its own: on loopback, where the
//! sender's core also runs the receiver's TCP input, that tail costs nearly as much as a
//! full buffer, and with a pacing congestion control (bbr) it waits for a pacing timer.
//! At 4 KiB reads, QD32, a turn's responses come to a little over 64 KiB, and tails were
//! over a third of the data packets. So a send takes whole buffers, and the rest leaves
//! with the next turn's responses. The held bytes wait one turn; device work that runs
//! inside its submission (zram, cached files) is queued after the turn's sends
//! (`reactor::Staging`), so it does not lengthen that wait.

use std::os::fd::AsRawFd;

/// The largest buffer the kernel builds for one send: 64 KiB less one byte and the IP
/// and TCP headers with timestamps (measured on IPv4 loopback: 65,483 payload bytes).
fn gso_payload(ipv6: bool) -> usize {
    const TCP_WITH_TIMESTAMPS: usize = 32;
    let ip = if ipv6 { 40 } else { 20 };
    65_536 - 1 - ip - TCP_WITH_TIMESTAMPS
}

/// The size goal for a connection whose MSS is `mss`: the largest multiple of it that
/// fits in one buffer, or one buffer when the MSS is over half of that (loopback).
pub fn size_goal(mss: usize, ipv6: bool) -> usize {
    let buffer = gso_payload(ipv6);
    if mss == 0 || mss * 2 > buffer {
        return buffer;
    }
    buffer / mss * mss
}

/// A connection's size goal, following its MSS.
#[derive(Debug, Clone, Copy)]
pub struct SendGoal {
    ipv6: bool,
    bytes: usize,
}

impl SendGoal {
    pub fn of(sock: &std::net::TcpStream) -> SendGoal {
        let ipv6 = sock.local_addr().is_ok_and(|a| a.is_ipv6());
        let mut g = SendGoal { ipv6, bytes: 0 };
        g.refresh(sock);
        g
    }

    /// Re-read the MSS, which can change during the connection (off the I/O path).
    pub fn refresh(&mut self, sock: &impl AsRawFd) {
        self.bytes = size_goal(current_mss(sock).unwrap_or(0), self.ipv6);
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The socket's current MSS, from TCP_INFO; None if the kernel does not say.
fn current_mss(sock: &impl AsRawFd) -> Option<usize> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `info`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0 && info.tcpi_snd_mss > 0).then_some(info.tcpi_snd_mss as usize)
}

/// How many of `queued` bytes to send now: all of them when they fit in one buffer,
/// else the whole buffers among them.
pub fn whole_buffers(queued: usize, goal: usize) -> usize {
    if queued <= goal {
        queued
    } else {
        queued - queued % goal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goal_is_a_multiple_of_the_mss_within_one_buffer() {
        assert_eq!(size_goal(1448, false), 45 * 1448);
        assert_eq!(size_goal(1428, true), 45 * 1428);
        assert_eq!(size_goal(8948, false), 7 * 8948);
        assert_eq!(size_goal(32_741, false), 2 * 32_741);
        // Loopback's MSS grows past half a buffer: one buffer, whatever the MSS.
        assert_eq!(size_goal(47_616, false), 65_483);
        assert_eq!(size_goal(65_483, false), 65_483);
        assert_eq!(size_goal(65_463, true), 65_463);
        assert_eq!(size_goal(0, false), 65_483);
    }

    #[test]
    fn a_connected_socket_has_a_goal_of_whole_segments() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mss = current_mss(&c).expect("TCP_INFO on a connected socket");
        let goal = SendGoal::of(&c).bytes();
        assert!(goal <= 65_483 && goal >= mss, "mss {mss} goal {goal}");
        assert!(goal == 65_483 || goal % mss == 0, "mss {mss} goal {goal}");
    }

    #[test]
    fn sends_whole_buffers_and_keeps_the_tail() {
        let g = 65_160;
        assert_eq!(whole_buffers(0, g), 0);
        assert_eq!(whole_buffers(4_144, g), 4_144);
        assert_eq!(whole_buffers(g, g), g);
        assert_eq!(whole_buffers(g + 1, g), g);
        assert_eq!(whole_buffers(16 * 4_144, g), g);
        assert_eq!(whole_buffers(3 * g + 700, g), 3 * g);
        for q in (1..400_000).step_by(997) {
            let n = whole_buffers(q, g);
            assert!(n > 0 && n <= q, "{q}: {n}");
            assert!(n == q || n % g == 0, "{q}: {n}");
        }
    }
}

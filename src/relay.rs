//! The site-link relay: a TCP relay that stands for the link between two sites when both
//! run on one machine (this machine's kernel has no netem). Every byte goes through real
//! sockets; the relay adds a one-way delay, a bandwidth limit per direction, and cuts the
//! link on command, either dropping every connection (a peer that died: resets) or holding
//! every byte (a black hole: TCP sees nothing until the link heals, as when a fibre is cut).
//!
//! Thread per connection and direction: the relay is a lab tool beside the target, never
//! on its I/O path. Everything is bounded: connections, bytes held per direction.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::util::bucket::TokenBucket;

/// Connections relayed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Bytes held per direction (in the delay line or behind a black hole) before the relay
/// stops reading from the sender.
pub const MAX_HELD: usize = 16 << 20;
const CHUNK: usize = 64 * 1024;
/// How often blocked threads look at the link state.
const POLL: Duration = Duration::from_millis(20);

/// The state of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Up,
    /// Every connection is reset and new ones are refused.
    Dropped,
    /// Connections stay open but no byte passes until the link heals.
    Blackhole,
}

impl LinkState {
    fn from_u8(v: u8) -> LinkState {
        match v {
            1 => LinkState::Dropped,
            2 => LinkState::Blackhole,
            _ => LinkState::Up,
        }
    }
}

/// Delay and bandwidth, changeable while the relay runs.
#[derive(Debug)]
pub struct Shape {
    delay_us: AtomicU64,
    /// Bytes per second per direction; 0 = unlimited.
    rate: AtomicU64,
    state: AtomicU8,
    /// Bumped on every cut, so threads of dropped connections notice even after a heal.
    cuts: AtomicU64,
}

/// What `status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayStatus {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub state: LinkState,
    pub delay_ms: f64,
    pub rate_bytes_per_sec: u64,
    pub connections: usize,
    pub bytes_forwarded: u64,
    pub refused: u64,
}

pub struct Relay {
    pub listen: SocketAddr,
    link: Arc<Link>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relay connections to `listen` to `upstream`, each direction delayed by `delay` and
    /// limited to `rate` bytes per second (0: unlimited).
    pub fn start(
        listen: &str,
        upstream: SocketAddr,
        delay: Duration,
        rate: u64,
    ) -> std::io::Result<Relay> {
        let listener = TcpListener::bind(listen)
            .map_err(|e| std::io::Error::new(e.kind(), format!("relay listen on {listen}: {e}")))?;
        listener.set_nonblocking(true)?;
        let listener_addr = listener.local_addr()?;
        let shape = Arc::new(Shape {
            delay_us: AtomicU64::new(delay.as_micros() as u64),
            rate: AtomicU64::new(rate),
            state: AtomicU8::new(0),
            cuts: AtomicU64::new(0),
        });
        let link = Arc::new(Link {
            upstream,
            shape,
            connections: Arc::new(AtomicUsize::new(0)),
            forwarded: Arc::new(AtomicU64::new(0)),
            refused: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let l = link.clone();
        let thread = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || l.run(listener))?;
        Ok(Relay {
            listen: listener_addr,
            link,
            thread: Some(thread),
        })
    }

    pub fn set_delay(&self, delay: Duration) {
        self.link
            .shape
            .delay_us
            .store(delay.as_micros() as u64, Relaxed);
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.link.shape.rate.store(bytes_per_sec, Relaxed);
    }

    /// Cut the link: `Dropped` resets every connection and refuses new ones, `Blackhole`
    /// holds every byte; `Up` heals it.
    pub fn set_state(&self, state: LinkState) {
        let shape = &self.link.shape;
        if state != LinkState::Up {
            shape.cuts.fetch_add(1, Relaxed);
        }
        shape.state.store(state as u8, Relaxed);
    }

    pub fn status(&self) -> RelayStatus {
        let l = &self.link;
        RelayStatus {
            listen: self.listen,
            upstream: l.upstream,
            state: LinkState::from_u8(l.shape.state.load(Relaxed)),
            delay_ms: l.shape.delay_us.load(Relaxed) as f64 / 1000.0,
            rate_bytes_per_sec: l.shape.rate.load(Relaxed),
            connections: l.connections.load(Relaxed),
            bytes_forwarded: l.forwarded.load(Relaxed),
            refused: l.refused.load(Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.link.stop.store(true, Relaxed);
        self.set_state(LinkState::Dropped);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the relay's threads share.
struct Link {
    upstream: SocketAddr,
    shape: Arc<Shape>,
    connections: Arc<AtomicUsize>,
    forwarded: Arc<AtomicU64>,
    refused: AtomicU64,
    stop: AtomicBool,
}

impl Link {
    fn run(&self, listener: TcpListener) {
        while !self.stop.load(Relaxed) {
            match listener.accept() {
                Ok((client, _)) => self.admit(client),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// Connect the client to the upstream and start both directions, unless the link is
    /// dropped or full (then the client is reset).
    fn admit(&self, client: TcpStream) {
        let down = LinkState::from_u8(self.shape.state.load(Relaxed)) == LinkState::Dropped;
        if down || self.connections.load(Relaxed) >= MAX_CONNECTIONS {
            self.refused.fetch_add(1, Relaxed);
            return reset(client);
        }
        let Ok(server) = TcpStream::connect_timeout(&self.upstream, Duration::from_secs(5)) else {
            self.refused.fetch_add(1, Relaxed);
            return reset(client);
        };
        let _ = (
            client.set_nonblocking(false),
            client.set_nodelay(true),
            server.set_nodelay(true),
        );
        self.connections.fetch_add(1, Relaxed);
        let epoch = self.shape.cuts.load(Relaxed);
        let pair = Arc::new(Pair {
            a: client,
            b: server,
            closed: AtomicBool::new(false),
            halves_left: AtomicUsize::new(2),
            connections: self.connections.clone(),
        });
        for a_to_b in [true, false] {
            let (pair, shape, forwarded) =
                (pair.clone(), self.shape.clone(), self.forwarded.clone());
            let _ = std::thread::Builder::new()
                .name("relay-pipe".into())
                .spawn(move || pipe(&pair, a_to_b, &shape, epoch, &forwarded));
        }
    }
}

fn reset(s: TcpStream) {
    // SO_LINGER 0: close with a reset, as a dead peer's host would answer.
    let _ = nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    drop(s);
}

/// One relayed connection: the client side and the upstream side.
struct Pair {
    a: TcpStream,
    b: TcpStream,
    closed: AtomicBool,
    halves_left: AtomicUsize,
    connections: Arc<AtomicUsize>,
}

impl Pair {
    fn close(&self) {
        if !self.closed.swap(true, Relaxed) {
            let _ = self.a.shutdown(Shutdown::Both);
            let _ = self.b.shutdown(Shutdown::Both);
        }
    }
}

/// The delay line of one direction: chunks with the time they may leave, the bytes held,
/// and whether the sender has finished.
struct Held {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    ended: bool,
}

struct Line {
    queue: Mutex<Held>,
    changed: Condvar,
}

/// Sleep until `due`, then spin the last stretch: a sleep alone wakes up to tens of
/// microseconds late (timer slack, scheduling), which would add to the link's delay.
fn wait_until(due: Instant) {
    const SPIN: Duration = Duration::from_micros(60);
    let left = due.saturating_duration_since(Instant::now());
    if left > SPIN {
        std::thread::sleep(left - SPIN);
    }
    while Instant::now() < due {
        std::thread::yield_now();
    }
}

/// A timer slack of 1 us for the calling thread (the default 50 us would be added to
/// every delayed chunk).
fn tight_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}

/// Forward one direction: a reader thread fills the delay line, this thread empties it.
fn pipe(pair: &Arc<Pair>, a_to_b: bool, shape: &Arc<Shape>, epoch: u64, forwarded: &AtomicU64) {
    tight_timers();
    let line = Arc::new(Line {
        queue: Mutex::new(Held {
            chunks: VecDeque::new(),
            bytes: 0,
            ended: false,
        }),
        changed: Condvar::new(),
    });
    let reader = {
        let (pair, shape, line) = (pair.clone(), shape.clone(), line.clone());
        std::thread::Builder::new()
            .name("relay-read".into())
            .spawn(move || read_side(&pair, a_to_b, &shape, &line))
    };
    write_side(pair, a_to_b, shape, epoch, &line, forwarded);
    pair.close();
    if let Ok(r) = reader {
        let _ = r.join();
    }
    if pair.halves_left.fetch_sub(1, Relaxed) == 1 {
        pair.connections.fetch_sub(1, Relaxed);
    }
}

fn read_side(pair: &Pair, a_to_b: bool, shape: &Shape, line: &Line) {
    let mut src = if a_to_b { &pair.a } else { &pair.b };
    let _ = src.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; CHUNK];
    loop {
        if pair.closed.load(Relaxed) {
            break;
        }
        {
            // Back-pressure: stop reading while the line holds its limit.
            let q = line.queue.lock().unwrap();
            if q.bytes >= MAX_HELD {
                let _ = line.changed.wait_timeout(q, POLL);
                continue;
            }
        }
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let at = Instant::now() + Duration::from_micros(shape.delay_us.load(Relaxed));
                let mut q = line.queue.lock().unwrap();
                q.chunks.push_back((at, buf[..n].to_vec()));
                q.bytes += n;
                line.changed.notify_all();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    let mut q = line.queue.lock().unwrap();
    q.ended = true;
    line.changed.notify_all();
}

fn write_side(
    pair: &Pair,
    a_to_b: bool,
    shape: &Shape,
    epoch: u64,
    line: &Line,
    forwarded: &AtomicU64,
) {
    let mut dst = if a_to_b { &pair.b } else { &pair.a };
    let mut bucket = TokenBucket::default();
    loop {
        if shape.cuts.load(Relaxed) != epoch
            && LinkState::from_u8(shape.state.load(Relaxed)) == LinkState::Dropped
        {
            return;
        }
        let next = {
            let mut q = line.queue.lock().unwrap();
            match q.chunks.front() {
                None if q.ended => return,
                None => {
                    let _ = line.changed.wait_timeout(q, POLL);
                    continue;
                }
                Some((at, _))
                    if *at > Instant::now()
                        || LinkState::from_u8(shape.state.load(Relaxed)) != LinkState::Up =>
                {
                    if pair.closed.load(Relaxed) {
                        // Nothing held can be delivered any more: do not wait for the heal.
                        return;
                    }
                    // Held by a cut: look again every POLL.
                    let up = LinkState::from_u8(shape.state.load(Relaxed)) == LinkState::Up;
                    let due = *at;
                    drop(q);
                    if up {
                        wait_until(due.min(Instant::now() + POLL));
                    } else {
                        std::thread::sleep(POLL);
                    }
                    continue;
                }
                Some(_) => {
                    let (_, chunk) = q.chunks.pop_front().unwrap();
                    q.bytes -= chunk.len();
                    line.changed.notify_all();
                    chunk
                }
            }
        };
        while !bucket.take(shape.rate.load(Relaxed) as f64, next.len() as f64, 0.01) {
            std::thread::sleep(Duration::from_micros(200));
        }
        if dst.write_all(&next).is_err() {
            return;
        }
        forwarded.fetch_add(next.len() as u64, Relaxed);
    }
}

/// The relay's control socket: JSON-RPC methods `relay_status`, `relay_set` (`delay_ms`,
/// `rate`), `relay_cut` (`mode`: "drop" or "blackhole") and `relay_heal`.
impl crate::mgmt::Handler for Relay {
    fn call(
        &self,
        method: &str,
        p: &serde_json::Value,
    ) -> Result<serde_json::Value, crate::mgmt::RpcError> {
        let bad = |m: String| crate::mgmt::RpcError {
            code: -32602,
            message: m,
        };
        match method {
            "relay_status" => {}
            "relay_set" => {
                if let Some(ms) = p.get("delay_ms").and_then(serde_json::Value::as_f64) {
                    if !(0.0..=10_000.0).contains(&ms) {
                        return Err(bad(format!("delay_ms {ms}: must be 0..=10000")));
                    }
                    self.set_delay(Duration::from_micros((ms * 1000.0) as u64));
                }
                if let Some(rate) = p.get("rate").and_then(serde_json::Value::as_u64) {
                    self.set_rate(rate);
                }
            }
            "relay_cut" => match p
                .get("mode")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("drop")
            {
                "drop" => self.set_state(LinkState::Dropped),
                "blackhole" => self.set_state(LinkState::Blackhole),
                other => return Err(bad(format!("mode '{other}': use drop or blackhole"))),
            },
            "relay_heal" => self.set_state(LinkState::Up),
            _ => {
                return Err(crate::mgmt::RpcError {
                    code: -32601,
                    message: format!("unknown method '{method}'"),
                })
            }
        }
        Ok(serde_json::to_value(self.status()).expect("status serialises"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let mut w = s;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    fn round_trip(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let out: Vec<u8> = (0..n).map(|i| i as u8).collect();
        s.write_all(&out).unwrap();
        let mut back = vec![0u8; n];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, out);
        back
    }

    #[test]
    fn bytes_pass_unchanged_and_late_by_at_least_the_delay_each_way() {
        let r = Relay::start("127.0.0.1:0", echo_server(), Duration::from_millis(30), 0).unwrap();
        let mut s = TcpStream::connect(r.listen).unwrap();
        let t = Instant::now();
        round_trip(&mut s, 1000);
        assert!(
            t.elapsed() >= Duration::from_millis(60),
            "round trip {:?} through a 30 ms link",
            t.elapsed()
        );
        round_trip(&mut s, 300_000);
        // The count follows each write, which the echo may overtake: wait for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.status().bytes_forwarded < 2 * 301_000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(r.status().bytes_forwarded, 2 * 301_000);
    }

    #[test]
    fn a_dropped_link_resets_connections_and_refuses_new_ones_until_healed() {
        let r = Relay::start("127.0.0.1:0", echo_server(), Duration::ZERO, 0).unwrap();
        let mut s = TcpStream::connect(r.listen).unwrap();
        round_trip(&mut s, 10);
        r.set_state(LinkState::Dropped);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"x");
        let mut b = [0u8; 1];
        assert!(
            matches!(s.read(&mut b), Ok(0) | Err(_)),
            "the connection ends"
        );
        let mut n = TcpStream::connect(r.listen).unwrap();
        n.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = n.write_all(b"y");
        assert!(
            matches!(n.read(&mut b), Ok(0) | Err(_)),
            "a new connection is refused"
        );
        r.set_state(LinkState::Up);
        let mut s = TcpStream::connect(r.listen).unwrap();
        round_trip(&mut s, 10);
        assert!(r.status().refused >= 1);
    }

    #[test]
    fn a_black_hole_holds_bytes_until_the_link_heals() {
        let r = Relay::start("127.0.0.1:0", echo_server(), Duration::ZERO, 0).unwrap();
        let mut s = TcpStream::connect(r.listen).unwrap();
        round_trip(&mut s, 10);
        r.set_state(LinkState::Blackhole);
        s.write_all(b"held").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 4];
        assert!(s.read(&mut b).is_err(), "nothing passes a black hole");
        r.set_state(LinkState::Up);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"held");
    }

    #[test]
    fn the_rate_limit_spreads_a_transfer_over_time() {
        let r = Relay::start("127.0.0.1:0", echo_server(), Duration::ZERO, 2 << 20).unwrap();
        let mut s = TcpStream::connect(r.listen).unwrap();
        let t = Instant::now();
        round_trip(&mut s, 1 << 20);
        // 1 MiB each way at 2 MiB/s per direction, the directions overlapping: >= 0.4 s.
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "1 MiB at 2 MiB/s took {:?}",
            t.elapsed()
        );
    }
}

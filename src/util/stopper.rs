//! Interruptible accept loops for the management and metrics threads. A stop must reach a
//! thread blocked in accept whatever happened to its socket (a Unix socket's file can be
//! removed while the target runs, so connecting to it is no way to wake the thread): the
//! thread waits in poll(2) on its listener and on an eventfd that `stop` signals.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking eventfd (also the reactors' wake-up).
pub fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make an eventfd readable.
pub fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own.
    unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
}

pub struct Stopper {
    eventfd: OwnedFd,
}

impl Stopper {
    pub fn new() -> std::io::Result<Stopper> {
        Ok(Stopper {
            eventfd: eventfd()?,
        })
    }

    /// Wake every waiter, now and later.
    pub fn stop(&self) {
        signal(&self.eventfd);
    }

    /// Wait until `fd` is readable (true) or the stop is signalled (false).
    pub fn wait_readable(&self, fd: RawFd) -> bool {
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.eventfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: fds is a valid array of two pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return fds[1].revents == 0;
        }
    }
}

/// Accept connections on a non-blocking `listener` and hand each to `serve` until
/// `stopper` is signalled.
pub fn accept_until_stopped<L, S>(
    listener: &L,
    stopper: &Stopper,
    accept: impl Fn(&L) -> std::io::Result<S>,
    mut serve: impl FnMut(S),
) where
    L: AsRawFd,
{
    while stopper.wait_readable(listener.as_raw_fd()) {
        match accept(listener) {
            Ok(s) => serve(s),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Out of descriptors and the like: do not spin on it.
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_reaches_a_loop_whose_socket_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stopper = std::sync::Arc::new(Stopper::new().unwrap());
        let s = stopper.clone();
        let t = std::thread::spawn(move || {
            let mut served = 0;
            accept_until_stopped(
                &listener,
                &s,
                |l| l.accept().map(|(c, _)| c),
                |_| served += 1,
            );
            served
        });
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        stopper.stop();
        assert_eq!(t.join().unwrap(), 1);
    }
}

//! The endpoint's UDP socket options, set once before quinn takes the socket: how
//! received datagrams are delivered and how many the kernel may hold.

use std::os::fd::AsRawFd;

/// Bytes of datagrams the kernel may hold for the endpoint before it drops them. Its
/// default (208 kB) overflows on loopback under a burst (a batch of ten 6.5 kB
/// datagrams from each of several peers): each drop is a loss QUIC must detect and
/// resend, a delay of a few milliseconds on a raft round. A ceiling the kernel reaches
/// only while the reader lags, not memory the process holds.
pub const RECEIVE_BUFFER: usize = 4 << 20;

/// Asks the kernel for a receive buffer of `bytes` (as far as `net.core.rmem_max`
/// allows, or past it with CAP_NET_ADMIN, as quic-go does); the size granted, as
/// [`receive_buffer`] reports it (doubled).
pub fn widen_receive_buffer(socket: &impl AsRawFd, bytes: usize) -> usize {
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set(socket, libc::SOL_SOCKET, libc::SO_RCVBUF, want);
    // The kernel reports twice what it granted: short of `2 × bytes`, rmem_max capped it.
    if receive_buffer(socket) < bytes.saturating_mul(2) {
        set(socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want);
    }
    receive_buffer(socket)
}

/// The socket's receive buffer as the kernel reports it (twice what was asked: it
/// counts its own bookkeeping in); 0 if it cannot be read.
pub fn receive_buffer(socket: &impl AsRawFd) -> usize {
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int we own, its size passed alongside.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        usize::try_from(got).unwrap_or(0)
    } else {
        0
    }
}

/// Has the kernel deliver each received datagram on its own (`UDP_GRO` off): quinn's
/// socket switches coalescing on, and a coalesced read would not fit the one-datagram
/// buffers quinn gives a socket that reports one segment per read. Best effort: a
/// kernel without GRO coalesces nothing anyway.
pub fn receive_apart(socket: &impl AsRawFd) {
    const UDP_GRO: libc::c_int = 104;
    set(socket, libc::SOL_UDP, UDP_GRO, 0);
}

/// Sets an integer socket option; best effort (the caller reads back what matters).
fn set(socket: &impl AsRawFd, level: libc::c_int, option: libc::c_int, value: libc::c_int) {
    // SAFETY: setsockopt on a descriptor the caller holds, with a pointer to a c_int and its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer grows past the kernel's default where the machine lets it (root, or
    /// `rmem_max` high enough); elsewhere it is left as the kernel allows.
    #[test]
    fn the_receive_buffer_is_widened() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = receive_buffer(&socket);
        let after = widen_receive_buffer(&socket, RECEIVE_BUFFER);
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root || max >= RECEIVE_BUFFER {
            assert!(after >= 2 * RECEIVE_BUFFER, "granted {after} bytes (from {before}), rmem_max {max}");
        } else {
            assert!(after >= before, "granted {after} bytes (from {before}), rmem_max {max}");
        }
    }
}

//! Unix sockets: `SO_PASSCRED` and `recvmsg` with the sender's credentials (the
//! per-instance sd_notify socket), `sendmsg` with one fd and `poll` for room (systemd's
//! notify socket and fd store).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// Who sent a datagram, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Turn `SO_PASSCRED` on: from now on the kernel attaches the sender's pid/uid/gid
/// (`SCM_CREDENTIALS`) to every datagram received on `sock`, whether or not the sender sent
/// credentials itself.
pub fn set_passcred(sock: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Room for one `ucred` plus up to 64 passed fds, 8-byte aligned (the alignment of
/// `cmsghdr` on every Linux target).
const CONTROL_WORDS: usize = 48;

/// One non-blocking `recvmsg(2)` on the datagram socket `fd`: returns (bytes stored, sender,
/// truncated). At most `buf.len()` bytes are stored; `truncated` says the datagram was
/// longer. Fds sent along (`SCM_RIGHTS`) are closed at once. `WouldBlock` when no datagram
/// is queued.
///
/// Width-correct on 32-bit targets: control-message sizes come from libc's `CMSG_*`
/// functions, `msg_controllen`/`cmsg_len` are cast to the target's own types, and the
/// `ucred` is read unaligned from the control buffer.
#[allow(clippy::unnecessary_cast)]
pub fn recv_with_credentials(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<Credentials>, bool)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; CONTROL_WORDS];
    // SAFETY: msghdr is a plain C struct; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points to live buffers (iov → buf, control) for the duration of the call.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let mut sender = None;
    // SAFETY: the CMSG_* functions walk the control buffer the kernel just filled in, bounded
    // by msg_controllen; data is read with read_unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let h = &*cmsg;
            let len = h.cmsg_len as usize;
            let header = libc::CMSG_LEN(0) as usize;
            if h.cmsg_level == libc::SOL_SOCKET
                && h.cmsg_type == libc::SCM_CREDENTIALS
                && len >= libc::CMSG_LEN(std::mem::size_of::<libc::ucred>() as u32) as usize
            {
                let u: libc::ucred =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::ucred);
                sender = Some(Credentials {
                    pid: u.pid as i32,
                    uid: u.uid as u32,
                    gid: u.gid as u32,
                });
            } else if h.cmsg_level == libc::SOL_SOCKET
                && h.cmsg_type == libc::SCM_RIGHTS
                && len > header
            {
                // Descriptors are not wanted (no FDSTORE): close them so they do not leak.
                let count = (len - header) / std::mem::size_of::<libc::c_int>();
                let data = libc::CMSG_DATA(cmsg) as *const libc::c_int;
                for i in 0..count {
                    libc::close(std::ptr::read_unaligned(data.add(i)));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let truncated = n > buf.len() || (msg.msg_flags & libc::MSG_TRUNC) != 0;
    Ok((n.min(buf.len()), sender, truncated))
}

/// One `sendmsg(2)` of `data` on the connected socket `sock` with `fd` attached as
/// `SCM_RIGHTS` (the receiver gets its own copy of the fd). `MSG_NOSIGNAL`: a closed peer
/// is an `EPIPE` error, not a `SIGPIPE`. Blocks or not as `sock` does.
pub fn send_with_fd(sock: BorrowedFd<'_>, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Room for one fd, aligned like cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: msghdr is plain data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points to `space` writable bytes, enough for one header with
    // one fd; the CMSG_* helpers stay within it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd.as_raw_fd());
    }
    // SAFETY: msg and everything it points to live until sendmsg returns.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `poll(POLLOUT)` on `fd` for at most `timeout_ms` (negative: no limit): `Ok(true)` when it
/// became writable (for a connected datagram socket: the peer's queue has room), `Ok(false)`
/// on timeout.
pub fn poll_writable(fd: BorrowedFd<'_>, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0)
}

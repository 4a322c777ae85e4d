//! The raw system calls the xdp layer needs, each wrapped once: `bpf(2)`, socket options on an
//! AF_XDP socket, interface ioctls, `poll(2)`, the TX and fill-ring wake-ups and `setns(2)`.
//! Everything above this file is safe code over these wrappers (rings and frames aside).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `bpf(cmd, attr, sizeof attr)`. `A` is one of the `#[repr(C)]` attribute structs in `bpf.rs`,
/// each a prefix of the kernel's `union bpf_attr` (the kernel zero-fills the rest).
pub(crate) fn bpf<A>(cmd: u32, attr: &mut A) -> io::Result<i64> {
    // SAFETY: `attr` is a live, exclusively borrowed struct of `size_of::<A>()` bytes; the kernel
    // reads at most that many and writes only into fields of the command's own layout. Pointers
    // inside it (instructions, log buffer, key, value) are set by the callers to buffers that
    // outlive this call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut A, std::mem::size_of::<A>()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Wraps a file descriptor a system call just returned.
pub(crate) fn owned_fd(fd: i64) -> OwnedFd {
    // SAFETY: `fd` was returned by a successful syscall that creates a new descriptor, so it is
    // open and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// A new socket (`socket(2)`), close-on-exec.
pub(crate) fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 { Err(io::Error::last_os_error()) } else { Ok(owned_fd(fd as i64)) }
}

/// `setsockopt(fd, level, name, &value, sizeof value)`.
pub(crate) fn setsockopt<T>(fd: BorrowedFd<'_>, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `getsockopt` into a plain-data `T` (an all-zero `T` must be valid). Returns the value and the
/// length the kernel wrote, so a caller can tell an older, shorter layout apart.
pub(crate) fn getsockopt<T: Copy>(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<(T, usize)> {
    // SAFETY: the callers use this only for C structs of integers, for which all-zero is valid.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live, exclusively borrowed `T` and `len` says its size; the kernel writes
    // at most `len` bytes and updates `len`.
    let r =
        unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, &mut value as *mut T as *mut libc::c_void, &mut len) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok((value, len as usize)) }
}

/// `bind(2)` of an AF_XDP socket.
pub(crate) fn bind_xdp(fd: BorrowedFd<'_>, addr: &libc::sockaddr_xdp) -> io::Result<()> {
    // SAFETY: `addr` is a live sockaddr_xdp and its size is passed; the kernel only reads it.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            addr as *const libc::sockaddr_xdp as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The copy-mode TX kick: `sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0)` makes the kernel take a
/// batch of descriptors off the TX ring. `Ok(())` or the errno it reported.
pub(crate) fn kick_tx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zero-length send with null buffer and address is how AF_XDP is woken; the kernel
    // reads no user memory for it.
    let r = unsafe { libc::sendto(fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The fill-ring wake-up a driver asks for with XDP_RING_NEED_WAKEUP on the fill ring:
/// `recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL)`.
pub(crate) fn wake_rx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zero-length receive with null buffer and address; the kernel writes no user memory.
    let r = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `poll(2)`: how many of `fds` have one of their events ready within `timeout` (0 when
/// interrupted by a signal: the caller's loop is bounded by time anyway).
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a live, exclusively borrowed slice of pollfd and its length is passed.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) };
    }
    Ok(r as usize)
}

/// An `ifreq` naming interface `name` (at most 15 bytes).
pub(crate) fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    // SAFETY: ifreq is a C struct of integers, arrays and a union of such; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// `ioctl(fd, request, &mut ifreq)` for the interface ioctls (SIOCGIFHWADDR, SIOCETHTOOL).
pub(crate) fn ioctl_ifreq(fd: BorrowedFd<'_>, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `req` is a live ifreq; for SIOCETHTOOL its data pointer was set by the caller to an
    // ethtool command struct that outlives this call and is as large as the command needs.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `if_nametoindex(3)`, in the calling thread's network namespace.
pub(crate) fn if_index(name: &CStr) -> io::Result<u32> {
    // SAFETY: `name` is a NUL-terminated string that lives across the call.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 { Err(io::Error::last_os_error()) } else { Ok(i) }
}

/// `setns(fd, CLONE_NEWNET)`: moves the calling thread into the network namespace `fd` names.
pub(crate) fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we hold open; it changes only this thread's namespace.
    let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

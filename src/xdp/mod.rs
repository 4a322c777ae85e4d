//! AF_XDP plumbing for the xdp data plane: raw Ethernet frames between an interface and user
//! space, where c2m runs its own TCP (`src/tcp/`). This module gets frames in and out; it knows
//! nothing of TCP beyond which frames to steer.
//!
//! - [`XdpProgram`]: a hand-assembled XDP program (no clang, no libbpf) that steers the IPv4 TCP
//!   frames matching a [`Filter`] to the AF_XDP socket of their RX queue (an XSKMAP) and passes
//!   the rest to the kernel; attached as a BPF link ([`XdpLink`]) so it goes when the process does.
//! - [`Xsk`]: one AF_XDP socket per (interface, queue) with its UMEM, four rings and a frame pool;
//!   frames move in batches through caller-owned `Vec<Frame>`s (see `xsk.rs`).
//! - [`Interface`]: index, MAC, queues and the offloads that must be off (see [`Offloads`]).
//! - [`netns`]: enter a network namespace from a thread (`scripts/netns.sh` makes them).
//!
//! Kernel facts this rests on (6.18, measured here): native and generic XDP attach to veth;
//! AF_XDP on veth binds in copy mode only (zero-copy: EOPNOTSUPP); a copy-mode TX kick is a
//! zero-length sendto and moves at most 32 frames.
//!
//! Why not the `xdpilone` crate (pure Rust, UMEM and rings): its frames are raw pointers whose
//! access it leaves unsafe to the user, so a safe API over it needs the same token layer as here;
//! its shared-UMEM machinery (Arc'd sockets, spin-locked device registry) serves a model c2m does
//! not use (one UMEM per socket, one thread per queue); it has no program loading, which is half
//! of this module; its errors are bare errnos; it is passively maintained and EUPL-1.2, which
//! would be c2m's only copyleft dependency. `libc` has every AF_XDP struct and constant, and the
//! rings are 200 lines.

mod asm;
mod bpf;
pub mod iface;
pub mod loss;
pub mod netns;
mod pool;
pub mod program;
mod ring;
pub mod stats;
mod sys;
pub mod xsk;

pub use iface::{Interface, Offloads};
pub use pool::{FrameCounts, FramePool};
pub use program::{AttachMode, Filter, XDP_PASS, XDP_REDIRECT, XdpLink, XdpMode, XdpProgram, steers};
pub use stats::{KernelStats, XskCounters};
pub use xsk::{BindMode, BindPolicy, Frame, Kick, Xsk, XskConfig};

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("{what} failed: {source}{}", hint(what, source))]
    Syscall { what: &'static str, source: io::Error },
    #[error("the verifier refused the XDP program: {source}; its log:\n{log}")]
    Verifier { source: io::Error, log: String },
    #[error("attaching XDP to {iface} in {mode} mode failed: {source}{}", attach_hint(source))]
    Attach { iface: String, mode: AttachMode, source: io::Error },
    #[error("no interface {0:?} in this thread's network namespace")]
    NoInterface(String),
    #[error(
        "no network namespace {name:?} ({dir}/{name}: {source}); `scripts/netns.sh up` makes c2m-srv and c2m-cli",
        dir = netns::NETNS_DIR
    )]
    NoNetns { name: String, source: io::Error },
    #[error("{0}")]
    Config(String),
}

pub(crate) fn syscall(what: &'static str, source: io::Error) -> XdpError {
    XdpError::Syscall { what, source }
}

/// The likely cause and fix of a failed set-up call.
fn hint(what: &str, e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => " (needs root: CAP_NET_ADMIN, and CAP_BPF or CAP_SYS_ADMIN)",
        Some(libc::EAFNOSUPPORT) => " (this kernel has no AF_XDP sockets: CONFIG_XDP_SOCKETS)",
        Some(libc::ENOSYS) => " (this kernel has no bpf() syscall: CONFIG_BPF_SYSCALL)",
        Some(libc::EBUSY) if what.starts_with("bind") => " (another AF_XDP socket is bound to this queue)",
        Some(libc::EOPNOTSUPP) if what.contains("ZEROCOPY") => {
            " (the driver has no zero-copy AF_XDP: bind in copy mode, as veth needs)"
        }
        Some(libc::ENOMEM) => " (out of memory, or the UMEM is over the locked-memory limit `ulimit -l`)",
        Some(libc::EINVAL) if what.starts_with("bind") => {
            " (no such queue on this interface, or the interface is down)"
        }
        _ => "",
    }
}

fn attach_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EBUSY) | Some(libc::EEXIST) => {
            " (an XDP program is already attached there: `ip link set dev IF xdp off` if it is a stale one)"
        }
        Some(libc::EOPNOTSUPP) => " (the driver has no native XDP: use generic mode)",
        Some(libc::EINVAL) => " (BPF links for XDP need Linux 5.9+)",
        Some(libc::ERANGE) => " (the MTU is too large for XDP on this driver)",
        Some(libc::ENOSPC) => " (veth: the XDP end needs as many RX queues as its peer has TX queues)",
        Some(libc::EPERM) => " (needs root)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_cause_and_the_fix() {
        let e = syscall("socket(AF_XDP)", io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
        assert!(e.to_string().contains("CONFIG_XDP_SOCKETS"), "{e}");
        let e = syscall("bind(AF_XDP, XDP_ZEROCOPY)", io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        assert!(e.to_string().contains("copy mode"), "{e}");
        let e = XdpError::Attach {
            iface: "c2m-s0".into(),
            mode: AttachMode::Native,
            source: io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert!(e.to_string().contains("xdp off") && e.to_string().contains("native (drv)"), "{e}");
    }
}

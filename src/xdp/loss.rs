//! Random loss on an interface's receive path: an XDP program that drops each frame with a given
//! probability (`bpf_get_prandom_u32`) and passes the rest. The test topology's stand-in for
//! netem and nftables' `numgen random` (neither is in this kernel's or this machine's build):
//! attached to the client end of the veth pair, it loses the server's frames before the Linux
//! clients see them, as a lossy link would.

use std::os::fd::{AsFd, OwnedFd};

use super::asm::{Asm, Insn, R0};
use super::bpf;
use super::iface::Interface;
use super::program::AttachMode;
use super::{XdpError, syscall};

/// The program: `r0 = bpf_get_prandom_u32(); if r0 < threshold: XDP_DROP else XDP_PASS`.
fn assemble(per_mille: u16) -> Vec<Insn> {
    let threshold = loss_threshold(per_mille);
    let mut a = Asm::new();
    let drop = a.new_label();
    a.call(bpf::BPF_FUNC_GET_PRANDOM_U32);
    a.jlt_imm(R0, threshold, drop);
    a.mov64_imm(R0, bpf::XDP_PASS as i32);
    a.exit();
    a.label(drop);
    a.mov64_imm(R0, bpf::XDP_DROP as i32);
    a.exit();
    a.finish().expect("the loss program's one label is placed")
}

/// The most loss a program takes: the threshold must stay a positive i32 immediate (BPF
/// sign-extends immediates, and 2^31 would compare as a huge unsigned number).
pub const MAX_LOSS_PER_MILLE: u16 = 400;

/// The random u32 below which a frame is dropped: per_mille / 1000 of 2^32.
fn loss_threshold(per_mille: u16) -> i32 {
    let t = (u64::from(per_mille.min(MAX_LOSS_PER_MILLE)) << 32) / 1000;
    i32::try_from(t).expect("below 2^31 at MAX_LOSS_PER_MILLE")
}

/// A loss program attached to an interface; dropping it detaches the program.
pub struct Loss {
    _prog: OwnedFd,
    _link: OwnedFd,
    pub mode: AttachMode,
}

impl Loss {
    /// Drops `per_mille` (at most [`MAX_LOSS_PER_MILLE`]) of the frames `iface` receives, in generic mode (it works
    /// on any interface, beside nothing else: an interface holds one XDP program).
    pub fn attach(iface: &Interface, per_mille: u16) -> Result<Loss, XdpError> {
        if per_mille > MAX_LOSS_PER_MILLE {
            return Err(XdpError::Config(format!("loss of {per_mille} per mille: at most {MAX_LOSS_PER_MILLE}")));
        }
        let prog = bpf::load_xdp("c2m_loss", &assemble(per_mille))
            .map_err(|e| XdpError::Verifier { source: e.source, log: e.log })?;
        let mode = AttachMode::Generic;
        let link = bpf::link_create_xdp(prog.as_fd(), iface.index(), bpf::XDP_FLAGS_SKB_MODE)
            .map_err(|e| syscall("bpf(BPF_LINK_CREATE) for the loss program", e))?;
        Ok(Loss { _prog: prog, _link: link, mode })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program (BPF_PROG_TEST_RUN, root) on one frame `runs` times; returns the drops.
    fn drops(per_mille: u16, runs: u32) -> u32 {
        let prog = bpf::load_xdp("c2m_loss_test", &assemble(per_mille)).expect("load (needs root)");
        let frame = [0u8; 64];
        (0..runs).filter(|_| bpf::test_run(prog.as_fd(), &frame).expect("test run") == bpf::XDP_DROP).count() as u32
    }

    #[test]
    fn drops_its_share() {
        assert_eq!(drops(0, 1000), 0);
        let d = drops(200, 4000);
        // 20% of 4000 is 800; 5 standard deviations (about 25 each) either side.
        assert!((675..=925).contains(&d), "{d} of 4000 dropped at 200 per mille");
    }

    #[test]
    fn threshold_is_the_share_of_u32() {
        assert_eq!(loss_threshold(0), 0);
        assert_eq!(loss_threshold(20), 85_899_345); // 2% of 2^32
        assert_eq!(loss_threshold(400), 1_717_986_918);
        assert_eq!(loss_threshold(1000), loss_threshold(MAX_LOSS_PER_MILLE));
    }
}

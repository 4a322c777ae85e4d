//! Start-up check of the kernel's io_uring: fail early, naming the missing feature and the fix.

use io_uring::{IoUring, opcode, register::Probe};

use super::EngineError;
use super::buf_ring::BufRing;

/// What the probe found; printed at start-up and recorded in results.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Features {
    pub kernel: String,
    pub io_uring_disabled: Option<u32>,
    pub rlimit_nofile: u64,
    pub recv_bundle: bool,
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Checks every io_uring feature the engine relies on by using it once on a small ring.
pub fn probe() -> Result<Features, EngineError> {
    let disabled =
        std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok().and_then(|s| s.trim().parse::<u32>().ok());
    if disabled == Some(2) {
        return Err(EngineError::Unsupported(
            "kernel.io_uring_disabled = 2 forbids io_uring for every process; \
             fix: `sysctl -w kernel.io_uring_disabled=0`"
                .into(),
        ));
    }
    let ring: IoUring =
        IoUring::builder().setup_single_issuer().setup_coop_taskrun().setup_taskrun_flag().build(8).map_err(
            |e| match e.raw_os_error() {
                Some(libc::EPERM) if disabled == Some(1) => EngineError::Unsupported(
                    "kernel.io_uring_disabled = 1 allows io_uring only to the group in kernel.io_uring_group; \
                 fix: `sysctl -w kernel.io_uring_disabled=0` or run as a member of that group"
                        .into(),
                ),
                Some(libc::EINVAL) => EngineError::Unsupported(format!(
                    "kernel {} rejects IORING_SETUP_SINGLE_ISSUER|COOP_TASKRUN (needs Linux 6.1+)",
                    kernel_release()
                )),
                _ => EngineError::ring_setup("io_uring_setup", e),
            },
        )?;
    let submitter = ring.submitter();
    let mut probe = Probe::new();
    submitter
        .register_probe(&mut probe)
        .map_err(|e| EngineError::Unsupported(format!("IORING_REGISTER_PROBE failed ({e}); needs Linux 5.6+")))?;
    let needed: [(u8, &str); 8] = [
        (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
        (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
        (opcode::Send::CODE, "IORING_OP_SEND"),
        (opcode::Close::CODE, "IORING_OP_CLOSE"),
        (opcode::AsyncCancel2::CODE, "IORING_OP_ASYNC_CANCEL"),
        (opcode::Timeout::CODE, "IORING_OP_TIMEOUT"),
        (opcode::Shutdown::CODE, "IORING_OP_SHUTDOWN"),
        (opcode::MsgRingData::CODE, "IORING_OP_MSG_RING"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(EngineError::Unsupported(format!(
                "kernel {} lacks {name}; c2m needs Linux 6.1 or newer",
                kernel_release()
            )));
        }
    }
    submitter.register_files_sparse(16).map_err(|e| {
        EngineError::Unsupported(format!("sparse fixed-file tables (IORING_REGISTER_FILES2, Linux 5.19+): {e}"))
    })?;
    let bufs = BufRing::new(8, 64, 0).map_err(|e| EngineError::io("mmap", e))?;
    bufs.register(&submitter).map_err(|e| {
        EngineError::Unsupported(format!("provided buffer rings (IORING_REGISTER_PBUF_RING, Linux 5.19+): {e}"))
    })?;
    let _ = submitter.unregister_buf_ring(0);
    let rlimit_nofile = crate::host::limits::nofile_soft();
    Ok(Features {
        kernel: kernel_release(),
        io_uring_disabled: disabled,
        rlimit_nofile,
        recv_bundle: ring.params().is_feature_recvsend_bundle(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_has_what_the_engine_needs() {
        let f = super::probe().expect("io_uring probe");
        assert!(f.rlimit_nofile > 0);
        assert!(!f.kernel.is_empty());
    }
}

//! The `bpf(2)` commands the xdp layer uses: create an XSKMAP and set its entries, load a
//! program (with the verifier's log when it is refused), attach it to an interface as a BPF link,
//! and run it on a test frame. Attribute structs are prefixes of the kernel's `union bpf_attr`
//! for one command each, with the uapi field names.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::asm::Insn;
use super::sys;

// enum bpf_cmd
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_TEST_RUN: u32 = 10;
const BPF_LINK_CREATE: u32 = 28;
// enum bpf_map_type, bpf_prog_type, bpf_attach_type
pub const BPF_MAP_TYPE_XSKMAP: u32 = 17;
pub const BPF_PROG_TYPE_XDP: u32 = 6;
pub const BPF_XDP: u32 = 37;
/// Helper `long bpf_redirect_map(void *map, u64 key, u64 flags)`.
pub const BPF_FUNC_REDIRECT_MAP: i32 = 51;
/// Helper `u32 bpf_get_prandom_u32(void)`.
pub const BPF_FUNC_GET_PRANDOM_U32: i32 = 7;
// enum xdp_action
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
// XDP attach flags (uapi/linux/if_link.h)
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// A kernel object name: at most 15 bytes and a NUL.
fn obj_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (d, s) in out.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    out
}

/// An XSKMAP of `entries` slots (u32 key: the RX queue; u32 value: an AF_XDP socket fd).
pub fn create_xskmap(name: &str, entries: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        map_name: obj_name(name),
        ..Default::default()
    };
    sys::bpf(BPF_MAP_CREATE, &mut attr).map(sys::owned_fd)
}

/// map[key] = value (u32 key and value).
pub fn map_update_u32(map: BorrowedFd<'_>, key: u32, value: u32) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        ..Default::default()
    };
    sys::bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Removes map[key].
pub fn map_delete_u32(map: BorrowedFd<'_>, key: u32) -> io::Result<()> {
    let mut attr = MapElemAttr { map_fd: map.as_raw_fd() as u32, key: &key as *const u32 as u64, ..Default::default() };
    sys::bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

/// A refused program: the errno and what the verifier said about it.
#[derive(Debug)]
pub struct LoadError {
    pub source: io::Error,
    pub log: String,
}

/// Loads an XDP program. If the kernel refuses it, loads it again with the verifier's log on,
/// so the error says which instruction and why (the first try runs without a log: a log buffer
/// too small for a successful load's log would fail the load on older kernels).
pub fn load_xdp(name: &str, insns: &[Insn]) -> Result<OwnedFd, LoadError> {
    let license = c"GPL"; // bpf_redirect_map is available to any license; GPL opens every helper.
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: obj_name(name),
        expected_attach_type: BPF_XDP,
        ..Default::default()
    };
    match sys::bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(sys::owned_fd(fd)),
        Err(first) => {
            let mut log = vec![0u8; 1 << 18];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            match sys::bpf(BPF_PROG_LOAD, &mut attr) {
                // Loaded with the log on but not without: keep it (it is the same program).
                Ok(fd) => Ok(sys::owned_fd(fd)),
                Err(source) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    let log = String::from_utf8_lossy(&log[..end]).trim_end().to_string();
                    let source = if source.raw_os_error() == first.raw_os_error() { source } else { first };
                    Err(LoadError { source, log })
                }
            }
        }
    }
}

/// Attaches `prog` to interface `ifindex` as a BPF link (attach type BPF_XDP) in the mode `flags`
/// names. The program stays attached exactly as long as the returned link fd is open, so a
/// process that dies leaves nothing behind.
pub fn link_create_xdp(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr =
        LinkCreateAttr { prog_fd: prog.as_raw_fd() as u32, target_ifindex: ifindex, attach_type: BPF_XDP, flags };
    sys::bpf(BPF_LINK_CREATE, &mut attr).map(sys::owned_fd)
}

/// Runs `prog` once on `frame` (BPF_PROG_TEST_RUN) and returns its verdict (an `xdp_action`).
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<u32> {
    let mut out = vec![0u8; frame.len() + 512];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    sys::bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_layouts_match_union_bpf_attr() {
        // Offsets of the last field each command needs, from include/uapi/linux/bpf.h.
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(MapElemAttr, flags), 24);
        assert_eq!(std::mem::offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, flags), 12);
        assert_eq!(std::mem::offset_of!(TestRunAttr, batch_size), 72);
    }

    /// Needs root (CAP_BPF): the kernel's verifier is what is tested.
    #[test]
    fn a_refused_program_comes_with_the_verifiers_log() {
        use crate::xdp::asm::{Asm, R0, R1, R2};
        // Reads the first packet byte without checking it against data_end.
        let mut a = Asm::new();
        a.ldx_w(R2, R1, 0);
        a.ldx_b(R0, R2, 0);
        a.exit();
        let e = load_xdp("c2m_bad", &a.finish().unwrap()).expect_err("the verifier must refuse an unchecked read");
        assert_ne!(
            e.source.raw_os_error(),
            Some(libc::EPERM),
            "bpf() needs root (CAP_BPF and CAP_NET_ADMIN) for this test: {}",
            e.source
        );
        assert!(e.log.contains("invalid access to packet"), "log: {}", e.log);
    }

    #[test]
    fn names_are_cut_to_fifteen_bytes() {
        assert_eq!(&obj_name("c2m")[..4], b"c2m\0");
        let n = obj_name("a_name_longer_than_fifteen");
        assert_eq!(n[15], 0);
        assert_eq!(&n[..15], b"a_name_longer_t");
    }
}

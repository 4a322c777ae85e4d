//! The machine a run measures: uname, CPU, memory, the fd limit and the sysctls that cap
//! connections.

use std::collections::BTreeMap;

use super::{HostError, memory, read_text};
use crate::schema::bench::Machine;

/// Sysctls recorded with every result: each one can stop connections before memory does.
pub const SYSCTLS: &[&str] = &[
    "fs.file-max",
    "fs.nr_open",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_tw_reuse",
    "net.netfilter.nf_conntrack_max",
    "vm.max_map_count",
    "kernel.io_uring_disabled",
];

/// A sysctl's value as /proc/sys shows it, runs of whitespace made one space (`tcp_mem` is
/// tab-separated); `None` when the kernel has no such sysctl (e.g. conntrack not loaded).
pub fn read_sysctl(name: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Files the kernel still lets the whole system open: fs.file-max less those allocated now
/// (/proc/sys/fs/file-nr: allocated, free, max).
pub fn files_free() -> Result<u64, HostError> {
    if exempt_from_file_max() {
        // The kernel does not apply fs.file-max to a process with CAP_SYS_ADMIN.
        return Ok(u64::MAX);
    }
    let path = "/proc/sys/fs/file-nr";
    let text = read_text(path)?;
    let mut words = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    match (words.next().flatten(), words.next().flatten(), words.next().flatten()) {
        (Some(allocated), Some(_), Some(max)) => Ok(max.saturating_sub(allocated)),
        _ => Err(HostError::Missing { path: path.into(), field: "allocated free max".into() }),
    }
}

/// Whether this process has CAP_SYS_ADMIN (bit 21 of CapEff), which exempts it from
/// fs.file-max.
pub fn exempt_from_file_max() -> bool {
    use super::limits::{CAP_SYS_ADMIN, cap_eff, has_cap};
    has_cap(cap_eff(), CAP_SYS_ADMIN)
}

/// The host name (uname's nodename).
pub fn hostname() -> String {
    uname().map(|u| u.nodename).unwrap_or_else(|_| "unknown".into())
}

struct Uname {
    nodename: String,
    release: String,
}

fn uname() -> Result<Uname, HostError> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a live utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(HostError::Sys { call: "uname", source: std::io::Error::last_os_error() });
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok(Uname { nodename: text(&u.nodename), release: text(&u.release) })
}

/// The first `model name` in /proc/cpuinfo (or `unknown`: some architectures have none).
pub fn parse_cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Whether this is a virtual machine, and what said so: the cpuinfo `hypervisor` flag (set by
/// every x86 hypervisor), and the DMI vendor and product where readable. `none` when neither
/// shows one.
pub fn virtualization(cpuinfo: &str, dmi_vendor: Option<&str>, dmi_product: Option<&str>) -> String {
    let flagged = cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|w| w == "hypervisor"));
    const KNOWN: &[(&str, &str)] = &[
        ("Google", "kvm (Google Compute Engine)"),
        ("Amazon EC2", "kvm (Amazon EC2)"),
        ("QEMU", "kvm (QEMU)"),
        ("KVM", "kvm"),
        ("VMware", "vmware"),
        ("Microsoft Corporation", "hyper-v"),
        ("Xen", "xen"),
        ("innotek GmbH", "virtualbox"),
    ];
    let dmi = [dmi_vendor, dmi_product]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find_map(|field| KNOWN.iter().find(|(key, _)| field.contains(key)).map(|(_, name)| name.to_string()));
    match (dmi, flagged) {
        (Some(name), _) => name,
        (None, true) => "virtual (cpuinfo hypervisor flag)".into(),
        (None, false) => "none".into(),
    }
}

/// /proc/loadavg's three averages.
pub fn load_average() -> Result<[f64; 3], HostError> {
    let path = "/proc/loadavg";
    let text = read_text(path)?;
    parse_loadavg(&text).ok_or_else(|| HostError::Missing { path: path.into(), field: "1 5 15 minute averages".into() })
}

pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut w = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([w.next()??, w.next()??, w.next()??])
}

/// Reads the machine as a result records it.
pub fn read_machine() -> Result<Machine, HostError> {
    let uname = uname()?;
    let mem = memory::read_meminfo()?;
    let cpuinfo = read_text("/proc/cpuinfo")?;
    let (soft, hard) = super::limits::rlimit(nix::sys::resource::Resource::RLIMIT_NOFILE);
    let sysctls: BTreeMap<String, String> =
        SYSCTLS.iter().filter_map(|name| Some((name.to_string(), read_sysctl(name)?))).collect();
    Ok(Machine {
        host: uname.nodename,
        kernel: uname.release,
        cpu_model: parse_cpu_model(&cpuinfo),
        cores: std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1),
        memory_bytes: mem.mem_total,
        mem_free_bytes: mem.mem_free,
        rlimit_nofile: [soft, hard],
        sysctls,
        virtualization: virtualization(
            &cpuinfo,
            std::fs::read_to_string("/sys/class/dmi/id/sys_vendor").ok().as_deref(),
            std::fs::read_to_string("/sys/class/dmi/id/product_name").ok().as_deref(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_line() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\nflags\t: fpu\n";
        assert_eq!(parse_cpu_model(text), "AMD EPYC 9B14");
        assert_eq!(parse_cpu_model("processor : 0\n"), "unknown");
    }

    #[test]
    fn virtual_or_not() {
        let flagged = "flags\t: fpu vme hypervisor lahf_lm\n";
        assert_eq!(virtualization("flags\t: fpu vme\n", None, None), "none");
        assert_eq!(virtualization(flagged, None, None), "virtual (cpuinfo hypervisor flag)");
        assert_eq!(
            virtualization(flagged, Some("Google\n"), Some("Google Compute Engine\n")),
            "kvm (Google Compute Engine)"
        );
        assert_eq!(virtualization("", Some("QEMU"), Some("Standard PC")), "kvm (QEMU)");
        assert_eq!(parse_loadavg("0.52 1.10 0.98 2/311 4242\n"), Some([0.52, 1.10, 0.98]));
        assert_eq!(parse_loadavg("0.52\n"), None);
        assert!(load_average().is_ok());
    }

    #[test]
    fn reads_this_machine() {
        let m = read_machine().unwrap();
        assert!(m.cores >= 1 && m.memory_bytes > 0 && m.mem_free_bytes > 0);
        assert!(!m.kernel.is_empty() && !m.host.is_empty());
        assert!(m.sysctls.contains_key("fs.file-max"));
        // Tab-separated in /proc, one space here.
        assert_eq!(m.sysctls["net.ipv4.tcp_mem"].split(' ').count(), 3);
        assert!(files_free().unwrap() > 0);
    }
}

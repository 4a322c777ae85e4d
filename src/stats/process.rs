//! What every c2m `/metrics` answer ends with: `c2m_build_info` and the standard `process_*`
//! families (names and units as the Prometheus client libraries write them), read from /proc at
//! scrape time.

use std::fmt::Write;

/// The fields of /proc/self/stat the process families need.
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_ticks: u64,
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Parses /proc/PID/stat; the command name (field 2) is in parentheses and may hold spaces or
/// parentheses itself, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field N is f[N - 3].
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// Seconds since the epoch the machine booted (`btime` of /proc/stat).
fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf takes a name constant and reads no memory of ours.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as u64)
}

fn gauge(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// Appends `c2m_build_info` and the `process_*` families; a family /proc cannot answer is left
/// out rather than written as a made-up 0.
pub fn render(out: &mut String) {
    use crate::build_info::{COMMIT, DIRTY, VERSION};
    let _ = writeln!(
        out,
        "# HELP c2m_build_info The c2m build: version, commit and whether its sources had changes.\n\
         # TYPE c2m_build_info gauge\n\
         c2m_build_info{{version=\"{VERSION}\",commit=\"{COMMIT}\",dirty=\"{DIRTY}\"}} 1"
    );
    let ticks = sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64;
    let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
    if let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_stat) {
        gauge(out, "process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.", {
            stat.cpu_ticks as f64 / ticks
        });
        gauge(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", {
            stat.resident_pages * page
        });
        gauge(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", stat.virtual_bytes);
        if let Some(boot) = boot_time() {
            gauge(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                boot as f64 + stat.start_ticks as f64 / ticks,
            );
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // io_uring's direct descriptors (every session of c2m serve) are not in the fd table.
        gauge(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors (io_uring direct ones not included).",
            dir.count(),
        );
    }
    if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        gauge(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.", soft);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let line = "4242 (c2m (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1234 987654 321 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat { cpu_ticks: 300, start_ticks: 1234, virtual_bytes: 987654, resident_pages: 321 })
        );
        assert_eq!(parse_stat("4242 (c2m) S 1"), None);
    }

    #[test]
    fn every_family_is_there_with_this_process_values() {
        let mut out = String::new();
        render(&mut out);
        for name in [
            "c2m_build_info",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(out.contains(&format!("# TYPE {name} ")), "{name} missing:\n{out}");
        }
        let value = |name: &str| super::super::sum_metric(&out, name).unwrap();
        assert!(value("process_resident_memory_bytes") > 1e6, "{out}");
        assert!(value("process_open_fds") >= 3.0, "{out}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(started <= now + 1.0 && started > now - 86400.0 * 365.0, "{started} vs {now}");
    }
}

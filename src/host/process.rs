//! One process's memory (/proc/PID/smaps_rollup) and CPU time (/proc/PID/stat while it runs,
//! `wait4`'s rusage, exact, when it is reaped).

use super::{HostError, read_text};

/// Resident and proportional set size, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    pub rss: u64,
    pub pss: u64,
    /// `Anonymous:`: memory it allocated, not file pages.
    pub anon: u64,
}

/// Parses smaps_rollup text (`Rss:`, `Pss:` and `Anonymous:` in kB).
pub fn parse_smaps_rollup(text: &str, path: &str) -> Result<ProcessMemory, HostError> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| HostError::Missing { path: path.into(), field: name.into() })
    };
    Ok(ProcessMemory { rss: field("Rss:")?, pss: field("Pss:")?, anon: field("Anonymous:")? })
}

pub fn memory(pid: u32) -> Result<ProcessMemory, HostError> {
    let path = format!("/proc/{pid}/smaps_rollup");
    parse_smaps_rollup(&read_text(&path)?, &path)
}

/// CPU seconds spent in user space and in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub user_seconds: f64,
    pub system_seconds: f64,
}

/// Parses /proc/PID/stat: `utime` and `stime` are fields 14 and 15, in clock ticks. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu(text: &str, ticks_per_second: f64) -> Option<CpuTimes> {
    let after_name = &text[text.rfind(')')? + 1..];
    // after_name starts at field 3 (state); utime is field 14, i.e. index 11 here.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some(CpuTimes { user_seconds: utime / ticks_per_second, system_seconds: stime / ticks_per_second })
}

/// CPU times of a running process so far.
pub fn cpu_times(pid: u32) -> Result<CpuTimes, HostError> {
    let path = format!("/proc/{pid}/stat");
    let text = read_text(&path)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    parse_stat_cpu(&text, ticks).ok_or(HostError::Missing { path, field: "utime/stime".into() })
}

/// How a reaped child ended, and the CPU it used over its whole life.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exit {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    pub cpu: CpuTimes,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    fn from_wait(status: libc::c_int, usage: &libc::rusage) -> Exit {
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Exit {
            code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
            cpu: CpuTimes { user_seconds: seconds(usage.ru_utime), system_seconds: seconds(usage.ru_stime) },
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit status {code}"),
            (None, Some(sig)) => write!(f, "killed by signal {sig}"),
            _ => write!(f, "ended"),
        }
    }
}

/// Reaps child `pid` if it has ended (never blocks): its exit status and exact CPU times.
pub fn try_wait4(pid: u32) -> Result<Option<Exit>, HostError> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 writes it and status, both valid for the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pointers to live locals; WNOHANG makes the call non-blocking.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, libc::WNOHANG, &mut usage) };
        if r == 0 {
            return Ok(None);
        }
        if r > 0 {
            return Ok(Some(Exit::from_wait(status, &usage)));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(HostError::Sys { call: "wait4", source: err });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn smaps_rollup_fields() {
        let text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:                5120 kB\n\
            Pss:                3072 kB\nPss_Anon:           1024 kB\nAnonymous:          2048 kB\n";
        assert_eq!(
            parse_smaps_rollup(text, "x").unwrap(),
            ProcessMemory { rss: 5120 * 1024, pss: 3072 * 1024, anon: 2048 * 1024 }
        );
    }

    #[test]
    fn stat_with_odd_command_name() {
        let text = "1234 (c2m (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        let cpu = parse_stat_cpu(text, 100.0).unwrap();
        assert_eq!(cpu, CpuTimes { user_seconds: 2.5, system_seconds: 0.5 });
        assert!(parse_stat_cpu("1234 (c2m) S 1", 100.0).is_none());
    }

    #[test]
    fn this_process() {
        let pid = std::process::id();
        assert!(memory(pid).unwrap().rss > 0);
        assert!(cpu_times(pid).is_ok());
    }

    #[test]
    fn reaps_a_child_with_its_status() {
        // Reaped by try_wait4 below, not by Child::wait.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = try_wait4(child.id()).unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "child not reaped");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(exit.code, Some(3));
        assert!(!exit.success());
        assert_eq!(exit.to_string(), "exit status 3");
    }
}

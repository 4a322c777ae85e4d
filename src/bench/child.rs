//! A child process `c2m bench` starts (`c2m serve`, `c2m load`): signalled by its PID only while
//! it is not reaped, reaped with `wait4` for its exact CPU time, every wait bounded, and killed
//! if the bench lets go of it early (an error, a panic) so no run leaves a process behind.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::host::HostError;
use crate::host::process::{Exit, try_wait4};

pub struct ChildProcess {
    /// `c2m serve`, `c2m load`: for messages.
    pub name: &'static str,
    pub pid: u32,
    exit: Option<Exit>,
}

impl ChildProcess {
    /// Spawns `cmd` in its own process group, so a Ctrl-C at the terminal reaches the bench
    /// alone and the bench decides how each child stops (the server must outlive the load to be
    /// scraped); and with a parent-death signal, so a killed bench takes its children with it.
    pub fn spawn(name: &'static str, cmd: &mut Command) -> std::io::Result<(ChildProcess, Child)> {
        cmd.process_group(0);
        // SAFETY: the closure calls only prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok((ChildProcess { name, pid: child.id(), exit: None }, child))
    }

    /// Sends `signal` unless the child is already reaped (its PID may belong to another process
    /// by then).
    pub fn signal(&self, signal: Signal) {
        if self.exit.is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), signal);
        }
    }

    /// Its exit, reaping it if it has ended; never blocks.
    pub fn try_reap(&mut self) -> Result<Option<Exit>, HostError> {
        if self.exit.is_none() {
            self.exit = try_wait4(self.pid)?;
        }
        Ok(self.exit)
    }

    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// Waits at most `timeout` for it to end.
    pub fn wait_for(&mut self, timeout: Duration) -> Result<Option<Exit>, HostError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_reap()? {
                return Ok(Some(exit));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, `grace` to end, then SIGKILL and up to 10 s more.
    pub fn stop(&mut self, grace: Duration) -> Result<Exit, HostError> {
        self.signal(Signal::SIGTERM);
        if let Some(exit) = self.wait_for(grace)? {
            return Ok(exit);
        }
        self.signal(Signal::SIGKILL);
        self.wait_for(Duration::from_secs(10))?.ok_or_else(|| HostError::Sys {
            call: "wait4",
            source: std::io::Error::other(format!("{} (pid {}) did not end 10 s after SIGKILL", self.name, self.pid)),
        })
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.signal(Signal::SIGKILL);
            let _ = self.wait_for(Duration::from_secs(5));
        }
    }
}

/// Reads `from` line by line on a thread, calling `each` with every line (invalid UTF-8
/// replaced, the newline removed) until end of file or a read error.
pub fn read_lines<R: Read + Send + 'static>(from: R, mut each: impl FnMut(String) + Send + 'static) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    each(line.trim_end_matches(['\n', '\r']).to_string());
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use std::sync::mpsc;

    #[test]
    fn stop_escalates_to_sigkill() {
        // A shell that ignores SIGTERM.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; while :; do sleep 0.05; done"]);
        let (mut child, _handle) = ChildProcess::spawn("test", &mut cmd).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let exit = child.stop(Duration::from_millis(300)).unwrap();
        assert_eq!(exit.signal, Some(libc::SIGKILL));
    }

    #[test]
    fn lines_arrive_in_order() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "printf 'a\\nb\\nc'"]).stdout(Stdio::piped());
        let (mut child, mut handle) = ChildProcess::spawn("test", &mut cmd).unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = read_lines(handle.stdout.take().unwrap(), move |l| {
            let _ = tx.send(l);
        });
        reader.join().unwrap();
        assert_eq!(rx.iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(child.wait_for(Duration::from_secs(5)).unwrap().map(|e| e.success()), Some(true));
    }
}

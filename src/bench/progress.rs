//! The live line: a redrawn indicatif line on a terminal, otherwise a plain line every 5 s. Child
//! output goes through here too, so it is printed above the live line instead of through it.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::schema::load::Sample;
use crate::units::{human_bytes, thousands};

/// A plain (non-terminal) progress line at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    last_plain: Arc<Mutex<Option<Instant>>>,
}

/// What the live line shows: the load's latest sample (its time, established count and MemFree
/// as the bench sees them), the phase and the target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub phase: String,
    pub target: u64,
    pub sample: Sample,
}

impl Progress {
    /// A redrawn line when `live` and stderr is a terminal, else plain lines.
    pub fn new(live: bool) -> Progress {
        let bar = (live && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{wide_msg}") {
                bar.set_style(style);
            }
            bar
        });
        Progress { bar, last_plain: Arc::new(Mutex::new(None)) }
    }

    /// Prints a line to stderr above the live line (a closed stderr is no reason to stop a
    /// run: the result file is what matters).
    pub fn println(&self, line: &str) {
        let print = || {
            let _ = writeln!(std::io::stderr(), "{line}");
        };
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// Shows `status` (redrawn, or printed if the last plain line is 5 s old).
    pub fn update(&self, status: &Status) {
        let line = status_line(status);
        if let Some(bar) = &self.bar {
            bar.set_message(line);
            return;
        }
        let Ok(mut last) = self.last_plain.lock() else { return };
        if last.is_none_or(|at| at.elapsed() >= PLAIN_EVERY) {
            *last = Some(Instant::now());
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }

    /// Removes the live line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn latency(us: f64) -> String {
    if us <= 0.0 {
        "-".into()
    } else if us < 1000.0 {
        format!("{us:.0}us")
    } else {
        format!("{:.1}ms", us / 1000.0)
    }
}

/// `[  12s] connect  85,000/100,000  31,200 conn/s  0 msg/s  p50 -  p99 -  errors 0  MemFree 18.2 GiB`
pub fn status_line(status: &Status) -> String {
    let s = &status.sample;
    format!(
        "[{:>5.0}s] {:<8} {}/{}  {} conn/s  {} msg/s  p50 {}  p99 {}  errors {}  MemFree {}",
        s.t,
        status.phase,
        thousands(s.established),
        thousands(status.target),
        thousands(s.connect_rate.round() as u64),
        thousands(s.msg_rate.round() as u64),
        latency(s.p50_us),
        latency(s.p99_us),
        thousands(s.errors),
        human_bytes(s.mem_free as f64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line() {
        let s = Status {
            phase: "connect".into(),
            target: 100_000,
            sample: Sample {
                t: 12.2,
                established: 85_000,
                connect_rate: 31_200.4,
                msg_rate: 0.0,
                p50_us: 0.0,
                p99_us: 1500.0,
                errors: 3,
                mem_free: 18 << 30,
            },
        };
        assert_eq!(
            status_line(&s),
            "[   12s] connect  85,000/100,000  31,200 conn/s  0 msg/s  p50 -  p99 1.5ms  errors 3  MemFree 18.0 GiB"
        );
    }
}

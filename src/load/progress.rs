//! How a run shows itself while it goes: a bar on a terminal, a plain line a second otherwise,
//! and with `--events` one JSON object a line on stdout for a parent process. The summary at the
//! end goes to stderr.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};

use crate::schema::load::{Event, LoadReport, Sample};
use crate::units::thousands;

pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    events: bool,
    target: u64,
}

impl Progress {
    pub fn new(show: bool, events: bool, target: u64) -> Progress {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(target);
            bar.set_style(
                ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        });
        Progress { plain: show && bar.is_none(), bar, events, target }
    }

    fn emit(&self, event: &Event) {
        if self.events
            && let Ok(line) = serde_json::to_string(event)
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    pub fn phase(&mut self, name: &str, t: f64, established: u64) {
        self.emit(&Event::Phase { name: name.into(), t, established });
        match &self.bar {
            Some(bar) => bar.set_prefix(name.to_string()),
            None if self.plain => eprintln!("c2m load: {t:7.1}s phase {name} ({} established)", thousands(established)),
            None => {}
        }
    }

    pub fn sample(&mut self, s: &Sample) {
        self.emit(&Event::Sample(s.clone()));
        let line = format!(
            "{:>6.0} conn/s {:>8.0} msg/s p50 {:.0} us p99 {:.0} us errors {} MemFree {}",
            s.connect_rate,
            s.msg_rate,
            s.p50_us,
            s.p99_us,
            thousands(s.errors),
            crate::units::human_bytes(s.mem_free as f64)
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(s.established.min(self.target));
                bar.set_message(line);
            }
            None if self.plain => {
                eprintln!(
                    "c2m load: {:7.1}s {}/{} established | {line}",
                    s.t,
                    thousands(s.established),
                    thousands(self.target)
                )
            }
            None => {}
        }
    }

    pub fn done(&mut self, r: &LoadReport) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.emit(&Event::Done { status: r.status, abort_reason: r.abort_reason.clone() });
        eprintln!("{}", summary(r));
    }
}

/// The human summary of a run.
pub fn summary(r: &LoadReport) -> String {
    let c = &r.connections;
    let m = &r.messages;
    let mut out = String::new();
    let status = match &r.abort_reason {
        Some(reason) => format!("ABORTED: {reason}"),
        None => "complete".into(),
    };
    out += &format!("c2m load: {status} after {:.1} s against {}\n", r.elapsed_seconds, r.params.target);
    if let Some(s) = &r.shard {
        out += &format!(
            "  shard {}/{} of run {} ({} connections in all): its part; `c2m results merge` makes the run's report{}\n",
            s.index,
            s.count,
            s.run_id,
            thousands(s.run_connections),
            if r.chat.is_some() { " and counts the chat messages lost" } else { "" }
        );
    }
    if let Some(m) = &r.merged {
        out += &format!("  merged from the {} shards of run {}\n", m.shards, m.run_id);
    }
    out += &format!(
        "  connections: {} requested, {} connected, {} logged in (peak {}, {} at the end), {} failed, {} lost\n",
        thousands(c.requested),
        thousands(c.connected),
        thousands(c.established),
        thousands(c.established_peak),
        thousands(c.established_at_end),
        thousands(c.failed),
        thousands(c.lost)
    );
    if r.messages.sent > 0 {
        out += &format!(
            "  answered in the message phase: {} of {} connections logged in\n",
            thousands(c.answered_in_messages),
            thousands(c.established)
        );
    }
    if c.reconnects + c.churned + c.retried > 0 {
        out += &format!(
            "  comebacks: {} reconnects, {} logins again, {} failed connects or logins retried, {} churned (BYE)\n",
            thousands(c.reconnects),
            thousands(c.relogins),
            thousands(c.retried),
            thousands(c.churned)
        );
    }
    out += &format!("  connect: {:.1} s, {:.0} connections/s\n", c.connect_seconds, c.connect_rate_achieved);
    out += &format!(
        "  messages: {} sent, {} answered, {} unanswered at the end, {} late; {:.0}/s asked, {:.0}/s answered; receive buffers ran out {} times\n",
        thousands(m.sent),
        thousands(m.received),
        thousands(m.unanswered),
        thousands(m.late),
        m.rate_requested,
        m.rate_achieved,
        thousands(m.recv_buffer_shortfalls)
    );
    if r.errors.is_empty() {
        out += "  errors: none\n";
    } else {
        out += "  errors:\n";
        for (kind, n) in &r.errors {
            out += &format!("    {kind}: {}\n", thousands(*n));
        }
    }
    if let Some(chat) = &r.chat {
        out += &format!(
            "  chat: {} sent, {} acked, {} NACK 7, {} NACK 8, {} delivered of {} expected, {} receipted; {} duplicates, {} lost ({} after their ACK, {} never ACKed)\n",
            thousands(chat.sent),
            thousands(chat.acked),
            thousands(chat.nacked_unknown_recipient),
            thousands(chat.nacked_offline_full),
            thousands(chat.delivered),
            thousands(chat.expected),
            thousands(chat.receipted),
            thousands(chat.duplicates),
            thousands(chat.lost),
            thousands(chat.lost_after_ack),
            thousands(chat.lost_unacked)
        );
    }
    out += "  latency (us)          count      p50      p90      p99    p99.9   p99.99      max\n";
    let l = &r.latency;
    let mut rows = vec![("connect", &l.connect), ("connect, corrected", &l.connect_corrected), ("login", &l.login)];
    if r.chat.is_some() {
        rows.extend([
            ("ACK (one tick)", &l.chat_ack),
            ("DELIVER", &l.chat_deliver),
            ("RECEIPT (two ticks)", &l.chat_receipt),
        ]);
    } else {
        rows.extend([("rtt, corrected", &l.rtt_corrected), ("rtt, uncorrected", &l.rtt_uncorrected)]);
    }
    rows.push(("generator lag", &l.schedule_lag));
    for (name, l) in rows {
        out += &format!(
            "    {name:<18} {:>9} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0}\n",
            thousands(l.count),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.p9999,
            l.max
        );
    }
    out
}

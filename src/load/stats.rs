//! What a load worker measures and shares with the main thread: single-writer counters read
//! live, the run's phase, latency histograms handed over once a second and at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::stats::{Counter, TransportStats};

/// The phases the main thread moves the run through, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Connects go out on schedule; logged-in connections already send their messages.
    Connect,
    /// Every connect is done; messages flow as in `Messages` but nothing is recorded (the
    /// servers' runtimes, caches and socket buffers settle first). Skipped when zero long.
    Warmup,
    /// Every connect is done (and the warm-up over); round trips are recorded in the run's
    /// histograms.
    Messages,
    /// No new messages; connections stay open (or, without a hold, the last replies drain).
    Hold,
    /// Close everything and stop.
    Close,
}

impl Phase {
    const ALL: [Phase; 5] = [Phase::Connect, Phase::Warmup, Phase::Messages, Phase::Hold, Phase::Close];
}

/// State the main thread shares with every worker.
pub struct Control {
    /// The chat workload's shared ledger.
    pub ledger: Option<Arc<crate::load::chat::Ledger>>,
    phase: AtomicU8,
    /// `Instant` all timestamps count from.
    pub base: Instant,
}

impl Control {
    pub fn new(ledger: Option<Arc<crate::load::chat::Ledger>>) -> Control {
        Control { ledger, phase: AtomicU8::new(Phase::Connect as u8), base: Instant::now() }
    }

    pub fn phase(&self) -> Phase {
        Phase::ALL[self.phase.load(Ordering::Relaxed) as usize]
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }
}

/// Counters of one worker, read by the main thread.
#[derive(Default)]
pub struct LoadStats {
    pub connected: Counter,
    pub established_total: Counter,
    /// Logged in right now.
    pub established: Counter,
    pub failed: Counter,
    pub lost: Counter,
    pub errors: Counter,
    pub sent: Counter,
    pub received: Counter,
    pub late: Counter,
    /// Connections started whose close has completed (or that failed and were closed).
    pub finished: Counter,
    /// `--reconnect` and `--churn`: connects opened again, logins after the first, failed
    /// connects or logins that were retried (not counted in `failed`), churned leaves.
    pub reconnects: Counter,
    pub relogins: Counter,
    pub retried: Counter,
    pub churned: Counter,
    /// Connections with at least one reply in the message phase.
    pub answered_in_messages: Counter,
    pub chat: ChatCounts,
    /// The data plane's own: bytes in and out, receive-buffer shortfalls, descriptors, rings.
    pub transport: TransportStats,
}

impl AsRef<TransportStats> for LoadStats {
    fn as_ref(&self) -> &TransportStats {
        &self.transport
    }
}

/// Chat accounting of one worker (see `load::chat`).
#[derive(Default)]
pub struct ChatCounts {
    /// Deliveries the SENDs of this worker's connections should bring (less the NACKed ones).
    pub expected: Counter,
    pub acked: Counter,
    /// NACKs by code: 7 unknown recipient, 8 offline queue full, anything else.
    pub nacked_unknown: Counter,
    pub nacked_full: Counter,
    pub nacked_other: Counter,
    pub delivered: Counter,
    pub duplicates: Counter,
    /// DELIVERs from outside this load, or of messages it never recorded.
    pub unknown: Counter,
    pub receipted: Counter,
    /// Scheduled SENDs not sent because the connection's ledger window was still open.
    pub window_full: Counter,
}

/// Latency histograms (nanoseconds).
pub struct RunHistograms {
    pub connect: Histogram<u64>,
    pub connect_corrected: Histogram<u64>,
    pub login: Histogram<u64>,
    pub rtt_corrected: Histogram<u64>,
    pub rtt_uncorrected: Histogram<u64>,
    pub schedule_lag: Histogram<u64>,
    /// Chat: SEND scheduled to its ACK (one tick), to its DELIVER at the recipient, and to the
    /// RECEIPT notice back at the sender (two ticks).
    pub ack: Histogram<u64>,
    pub deliver: Histogram<u64>,
    pub receipt: Histogram<u64>,
}

pub fn histogram() -> Histogram<u64> {
    // 1 ns .. 1 hour at 3 significant digits; values above are clamped, never dropped.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

impl RunHistograms {
    pub fn new() -> RunHistograms {
        RunHistograms {
            connect: histogram(),
            connect_corrected: histogram(),
            login: histogram(),
            rtt_corrected: histogram(),
            rtt_uncorrected: histogram(),
            schedule_lag: histogram(),
            ack: histogram(),
            deliver: histogram(),
            receipt: histogram(),
        }
    }

    pub fn add(&mut self, other: &RunHistograms) {
        for (a, b) in [
            (&mut self.connect, &other.connect),
            (&mut self.connect_corrected, &other.connect_corrected),
            (&mut self.login, &other.login),
            (&mut self.rtt_corrected, &other.rtt_corrected),
            (&mut self.rtt_uncorrected, &other.rtt_uncorrected),
            (&mut self.schedule_lag, &other.schedule_lag),
            (&mut self.ack, &other.ack),
            (&mut self.deliver, &other.deliver),
            (&mut self.receipt, &other.receipt),
        ] {
            let _ = a.add(b);
        }
    }
}

impl Default for RunHistograms {
    fn default() -> Self {
        RunHistograms::new()
    }
}

/// One second of one worker's measurements, for the live line and the interval log: every
/// connect and reply in that second, whatever the phase (the run's histograms keep only the
/// message phase's round trips).
pub struct Interval {
    pub connect: Histogram<u64>,
    pub rtt_corrected: Histogram<u64>,
    pub rtt_uncorrected: Histogram<u64>,
    /// Chat: SEND scheduled to ACK, to DELIVER, to the RECEIPT notice.
    pub ack: Histogram<u64>,
    pub deliver: Histogram<u64>,
    pub receipt: Histogram<u64>,
}

impl Interval {
    pub fn new() -> Interval {
        Interval {
            connect: histogram(),
            rtt_corrected: histogram(),
            rtt_uncorrected: histogram(),
            ack: histogram(),
            deliver: histogram(),
            receipt: histogram(),
        }
    }

    /// The interval log's tag for each histogram, and the histogram.
    pub fn tagged(&self) -> [(&'static str, &Histogram<u64>); 6] {
        [
            ("connect", &self.connect),
            ("rtt", &self.rtt_corrected),
            ("rtt_uncorrected", &self.rtt_uncorrected),
            ("ack", &self.ack),
            ("deliver", &self.deliver),
            ("receipt", &self.receipt),
        ]
    }

    pub fn add(&mut self, other: &Interval) {
        for (a, b) in [
            (&mut self.connect, &other.connect),
            (&mut self.rtt_corrected, &other.rtt_corrected),
            (&mut self.rtt_uncorrected, &other.rtt_uncorrected),
            (&mut self.ack, &other.ack),
            (&mut self.deliver, &other.deliver),
            (&mut self.receipt, &other.receipt),
        ] {
            let _ = a.add(b);
        }
    }

    pub fn reset(&mut self) {
        for h in [
            &mut self.connect,
            &mut self.rtt_corrected,
            &mut self.rtt_uncorrected,
            &mut self.ack,
            &mut self.deliver,
            &mut self.receipt,
        ] {
            h.reset();
        }
    }

    /// The live line's round trip: the corrected one, or for chat the ACK.
    pub fn live_rtt(&self) -> &Histogram<u64> {
        if self.rtt_corrected.is_empty() { &self.ack } else { &self.rtt_corrected }
    }
}

impl Default for Interval {
    fn default() -> Self {
        Interval::new()
    }
}

/// What a worker hands back when it ends.
pub struct WorkerOutcome {
    pub histograms: RunHistograms,
    pub errors: BTreeMap<String, u64>,
    /// What it measured since it last published an interval (the run's last, partial second).
    pub last_interval: Interval,
}

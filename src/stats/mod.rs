//! Counters each worker keeps, and their Prometheus rendering.
//!
//! Every counter has exactly one writer (its worker thread), so an increment is a relaxed load
//! and store: no locked instruction on the hot path. Readers (the metrics endpoint) see values
//! that are at most a moment old.

pub mod line;
pub mod metrics_http;
pub mod process;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::proto::{ErrorCode, Kind};

/// A counter written by one thread only.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_sub(n), Ordering::Relaxed);
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed)
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a session ended (a label of `c2m_sessions_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client said BYE.
    Bye,
    /// The client closed or reset the connection.
    PeerClosed,
    /// A fatal protocol error (ERROR frame sent).
    ProtocolError,
    /// Hello or heartbeat timeout (ERROR 6 sent).
    Timeout,
    /// Its replies piled up past the slot's output area.
    SlowConsumer,
    /// The server is shutting down (BYE sent).
    Shutdown,
    /// A send or receive failed.
    IoError,
    /// The same user logged in on a newer session (ERROR 9 sent).
    Replaced,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Bye,
        CloseReason::PeerClosed,
        CloseReason::ProtocolError,
        CloseReason::Timeout,
        CloseReason::SlowConsumer,
        CloseReason::Shutdown,
        CloseReason::IoError,
        CloseReason::Replaced,
    ];
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Bye => "bye",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::Timeout => "timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::IoError => "io_error",
            CloseReason::Replaced => "replaced",
        }
    }
}

/// One worker's counters; cache-line aligned so workers never share a line.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerStats {
    pub sessions_accepted: Counter,
    pub sessions_closed: [Counter; CloseReason::ALL.len()],
    /// Connections refused with ERROR 5 because the slab was full (never became sessions).
    pub sessions_rejected: Counter,
    pub frames_in: [Counter; Kind::ALL.len()],
    pub frames_out: [Counter; Kind::ALL.len()],
    pub protocol_errors: [Counter; ErrorCode::ALL.len()],
    /// Times a session's replies filled its out area and its input was paused.
    pub backpressure_pauses: Counter,
    /// Slab slots held (sessions plus those still closing); returns to 0 when all are gone.
    pub slots_in_use: Counter,
    /// Slot bytes the server's sessions have marked resident, all workers together (the shared
    /// `--slot-budget`; each worker reports the same value).
    pub slot_budget_used: Counter,
    /// Address ranges of this worker's slab (headers, bookkeeping, slots), for resident bytes.
    pub slab_ranges: [(AtomicUsize, AtomicUsize); 3],
    pub chat: ChatStats,
    pub transport: TransportStats,
}

/// Counters of a worker's data plane (both the server's and the load generator's).
#[derive(Default)]
pub struct TransportStats {
    /// Bytes received and sent on the worker's connections.
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub accept_errors: Counter,
    /// Accepts re-armed because connections waited in the listener's queue for a whole tick.
    pub accept_rearms: Counter,
    /// Receives that found the provided-buffer ring empty and were re-armed.
    pub recv_no_buffers: Counter,
    /// Receive buffers held by paused connections right now.
    pub held_buffers: Counter,
    pub rings: Counter,
    pub fixed_files_in_use: Counter,
    /// Entries waiting for room in a full submission queue.
    pub sq_backlog: Counter,
    /// Provided receive buffers are many small mappings; their total mapped size is reported.
    pub recv_buffer_bytes: Counter,
    /// Completions the engine dropped as stale (made for an earlier user of a slot), and final
    /// completions for a slot with nothing in flight: both should stay 0.
    pub stale_completions: Counter,
    pub unexpected_completions: Counter,
    /// The xdp data plane: Ethernet frames received, TCP retransmissions, resets in and out,
    /// segments TCP could not send for want of a free TX frame, and frames the kernel dropped
    /// before the socket (RX ring full, no fill frame, invalid).
    pub frames_in: Counter,
    pub retransmits: Counter,
    pub resets: Counter,
    pub tx_full: Counter,
    pub xsk_dropped: Counter,
    /// Gauges of the xdp data plane: control blocks of open connections, and of closed ones
    /// waiting out TIME-WAIT.
    pub tcp_open: Counter,
    pub tcp_time_wait: Counter,
    /// SYNs c2m's TCP received on a listening address, the SYN cookies it answered with once its
    /// SYN-RECEIVED table was full, and that table's entries now (a SYN flood's footprint).
    pub syns_in: Counter,
    pub syn_cookies_sent: Counter,
    pub syn_queue: Counter,
    /// Input a paused session could not take, held by the xdp data plane until it resumes.
    pub held_input_bytes: Counter,
    /// Frames c2m's TCP refused (bad checksum, length or data offset; flags no stack sends),
    /// segments for no connection (answered with an RST), and RFC 5961 challenge ACKs (a RST
    /// in the window but not exact, a SYN on a connection).
    pub bad_segments: Counter,
    pub no_connection: Counter,
    pub challenge_acks: Counter,
}

impl AsRef<TransportStats> for WorkerStats {
    fn as_ref(&self) -> &TransportStats {
        &self.transport
    }
}

/// Routing counters of one worker. Every message the server ACKed is held (in a queue between
/// workers, a session's unreceipted list, or the store) until its RECEIPT, or its TTL in the
/// store (counted as expired); NACKed ones are counted apart.
#[derive(Default)]
pub struct ChatStats {
    /// DELIVERs queued into a session's outgoing data on this worker (direct, group, offline).
    pub delivered: Counter,
    /// Of those, taken from the offline store at login.
    pub offline_delivered: Counter,
    /// Frames handed to another worker's mailbox (a group counts once per worker).
    pub forwarded: Counter,
    /// IORING_OP_MSG_RING wake-ups sent, and mailbox items taken.
    pub wakes_sent: Counter,
    pub mail_taken: Counter,
    /// DELIVERs kept for an offline user.
    pub offline_stored: Counter,
    /// SENDs refused with NACK 8 (an offline bound).
    pub offline_refused: Counter,
    /// SENDs to a group (ACKed: every copy reserved).
    pub group_sends: Counter,
    /// DELIVERs for an online session that had no room, kept in the store until it drains.
    pub overflowed: Counter,
    /// RECEIPTs relayed: for a message delivered to that session and held.
    pub receipted: Counter,
    /// RECEIPTs refused (not relayed): for a message not delivered to that session, or already
    /// receipted (forged or repeated).
    pub receipts_refused: Counter,
    /// Delivered but unreceipted messages of sessions that ended, given back to the store or to
    /// the user's newer session.
    pub put_back: Counter,
    /// Delivered, unreceipted messages this worker's sessions hold now.
    pub pending: Counter,
    /// RECEIPT notices for a sender who is offline or has no room (informational: not stored).
    pub notices_dropped: Counter,
    /// Offline store totals, set by worker 0 only (the store is shared).
    pub offline_held_messages: Counter,
    pub offline_held_bytes: Counter,
    pub offline_expired: Counter,
    /// Every message held anywhere (reserved, not yet receipted or expired), set by worker 0.
    pub held_messages: Counter,
    pub held_bytes: Counter,
}

impl WorkerStats {
    pub fn closed(&self, reason: CloseReason) -> &Counter {
        &self.sessions_closed[reason as usize]
    }

    pub fn closed_total(&self) -> u64 {
        self.sessions_closed.iter().map(Counter::get).sum()
    }

    pub fn active(&self) -> u64 {
        self.sessions_accepted.get().saturating_sub(self.closed_total())
    }

    pub fn set_slab_ranges(&self, ranges: [(usize, usize); 3]) {
        for (slot, (addr, len)) in self.slab_ranges.iter().zip(ranges) {
            slot.0.store(addr, Ordering::Relaxed);
            slot.1.store(len, Ordering::Relaxed);
        }
    }

    fn slab_ranges(&self) -> Vec<(usize, usize)> {
        self.slab_ranges
            .iter()
            .map(|(a, l)| (a.load(Ordering::Relaxed), l.load(Ordering::Relaxed)))
            .filter(|&(a, _)| a != 0)
            .collect()
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The server's families for [`metrics_http::spawn`].
pub fn server_render(workers: Vec<std::sync::Arc<WorkerStats>>) -> metrics_http::Render {
    std::sync::Arc::new(move || render_prometheus(&workers))
}

/// Renders every worker's counters in the Prometheus text format, with a `worker` label (the
/// sum over it is the server's total).
pub fn render_prometheus(workers: &[std::sync::Arc<WorkerStats>]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let per_worker = |out: &mut String, name: &str, kind: &str, help: &str, get: &dyn Fn(&WorkerStats) -> u64| {
        family(out, name, kind, help);
        for (w, s) in workers.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {}", get(s));
        }
    };
    per_worker(&mut out, "c2m_sessions_active", "gauge", "Sessions from accept to close, logged in or not.", &|s| {
        s.active()
    });
    per_worker(&mut out, "c2m_sessions_accepted_total", "counter", "Connections accepted as sessions.", &|s| {
        s.sessions_accepted.get()
    });
    family(&mut out, "c2m_sessions_closed_total", "counter", "Sessions closed, by reason.");
    for (w, s) in workers.iter().enumerate() {
        for r in CloseReason::ALL {
            let _ = writeln!(
                out,
                "c2m_sessions_closed_total{{worker=\"{w}\",reason=\"{}\"}} {}",
                r.name(),
                s.closed(r).get()
            );
        }
    }
    per_worker(
        &mut out,
        "c2m_sessions_rejected_total",
        "counter",
        "Connections refused with ERROR 5 (server full).",
        &|s| s.sessions_rejected.get(),
    );
    for (name, help, pick) in [
        (
            "c2m_frames_in_total",
            "Frames received, by kind.",
            (|s: &WorkerStats| &s.frames_in) as fn(&WorkerStats) -> &[Counter; 14],
        ),
        ("c2m_frames_out_total", "Frames sent, by kind.", |s: &WorkerStats| &s.frames_out),
    ] {
        family(&mut out, name, "counter", help);
        for (w, s) in workers.iter().enumerate() {
            // Every kind from the start, zeros included: a series that appears only once it moves
            // makes rate() and absent() lie about the first scrape.
            for k in Kind::ALL {
                let _ = writeln!(out, "{name}{{worker=\"{w}\",kind=\"{}\"}} {}", k.name(), pick(s)[k.index()].get());
            }
        }
    }
    family(&mut out, "c2m_protocol_errors_total", "counter", "Protocol errors, by ERROR code.");
    for (w, s) in workers.iter().enumerate() {
        for c in ErrorCode::ALL {
            let _ = writeln!(
                out,
                "c2m_protocol_errors_total{{worker=\"{w}\",code=\"{}\",name=\"{}\"}} {}",
                c as u16,
                c.name(),
                s.protocol_errors[c.index()].get()
            );
        }
    }
    per_worker(&mut out, "c2m_received_bytes_total", "counter", "Payload bytes received.", &|s| {
        s.transport.bytes_in.get()
    });
    per_worker(&mut out, "c2m_sent_bytes_total", "counter", "Payload bytes sent.", &|s| s.transport.bytes_out.get());
    per_worker(&mut out, "c2m_accept_errors_total", "counter", "Accept completions that failed.", &|s| {
        s.transport.accept_errors.get()
    });
    per_worker(
        &mut out,
        "c2m_accept_rearms_total",
        "counter",
        "Accepts re-armed because connections waited a whole tick unaccepted.",
        &|s| s.transport.accept_rearms.get(),
    );
    per_worker(
        &mut out,
        "c2m_recv_no_buffers_total",
        "counter",
        "Receives re-armed after the buffer ring ran dry.",
        &|s| s.transport.recv_no_buffers.get(),
    );
    per_worker(
        &mut out,
        "c2m_backpressure_pauses_total",
        "counter",
        "Sessions paused because their replies filled the out area.",
        &|s| s.backpressure_pauses.get(),
    );
    per_worker(&mut out, "c2m_held_buffers", "gauge", "Receive buffers held by paused sessions.", &|s| {
        s.transport.held_buffers.get()
    });
    per_worker(
        &mut out,
        "c2m_slab_resident_bytes",
        "gauge",
        "Resident bytes of the session slab (headers and slots).",
        &|s| crate::slab::resident_bytes(&s.slab_ranges()).unwrap_or(0),
    );
    per_worker(&mut out, "c2m_recv_buffer_bytes", "gauge", "Bytes mapped for provided receive buffers.", &|s| {
        s.transport.recv_buffer_bytes.get()
    });
    per_worker(&mut out, "c2m_slab_slots_in_use", "gauge", "Session slots held, closing ones included.", &|s| {
        s.slots_in_use.get()
    });
    family(&mut out, "c2m_slot_budget_used_bytes", "gauge", "Slot bytes marked resident, all workers (--slot-budget).");
    let _ = writeln!(out, "c2m_slot_budget_used_bytes {}", workers.first().map_or(0, |s| s.slot_budget_used.get()));
    per_worker(&mut out, "c2m_rings", "gauge", "io_uring instances.", &|s| s.transport.rings.get());
    per_worker(&mut out, "c2m_fixed_files_in_use", "gauge", "Direct descriptors in use.", &|s| {
        s.transport.fixed_files_in_use.get()
    });
    for (name, kind, help, get) in [
        (
            "c2m_chat_delivered_total",
            "counter",
            "DELIVERs queued to a session.",
            (|s: &WorkerStats| s.chat.delivered.get()) as fn(&WorkerStats) -> u64,
        ),
        ("c2m_chat_offline_delivered_total", "counter", "DELIVERs taken from the offline store at login.", |s| {
            s.chat.offline_delivered.get()
        }),
        ("c2m_chat_forwarded_total", "counter", "Frames handed to another worker.", |s| s.chat.forwarded.get()),
        ("c2m_chat_wakes_sent_total", "counter", "IORING_OP_MSG_RING wake-ups sent to other workers.", |s| {
            s.chat.wakes_sent.get()
        }),
        ("c2m_chat_mail_taken_total", "counter", "Items taken from this worker's mailbox.", |s| {
            s.chat.mail_taken.get()
        }),
        ("c2m_chat_offline_stored_total", "counter", "DELIVERs stored for an offline user.", |s| {
            s.chat.offline_stored.get()
        }),
        ("c2m_chat_offline_refused_total", "counter", "SENDs refused with NACK 8.", |s| s.chat.offline_refused.get()),
        ("c2m_chat_group_sends_total", "counter", "SENDs to a group.", |s| s.chat.group_sends.get()),
        ("c2m_chat_overflowed_total", "counter", "DELIVERs kept in the store while their session had no room.", |s| {
            s.chat.overflowed.get()
        }),
        ("c2m_chat_receipted_total", "counter", "RECEIPTs relayed (the message was delivered there).", |s| {
            s.chat.receipted.get()
        }),
        ("c2m_chat_receipts_refused_total", "counter", "RECEIPTs not relayed: forged or repeated.", |s| {
            s.chat.receipts_refused.get()
        }),
        ("c2m_chat_put_back_total", "counter", "Unreceipted messages of ended sessions given back.", |s| {
            s.chat.put_back.get()
        }),
        ("c2m_chat_pending_messages", "gauge", "Delivered messages waiting for their RECEIPT.", |s| {
            s.chat.pending.get()
        }),
        ("c2m_chat_notices_dropped_total", "counter", "RECEIPT notices for a sender offline or without room.", |s| {
            s.chat.notices_dropped.get()
        }),
        ("c2m_chat_held_messages", "gauge", "ACKed messages held anywhere until receipted or expired.", |s| {
            s.chat.held_messages.get()
        }),
        ("c2m_chat_held_bytes", "gauge", "Bytes those messages are charged (frame and keeping cost).", |s| {
            s.chat.held_bytes.get()
        }),
        ("c2m_chat_offline_messages", "gauge", "Messages in the offline store.", |s| {
            s.chat.offline_held_messages.get()
        }),
        ("c2m_chat_offline_bytes", "gauge", "Bytes the offline store's messages are charged.", |s| {
            s.chat.offline_held_bytes.get()
        }),
        ("c2m_chat_offline_expired_total", "counter", "Stored messages dropped at their TTL.", |s| {
            s.chat.offline_expired.get()
        }),
    ] {
        per_worker(&mut out, name, kind, help, &get);
    }
    per_worker(&mut out, "c2m_sq_backlog", "gauge", "SQEs waiting for room in a full submission queue.", &|s| {
        s.transport.sq_backlog.get()
    });
    for (name, help, get) in [
        (
            "c2m_xdp_frames_in_total",
            "Ethernet frames the xdp data plane received.",
            (|s: &WorkerStats| s.transport.frames_in.get()) as fn(&WorkerStats) -> u64,
        ),
        (
            "c2m_xdp_dropped_total",
            "Frames the kernel dropped before the AF_XDP socket (ring full, no fill frame).",
            |s| s.transport.xsk_dropped.get(),
        ),
        ("c2m_tcp_retransmits_total", "Segments c2m's TCP sent again.", |s| s.transport.retransmits.get()),
        ("c2m_tcp_resets_total", "RSTs c2m's TCP received and sent.", |s| s.transport.resets.get()),
        ("c2m_tcp_tx_full_total", "Segments c2m's TCP could not send for want of a free TX frame.", |s| {
            s.transport.tx_full.get()
        }),
        ("c2m_tcp_syns_received_total", "SYNs c2m's TCP received on a listening address.", |s| {
            s.transport.syns_in.get()
        }),
        ("c2m_tcp_syn_cookies_sent_total", "SYN-ACKs sent as SYN cookies (the SYN-RECEIVED table was full).", |s| {
            s.transport.syn_cookies_sent.get()
        }),
        (
            "c2m_tcp_bad_segments_total",
            "Frames c2m's TCP refused: bad checksum, length or data offset, or flags no stack sends.",
            |s| s.transport.bad_segments.get(),
        ),
        ("c2m_tcp_no_connection_total", "Segments for no connection and no listener (answered with RST).", |s| {
            s.transport.no_connection.get()
        }),
        ("c2m_tcp_challenge_acks_total", "RFC 5961 challenge ACKs (an inexact RST, a SYN on a connection).", |s| {
            s.transport.challenge_acks.get()
        }),
    ] {
        per_worker(&mut out, name, "counter", help, &get);
    }
    per_worker(
        &mut out,
        "c2m_tcp_connections",
        "gauge",
        "Open connections of c2m's TCP (TIME-WAIT not counted).",
        &|s| s.transport.tcp_open.get(),
    );
    per_worker(
        &mut out,
        "c2m_xdp_held_input_bytes",
        "gauge",
        "Input held for paused sessions (xdp data plane).",
        &|s| s.transport.held_input_bytes.get(),
    );
    per_worker(
        &mut out,
        "c2m_tcp_syn_queue",
        "gauge",
        "Half-open passive opens of c2m's TCP waiting for their final ACK (bounded; SYN cookies past it).",
        &|s| s.transport.syn_queue.get(),
    );
    per_worker(
        &mut out,
        "c2m_tcp_time_wait",
        "gauge",
        "Closed connections of c2m's TCP waiting out TIME-WAIT.",
        &|s| s.transport.tcp_time_wait.get(),
    );
    per_worker(
        &mut out,
        "c2m_stale_completions_total",
        "counter",
        "Completions dropped by the engine as made for an earlier user of a slot (expected 0).",
        &|s| s.transport.stale_completions.get(),
    );
    per_worker(
        &mut out,
        "c2m_unexpected_completions_total",
        "counter",
        "Final completions for a slot with nothing in flight (expected 0).",
        &|s| s.transport.unexpected_completions.get(),
    );
    out
}

/// Sums one line family (all label sets) of a Prometheus text body: handy for tests and tools.
pub fn sum_metric(body: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut total = 0.0;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ')?;
        let metric = key.split('{').next().unwrap_or(key);
        if metric == name {
            found = true;
            total += value.parse::<f64>().ok()?;
        }
    }
    found.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renders_every_family_with_worker_labels() {
        let a = Arc::new(WorkerStats::default());
        let b = Arc::new(WorkerStats::default());
        a.sessions_accepted.add(5);
        a.closed(CloseReason::Bye).add(2);
        b.sessions_accepted.add(1);
        b.protocol_errors[ErrorCode::Timeout.index()].inc();
        a.frames_in[Kind::Ping.index()].add(7);
        let text = render_prometheus(&[a, b]);
        for name in [
            "c2m_sessions_active",
            "c2m_sessions_accepted_total",
            "c2m_sessions_closed_total",
            "c2m_frames_in_total",
            "c2m_frames_out_total",
            "c2m_protocol_errors_total",
            "c2m_received_bytes_total",
            "c2m_sent_bytes_total",
            "c2m_slab_resident_bytes",
            "c2m_rings",
            "c2m_fixed_files_in_use",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert_eq!(sum_metric(&text, "c2m_sessions_active"), Some(4.0));
        assert_eq!(sum_metric(&text, "c2m_frames_in_total"), Some(7.0));
        assert!(text.contains("c2m_protocol_errors_total{worker=\"1\",code=\"6\",name=\"timeout\"} 1"));
        assert_eq!(sum_metric(&text, "c2m_nothing"), None);
        // Every frame kind of every worker from the start, zero or not.
        assert!(text.contains("c2m_frames_out_total{worker=\"1\",kind=\"deliver\"} 0"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("c2m_frames_in_total{")).count(), 2 * Kind::ALL.len());
    }
}

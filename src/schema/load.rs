//! What `c2m load` reports: the JSON it writes with `--json`, the lines it prints with
//! `--events`, and the latency summaries built from its HdrHistograms. `c2m bench` embeds the
//! report whole in its result, so these types are part of the results schema (see
//! `results/schema/`).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Whether a run did what it was asked or was stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Complete,
    /// It ran to its end but did not do all it was asked (connections, answers, checks).
    FellShort,
    Aborted,
}

impl RunStatus {
    /// `complete`, `fell short`, `aborted`.
    pub fn words(self) -> &'static str {
        match self {
            RunStatus::Complete => "complete",
            RunStatus::FellShort => "fell short",
            RunStatus::Aborted => "aborted",
        }
    }
}

/// The load's parameters as run (after defaults and derived values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadParams {
    pub target: String,
    pub connections: u64,
    /// Connects per second asked for, over all workers (0: unpaced, bounded by concurrency).
    pub connect_rate: f64,
    pub connect_concurrency: u64,
    pub connect_timeout_ms: u64,
    /// Source addresses as given (ranges or CIDR) and how many there are.
    pub sources: Vec<String>,
    pub source_addresses: u64,
    /// Source ports each address uses, inclusive.
    pub source_ports: [u16; 2],
    pub duration_ms: u64,
    pub ramp_ms: u64,
    /// Unrecorded messages between the connects and the measured window (0: none; results
    /// before it have none).
    #[serde(default)]
    pub warmup_ms: u64,
    pub hold_ms: u64,
    /// `idle`, `ping` or `echo`.
    pub workload: String,
    /// Per connection, between two messages (0 for idle).
    pub message_interval_ms: f64,
    /// Messages per second over all connections, as scheduled (0 for idle).
    pub message_rate: f64,
    /// Closed loop: messages each connection kept outstanding (0: open loop on the schedule).
    #[serde(default)]
    pub in_flight: u32,
    /// How connections waited for replies: `multishot` or `on-demand`.
    #[serde(default)]
    pub recv: String,
    /// Frame size of an ECHO, header included (PING frames are 20 bytes).
    pub size: u64,
    pub workers: u64,
    pub rings_per_worker: u64,
    pub files_per_ring: u64,
    /// `--reconnect` and `--churn`, when either was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comeback: Option<ComebackParams>,
}

/// Clients that come back: reconnects after a loss, and churn.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ComebackParams {
    pub reconnect: bool,
    pub backoff_min_ms: f64,
    pub backoff_max_ms: f64,
    pub reconnect_rate: f64,
    pub churn_percent_per_minute: f64,
    pub churn_away_ms: f64,
}

/// Connections asked for and reached.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionCounts {
    pub requested: u64,
    /// Connects completed (TCP handshake done).
    pub connected: u64,
    /// Connections that got WELCOME (logged in).
    pub established: u64,
    /// Most connections logged in at once.
    pub established_peak: u64,
    /// Logged in when the message phase ended (before the load closed them).
    pub established_at_end: u64,
    /// Connects (or logins) that failed or timed out and were not tried again, and logged-in
    /// connections lost later, each loss once (see `errors`).
    pub failed: u64,
    pub lost: u64,
    /// `--reconnect` / `--churn`: connects opened again, logins after a connection's first,
    /// failed connects or logins that were tried again, and churned leaves (BYE).
    #[serde(default)]
    pub reconnects: u64,
    #[serde(default)]
    pub relogins: u64,
    #[serde(default)]
    pub retried: u64,
    #[serde(default)]
    pub churned: u64,
    /// Connections with at least one reply (PONG, ECHO_REPLY, ACK or NACK) in the message phase:
    /// with every connection up through it, each one that was heard from then.
    #[serde(default)]
    pub answered_in_messages: u64,
    /// Seconds from the first connect to the last one that completed.
    pub connect_seconds: f64,
    /// `established / connect_seconds`.
    pub connect_rate_achieved: f64,
}

/// Messages sent and answered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageCounts {
    pub sent: u64,
    pub received: u64,
    /// Sent but not answered when the load stopped.
    pub unanswered: u64,
    /// Scheduled messages a connection could not send on time because its previous send was
    /// still in flight (they went out late; the corrected latency includes the wait).
    pub late: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Messages per second during the message phase, asked and achieved.
    pub rate_requested: f64,
    pub rate_achieved: f64,
    /// Times a connection's multishot receive ended because its ring's provided buffers ran
    /// out (it is re-armed once they are back; replies wait meanwhile). Absent in older results.
    #[serde(default)]
    pub recv_buffer_shortfalls: u64,
}

/// One latency distribution. Values are in `unit` (always microseconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub unit: String,
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    /// The percentile spectrum, for charts: `[percentile, value]` pairs, percentile in 0..=100.
    pub spectrum: Vec<[f64; 2]>,
}

impl LatencySummary {
    /// Summarises a histogram recorded in nanoseconds.
    pub fn from_ns(h: &Histogram<u64>) -> LatencySummary {
        let us = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return LatencySummary { unit: "us".into(), ..Default::default() };
        }
        let spectrum =
            h.iter_quantiles(2).map(|it| [it.quantile_iterated_to() * 100.0, us(it.value_iterated_to())]).collect();
        LatencySummary {
            unit: "us".into(),
            count: h.len(),
            min: us(h.min()),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            p9999: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
            spectrum,
        }
    }
}

impl LatencySummary {
    /// No values (in microseconds, as every summary).
    pub fn empty() -> LatencySummary {
        LatencySummary { unit: "us".into(), ..Default::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The latencies a run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    /// Connect issued to TCP connect completed.
    pub connect: LatencySummary,
    /// Connect *scheduled* to TCP connect completed (includes waiting for a connect slot).
    pub connect_corrected: LatencySummary,
    /// Connect completed to WELCOME received.
    pub login: LatencySummary,
    /// Message round trip from its *scheduled* send time (coordinated omission corrected, as
    /// wrk2 reports it).
    pub rtt_corrected: LatencySummary,
    /// Message round trip from the moment it was handed to the kernel (uncorrected).
    pub rtt_uncorrected: LatencySummary,
    /// How late the load's 1 ms ticks ran against their schedule during the message phase:
    /// what the generator itself (its thread waking on a busy core) adds to corrected round
    /// trips. Absent in results written before it existed.
    #[serde(default)]
    pub schedule_lag: LatencySummary,
    /// Chat: SEND scheduled to ACK (one tick), to DELIVER at the recipient, to RECEIPT notice
    /// at the sender (two ticks). Empty for other workloads.
    #[serde(default, skip_serializing_if = "LatencySummary::is_empty")]
    pub chat_ack: LatencySummary,
    #[serde(default, skip_serializing_if = "LatencySummary::is_empty")]
    pub chat_deliver: LatencySummary,
    #[serde(default, skip_serializing_if = "LatencySummary::is_empty")]
    pub chat_receipt: LatencySummary,
}

/// Chat accounting at the end of a run: every SEND is acked or nacked, every expected delivery
/// arrived once (`lost` and `duplicates` are 0 in a clean run).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCounts {
    pub sent: u64,
    pub acked: u64,
    pub nacked_unknown_recipient: u64,
    pub nacked_offline_full: u64,
    pub nacked_other: u64,
    /// SENDs with neither ACK nor NACK at the end.
    pub unanswered: u64,
    /// Deliveries the ACKed SENDs called for (a group SEND counts its members in this load).
    pub expected: u64,
    pub delivered: u64,
    pub receipted: u64,
    pub duplicates: u64,
    /// Deliveries that never arrived. In one shard's report 0: its messages' recipients are
    /// partly in other shards, so only the merged report counts these two (expected -
    /// delivered, delivered - receipted).
    pub lost: u64,
    /// `lost` split: of messages the server had ACKed (the delivery guarantee broken, or the
    /// server killed with them), and of messages never ACKed (lost with their connection). A
    /// merged report has only `lost`.
    #[serde(default)]
    pub lost_after_ack: u64,
    #[serde(default)]
    pub lost_unacked: u64,
    /// Deliveries whose RECEIPT notice never came back.
    pub unreceipted: u64,
    /// DELIVERs from outside this load.
    pub unknown: u64,
    /// Scheduled SENDs skipped: the connection's ledger window was still open.
    pub window_full: u64,
    /// Deliveries per second during the message phase.
    pub delivered_rate: f64,
}

/// One line of the timeline, once a second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    pub established: u64,
    /// Connects completed per second over the last interval.
    pub connect_rate: f64,
    /// Replies received per second over the last interval.
    pub msg_rate: f64,
    /// Corrected round trip over the last interval, microseconds (0 if none).
    pub p50_us: f64,
    pub p99_us: f64,
    /// All errors so far.
    pub errors: u64,
    /// /proc/meminfo MemFree, bytes.
    pub mem_free: u64,
}

/// A phase of the run and when it began and ended (seconds since the load started).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub start: f64,
    pub end: f64,
}

/// Everything `c2m load` measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub params: LoadParams,
    pub status: RunStatus,
    pub abort_reason: Option<String>,
    /// Unix time the load started, milliseconds.
    pub started_unix_ms: u64,
    pub elapsed_seconds: f64,
    pub connections: ConnectionCounts,
    /// Errors by kind, e.g. `connect ECONNREFUSED`, `connect timeout`, `bind EADDRINUSE`,
    /// `server ERROR 5 server full`, `closed by server`, `reply timeout`. Every failure is here.
    pub errors: BTreeMap<String, u64>,
    pub messages: MessageCounts,
    pub latency: Latencies,
    pub phases: Vec<Phase>,
    pub timeline: Vec<Sample>,
    /// Present for `--workload chat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatCounts>,
    /// The run's whole HdrHistograms (values in ns), each HdrHistogram V2 deflate-compressed and
    /// base64-encoded, as in an .hlog line: results of several load processes merge exactly by
    /// adding these. Keys are the `latency` field names. Absent in older results.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub histograms: BTreeMap<String, String>,
    /// Present when this process ran one shard of a run (`c2m load --shard I/N`): its counts
    /// are its part; `c2m results merge` adds the shards up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardInfo>,
    /// Present in a report `c2m results merge` made from every shard of a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<MergedFrom>,
}

/// Which part of a run one `c2m load --shard I/N` process was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// The run's id, the same in every shard's report (`--run-id`, or derived from the command
    /// line).
    pub run_id: String,
    /// I and N of `--shard I/N`.
    pub index: u32,
    pub count: u32,
    /// Connections of the whole run (`-c`); `connections.requested` is this shard's part.
    pub run_connections: u64,
}

/// The shards a merged report was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedFrom {
    pub run_id: String,
    pub shards: u32,
}

impl LoadReport {
    /// How a run that went through all its phases still fell short of what it asked for:
    /// connections that failed or were lost, messages left unanswered. `None` if it did not.
    pub fn shortfall(&self) -> Option<String> {
        let (c, m) = (&self.connections, &self.messages);
        let (chat_lost, mut chat_duplicates) = self.chat.as_ref().map_or((0, 0), |ch| (ch.lost, ch.duplicates));
        // Clients that came back: a DELIVER their last session took but never receipted is
        // delivered again (at least once, by design); losses are counted by what did not come
        // back, and the replies their connections took with them are not owed.
        let came_back = c.relogins > 0;
        if came_back {
            chat_duplicates = 0;
        }
        let (lost, unanswered) = match came_back || self.params.comeback.as_ref().is_some_and(|b| b.reconnect) {
            true => (c.requested.saturating_sub(c.established_at_end), 0),
            false => (c.lost, m.unanswered),
        };
        (c.failed + lost + unanswered + chat_lost + chat_duplicates > 0).then(|| {
            format!(
                "{} connections failed, {lost} lost, {unanswered} messages unanswered, {chat_lost} chat messages lost, {chat_duplicates} delivered twice",
                c.failed
            )
        })
    }
}

/// What `c2m load --events` prints on stdout, one JSON object a line, for a parent process
/// (`c2m bench`) to follow the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// A phase began: `connect`, `messages`, `hold`, `close`.
    Phase { name: String, t: f64, established: u64 },
    /// The once-a-second sample.
    Sample(Sample),
    /// The run is over; the report is written (if `--json` was given).
    Done { status: RunStatus, abort_reason: Option<String> },
}

//! What `c2m load` is told, checked, and the schedule derived from it.

use std::net::SocketAddr;
use std::time::Duration;

use super::LoadError;
use super::shard::Shard;
use super::sources::PortPlan;
use crate::proto;
use crate::server::{MAX_FILES_PER_RING, RECV_BUFFER_SIZES};
use crate::units::{duration_range, human_duration};

/// What each connection does once logged in (as in scenario files: `idle`, `ping`, `echo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Log in and stay silent (the server's heartbeat timeout must be longer than the run).
    Idle,
    /// PING on a schedule, measure PONG round trips.
    #[default]
    Ping,
    /// ECHO frames of `size` bytes on a schedule, measure ECHO_REPLY round trips.
    Echo,
    /// SENDs to random peers and groups on a schedule; DELIVERs answered with RECEIPTs; ACK,
    /// DELIVER and RECEIPT latencies and exact delivery accounting.
    Chat,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Idle => "idle",
            Workload::Ping => "ping",
            Workload::Echo => "echo",
            Workload::Chat => "chat",
        }
    }

    pub fn parse(s: &str) -> Result<Workload, String> {
        match s {
            "idle" => Ok(Workload::Idle),
            "ping" => Ok(Workload::Ping),
            "echo" => Ok(Workload::Echo),
            "chat" => Ok(Workload::Chat),
            _ => Err(format!("{s:?}: use idle, ping, echo or chat")),
        }
    }
}

/// How a connection waits for the server's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RecvMode {
    /// On-demand for the open-loop ping workload, multishot otherwise.
    #[default]
    Auto,
    /// A multishot receive armed for the connection's whole life: sees a close at once.
    Multishot,
    /// A one-shot receive armed only while a reply is owed (the WELCOME, PONGs): an idle
    /// connection then holds no io_uring request, and so ~860 B less kernel memory. A close by
    /// the server is seen at the next message.
    OnDemand,
}

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: SocketAddr,
    /// Connections this process opens: the whole run's, or its shard's part of them.
    pub connections: u64,
    /// Which part of the run this process is ([`Shard::WHOLE`] for a run in one process).
    pub shard: Shard,
    /// Connections of the whole run, every shard's together (user ids, chat peers, the connect
    /// schedule and the ledger span the run, not the shard).
    pub run_connections: u64,
    /// Names the run in its report: the shards of one run share it (`c2m results merge`).
    pub run_id: String,
    /// Wall-clock instant to start the connect phase at, so the shards on several hosts start
    /// together (their schedules are offsets from it); `None`: at once.
    pub start_at: Option<std::time::SystemTime>,
    /// Connects per second over all workers; 0: as fast as `connect_concurrency` allows.
    pub connect_rate: f64,
    /// Connects in flight at once over all workers.
    pub connect_concurrency: u64,
    pub connect_timeout: Duration,
    pub ports: PortPlan,
    /// The source specs as given, for the report.
    pub source_specs: Vec<String>,
    pub duration: Duration,
    pub ramp: Duration,
    /// Messages flow this long, unrecorded, between the connects and the measured window.
    pub warmup: Duration,
    pub hold: Duration,
    pub workload: Workload,
    /// Per connection, between two messages.
    pub message_interval: Duration,
    /// Closed loop: messages each connection keeps outstanding (0: open loop on the schedule).
    pub in_flight: u32,
    pub recv: RecvMode,
    /// Frame size of an ECHO, header included.
    pub size: usize,
    pub first_user: u64,
    pub workers: usize,
    pub files_per_ring: Option<u32>,
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
    pub max_frame: usize,
    /// MemFree below this stops the run (aborted, result still written).
    pub keep_free: u64,
    pub chat: ChatParams,
    /// Reconnects and churn.
    pub comeback: super::reconnect::Comeback,
    /// Which data plane opens the connections (xdp: AF_XDP and c2m's own TCP, from any source
    /// address, configured nowhere).
    pub dataplane: crate::transport::DataPlane,
    /// A network namespace to run in (`scripts/netns.sh` makes `c2m-cli`).
    pub netns: Option<String>,
}

/// Connections the whole load closes per second on the xdp data plane. Its closes are RSTs of
/// c2m's TCP, written as fast as a worker loops: a million at once overflow the server's RX ring,
/// and an RST lost leaves its session to the server's heartbeat. (The kernel data plane closes
/// at once: its RSTs cross loopback inside the kernel and are not dropped.)
pub const XDP_CLOSE_RATE: f64 = 400_000.0;

impl LoadConfig {
    /// Closes per second per worker, when closes are paced (None: all at once).
    pub fn close_rate_per_worker(&self) -> Option<f64> {
        match self.dataplane {
            crate::transport::DataPlane::Kernel => None,
            crate::transport::DataPlane::Xdp(_) => Some(XDP_CLOSE_RATE / self.workers.max(1) as f64),
        }
    }
}

/// What the chat workload needs beyond the schedule.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChatParams {
    /// The server's `--users`, `--groups` and `--group-size` (the group layout is derived from
    /// them on both sides).
    pub users: u64,
    pub groups: u64,
    pub group_size: u32,
    /// Share of SENDs that go to a group.
    pub group_fraction: f64,
    /// Body bytes of a SEND.
    pub body: usize,
}

impl Default for ChatParams {
    fn default() -> Self {
        ChatParams { users: 0, groups: 0, group_size: 0, group_fraction: 0.0, body: 16 }
    }
}

/// Each load ring's submission and completion queues, and its provided receive buffers (a power
/// of two) and their size. `c2m tune check` sizes the memory a ring pins from these.
pub const SQ_ENTRIES: u32 = 2048;
pub const CQ_ENTRIES: u32 = 16384;
pub const RECV_BUFFERS: u16 = 256;
pub const RECV_BUFFER_SIZE: u32 = 2048;
/// Source ports each address uses by default.
pub const SOURCE_PORTS: &str = "10000-65000";

/// Smallest ECHO frame: a header and the two timestamps.
pub const MIN_ECHO: usize = proto::HEADER_LEN + 16;
/// Longest duration of any part of a run (a year): the workers keep time in u64 nanoseconds.
pub const MAX_RUN_DURATION: Duration = Duration::from_secs(8760 * 3600);
/// Most connections one load opens: a worker numbers its connections' slots in u32.
pub const MAX_CONNECTIONS: u64 = u32::MAX as u64;
/// Most worker threads.
pub const MAX_WORKERS: usize = 1024;

impl LoadConfig {
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Config(m));
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return bad(format!("-c/--connections must be in 1..={MAX_CONNECTIONS}"));
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return bad(format!("--workers must be in 1..={MAX_WORKERS}"));
        }
        if self.shard.connections_of(self.run_connections) != self.connections {
            return bad(format!(
                "shard {} of a run of {} connections opens {}, not {}",
                self.shard,
                self.run_connections,
                self.shard.connections_of(self.run_connections),
                self.connections
            ));
        }
        // User ids from 2^63 on are group ids; and first + connections must not wrap.
        if self.first_user.checked_add(self.run_connections).is_none_or(|end| end > proto::GROUP_BIT) {
            return bad(format!(
                "--first-user {} + -c/--connections {} passes 2^63 (where group ids start): the last user id must be \
                 below 2^63",
                self.first_user, self.run_connections
            ));
        }
        if !(self.connect_rate.is_finite() && self.connect_rate >= 0.0) {
            return bad("--connect-rate must be 0 (as fast as --connect-concurrency allows) or above".into());
        }
        if self.connect_rate > 0.0 && self.run_connections as f64 / self.connect_rate > MAX_RUN_DURATION.as_secs_f64() {
            return bad(format!(
                "--connect-rate {}/s spreads {} connects over more than {}: it must be at least {:.3e}/s",
                self.connect_rate,
                self.run_connections,
                human_duration(MAX_RUN_DURATION),
                self.run_connections as f64 / MAX_RUN_DURATION.as_secs_f64()
            ));
        }
        for (flag, d) in [
            ("--connect-timeout", self.connect_timeout),
            ("--duration", self.duration),
            ("--ramp", self.ramp),
            ("--warmup", self.warmup),
            ("--hold", self.hold),
            ("--ping-interval (or the interval --rate or --msg-rate gives)", self.message_interval),
        ] {
            if d > MAX_RUN_DURATION {
                return bad(format!("{flag} {}", duration_range(&(Duration::ZERO..=MAX_RUN_DURATION))));
            }
        }
        let back = &self.comeback;
        if back.backoff_min.is_zero() || back.backoff_max < back.backoff_min || back.backoff_max > MAX_RUN_DURATION {
            return bad("--reconnect-min must be above 0 and at most --reconnect-max (at most 8760h)".into());
        }
        if !(back.rate.is_finite() && back.rate >= 0.0) {
            return bad("--reconnect-rate must be 0 (as fast as --connect-concurrency allows) or above".into());
        }
        if !(0.0..=1.0).contains(&back.churn) {
            return bad("--churn must be a percentage in 0..=100".into());
        }
        if back.churn_away.is_zero() || back.churn_away > MAX_RUN_DURATION {
            return bad("--churn-away must be above 0 and at most 8760h".into());
        }
        if self.connect_concurrency < self.workers as u64 {
            return bad(format!("--connect-concurrency must be at least the worker count ({})", self.workers));
        }
        if self.connections > self.ports.capacity() {
            return bad(format!(
                "{} connections need {} distinct source (address, port) pairs, but --sources x --source-ports give {} ({} addresses x {} ports): add addresses of this host to --sources, widen --source-ports, or split the run over more load hosts",
                self.connections,
                self.connections,
                self.ports.capacity(),
                self.ports.sources.len(),
                self.ports.ports_per_address()
            ));
        }
        if self.ports.sources.mixed_families() || self.ports.sources.is_ipv6() != self.target.is_ipv6() {
            return bad("--sources must all be of the target's address family".into());
        }
        if !(MIN_ECHO..=16384).contains(&self.max_frame) {
            return bad(format!("--max-frame must be in {MIN_ECHO}..=16384"));
        }
        if self.workload == Workload::Chat {
            if self.in_flight > 0 || self.recv == RecvMode::OnDemand {
                return bad(
                    "--workload chat is open loop with a receive always armed (no --in-flight, no --recv on-demand)"
                        .into(),
                );
            }
            if !(0.0..=1.0).contains(&self.chat.group_fraction)
                || (self.chat.group_fraction > 0.0 && self.chat.groups == 0)
            {
                return bad("--group-fraction must be in 0..=1, and above 0 only with --groups".into());
            }
            if self.run_connections < 2 && self.chat.group_fraction < 1.0 {
                return bad("--workload chat needs at least 2 connections (peers)".into());
            }
            if (proto::HEADER_LEN + proto::MSG_FIXED_LEN).saturating_add(self.chat.body) > self.max_frame {
                return bad("--body does not fit --max-frame".into());
            }
        }
        if self.workload == Workload::Echo && !(MIN_ECHO..=self.max_frame).contains(&self.size) {
            return bad(format!("--size must be in {MIN_ECHO}..={} for echo", self.max_frame));
        }
        if self.workload != Workload::Idle && self.message_interval.is_zero() {
            return bad("--ping-interval (or the interval --rate gives) must be above 0".into());
        }
        if self.in_flight > 0 {
            let room = self.out_capacity() / self.frame_len();
            if self.workload == Workload::Idle {
                return bad("--in-flight needs --workload ping or echo".into());
            }
            if self.in_flight as usize > room {
                return bad(format!(
                    "--in-flight {} does not fit a connection's out area: at most {room} messages of {} bytes",
                    self.in_flight,
                    self.frame_len()
                ));
            }
        }
        if self.recv == RecvMode::OnDemand && self.workload == Workload::Idle {
            return bad(
                "--recv on-demand needs messages to wait for replies of; an idle connection would never notice a close"
                    .into(),
            );
        }
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 32768 {
            return bad("--recv-buffers must be a power of two up to 32768".into());
        }
        if !RECV_BUFFER_SIZES.contains(&self.recv_buffer_size) {
            return bad(format!(
                "--recv-buffer-size must be in {}..={}",
                RECV_BUFFER_SIZES.start(),
                RECV_BUFFER_SIZES.end()
            ));
        }
        if let Some(files) = self.files_per_ring
            && !(64..=MAX_FILES_PER_RING).contains(&files)
        {
            return bad(format!("--files-per-ring must be in 64..={MAX_FILES_PER_RING}"));
        }
        Ok(())
    }

    /// Connections worker `w` opens: global numbers `w, w + W, w + 2W, ...`.
    pub fn connections_of(&self, worker: usize) -> u64 {
        let w = worker as u64;
        let n = self.workers as u64;
        if w >= self.connections { 0 } else { (self.connections - w).div_ceil(n) }
    }

    /// The run-wide number of local connection `k` of worker `w`: the worker's connections
    /// interleave within this process's, and this process's within the run's (see `shard`).
    pub fn global(&self, worker: usize, k: u64) -> u64 {
        self.shard.global(k * self.workers as u64 + worker as u64)
    }

    /// When local connection `k` of worker `w` is due, from the start of the connect phase: the
    /// run's connect rate paces the run's connections, so each shard connects its own at the
    /// moments one process would.
    pub fn connect_due(&self, worker: usize, k: u64) -> Duration {
        if self.connect_rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.global(worker, k) as f64 / self.connect_rate)
    }

    /// Where connection `g` of the run starts sending in its first message interval: a fixed
    /// offset of its own (not a worker's random draw), so connections do not send in step and
    /// a connection sends at the same moments whichever shard or worker runs it.
    pub fn first_message_offset(&self, g: u64) -> Duration {
        let interval = self.message_interval.as_nanos() as u64;
        if interval == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(super::shard::mix64(g ^ 0x005E_ED0F_F5E7) % interval)
    }

    /// Whether connections arm a receive only while a reply is owed (see [`RecvMode`]).
    pub fn recv_on_demand(&self) -> bool {
        match self.recv {
            RecvMode::Auto => self.workload == Workload::Ping && self.in_flight == 0,
            RecvMode::Multishot => false,
            RecvMode::OnDemand => true,
        }
    }

    /// Bytes of messages a connection can have staged at once (see `LoadWorker::out_area`).
    pub fn out_capacity(&self) -> usize {
        if self.out_in_slot() { 2 * self.max_frame } else { super::conn::INLINE_OUT }
    }

    /// Whether a connection's out area is in its slot (frames up to max_frame: echo, chat)
    /// rather than inline in its header (PINGs and HELLO).
    pub fn out_in_slot(&self) -> bool {
        matches!(self.workload, Workload::Echo | Workload::Chat)
    }

    /// Messages per second over all connections, as scheduled (0 for closed loop: the rate is
    /// whatever the server sustains).
    pub fn message_rate(&self) -> f64 {
        match self.workload {
            Workload::Idle => 0.0,
            _ if self.in_flight > 0 => 0.0,
            _ => self.connections as f64 / self.message_interval.as_secs_f64(),
        }
    }

    /// Size of one message frame.
    pub fn frame_len(&self) -> usize {
        match self.workload {
            Workload::Echo => self.size,
            Workload::Chat => proto::HEADER_LEN + proto::MSG_FIXED_LEN + self.chat.body,
            _ => proto::HEADER_LEN + 16,
        }
    }

    /// A bound on the connect phase: the schedule, plus time for the last connects and logins
    /// to finish or time out. Past it the run is stopped (never an endless ramp).
    pub fn connect_phase_limit(&self) -> Duration {
        let schedule = if self.connect_rate > 0.0 {
            self.run_connections as f64 / self.connect_rate
        } else {
            // Unpaced: at worst a slow box opening a few thousand a second.
            self.connections as f64 / 2000.0
        };
        Duration::from_secs_f64(schedule) + 3 * self.connect_timeout + Duration::from_secs(30)
    }
}

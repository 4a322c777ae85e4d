//! The `c2m load` flags, in the conventions of tcpkali, wrk2 and oha, and their translation
//! into a [`LoadConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::config::{LoadConfig, RecvMode, Workload};
use super::sources::{PortPlan, Sources, parse_port_range};
use crate::units::{parse_bytes, parse_count, parse_duration};

fn count(s: &str) -> Result<u64, String> {
    parse_count(s)
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn bytes(s: &str) -> Result<u64, String> {
    parse_bytes(s)
}

fn rate(s: &str) -> Result<f64, String> {
    s.trim_end_matches("/s")
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0)
        .map_or_else(|| parse_count(s.trim_end_matches("/s")).map(|n| n as f64), Ok)
}

#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// Server to load (host:port). Any address works; c2m's own tests and benchmarks use only
    /// loopback.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub server: SocketAddr,
    /// Connections to open (10k, 2m, 2000000).
    #[arg(short = 'c', long, value_parser = count, default_value = "1000")]
    pub connections: u64,
    /// Connects per second over all workers; 0: as fast as --connect-concurrency allows.
    #[arg(long, value_parser = rate, default_value = "0")]
    pub connect_rate: f64,
    /// Connects in flight at once, over all workers.
    #[arg(long, value_parser = count, default_value = "1024")]
    pub connect_concurrency: u64,
    /// A connect (or the login after it) that takes longer fails as a timeout; 0: no timeout.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Local source addresses: a comma-separated list of addresses, A-B ranges and CIDR blocks
    /// [default: as many of 127.0.1.1, 127.0.1.2, ... as the connections need].
    #[arg(long)]
    pub sources: Option<String>,
    /// Source ports each address uses (c2m binds them itself, so the kernel's ephemeral range
    /// does not cap a run).
    #[arg(long, default_value = "10000-65000")]
    pub source_ports: String,
    /// How long messages flow once every connect is done.
    #[arg(short = 'd', long, value_parser = duration, default_value = "10s")]
    pub duration: Duration,
    /// Spread the connects evenly over this long (sets --connect-rate to connections / ramp).
    #[arg(long, value_parser = duration)]
    pub ramp: Option<Duration>,
    /// After the messages, hold the connections open (silent) this long before closing.
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub hold: Duration,
    /// What each connection does once logged in: idle, ping or echo.
    #[arg(long, value_parser = Workload::parse, default_value = "ping")]
    pub workload: Workload,
    /// Per connection, between two messages (each connection starts at a random point of its
    /// first interval, so they do not send in step).
    #[arg(long, value_parser = duration, default_value = "1s")]
    pub ping_interval: Duration,
    /// Messages per second over all connections (open loop); overrides --ping-interval.
    #[arg(long, value_parser = rate)]
    pub rate: Option<f64>,
    /// Closed loop: each connection keeps N messages outstanding and sends the next as soon as a
    /// reply arrives (no schedule: measures throughput, not latency under a given rate). 0: the
    /// open-loop schedule of --ping-interval / --rate.
    #[arg(long, default_value_t = 0, conflicts_with = "rate")]
    pub in_flight: u32,
    /// How connections wait for replies: auto (on-demand for open-loop ping, multishot
    /// otherwise), multishot (a receive armed all the time) or on-demand (armed only while a
    /// reply is owed: least kernel memory per idle connection).
    #[arg(long, value_enum, default_value_t = RecvMode::Auto)]
    pub recv: RecvMode,
    /// ECHO frame size in bytes, header included.
    #[arg(long, value_parser = bytes, default_value = "64")]
    pub size: u64,
    /// User id of the first connection (connection i logs in as first-user + i).
    #[arg(long, default_value_t = 1)]
    pub first_user: u64,
    /// Worker threads, one pinned per core [default: cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Chat: SENDs per second per connection (open loop); overrides --ping-interval.
    #[arg(long, value_parser = rate)]
    pub msg_rate: Option<f64>,
    /// Chat: share of SENDs addressed to a group (needs --groups).
    #[arg(long, default_value_t = 0.0)]
    pub group_fraction: f64,
    /// Chat: the server's --users, --groups and --group-size [users default: the last user of
    /// this load].
    #[arg(long, value_parser = count)]
    pub users: Option<u64>,
    #[arg(long, value_parser = count, default_value = "0")]
    pub groups: u64,
    #[arg(long, default_value_t = 0)]
    pub group_size: u32,
    /// Chat: body bytes of a SEND.
    #[arg(long, value_parser = bytes, default_value = "16")]
    pub body: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency intervals (HdrHistogram log format) here.
    #[arg(long)]
    pub hlog: Option<PathBuf>,
    /// No live line.
    #[arg(long)]
    pub no_progress: bool,
    /// Print phase and sample events as JSON lines on stdout (for `c2m bench`).
    #[arg(long, hide = true)]
    pub events: bool,
    /// Stop the run (and still write its report, marked aborted) if MemFree falls below this.
    #[arg(long, value_parser = bytes, default_value = "2GiB")]
    pub keep_free: u64,
    /// Start even if the predicted memory does not fit.
    #[arg(long)]
    pub force: bool,
    /// Largest frame the server may send, header included.
    #[arg(long, default_value_t = crate::proto::DEFAULT_MAX_FRAME)]
    pub max_frame: usize,
    /// Fixed-file slots per ring [default: RLIMIT_NOFILE].
    #[arg(long, hide = true)]
    pub files_per_ring: Option<u32>,
    /// Provided receive buffers per ring (power of two) and their size.
    #[arg(long, hide = true, default_value_t = 256)]
    pub recv_buffers: u16,
    #[arg(long, hide = true, default_value_t = 2048)]
    pub recv_buffer_size: u32,
}

impl LoadArgs {
    pub fn to_config(&self) -> Result<LoadConfig, String> {
        let (first_port, last_port) = parse_port_range(&self.source_ports)?;
        let mut plan = PortPlan {
            sources: Sources::loopback_for(1, 1),
            first_port,
            last_port,
            skip_port: Some(self.server.port()),
        };
        let (sources, specs) = match &self.sources {
            Some(spec) => (
                Sources::parse(spec).map_err(|e| e.to_string())?,
                spec.split(',').map(|s| s.trim().to_string()).collect(),
            ),
            None if self.server.is_ipv6() => (Sources::parse("::1").map_err(|e| e.to_string())?, vec!["::1".into()]),
            None => {
                let s = Sources::loopback_for(self.connections, plan.ports_per_address());
                let last = s.nth(s.len() - 1).map(|a| a.to_string()).unwrap_or_default();
                (s, vec![format!("127.0.1.1-{last}")])
            }
        };
        plan.sources = sources;
        let connect_rate = match self.ramp {
            Some(ramp) if !ramp.is_zero() => self.connections as f64 / ramp.as_secs_f64(),
            _ => self.connect_rate,
        };
        let message_interval = match (self.msg_rate, self.rate) {
            (Some(r), _) if r > 0.0 => Duration::from_secs_f64(1.0 / r),
            (Some(_), _) => return Err("--msg-rate must be above 0".into()),
            (None, rate) => match rate {
                Some(r) if r > 0.0 => Duration::from_secs_f64(self.connections as f64 / r),
                Some(_) => return Err("--rate must be above 0".into()),
                None => self.ping_interval,
            },
        };
        Ok(LoadConfig {
            target: self.server,
            connections: self.connections,
            connect_rate,
            connect_concurrency: self.connect_concurrency,
            connect_timeout: self.connect_timeout,
            ports: plan,
            source_specs: specs,
            duration: self.duration,
            ramp: self.ramp.unwrap_or(Duration::ZERO),
            hold: self.hold,
            workload: self.workload,
            message_interval,
            in_flight: self.in_flight,
            recv: self.recv,
            size: self.size as usize,
            first_user: self.first_user,
            workers: self.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
            files_per_ring: self.files_per_ring,
            recv_buffers: self.recv_buffers,
            recv_buffer_size: self.recv_buffer_size,
            max_frame: self.max_frame,
            keep_free: self.keep_free,
            chat: super::config::ChatParams {
                users: self.users.unwrap_or(self.first_user + self.connections - 1),
                groups: self.groups,
                group_size: self.group_size,
                group_fraction: self.group_fraction,
                body: self.body as usize,
            },
        })
    }
}

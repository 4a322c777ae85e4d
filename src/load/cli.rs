//! The `c2m load` flags, in the conventions of tcpkali, wrk2 and oha, and their translation
//! into a [`LoadConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::config::{LoadConfig, MAX_CONNECTIONS, MAX_RUN_DURATION, RecvMode, Workload};
use super::shard::{Shard, ShardPorts, default_run_id};
use super::sources::{PortPlan, Sources, parse_port_range};
use crate::units::{duration_in, human_duration, parse_bytes, parse_count, thousands};

fn count(s: &str) -> Result<u64, String> {
    parse_count(s)
}

fn count_u32(s: &str) -> Result<u32, String> {
    crate::units::count_in(0..=u32::MAX as u64)(s).map(|n| n as u32)
}

/// Every duration of a run is at most [`MAX_RUN_DURATION`] (so it fits the nanosecond clocks
/// the workers keep, and `Instant` arithmetic never overflows).
fn duration(s: &str) -> Result<Duration, String> {
    duration_in(Duration::ZERO..=MAX_RUN_DURATION)(s)
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

/// `--start-at`: Unix time in seconds (fractions allowed), as `date +%s` prints it.
fn unix_time(s: &str) -> Result<std::time::SystemTime, String> {
    let secs: f64 =
        s.trim().parse().map_err(|_| format!("{s:?}: expected Unix seconds, e.g. $(( $(date +%s) + 10 ))"))?;
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?}: expected Unix seconds, 0 or above"));
    }
    let at = std::time::UNIX_EPOCH + Duration::from_secs_f64(secs);
    let latest = std::time::SystemTime::now() + Duration::from_secs(24 * 3600);
    if at > latest {
        return Err(format!("{s:?} is more than a day ahead"));
    }
    Ok(at)
}

/// Addresses of 127.0.1.1-127.255.255.255, where the default sources are taken from.
const LOOPBACK_ADDRESSES: u64 = (127 << 24 | 0xff_ffff) - (127 << 24 | 1 << 8 | 1) + 1;
/// Addresses of 198.19.0.1-198.19.255.254, the xdp load's default sources.
const XDP_SOURCE_ADDRESSES: u64 = 65_534;

/// The interval between two messages of one connection, for `rate` messages per second spread
/// over `connections`: above 0 and at most [`MAX_RUN_DURATION`] (10^20 s once panicked).
fn interval_of(flag: &str, rate: f64, connections: f64, over: &str) -> Result<Duration, String> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("{flag} must be above 0"));
    }
    let longest = MAX_RUN_DURATION.as_secs_f64();
    match Duration::try_from_secs_f64(connections / rate) {
        Ok(d) if d <= MAX_RUN_DURATION => Ok(d),
        _ => Err(format!(
            "{flag} {rate}/s {over} is one message per connection in more than {}: it must be at least {:.3e}/s",
            human_duration(MAX_RUN_DURATION),
            connections / longest
        )),
    }
}

#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// Server to load: host:port, an address, or a host name (port 7700 when none is given).
    #[arg(long, default_value = crate::server::defaults::LISTEN)]
    pub server: String,
    /// Connections to open (10k, 2m, 2000000): the whole run's, with --shard too.
    #[arg(short = 'c', long, value_parser = count, default_value = "1000")]
    pub connections: u64,
    /// Run shard I of N (0 <= I < N) of this run: connections I, I+N, I+2N, ... with their user
    /// ids, connect times and schedules, so N processes on N hosts are one run (merge their
    /// --json reports with `c2m results merge`).
    #[arg(long, value_name = "I/N", default_value = "0/1")]
    pub shard: Shard,
    /// With --shard: split --source-ports into N disjoint parts (shards may share addresses), or
    /// give each shard all of them (every shard on addresses of its own).
    #[arg(long, value_enum, default_value_t = ShardPorts::Split)]
    pub shard_ports: ShardPorts,
    /// Names the run in the report; every shard of a run must get the same one [default: derived
    /// from the command line, the same on every shard].
    #[arg(long)]
    pub run_id: Option<String>,
    /// Start the connect phase at this Unix time (seconds), so shards on several hosts start
    /// together [default: at once].
    #[arg(long, value_parser = unix_time, value_name = "UNIX_SECONDS")]
    pub start_at: Option<std::time::SystemTime>,
    /// Connects per second over all workers; 0: as fast as --connect-concurrency allows.
    #[arg(long, value_parser = rate, default_value = "0")]
    pub connect_rate: f64,
    /// Connects in flight at once, over all workers.
    #[arg(long, value_parser = count, default_value = "1024")]
    pub connect_concurrency: u64,
    /// A connect (or the login after it) that takes longer fails as a timeout; 0: no timeout.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Local source addresses: a comma-separated list of addresses, A-B ranges and CIDR blocks,
    /// each one this host's own [default: a loopback target: as many of 127.0.1.1, 127.0.1.2, ...
    /// as the connections need; a remote one: the address the kernel routes from towards it].
    #[arg(long)]
    pub sources: Option<String>,
    /// Source ports each address uses (c2m binds them itself, so the kernel's ephemeral range
    /// does not cap a run).
    #[arg(long, default_value = super::config::SOURCE_PORTS)]
    pub source_ports: String,
    /// How long messages flow once every connect is done.
    #[arg(short = 'd', long, value_parser = duration, default_value = "10s")]
    pub duration: Duration,
    /// Spread the connects evenly over this long (sets --connect-rate to connections / ramp).
    #[arg(long, value_parser = duration)]
    pub ramp: Option<Duration>,
    /// Before the measured window, let messages flow this long unrecorded, so that what the
    /// server (or a peer's runtime) warms up on its first messages is not measured.
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub warmup: Duration,
    /// After the messages, hold the connections open (silent) this long before closing.
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub hold: Duration,
    /// What each connection does once logged in.
    #[arg(long, value_enum, default_value_t = Workload::Ping)]
    pub workload: Workload,
    /// Per connection, between two messages (each connection starts at its own point of its
    /// first interval, fixed by its number in the run, so they do not send in step).
    #[arg(long, value_parser = duration, default_value = "1s")]
    pub ping_interval: Duration,
    /// Messages per second over all connections (open loop); overrides --ping-interval.
    #[arg(long, value_parser = rate)]
    pub rate: Option<f64>,
    /// Closed loop: each connection keeps N messages outstanding and sends the next as soon as a
    /// reply arrives (no schedule: measures throughput, not latency under a given rate). 0: the
    /// open-loop schedule of --ping-interval / --rate.
    #[arg(long, value_parser = count_u32, default_value = "0", conflicts_with = "rate")]
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
    #[arg(long, value_parser = count, default_value = "1")]
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
    #[arg(long, value_parser = count_u32, default_value = "0")]
    pub group_size: u32,
    /// Chat: body bytes of a SEND.
    #[arg(long, value_parser = bytes, default_value = "16")]
    pub body: u64,
    /// Reopen a connection that is lost (closed or reset by the server, timed out) or whose
    /// connect or login failed, after a backoff with jitter, until the run closes; each client
    /// logs in again as the same user. The report counts the reconnects and the logins again.
    #[arg(long)]
    pub reconnect: bool,
    /// The first retry's backoff; each next one doubles it up to --reconnect-max, and each is
    /// jittered into [half, whole].
    #[arg(long, value_parser = duration, default_value = "100ms")]
    pub reconnect_min: Duration,
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub reconnect_max: Duration,
    /// Reconnects per second over all workers; 0: as fast as --connect-concurrency allows.
    #[arg(long, value_parser = rate, default_value = "0")]
    pub reconnect_rate: f64,
    /// Churn: this percentage of the logged-in connections leaves each minute during the
    /// messages (BYE once nothing is outstanding) and comes back after --churn-away.
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT")]
    pub churn: f64,
    /// How long a churned client stays away, on average (each one between half and one and a
    /// half times this).
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub churn_away: Duration,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency intervals (HdrHistogram log format) here.
    #[arg(long)]
    pub hlog: Option<PathBuf>,
    /// Serve the run's live counters (Prometheus text) at http://ADDR/metrics while it goes.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
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
    #[arg(long, hide = true, default_value_t = super::config::RECV_BUFFERS)]
    pub recv_buffers: u16,
    #[arg(long, hide = true, default_value_t = super::config::RECV_BUFFER_SIZE)]
    pub recv_buffer_size: u32,
    #[command(flatten)]
    pub dataplane: crate::transport::DataPlaneArgs,
}

impl LoadArgs {
    pub fn to_config(&self) -> Result<LoadConfig, String> {
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(format!("-c/--connections must be in 1..={MAX_CONNECTIONS}"));
        }
        let (shard, run_connections) = (self.shard, self.connections);
        let connections = shard.connections_of(run_connections);
        if connections == 0 {
            return Err(format!(
                "--shard {shard}: a run of {run_connections} connections has none for shard {} (use at most \
                 {run_connections} shards)",
                shard.index
            ));
        }
        let target = super::target::resolve(&self.server)?;
        let dataplane = self.dataplane.dataplane()?;
        // c2m's own TCP (xdp) or another namespace: the addresses are not this namespace's.
        let kernel_here = matches!(dataplane, crate::transport::DataPlane::Kernel) && self.dataplane.netns.is_none();
        let (mut first_port, mut last_port) = parse_port_range(&self.source_ports)?;
        if self.shard_ports == ShardPorts::Split {
            (first_port, last_port) = shard.ports_of(first_port, last_port).ok_or_else(|| {
                format!("--source-ports {}: fewer ports than the {} shards of --shard", self.source_ports, shard.count)
            })?;
        }
        let mut plan =
            PortPlan { sources: Sources::loopback_for(1, 1), first_port, last_port, skip_port: Some(target.port()) };
        let (sources, specs) = match &self.sources {
            Some(spec) => (
                Sources::parse(spec).map_err(|e| e.to_string())?,
                spec.split(',').map(|s| s.trim().to_string()).collect(),
            ),
            None if !target.ip().is_loopback() && kernel_here => {
                let from = super::target::route_source(target)?;
                (Sources::parse(&from.to_string()).map_err(|e| e.to_string())?, vec![from.to_string()])
            }
            None if target.is_ipv6() => (Sources::parse("::1").map_err(|e| e.to_string())?, vec!["::1".into()]),
            None if matches!(dataplane, crate::transport::DataPlane::Xdp(_)) => {
                // c2m's TCP sends from addresses configured nowhere: 198.19.0.1 up, the block
                // scripts/netns.sh routes back to the client namespace.
                let needed = connections.div_ceil(plan.ports_per_address().max(1));
                if needed > XDP_SOURCE_ADDRESSES {
                    return Err(format!(
                        "-c/--connections {connections} needs {} source addresses at {} ports each, more than the \
                         {XDP_SOURCE_ADDRESSES} of 198.19.0.1-198.19.255.254: widen --source-ports or pass --sources",
                        thousands(needed),
                        plan.ports_per_address(),
                    ));
                }
                let s =
                    Sources::from_for(std::net::Ipv4Addr::new(198, 19, 0, 1), connections, plan.ports_per_address());
                let last = s.nth(s.len() - 1).map(|a| a.to_string()).unwrap_or_default();
                (s, vec![format!("198.19.0.1-{last}")])
            }
            None => {
                let needed = connections.div_ceil(plan.ports_per_address().max(1));
                if needed > LOOPBACK_ADDRESSES {
                    return Err(format!(
                        "-c/--connections {} needs {} source addresses at {} ports each, more than the {} of \
                         127.0.1.1-127.255.255.255: widen --source-ports or pass --sources",
                        connections,
                        thousands(needed),
                        plan.ports_per_address(),
                        thousands(LOOPBACK_ADDRESSES)
                    ));
                }
                let s = Sources::loopback_for(connections, plan.ports_per_address());
                let last = s.nth(s.len() - 1).map(|a| a.to_string()).unwrap_or_default();
                (s, vec![format!("127.0.1.1-{last}")])
            }
        };
        plan.sources = sources;
        if kernel_here {
            super::target::check_local(&plan, connections)?;
        }
        let connect_rate = match self.ramp {
            Some(ramp) if !ramp.is_zero() => run_connections as f64 / ramp.as_secs_f64(),
            _ => self.connect_rate,
        };
        let message_interval = match (self.msg_rate, self.rate) {
            (Some(r), _) => interval_of("--msg-rate", r, 1.0, "per connection")?,
            (None, Some(r)) => interval_of("--rate", r, run_connections as f64, "over all connections")?,
            (None, None) => self.ping_interval,
        };
        let chat = super::config::ChatParams {
            // Saturating: a first user this far up is refused by `validate`.
            users: self.users.unwrap_or(self.first_user.saturating_add(run_connections - 1)),
            groups: self.groups,
            group_size: self.group_size,
            group_fraction: self.group_fraction,
            body: self.body as usize,
        };
        // What every shard of one run is given alike (not the shard, its sources or workers).
        let canonical = format!(
            "{target} {run_connections} {} {} {} {:?} {:?} {:?} {:?} {connect_rate} {message_interval:?} {} {} {chat:?}",
            shard.count,
            self.workload.name(),
            self.first_user,
            self.duration,
            self.hold,
            self.ramp,
            self.connect_timeout,
            self.in_flight,
            self.size
        );
        Ok(LoadConfig {
            target,
            connections,
            shard,
            run_connections,
            run_id: self.run_id.clone().unwrap_or_else(|| default_run_id(&canonical)),
            start_at: self.start_at,
            connect_rate,
            connect_concurrency: self.connect_concurrency,
            connect_timeout: self.connect_timeout,
            ports: plan,
            source_specs: specs,
            duration: self.duration,
            ramp: self.ramp.unwrap_or(Duration::ZERO),
            warmup: self.warmup,
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
            chat,
            comeback: super::reconnect::Comeback {
                reconnect: self.reconnect,
                backoff_min: self.reconnect_min,
                backoff_max: self.reconnect_max,
                rate: self.reconnect_rate,
                churn: self.churn / 100.0,
                churn_away: self.churn_away,
            },
            dataplane,
            netns: self.dataplane.netns.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    /// `c2m load ARGS` parsed and turned into a checked config, or the first message refusing it.
    fn config(args: &str) -> Result<LoadConfig, String> {
        let cli =
            Cli::try_parse_from(std::iter::once("load").chain(args.split_whitespace())).map_err(|e| e.to_string())?;
        let cfg = cli.load.to_config()?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    fn refused(args: &str, says: &[&str]) {
        let err = config(args).map(|_| ()).unwrap_err();
        for s in says {
            assert!(err.contains(s), "{args}: {err:?} does not say {s:?}");
        }
    }

    #[test]
    fn ordinary_values_still_pass() {
        let cfg = config("-c 10k --rate 50k -d 10s --workers 2").unwrap();
        assert_eq!(cfg.message_interval, Duration::from_millis(200));
        let cfg = config("-c 100 --workload chat --msg-rate 0.1 --workers 2").unwrap();
        assert_eq!(cfg.message_interval, Duration::from_secs(10));
        assert_eq!(cfg.chat.users, 100);
        let cfg = config("-c 2m --ramp 60s --hold 60s --workload idle --workers 2").unwrap();
        assert!((cfg.connect_rate - 2e6 / 60.0).abs() < 1e-6);
    }

    #[test]
    fn a_shard_is_its_part_of_one_run() {
        let shards: Vec<LoadConfig> = (0..3)
            .map(|i| config(&format!("-c 10 --shard {i}/3 --workers 2 --source-ports 10000-10299")).unwrap())
            .collect();
        assert_eq!(shards.iter().map(|c| c.connections).collect::<Vec<_>>(), [4, 3, 3]);
        assert!(shards.iter().all(|c| c.run_connections == 10 && c.run_id == shards[0].run_id));
        assert_eq!(
            shards.iter().map(|c| (c.ports.first_port, c.ports.last_port)).collect::<Vec<_>>(),
            [(10000, 10099), (10100, 10199), (10200, 10299)],
            "disjoint source ports"
        );
        // Worker 1's second connection of shard 2 is the run's connection (1 * 2 + 1) * 3 + 2.
        assert_eq!(shards[2].global(1, 1), 11);
        let whole = config("-c 10 --workers 2").unwrap();
        assert_ne!(whole.run_id, shards[0].run_id);
        let all_ports = config("-c 10 --shard 1/3 --shard-ports whole --source-ports 10000-10299").unwrap();
        assert_eq!((all_ports.ports.first_port, all_ports.ports.last_port), (10000, 10299));
        let named = config("-c 10 --shard 1/3 --run-id nightly-7").unwrap();
        assert_eq!(named.run_id, "nightly-7");
        // Chat peers and the users default span the run, not the shard.
        assert_eq!(config("-c 10 --shard 1/3 --workload chat").unwrap().chat.users, 10);
        refused("-c 2 --shard 2/3", &["--shard 2/3", "has none"]);
        refused("-c 10 --shard 3/3", &["--shard", "I must be below N"]);
        refused("-c 10 --shard 0/3 --source-ports 10000-10001", &["fewer ports than the 3 shards"]);
    }

    /// A non-loopback IPv4 address of this host, if it has one.
    fn own_address() -> Option<std::net::Ipv4Addr> {
        nix::ifaddrs::getifaddrs().ok()?.find_map(|i| {
            let ip = i.address?.as_sockaddr_in()?.ip();
            (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
        })
    }

    #[test]
    fn targets_by_name_and_sources_of_this_host() {
        let cfg = config("--server localhost:7701 -c 10 --workers 2").unwrap();
        assert!(cfg.target.ip().is_loopback() && cfg.target.port() == 7701);
        assert_eq!(cfg.ports.sources.nth(0), Some("127.0.1.1".parse().unwrap()), "loopback keeps 127.0.1.x");
        refused("--server no-such-host.invalid -c 10", &["--server", "cannot resolve"]);
        refused("-c 10 --sources 198.51.100.1", &["198.51.100.1 is not an address of this host", "ip addr add"]);
    }

    /// Towards a remote target the kernel's route picks the source, and the plan's capacity is
    /// one address's ports. (Its own non-loopback address stands in for a remote target: the
    /// route towards it leaves from it; nothing is sent.)
    #[test]
    fn a_remote_target_sources_from_the_route() {
        let Some(own) = own_address() else {
            eprintln!("skipped: this host has no non-loopback IPv4 address");
            return;
        };
        let cfg = config(&format!("--server {own}:7700 -c 50k --workers 2")).unwrap();
        assert_eq!(cfg.ports.sources.len(), 1);
        assert_eq!(cfg.ports.sources.nth(0), Some(std::net::IpAddr::V4(own)));
        assert_eq!(cfg.ports.capacity(), 55_001, "ports 10000-65000");
        let plan = crate::load::target::describe(cfg.target, &cfg.ports, &cfg.source_specs, cfg.connections);
        assert!(plan.contains(&format!("from {own} (1 address)")) && plan.contains("room for 55,001"), "{plan}");
        refused(&format!("--server {own}:7700 -c 100k --workers 2"), &["55001 ports", "more load hosts"]);
    }

    /// Values that once panicked (`Duration::from_secs_f64` of 10^20 s) or wrapped are refused
    /// with the flag and what it accepts.
    #[test]
    fn values_out_of_range_are_refused() {
        refused("-c 1 --rate 0.00000000000000000001", &["--rate", "at least 3.171e-8/s"]);
        refused("-c 2 --workload chat --msg-rate 0.00000000000000000001", &["--msg-rate", "at least"]);
        refused("-c 1 --rate 0", &["--rate must be above 0"]);
        refused("-c 2 --connect-rate 0.00000000000000000001", &["--connect-rate", "at least"]);
        refused("-c 1 -d 100000000000000000000", &["--duration", "must be in 0s..=8760h"]);
        refused("-c 1 --hold 8761h", &["--hold", "8760h"]);
        refused("-c 1 --ramp 9000h", &["--ramp", "8760h"]);
        refused("-c 1 --connect-timeout 1e9", &["--connect-timeout"]);
        refused("-c 1 --ping-interval 100000000000000000000", &["--ping-interval", "8760h"]);
        refused("-c 2 --first-user 18446744073709551615", &["--first-user", "2^63"]);
        refused("-c 2 --first-user 9223372036854775807", &["--first-user", "2^63"]);
        refused("-c 2 --workload chat --body 18446744073709551615", &["--body does not fit --max-frame"]);
        refused("-c 4294967296", &["-c/--connections must be in 1..=4294967295"]);
        refused("-c 99999999999999999999g", &["--connections", "too large"]);
        refused("-c 4294967295 --source-ports 10000-10000", &["127.0.1.1-127.255.255.255"]);
        refused("-c 1 --workers 5000", &["--workers must be in 1..=1024"]);
        refused("-c 1 --recv-buffer-size 0", &["--recv-buffer-size must be in 64..="]);
        refused("-c 1 --recv-buffers 65536", &["--recv-buffers"]);
        refused("-c 1 --files-per-ring 4294967295", &["--files-per-ring must be in 64..=1048576"]);
        refused("-c 1 --keep-free 99999999999999999999GiB", &["--keep-free", "too large"]);
        refused("-c 1 --connect-rate NaN", &["--connect-rate"]);
    }
}

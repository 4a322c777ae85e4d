//! `c2m tune check`: every limit that caps connections on this box, what each allows, and the
//! command that lifts it. [`Snapshot::read`] takes the figures from the host; [`evaluate`] judges
//! them, so tests feed it made-up snapshots.

use std::path::Path;

use serde::Serialize;

use super::capacity::CostModel;
use super::sysctl::ProcSys;
use crate::host::limits::{self as tune_host, CAP_IPC_LOCK, CAP_SYS_ADMIN, CAP_SYS_RESOURCE, CgroupMemory};
use crate::load::config as load_config;
use crate::server::defaults as serve_defaults;
use crate::units::{human_bytes, round_down_3_digits, thousands};

/// Ordinary descriptors a c2m process keeps besides its rings (stdio, listeners, metrics, ...).
const FDS_BESIDES_RINGS: u64 = 64;
/// Largest fixed-file table io_uring allows per ring.
const MAX_FILES_PER_RING: u64 = 1 << 20;
/// Mappings per ring: SQ/CQ rings, SQEs, the buffer ring and its buffers.
const MAPS_PER_RING: u64 = 4;
/// c2m serve's default session slot; strict overcommit charges it per --max-sessions.
const SESSION_BYTES: u64 = serve_defaults::SESSION_BYTES as u64;
/// c2m serve's listen backlog per worker.
const SERVE_BACKLOG: u64 = serve_defaults::BACKLOG as u64;
/// Sources c2m load uses by default: 127.0.1.1 .. 127.255.255.254 x its default source ports.
const LOAD_SOURCE_ADDRESSES: u64 = 0x7fff_fffe - 0x7f00_0101 + 1;

/// Ports of c2m load's default source port range.
fn load_source_ports() -> u64 {
    crate::load::sources::parse_port_range(load_config::SOURCE_PORTS).map_or(0, |(lo, hi)| u64::from(hi - lo) + 1)
}

/// One io_uring's sizes, for the memory the kernel pins for it.
#[derive(Clone, Copy, Debug)]
pub struct RingSizes {
    pub sq: u64,
    pub cq: u64,
    pub bufs: u64,
}
/// As `c2m serve` and `c2m load` build their rings by default.
pub const SERVE_RING: RingSizes = RingSizes {
    sq: serve_defaults::SQ_ENTRIES as u64,
    cq: serve_defaults::CQ_ENTRIES as u64,
    bufs: serve_defaults::RECV_BUFFERS as u64,
};
pub const LOAD_RING: RingSizes = RingSizes {
    sq: load_config::SQ_ENTRIES as u64,
    cq: load_config::CQ_ENTRIES as u64,
    bufs: load_config::RECV_BUFFERS as u64,
};

impl RingSizes {
    /// Pages the kernel allocates (and charges) for the ring: SQ/CQ rings with their header and
    /// SQ index array, the 64-byte SQEs, and the 16-byte entries of the provided-buffer ring.
    pub fn pinned_bytes(&self, page: u64) -> u64 {
        let pages = |b: u64| b.div_ceil(page) * page;
        pages(192 + self.cq * 16 + self.sq * 4) + pages(self.sq * 64) + pages(self.bufs * 16)
    }
}

/// /proc/sys/net/netfilter/nf_conntrack_{max,count}.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Conntrack {
    pub max: u64,
    pub count: u64,
}

/// The io_uring probe's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IoUringProbe {
    pub ok: bool,
    /// What was found, or why it failed.
    pub detail: String,
}

/// The cost of a connection used for the memory rows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cost {
    /// Client + server socket on this box, margin included.
    pub pair_bytes: f64,
    pub kernel_bytes: f64,
    pub source: String,
}

impl From<CostModel> for Cost {
    fn from(m: CostModel) -> Cost {
        Cost { pair_bytes: m.per_connection_bytes, kernel_bytes: m.kernel_bytes, source: m.source }
    }
}

impl Cost {
    fn bytes_each(&self, both_ends_here: bool) -> f64 {
        let m = CostModel {
            per_connection_bytes: self.pair_bytes,
            kernel_bytes: self.kernel_bytes,
            source: String::new(),
            files_per_end: 1,
        };
        m.bytes_each(both_ends_here).max(1.0)
    }
}

/// Every figure the check judges, as read from the host (`None`: this kernel has no such key).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    pub kernel: String,
    pub cores: u64,
    /// This process's effective capabilities.
    pub cap_eff: u64,
    pub nofile: (u64, u64),
    pub memlock: (u64, u64),
    pub nr_open: Option<u64>,
    pub file_max: Option<u64>,
    /// First field of fs.file-nr.
    pub files_allocated: Option<u64>,
    pub port_range: Option<(u64, u64)>,
    pub somaxconn: Option<u64>,
    pub syn_backlog: Option<u64>,
    pub syncookies: Option<u64>,
    pub tcp_mem_pages: Option<[u64; 3]>,
    pub page_size: u64,
    /// `None`: nf_conntrack is not loaded.
    pub conntrack: Option<Conntrack>,
    pub mem_free: u64,
    pub cgroup: Option<CgroupMemory>,
    pub max_map_count: Option<u64>,
    pub maps_in_use: u64,
    pub overcommit_memory: Option<u64>,
    /// CommitLimit, Committed_AS.
    pub commit: Option<(u64, u64)>,
    pub io_uring_disabled: Option<u64>,
    pub io_uring: IoUringProbe,
    pub tcp_max_orphans: Option<u64>,
    pub netdev_max_backlog: Option<u64>,
    pub cost: Cost,
}

impl Snapshot {
    /// Reads this host and process; the cost per connection from `results_dir`.
    pub fn read(results_dir: &Path) -> Result<Snapshot, super::TuneError> {
        use nix::sys::resource::Resource;
        let sys = ProcSys::default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| super::TuneError::io("/proc/meminfo", e))?;
        let mem_free = crate::host::memory::parse_meminfo(&meminfo)?.mem_free;
        let three = |key: &str| sys.read_u64s(key).filter(|v| v.len() == 3).map(|v| [v[0], v[1], v[2]]);
        let probe = match crate::engine::probe::probe() {
            Ok(f) => IoUringProbe {
                ok: true,
                detail: format!(
                    "every opcode and setup flag c2m needs is there (recv bundle: {})",
                    if f.recv_bundle { "yes" } else { "no" }
                ),
            },
            Err(e) => IoUringProbe { ok: false, detail: e.to_string() },
        };
        let conntrack = sys
            .read_u64("net.netfilter.nf_conntrack_max")
            .map(|max| Conntrack { max, count: sys.read_u64("net.netfilter.nf_conntrack_count").unwrap_or(0) });
        Ok(Snapshot {
            kernel: sys.read("kernel.osrelease")?.unwrap_or_default(),
            cores: std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1),
            cap_eff: tune_host::cap_eff(),
            nofile: tune_host::rlimit(Resource::RLIMIT_NOFILE),
            memlock: tune_host::rlimit(Resource::RLIMIT_MEMLOCK),
            nr_open: sys.read_u64("fs.nr_open"),
            file_max: sys.read_u64("fs.file-max"),
            files_allocated: sys.read_u64s("fs.file-nr").and_then(|v| v.first().copied()),
            port_range: sys.read_u64s("net.ipv4.ip_local_port_range").filter(|v| v.len() == 2).map(|v| (v[0], v[1])),
            somaxconn: sys.read_u64("net.core.somaxconn"),
            syn_backlog: sys.read_u64("net.ipv4.tcp_max_syn_backlog"),
            syncookies: sys.read_u64("net.ipv4.tcp_syncookies"),
            tcp_mem_pages: three("net.ipv4.tcp_mem"),
            page_size: crate::host::memory::page_size(),
            conntrack,
            mem_free,
            cgroup: tune_host::cgroup_memory(),
            max_map_count: sys.read_u64("vm.max_map_count"),
            maps_in_use: tune_host::maps_in_use(),
            overcommit_memory: sys.read_u64("vm.overcommit_memory"),
            commit: tune_host::parse_commit(&meminfo),
            io_uring_disabled: sys.read_u64("kernel.io_uring_disabled"),
            io_uring: probe,
            tcp_max_orphans: sys.read_u64("net.ipv4.tcp_max_orphans"),
            netdev_max_backlog: sys.read_u64("net.core.netdev_max_backlog"),
            cost: CostModel::measured_or_default(results_dir).into(),
        })
    }
}

/// What the check is asked.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckOptions {
    /// Connections wanted (`-c`); without it, the check reports what the box can hold.
    pub connections: Option<u64>,
    /// Client and server both on this box (loopback), as `c2m bench` runs them.
    pub both_ends_here: bool,
    /// MemFree that must stay free.
    pub keep_free: u64,
    /// Bytes queued per connection at once, for tcp_mem (0: idle or ping workloads).
    pub in_flight: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "limits you")]
    LimitsYou,
    /// Does not cap connections held (it caps a rate, or does not apply here).
    #[serde(rename = "n/a")]
    NotApplicable,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::LimitsYou => "limits you",
            Verdict::NotApplicable => "n/a",
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub limit: String,
    pub value: String,
    /// Connections held this limit allows; `None` when it does not cap them.
    pub allows: Option<u64>,
    pub verdict: Verdict,
    /// What it caps and how the figure was worked out.
    pub why: String,
    /// The command that lifts it.
    pub lift: String,
}

/// The check's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckReport {
    pub headline: String,
    pub connections_requested: Option<u64>,
    /// Most connections every limit allows (exact; the headline rounds it).
    pub capacity: u64,
    /// The limit that allows `capacity`.
    pub first_limit: String,
    /// Whether the requested count (or, without one, the capacity) fits.
    pub fits: bool,
    pub both_ends_here: bool,
    pub cost_source: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub snapshot: Snapshot,
}

fn row(limit: &str, value: String, allows: Option<u64>, why: String, lift: impl Into<String>) -> Row {
    Row { limit: limit.into(), value, allows, verdict: Verdict::NotApplicable, why, lift: lift.into() }
}

fn opt(v: Option<u64>) -> String {
    v.map(thousands).unwrap_or_else(|| "missing".into())
}

/// A sysctl value to suggest: `need` with head room, rounded up to a round number.
fn suggest(need: u64) -> u64 {
    // Saturating: `c2m tune check -c` takes any count, and its lift commands must not wrap.
    let want = need.saturating_add(need / 4);
    let unit = 10u64.pow((want.max(1) as f64).log10().floor().max(0.0) as u32).max(1);
    want.div_ceil(unit).saturating_mul(unit)
}

/// Judges a snapshot.
pub fn evaluate(s: &Snapshot, o: &CheckOptions) -> CheckReport {
    let ends = if o.both_ends_here { 2 } else { 1 };
    let each = s.cost.bytes_each(o.both_ends_here);
    let by_memory = (s.mem_free.saturating_sub(o.keep_free) as f64 / each).floor() as u64;
    // What the lift commands are sized for: the count asked for, or what memory allows.
    let want = o.connections.unwrap_or(by_memory).max(1);
    let files_per_ring = s.nofile.0.clamp(1, MAX_FILES_PER_RING);
    let rings_each = want.div_ceil(files_per_ring);
    let caps = s.cap_eff;
    let mut rows = Vec::new();

    rows.push(memory_row(s, o, each, by_memory));
    if let Some(cg) = s.cgroup {
        rows.push(row(
            "memory cgroup",
            format!("limit {}, {} used", human_bytes(cg.limit as f64), human_bytes(cg.usage as f64)),
            Some((cg.limit.saturating_sub(cg.usage) as f64 / each) as u64),
            "the kernel charges socket, file and slab memory to the cgroup of the process that made it".into(),
            "raise memory.max of this cgroup (systemd: MemoryMax=infinity)",
        ));
    } else {
        rows.push(row("memory cgroup", "no limit".into(), None, "no memory.max above this process".into(), "-"));
    }

    let (soft, hard) = s.nofile;
    rows.push(row(
        "RLIMIT_NOFILE soft",
        format!("{} (hard {})", thousands(soft), thousands(hard)),
        Some(soft.saturating_sub(FDS_BESIDES_RINGS) * files_per_ring),
        format!(
            "c2m holds sockets as io_uring direct descriptors: NOFILE caps one ring's fixed-file table ({} slots), \
             not connections; {} connections take {} ring(s) per process, one ordinary fd each",
            thousands(files_per_ring),
            thousands(want),
            thousands(rings_each)
        ),
        if soft < hard { format!("ulimit -n {hard}") } else { "ulimit -n N (up to the hard limit)".into() },
    ));
    let can_raise = tune_host::has_cap(caps, CAP_SYS_RESOURCE);
    rows.push(row(
        "RLIMIT_NOFILE hard",
        format!(
            "{}; raisable: {}",
            thousands(hard),
            if can_raise {
                format!("yes, up to fs.nr_open ({})", opt(s.nr_open))
            } else {
                "no (no CAP_SYS_RESOURCE)".into()
            }
        ),
        None,
        "caps the soft limit; a bigger fixed-file table only means fewer rings".into(),
        "tuning/limits.d/c2m.conf, or LimitNOFILE= (tuning/systemd/c2m.service.d/limits.conf)",
    ));
    rows.push(row(
        "fs.nr_open",
        opt(s.nr_open),
        None,
        "the most RLIMIT_NOFILE can be raised to".into(),
        "sysctl -w fs.nr_open=1048576",
    ));

    let exempt = tune_host::has_cap(caps, CAP_SYS_ADMIN);
    let files_free = s.file_max.map(|m| m.saturating_sub(s.files_allocated.unwrap_or(0)));
    let by_files = files_free.map(|f| f / ends);
    rows.push(row(
        "fs.file-max",
        format!("{}{}", opt(s.file_max), if exempt { " (this process: exempt)" } else { "" }),
        if exempt { None } else { by_files },
        format!(
            "every socket is a struct file, direct descriptors too: {ends} per connection here. {}",
            if exempt {
                format!("This process has CAP_SYS_ADMIN, which the kernel exempts; without it: {}", opt(by_files))
            } else {
                "Processes with CAP_SYS_ADMIN would be exempt".into()
            }
        ),
        format!("sysctl -w fs.file-max={}", suggest(want.saturating_mul(ends))),
    ));
    rows.push(row(
        "fs.file-nr",
        format!("{} open now", opt(s.files_allocated)),
        None,
        "files open system-wide; counted in the fs.file-max row".into(),
        "-",
    ));

    rows.push(row(
        "source 4-tuples (c2m load)",
        "127.0.1.1-127.255.255.254 x ports 10000-65000".into(),
        Some(LOAD_SOURCE_ADDRESSES * load_source_ports()),
        "c2m load binds each connection's source address and port itself (--sources, --source-ports): \
         distinct 4-tuples to one server address:port"
            .into(),
        "c2m load --sources 127.0.0.0/8 --source-ports 1024-65535",
    ));
    let ports = s.port_range.map(|(lo, hi)| hi.saturating_sub(lo) + 1);
    rows.push(row(
        "net.ipv4.ip_local_port_range",
        match s.port_range {
            Some((lo, hi)) => format!("{lo}-{hi} ({} ports)", opt(ports)),
            None => "missing".into(),
        },
        None,
        format!(
            "only for clients that let the kernel pick the source port: {} connections per (source address, server \
             address:port); c2m load picks its own",
            opt(ports)
        ),
        "sysctl -w net.ipv4.ip_local_port_range=\"10000 65535\"",
    ));

    let cut = s.somaxconn.filter(|&m| m < SERVE_BACKLOG);
    rows.push(row(
        "net.core.somaxconn",
        opt(s.somaxconn),
        None,
        format!(
            "caps each listener's accept queue (c2m serve asks {SERVE_BACKLOG} per worker{}): a connect burst beyond it \
             waits for SYN retransmits (1 s, 3 s, ...), so it caps the connect rate, not connections held",
            cut.map(|m| format!(", the kernel cuts it to {m}")).unwrap_or_default()
        ),
        "sysctl -w net.core.somaxconn=65535",
    ));
    rows.push(row(
        "net.ipv4.tcp_max_syn_backlog",
        opt(s.syn_backlog),
        None,
        format!(
            "half-open connections per listener: caps the connect rate, not connections held{}",
            if s.syncookies.unwrap_or(0) > 0 {
                " (tcp_syncookies is on: a full queue answers with cookies)"
            } else {
                ""
            }
        ),
        "sysctl -w net.ipv4.tcp_max_syn_backlog=65535",
    ));
    rows.push(tcp_mem_row(s, o, want));
    rows.push(conntrack_row(s, want));

    let slots = files_per_ring.max(1);
    rows.push(row(
        "vm.max_map_count",
        format!("{} ({} mapped now)", opt(s.max_map_count), thousands(s.maps_in_use)),
        s.max_map_count.map(|m| m.saturating_sub(s.maps_in_use) / MAPS_PER_RING * slots),
        format!(
            "mappings per process: c2m maps about {MAPS_PER_RING} per ring of {} connections, plus one session slab",
            thousands(slots)
        ),
        "sysctl -w vm.max_map_count=262144",
    ));
    rows.push(overcommit_row(s));
    rows.push(io_uring_row(s));
    rows.push(memlock_row(s, o, files_per_ring));
    rows.push(row(
        "net.ipv4.tcp_max_orphans",
        opt(s.tcp_max_orphans),
        None,
        "sockets closed but not yet through their FIN exchange: closing more than this at once resets the rest \
         (closing at scale, not connections held)"
            .into(),
        format!("sysctl -w net.ipv4.tcp_max_orphans={}", suggest(want)),
    ));
    rows.push(row(
        "net.core.netdev_max_backlog",
        opt(s.netdev_max_backlog),
        None,
        "packets queued per CPU on receive, loopback included: a connect burst beyond it is dropped and retried \
         (rate, not count)"
            .into(),
        "sysctl -w net.core.netdev_max_backlog=16384",
    ));

    let (capacity, first_limit) = rows
        .iter()
        .filter_map(|r| Some((r.allows?, r.limit.clone())))
        .fold((u64::MAX, String::new()), |best, r| if r.0 < best.0 { r } else { best });
    let target = o.connections.unwrap_or(capacity);
    for r in &mut rows {
        r.verdict = match r.allows {
            None => Verdict::NotApplicable,
            Some(a) if a < target || (o.connections.is_none() && a == capacity) => Verdict::LimitsYou,
            Some(_) => Verdict::Ok,
        };
    }
    let fits = target <= capacity;
    let where_ = if o.both_ends_here { "both ends on this box" } else { "server end only" };
    let mut headline = format!(
        "This box can hold about {} connections ({where_}); {} stops you first.",
        thousands(round_down_3_digits(capacity)),
        first_limit
    );
    if let Some(n) = o.connections {
        headline.push_str(&format!(" -c {}: {}.", thousands(n), if fits { "fits" } else { "does NOT fit" }));
    }
    let mut notes = vec![format!(
        "Held-count limits assume {where_}, {} of data in flight per connection, {} of MemFree kept free.",
        human_bytes(o.in_flight as f64),
        human_bytes(o.keep_free as f64)
    )];
    if want > 1_000_000 {
        notes.push(format!("c2m serve holds at most --max-sessions (default 1,000,000): pass --max-sessions {want}."));
    }
    CheckReport {
        headline,
        connections_requested: o.connections,
        capacity,
        first_limit,
        fits,
        both_ends_here: o.both_ends_here,
        cost_source: s.cost.source.clone(),
        rows,
        notes,
        snapshot: s.clone(),
    }
}

fn memory_row(s: &Snapshot, o: &CheckOptions, each: f64, by_memory: u64) -> Row {
    row(
        "free memory",
        format!("MemFree {} - keep free {}", human_bytes(s.mem_free as f64), human_bytes(o.keep_free as f64)),
        Some(by_memory),
        format!(
            "{} per connection ({}), cost {}",
            human_bytes(each),
            if o.both_ends_here {
                "client + server socket and both processes"
            } else {
                "server end: half the kernel part"
            },
            s.cost.source
        ),
        "free memory (stop other work; `sync; echo 3 > /proc/sys/vm/drop_caches` drops page cache) or add RAM",
    )
}

fn tcp_mem_row(s: &Snapshot, o: &CheckOptions, want: u64) -> Row {
    let Some([lo, pressure, max]) = s.tcp_mem_pages else {
        return row("net.ipv4.tcp_mem", "missing".into(), None, "no tcp_mem on this kernel".into(), "-");
    };
    let page = s.page_size.max(1);
    let max_bytes = max.saturating_mul(page);
    let value = format!("{lo} {pressure} {max} pages (max {})", human_bytes(max_bytes as f64));
    let per = if o.in_flight > 0 { o.in_flight } else { page };
    let need_pages = want.saturating_mul(per).div_ceil(page);
    let lift = format!(
        "sysctl -w net.ipv4.tcp_mem=\"{} {} {}\"",
        suggest(need_pages) / 2,
        suggest(need_pages) * 3 / 4,
        suggest(need_pages)
    );
    if o.in_flight == 0 {
        return row(
            "net.ipv4.tcp_mem",
            value,
            None,
            format!(
                "counts only socket buffers with data in them: idle connections hold 0 bytes (assumed: --in-flight 0, \
                 e.g. the ping workload, where a few connections at a time have a frame queued). With one page \
                 ({} B, the accounting unit) queued on every connection it would allow {}",
                page,
                thousands(max_bytes / page)
            ),
            lift,
        );
    }
    row(
        "net.ipv4.tcp_mem",
        value,
        Some(max_bytes / o.in_flight),
        format!(
            "assumed: {} queued on every connection at once (--in-flight); past pressure buffers shrink, past max \
             allocations fail",
            human_bytes(o.in_flight as f64)
        ),
        lift,
    )
}

fn conntrack_row(s: &Snapshot, want: u64) -> Row {
    let lift = format!(
        "sysctl -w net.netfilter.nf_conntrack_max={}, or skip tracking on loopback: iptables -t raw -I PREROUTING -i lo -j NOTRACK; iptables -t raw -I OUTPUT -o lo -j NOTRACK",
        suggest(want)
    );
    match s.conntrack {
        None => row("nf_conntrack", "not loaded".into(), None, "nothing is tracked".into(), "-"),
        Some(c) if c.count == 0 => row(
            "nf_conntrack",
            format!("loaded, max {}, 0 tracked now", thousands(c.max)),
            None,
            "nothing is tracked in this network namespace now (no rule needs conntrack). If one appears, every \
             connection, loopback too, takes an entry and a full table drops new SYNs"
                .into(),
            lift,
        ),
        Some(c) => row(
            "nf_conntrack",
            format!("loaded, max {}, {} tracked now", thousands(c.max), thousands(c.count)),
            Some(c.max.saturating_sub(c.count)),
            "tracking is on here: every connection, loopback too, takes an entry (one per pair); a full table drops new SYNs".into(),
            lift,
        ),
    }
}

fn overcommit_row(s: &Snapshot) -> Row {
    let mode = s.overcommit_memory;
    if mode == Some(2) {
        let room = s.commit.map(|(limit, used)| limit.saturating_sub(used) / SESSION_BYTES);
        return row(
            "vm.overcommit_memory",
            "2 (strict)".into(),
            room,
            format!(
                "strict accounting ignores MAP_NORESERVE: c2m serve's slab charges --max-sessions x --session-bytes \
                 ({}) against CommitLimit",
                human_bytes(SESSION_BYTES as f64)
            ),
            "sysctl -w vm.overcommit_memory=0",
        );
    }
    row(
        "vm.overcommit_memory",
        opt(mode),
        None,
        "c2m serve's session slab is MAP_NORESERVE: its address space is not charged in modes 0 and 1".into(),
        "-",
    )
}

fn io_uring_row(s: &Snapshot) -> Row {
    let value = format!(
        "io_uring_disabled {}; probe {}",
        opt(s.io_uring_disabled),
        if s.io_uring.ok { "ok" } else { "FAILED" }
    );
    let lift = "sysctl -w kernel.io_uring_disabled=0";
    if s.io_uring.ok {
        row("kernel.io_uring_disabled", value, None, format!("kernel {}: {}", s.kernel, s.io_uring.detail), lift)
    } else {
        row("kernel.io_uring_disabled", value, Some(0), s.io_uring.detail.clone(), lift)
    }
}

/// io_uring charged ring memory to RLIMIT_MEMLOCK before 5.12, to the memory cgroup from 5.12, and
/// again to RLIMIT_MEMLOCK once rings became "regions" (6.14; measured here on 6.18: a c2m serve
/// ring fails to set up under 192 KiB of memlock and works with 256 KiB), unless CAP_IPC_LOCK.
fn memlock_row(s: &Snapshot, o: &CheckOptions, files_per_ring: u64) -> Row {
    let (soft, hard) = s.memlock;
    let fmt = |v: u64| if v == u64::MAX { "unlimited".to_string() } else { human_bytes(v as f64) };
    let value = format!("{} (hard {})", fmt(soft), fmt(hard));
    let lift = "ulimit -l unlimited (tuning/limits.d/c2m.conf, or LimitMEMLOCK=infinity)";
    let version = tune_host::parse_kernel_version(&s.kernel).unwrap_or((0, 0));
    if tune_host::has_cap(s.cap_eff, CAP_IPC_LOCK) {
        return row(
            "RLIMIT_MEMLOCK",
            value,
            None,
            "this process has CAP_IPC_LOCK: io_uring charges nothing to memlock".into(),
            lift,
        );
    }
    if ((5, 12)..(6, 14)).contains(&version) {
        return row(
            "RLIMIT_MEMLOCK",
            value,
            None,
            format!("kernel {}: io_uring charges ring memory to the memory cgroup, not memlock", s.kernel),
            lift,
        );
    }
    let page = s.page_size.max(1);
    let serve = SERVE_RING.pinned_bytes(page);
    let load = LOAD_RING.pinned_bytes(page);
    let per_ring_pair = serve + if o.both_ends_here { load } else { 0 };
    // One ring per worker at least, then one per `files_per_ring` connections, per process.
    let fixed = s.cores * per_ring_pair;
    let allows = if soft == u64::MAX {
        None
    } else {
        Some((soft.saturating_sub(fixed) as u128 * files_per_ring as u128 / per_ring_pair as u128) as u64)
    };
    row(
        "RLIMIT_MEMLOCK",
        value,
        allows,
        format!(
            "kernel {}: io_uring charges ring memory to the user's memlock (all its processes together) unless \
             CAP_IPC_LOCK: about {} per c2m serve ring and {} per c2m load ring, one ring per {} connections",
            s.kernel,
            human_bytes(serve as f64),
            human_bytes(load as f64),
            thousands(files_per_ring)
        ),
        lift,
    )
}

/// The report as a table: a headline, one line per limit with what it caps beneath, then notes.
pub fn render(r: &CheckReport) -> String {
    let mut out = format!("{}\n\n", r.headline);
    let allows = |a: Option<u64>| {
        a.map(|v| if v > 1_000_000_000_000 { ">1e12".into() } else { thousands(v) }).unwrap_or_else(|| "-".into())
    };
    let w0 = r.rows.iter().map(|x| x.limit.len()).max().unwrap_or(5).max(5);
    let w1 = r.rows.iter().map(|x| x.value.len()).max().unwrap_or(5).clamp(5, 48);
    let w2 = r.rows.iter().map(|x| allows(x.allows).len()).max().unwrap_or(6).max(6);
    out.push_str(&format!("{:w0$}  {:w1$}  {:>w2$}  {:10}  LIFT\n", "LIMIT", "VALUE", "ALLOWS", "VERDICT"));
    for x in &r.rows {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:>w2$}  {:10}  {}\n    {}\n",
            x.limit,
            x.value,
            allows(x.allows),
            x.verdict.as_str(),
            x.lift,
            x.why
        ));
    }
    out.push('\n');
    for n in &r.notes {
        out.push_str(&format!("{n}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    /// CapEff of root here: every capability but CAP_SYS_RESOURCE.
    const ROOT_CAPS: u64 = 0x1ff_feff_ffff;

    fn snapshot() -> Snapshot {
        Snapshot {
            kernel: "6.18.44".into(),
            cores: 2,
            cap_eff: ROOT_CAPS,
            nofile: (20_000, 20_000),
            memlock: (8 << 20, 8 << 20),
            nr_open: Some(1_048_576),
            file_max: Some(2_466_177),
            files_allocated: Some(1_177),
            port_range: Some((32_768, 60_999)),
            somaxconn: Some(4096),
            syn_backlog: Some(2048),
            syncookies: Some(1),
            tcp_mem_pages: Some([287_901, 383_868, 575_802]),
            page_size: 4096,
            conntrack: Some(Conntrack { max: 262_144, count: 0 }),
            mem_free: 14 * GIB,
            cgroup: None,
            max_map_count: Some(65_530),
            maps_in_use: 30,
            overcommit_memory: Some(0),
            commit: Some((12 * GIB, GIB)),
            io_uring_disabled: Some(0),
            io_uring: IoUringProbe { ok: true, detail: "fine".into() },
            tcp_max_orphans: Some(131_072),
            netdev_max_backlog: Some(1000),
            cost: Cost { pair_bytes: 12_000.0, kernel_bytes: 11_000.0, source: "test cost".into() },
        }
    }

    fn opts(n: Option<u64>) -> CheckOptions {
        CheckOptions { connections: n, both_ends_here: true, keep_free: 2 * GIB, in_flight: 0 }
    }

    fn find<'a>(r: &'a CheckReport, limit: &str) -> &'a Row {
        r.rows.iter().find(|x| x.limit == limit).unwrap_or_else(|| panic!("no row {limit}"))
    }

    #[test]
    fn memory_stops_first_on_a_roomy_box() {
        let r = evaluate(&snapshot(), &opts(None));
        // 12 GiB / 12,000 B = 1,073,741.
        assert_eq!(r.capacity, 1_073_741);
        assert_eq!(r.first_limit, "free memory");
        assert!(r.fits);
        assert!(r.headline.starts_with("This box can hold about 1,070,000 connections"), "{}", r.headline);
        assert_eq!(find(&r, "free memory").verdict, Verdict::LimitsYou);
        // Root is exempt from fs.file-max and memlock; rate-only limits are n/a.
        assert_eq!(find(&r, "fs.file-max").verdict, Verdict::NotApplicable);
        assert_eq!(find(&r, "RLIMIT_MEMLOCK").verdict, Verdict::NotApplicable);
        assert_eq!(find(&r, "net.core.somaxconn").verdict, Verdict::NotApplicable);
        assert_eq!(find(&r, "RLIMIT_NOFILE soft").verdict, Verdict::Ok);
        // Conntrack loaded but tracking nothing does not cap.
        assert_eq!(find(&r, "nf_conntrack").allows, None);
    }

    #[test]
    fn a_count_beyond_capacity_does_not_fit() {
        let r = evaluate(&snapshot(), &opts(Some(2_000_000)));
        assert!(!r.fits);
        assert!(r.headline.ends_with("-c 2,000,000: does NOT fit."), "{}", r.headline);
        assert_eq!(find(&r, "free memory").verdict, Verdict::LimitsYou);
        assert_eq!(find(&r, "vm.max_map_count").verdict, Verdict::Ok);
        assert!(r.notes.iter().any(|n| n.contains("--max-sessions 2000000")));
        let small = evaluate(&snapshot(), &opts(Some(500_000)));
        assert!(small.fits);
        assert_eq!(find(&small, "free memory").verdict, Verdict::Ok);
    }

    #[test]
    fn file_max_caps_a_process_without_cap_sys_admin() {
        let mut s = snapshot();
        s.cap_eff = 0;
        s.mem_free = 100 * GIB;
        s.memlock = (u64::MAX, u64::MAX);
        let r = evaluate(&s, &opts(None));
        // (2,466,177 - 1,177) / 2 ends.
        assert_eq!(r.capacity, 1_232_500);
        assert_eq!(r.first_limit, "fs.file-max");
        assert!(find(&r, "fs.file-max").lift.starts_with("sysctl -w fs.file-max="));
        // One end here: half the files.
        let one = evaluate(&s, &CheckOptions { both_ends_here: false, ..opts(None) });
        assert_eq!(find(&one, "fs.file-max").allows, Some(2_465_000));
    }

    #[test]
    fn memlock_caps_rings_without_cap_ipc_lock_on_6_14_and_later() {
        let mut s = snapshot();
        s.cap_eff = 0;
        let r = evaluate(&s, &opts(None));
        // 8 MiB less one serve + load ring per core, at (208 + 400) KiB per 20,000 connections.
        assert_eq!(find(&r, "RLIMIT_MEMLOCK").allows, Some(229_473));
        assert_eq!(r.first_limit, "RLIMIT_MEMLOCK");
    }

    #[test]
    fn memlock_does_not_matter_between_5_12_and_6_14() {
        let mut s = snapshot();
        s.cap_eff = 0;
        s.kernel = "6.8.0-45-generic".into();
        assert_eq!(find(&evaluate(&s, &opts(None)), "RLIMIT_MEMLOCK").allows, None);
        s.memlock = (u64::MAX, u64::MAX);
        s.kernel = "6.18.0".into();
        assert_eq!(find(&evaluate(&s, &opts(None)), "RLIMIT_MEMLOCK").allows, None);
    }

    #[test]
    fn serve_ring_pins_between_192_and_256_kib() {
        // Measured on 6.18: c2m serve fails with memlock 192 KiB and starts with 256 KiB.
        let b = SERVE_RING.pinned_bytes(4096);
        assert!(b > 192 * 1024 && b <= 256 * 1024, "{b}");
    }

    #[test]
    fn tracking_conntrack_and_tcp_mem_in_flight_cap() {
        let mut s = snapshot();
        s.conntrack = Some(Conntrack { max: 262_144, count: 144 });
        let r = evaluate(&s, &CheckOptions { in_flight: 4096, ..opts(None) });
        assert_eq!(find(&r, "nf_conntrack").allows, Some(262_000));
        assert_eq!(r.first_limit, "nf_conntrack");
        assert_eq!(find(&r, "net.ipv4.tcp_mem").allows, Some(575_802));
        assert_eq!(find(&r, "net.ipv4.tcp_mem").verdict, Verdict::Ok);
    }

    #[test]
    fn broken_io_uring_allows_nothing() {
        let mut s = snapshot();
        s.io_uring = IoUringProbe { ok: false, detail: "kernel.io_uring_disabled = 2".into() };
        let r = evaluate(&s, &opts(Some(10)));
        assert_eq!(r.capacity, 0);
        assert!(!r.fits);
        assert_eq!(find(&r, "kernel.io_uring_disabled").verdict, Verdict::LimitsYou);
    }

    #[test]
    fn strict_overcommit_caps_the_session_slab() {
        let mut s = snapshot();
        s.overcommit_memory = Some(2);
        let r = evaluate(&s, &opts(None));
        // 11 GiB of commit room / 40 KiB slots.
        assert_eq!(find(&r, "vm.overcommit_memory").allows, Some(288_358));
        assert_eq!(r.first_limit, "vm.overcommit_memory");
    }

    #[test]
    fn cgroup_limit_caps_memory() {
        let mut s = snapshot();
        s.cgroup = Some(CgroupMemory { limit: 4 * GIB, usage: GIB });
        let r = evaluate(&s, &opts(None));
        assert_eq!(r.first_limit, "memory cgroup");
        assert_eq!(r.capacity, (3 * GIB) / 12_000);
    }

    #[test]
    fn suggestions_are_round_and_roomy() {
        assert_eq!(suggest(2_000_000), 3_000_000);
        assert_eq!(suggest(4_000_000), 5_000_000);
        assert_eq!(suggest(0), 0);
    }

    #[test]
    fn renders_and_serializes() {
        let r = evaluate(&snapshot(), &opts(Some(100_000)));
        let text = render(&r);
        assert!(text.lines().next().unwrap().starts_with("This box can hold"));
        assert!(text.contains("LIMIT") && text.contains("sysctl -w net.core.somaxconn=65535"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["rows"][0]["verdict"], "ok");
        assert_eq!(json["fits"], true);
    }

    #[test]
    fn reads_this_host() {
        let s = Snapshot::read(Path::new("results")).unwrap();
        assert!(s.mem_free > 0 && s.file_max.is_some() && s.nofile.0 > 0);
        let r = evaluate(&s, &opts(None));
        assert!(r.rows.len() >= 18);
    }

    /// Any count and any in-flight size give an answer, not an overflow.
    #[test]
    fn huge_counts_and_in_flight_sizes_do_not_overflow() {
        let r = evaluate(&snapshot(), &CheckOptions { in_flight: u64::MAX, ..opts(Some(u64::MAX)) });
        assert!(!r.fits);
        assert_eq!(suggest(u64::MAX), u64::MAX);
    }
}

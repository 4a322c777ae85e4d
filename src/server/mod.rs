//! `c2m serve`: protocol v1 sessions, one pinned worker per core. The session logic
//! (`sessions.rs`, `session.rs`, `route.rs`) sits on the transport seam; today's data plane is the
//! kernel one (io_uring over kernel sockets).

mod budget;
pub mod defaults;
pub mod directory;
pub mod mailbox;
pub mod offline;
mod pending;
mod quota;
pub mod route;
pub mod session;
pub mod sessions;

#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod sessions_tests;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::probe::{Features, probe};
use crate::engine::ring_set::rings_needed;
use crate::engine::{EngineError, PoolConfig, RingConfig, WorkerPool};
use crate::proto;
use crate::slab::SlabError;
use crate::stats::WorkerStats;
use crate::transport::kernel::{self, KernelConfig, KernelTransport, Listen, listener};
use crate::transport::xdp::XdpTransport;
use crate::units::{duration_range, human_bytes, thousands};
use sessions::Sessions;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Slab(#[from] SlabError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("worker {0} failed: {1}")]
    Worker(usize, String),
}

/// Everything `c2m serve` can be told.
/// How a session waits for input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecvArm {
    /// A multishot poll per session; a one-shot receive (with a provided buffer) when it fires.
    /// An idle session then holds one `io_kiocb` (256 B) in the kernel, against ~860 B for an
    /// armed multishot receive (its `io_kiocb`, a 512 B async msghdr and its poll entry). It
    /// costs one more completion per burst of input.
    #[default]
    Poll,
    /// A multishot receive per session: fewest completions, most kernel memory per idle session.
    Multishot,
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub workers: usize,
    /// Sessions the server holds at most, all workers together (one budget: the kernel's
    /// SO_REUSEPORT hash picks the worker, unevenly).
    pub max_sessions: usize,
    pub session_bytes: usize,
    /// Slot memory all sessions together may make resident for replies they have not sent (a
    /// session that would need more waits, as with a full out area). Partial frames (at most
    /// `max_frame` a session) are not counted.
    pub slot_budget: usize,
    pub max_frame: usize,
    pub heartbeat_ms: u32,
    pub hello_timeout_ms: u32,
    pub drain_timeout_ms: u32,
    pub backlog: u32,
    /// Fixed-file slots per ring; `None`: as many as RLIMIT_NOFILE allows (after raising the
    /// soft limit to the hard one), at most 2^20.
    pub files_per_ring: Option<u32>,
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
    pub recv_arm: RecvArm,
    pub sq_entries: u32,
    pub cq_entries: u32,
    /// Users SEND may name: ids `1..=users` (one directory entry of 8 bytes each, resident only
    /// once written). Outside it a SEND gets NACK 7.
    pub users: u64,
    /// Static groups (ids `proto::GROUP_BIT | g`, g < groups) of `group_size` members each.
    pub groups: u64,
    pub group_size: u32,
    pub offline: offline::OfflineLimits,
    /// Which data plane carries the connections.
    pub dataplane: DataPlane,
    /// A network namespace to serve in (`scripts/netns.sh` makes `c2m-srv`).
    pub netns: Option<String>,
    /// Join a port other processes listen on (SO_REUSEPORT), on purpose: a sharded server of
    /// several processes. Without it a busy port is refused.
    pub share_port: bool,
}

pub use crate::transport::{DataPlane, XdpSettings};

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: defaults::LISTEN.parse().expect("a socket address"),
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            max_sessions: defaults::MAX_SESSIONS,
            session_bytes: defaults::SESSION_BYTES,
            slot_budget: defaults::bytes(defaults::SLOT_BUDGET) as usize,
            max_frame: proto::DEFAULT_MAX_FRAME,
            heartbeat_ms: defaults::millis(defaults::HEARTBEAT),
            hello_timeout_ms: defaults::millis(defaults::HELLO_TIMEOUT),
            drain_timeout_ms: defaults::millis(defaults::DRAIN_TIMEOUT),
            backlog: defaults::BACKLOG,
            files_per_ring: None,
            recv_buffers: defaults::RECV_BUFFERS,
            recv_buffer_size: defaults::RECV_BUFFER_SIZE,
            recv_arm: RecvArm::Poll,
            sq_entries: defaults::SQ_ENTRIES,
            cq_entries: defaults::CQ_ENTRIES,
            users: defaults::count(defaults::USERS),
            groups: 0,
            group_size: 0,
            offline: offline::OfflineLimits::default(),
            dataplane: DataPlane::Kernel,
            netns: None,
            share_port: false,
        }
    }
}

/// Free table slots a ring keeps in reserve: one accept run can take a whole listen backlog.
pub fn accept_margin(cfg: &ServeConfig, files: u32) -> u32 {
    cfg.backlog.saturating_add(64).min(files / 4)
}

/// Largest `--session-bytes`: offsets in a slot are u32 (`Session::slot_out_len`), and frames are
/// at most `proto::MAX_FRAME_LIMIT`, so a larger slot buys nothing.
pub const MAX_SESSION_BYTES: usize = 1 << 30;
/// Address space the session slabs may reserve, all workers together: half of the 128 TiB a
/// process has on x86-64 (every worker maps room for every session, see `Server::start`).
pub const MAX_SLAB_ADDRESS_SPACE: u64 = 64 << 40;
/// Longest `--offline-ttl`: ten years (a `Duration` of 10^20 s once panicked while parsing).
pub const MAX_OFFLINE_TTL: Duration = Duration::from_secs(87_600 * 3600);
/// Most fixed-file slots a ring can have (the kernel's limit).
pub const MAX_FILES_PER_RING: u32 = 1 << 20;
/// `--recv-buffer-size`: room for a header and more, up to 16 MiB.
pub const RECV_BUFFER_SIZES: std::ops::RangeInclusive<u32> = 64..=16 << 20;
/// Largest `--users`: the directory holds ids below 2^32 + 1 (32 GiB of address space).
pub const MAX_USERS: u64 = 1 << 32;

impl ServeConfig {
    /// The sessions' clock: a tenth of the shortest deadline, between 10 and 100 ms.
    pub fn tick(&self) -> Duration {
        Duration::from_millis((self.hello_timeout_ms.min(self.heartbeat_ms) as u64 / 10).clamp(10, 100))
    }

    fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: String| Err(ServerError::Config(m));
        if !(1..=255).contains(&self.workers) {
            return bad("--workers must be in 1..=255 (the directory packs the worker in a byte)".into());
        }
        if self.max_frame < proto::HEADER_LEN + 16 || self.max_frame > proto::MAX_FRAME_LIMIT {
            return bad(format!("--max-frame must be in {}..={}", proto::HEADER_LEN + 16, proto::MAX_FRAME_LIMIT));
        }
        if self.session_bytes < 2 * self.max_frame || self.session_bytes > MAX_SESSION_BYTES {
            return bad(format!(
                "--session-bytes {} is out of range: it must be in {}..={MAX_SESSION_BYTES} (at least 2 x --max-frame: a \
                 slot holds a partial frame and replies; at most 1 GiB)",
                self.session_bytes,
                2 * self.max_frame
            ));
        }
        if self.max_sessions == 0 || self.max_sessions > u32::MAX as usize {
            return bad(format!("--max-sessions must be in 1..={}", u32::MAX));
        }
        let reserved = self.slab_address_space();
        if reserved > MAX_SLAB_ADDRESS_SPACE as u128 {
            return bad(format!(
                "--max-sessions {} x --session-bytes {} x --workers {} needs {} of address space (each worker maps \
                 room for every session); at most {} fit: lower --max-sessions or --session-bytes",
                self.max_sessions,
                self.session_bytes,
                self.workers,
                human_bytes(reserved as f64),
                human_bytes(MAX_SLAB_ADDRESS_SPACE as f64)
            ));
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
        if self.heartbeat_ms == 0 {
            return bad(format!("--heartbeat must be in 1ms..={}ms", u32::MAX));
        }
        if self.hello_timeout_ms == 0 {
            return bad(format!("--hello-timeout must be in 1ms..={}ms", u32::MAX));
        }
        if self.backlog > i32::MAX as u32 {
            return bad(format!("--backlog must be in 0..={}", i32::MAX));
        }
        if let Some(files) = self.files_per_ring
            && !(64..=MAX_FILES_PER_RING).contains(&files)
        {
            return bad(format!("--files-per-ring must be in 64..={MAX_FILES_PER_RING}"));
        }
        if self.users > MAX_USERS || self.users >= proto::GROUP_BIT {
            return bad(format!("--users must be in 0..={MAX_USERS} (2^32)"));
        }
        if self.groups >= proto::GROUP_BIT {
            return bad("--groups must be below 2^63 (group ids are 2^63 + g)".into());
        }
        if self.groups > 0
            && (self.group_size == 0 || self.group_size > proto::MAX_GROUP_SIZE || self.group_size as u64 > self.users)
        {
            return bad(format!("--group-size must be in 1..={} and at most --users", proto::MAX_GROUP_SIZE));
        }
        if self.offline.ttl > MAX_OFFLINE_TTL {
            return bad(format!("--offline-ttl {}", duration_range(&(Duration::ZERO..=MAX_OFFLINE_TTL))));
        }
        Ok(())
    }

    /// One slot as the slab lays it out (whole pages), with its header.
    fn slot_footprint(&self) -> u128 {
        (self.session_bytes.div_ceil(crate::slab::PAGE) * crate::slab::PAGE) as u128
            + std::mem::size_of::<session::Session>() as u128
    }

    /// Address space the session slabs reserve, all workers together.
    fn slab_address_space(&self) -> u128 {
        self.workers as u128 * self.max_sessions as u128 * self.slot_footprint()
    }

    /// The most memory sessions could make resident: every header and partial frame, and their
    /// unsent replies up to `--slot-budget`.
    pub fn memory_if_every_slot_filled(&self) -> u64 {
        let n = self.max_sessions as u128;
        let per_session = std::mem::size_of::<session::Session>() as u128 + self.max_frame as u128;
        let replies = (n * self.slot_footprint()).saturating_sub(n * per_session).min(self.slot_budget as u128);
        u64::try_from(n * per_session + replies).unwrap_or(u64::MAX)
    }

    /// A warning line when full slots would take more than `mem_total` (the box's MemTotal).
    pub fn memory_warning(&self, mem_total: u64) -> Option<String> {
        let full = self.memory_if_every_slot_filled();
        (full > mem_total).then(|| {
            format!(
                "c2m serve: warning: --max-sessions {} with --session-bytes {} and --slot-budget {} could use {} if \
                 every slot filled, more than this box's MemTotal of {}; slots are MAP_NORESERVE, so only sessions \
                 that buffer data make theirs resident",
                thousands(self.max_sessions as u64),
                self.session_bytes,
                human_bytes(self.slot_budget as f64),
                human_bytes(full as f64),
                human_bytes(mem_total as f64)
            )
        })
    }
}

/// How the server laid itself out; printed at start-up.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Layout {
    pub workers: usize,
    /// Sessions the server admits, all workers together.
    pub max_sessions: usize,
    /// Rings each worker starts with (its fair share of the sessions); a worker that gets more
    /// than its share adds rings as it needs them, up to `max_rings_per_worker`.
    pub rings_per_worker: usize,
    pub max_rings_per_worker: usize,
    pub files_per_ring: u32,
    /// Which data plane, and (xdp) how it attached.
    pub dataplane: String,
    pub features: Features,
}

/// The workers, on one data plane or the other; both drive the same sessions.
enum Pool {
    Kernel(WorkerPool<KernelTransport<Sessions, WorkerStats>>),
    Xdp(WorkerPool<XdpTransport<Sessions, WorkerStats>>),
}

impl Pool {
    fn stop(&self) {
        match self {
            Pool::Kernel(p) => p.stop(),
            Pool::Xdp(p) => p.stop(),
        }
    }

    fn ended(&self) -> Option<usize> {
        match self {
            Pool::Kernel(p) => p.ended(),
            Pool::Xdp(p) => p.ended(),
        }
    }

    fn join(self) -> Vec<Result<(), EngineError>> {
        match self {
            Pool::Kernel(p) => p.join().into_iter().map(|r| r.map(drop)).collect(),
            Pool::Xdp(p) => p.join().into_iter().map(|r| r.map(drop)).collect(),
        }
    }
}

/// What every worker's sessions share, whatever the data plane.
struct Shared {
    chat: Arc<route::ChatShared>,
    budget: Arc<budget::SessionBudget>,
    resident: Arc<crate::slab::ResidentBudget>,
    stats: Vec<Arc<WorkerStats>>,
}

impl Shared {
    fn sessions(
        &self,
        id: usize,
        cfg: &Arc<ServeConfig>,
        pool: &Arc<crate::engine::PoolShared>,
    ) -> Result<Sessions, String> {
        Sessions::new(
            id,
            cfg.clone(),
            self.stats[id].clone(),
            self.budget.clone(),
            self.resident.clone(),
            self.chat.clone(),
            pool.clone(),
        )
        .map_err(|e| e.to_string())
    }
}

/// A random key for TCP's initial sequence numbers and SYN cookies (not predictable from
/// outside; shared by the workers, so a cookie from one is valid at another).
pub fn tcp_secret() -> u64 {
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    layout: Layout,
    pool: Pool,
    stats: Vec<Arc<WorkerStats>>,
    /// The steering program's link (xdp data plane): detached when the server goes.
    _xdp: Option<crate::xdp::XdpLink>,
}

impl Server {
    /// Probes io_uring, sets up the data plane (one SO_REUSEPORT listener per worker, or AF_XDP
    /// sockets and the steering program), and starts the workers, inside `cfg.netns` if given
    /// (the caller's thread stays where it is: a metrics endpoint it opens is reached from there).
    /// Returns once every worker is accepting.
    pub fn start(cfg: ServeConfig) -> Result<Server, ServerError> {
        cfg.validate()?;
        let Some(ns) = cfg.netns.clone() else { return Server::start_here(cfg) };
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // Workers started from this thread are born in the namespace.
                    let _inside = crate::xdp::netns::enter(&ns).map_err(|e| ServerError::Config(e.to_string()))?;
                    Server::start_here(cfg)
                })
                .join()
                .unwrap_or_else(|_| Err(ServerError::Config("starting the server panicked".into())))
        })
    }

    fn start_here(mut cfg: ServeConfig) -> Result<Server, ServerError> {
        let features = probe()?;
        if let DataPlane::Xdp(xdp) = &cfg.dataplane {
            // Sized before anything per worker is (stats, chat mailboxes).
            let iface = crate::xdp::Interface::by_name(&xdp.iface).map_err(|e| ServerError::Config(e.to_string()))?;
            cfg.workers = crate::transport::xdp::workers_for_queues(cfg.workers, iface.rx_queues());
        }
        let stats: Vec<Arc<WorkerStats>> = (0..cfg.workers).map(|_| Arc::new(WorkerStats::default())).collect();
        let chat = route::ChatShared::new(cfg.workers, cfg.users, cfg.groups, cfg.group_size, cfg.offline)
            .map_err(|source| ServerError::Io { what: "mapping the chat directory and quotas".into(), source })?;
        let shared = Shared {
            chat: Arc::new(chat),
            budget: Arc::new(budget::SessionBudget::new(cfg.max_sessions)),
            resident: Arc::new(crate::slab::ResidentBudget::new(cfg.slot_budget)),
            stats: stats.clone(),
        };
        match cfg.dataplane.clone() {
            DataPlane::Kernel => Server::start_kernel(cfg, shared, features),
            DataPlane::Xdp(xdp) => Server::start_xdp(cfg, xdp, shared, features),
        }
    }

    fn start_kernel(cfg: ServeConfig, shared: Shared, features: Features) -> Result<Server, ServerError> {
        let files = cfg.files_per_ring.unwrap_or_else(crate::engine::ring_set::table_limit);
        if files < 64 {
            return Err(ServerError::Config(format!("{files} fixed files per ring is too few (RLIMIT_NOFILE?)")));
        }
        let margin = accept_margin(&cfg, files);
        // Every worker can take every session (the hash may send it most of them): its slab
        // reserves address space for all, and it adds rings as they fill.
        let max_rings = rings_needed(cfg.max_sessions, files, margin);
        if max_rings > crate::engine::token::MAX_RINGS {
            return Err(ServerError::Config(format!(
                "{} sessions need {max_rings} rings of {files} files in one worker; at most {} fit. Lower --max-sessions or raise RLIMIT_NOFILE",
                cfg.max_sessions,
                crate::engine::token::MAX_RINGS
            )));
        }
        let rings = rings_needed(cfg.max_sessions.div_ceil(cfg.workers), files, margin);
        let io = |what: &str| {
            let what = what.to_string();
            move |source| ServerError::Io { what, source }
        };
        // One accept run can take the whole listen queue; a ring stops accepting with `margin`
        // slots left, so the queue must be shorter than that, or a burst fills the table and the
        // kernel resets what it cannot install (small tables only: with RLIMIT_NOFILE's 20,000
        // the margin is the backlog + 64).
        let backlog = cfg.backlog.min(margin.saturating_sub(64).max(margin / 4).max(1));
        if !cfg.share_port {
            kernel::ensure_port_free(cfg.listen).map_err(io("listening"))?;
        }
        let first = listener(cfg.listen, backlog).map_err(io("listening"))?;
        let addr = first
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| ServerError::Config("listener has no address".into()))?;
        let mut listeners = vec![Some(OwnedFd::from(first))];
        for _ in 1..cfg.workers {
            listeners.push(Some(OwnedFd::from(listener(addr, backlog).map_err(io("listening"))?)));
        }
        let pool_cfg = PoolConfig {
            workers: cfg.workers,
            name: "c2m-w",
            core_offset: 0,
            ring: RingConfig {
                sq_entries: cfg.sq_entries,
                cq_entries: cfg.cq_entries,
                files,
                recv_buffers: cfg.recv_buffers,
                recv_buffer_size: cfg.recv_buffer_size,
            },
            rings,
        };
        let layout = Layout {
            workers: cfg.workers,
            max_sessions: cfg.max_sessions,
            rings_per_worker: rings,
            max_rings_per_worker: max_rings,
            files_per_ring: files,
            dataplane: "kernel (io_uring over kernel TCP sockets)".into(),
            features,
        };
        let stats = shared.stats.clone();
        let cfg = Arc::new(cfg);
        let listeners = std::sync::Mutex::new(listeners);
        let recv = match cfg.recv_arm {
            RecvArm::Poll => kernel::RecvArm::Poll,
            RecvArm::Multishot => kernel::RecvArm::Multishot,
        };
        let pool = WorkerPool::start(&pool_cfg, move |id, io, pool| {
            let fd = listeners.lock().map_err(|_| "listener table poisoned".to_string())?[id]
                .take()
                .ok_or_else(|| format!("no listener for worker {id}"))?;
            let sessions = shared.sessions(id, &cfg, pool)?;
            let kernel_cfg = KernelConfig {
                recv,
                slots: shared.budget.limit(),
                listen: Some(Listen { fd, margin, max_rings }),
                connect: None,
            };
            KernelTransport::new(io, kernel_cfg, sessions, shared.stats[id].clone()).map_err(|e| e.to_string())
        })?;
        Ok(Server { addr, layout, pool: Pool::Kernel(pool), stats, _xdp: None })
    }

    /// The xdp data plane: the steering program on `xdp.iface`, an AF_XDP socket per worker on
    /// the RX queue of the same index, c2m's TCP on each.
    fn start_xdp(
        cfg: ServeConfig,
        xdp: XdpSettings,
        shared: Shared,
        features: Features,
    ) -> Result<Server, ServerError> {
        use crate::transport::xdp::XdpConfig;
        use crate::xdp::{Filter, Interface, XdpProgram};
        let config = |e: crate::xdp::XdpError| ServerError::Config(e.to_string());
        let SocketAddr::V4(listen) = cfg.listen else {
            return Err(ServerError::Config(
                "the xdp data plane serves IPv4 only: give --listen an IPv4 address".into(),
            ));
        };
        if listen.port() == 0 {
            return Err(ServerError::Config("the xdp data plane needs a --listen port (0 picks none)".into()));
        }
        let iface = Interface::by_name(&xdp.iface).map_err(config)?;
        let queues = iface.rx_queues().max(1);
        let workers = cfg.workers;
        let program = Arc::new(XdpProgram::load(&[Filter::TcpTo(listen)], queues).map_err(config)?);
        let link = program.attach(&iface, xdp.mode).map_err(config)?;
        let layout = Layout {
            workers,
            max_sessions: cfg.max_sessions,
            rings_per_worker: 1,
            max_rings_per_worker: 1,
            files_per_ring: 0,
            dataplane: format!("xdp on {} ({}, {} queues), c2m's TCP", iface.name(), link.mode(), queues),
            features,
        };
        let pool_cfg =
            PoolConfig { workers, name: "c2m-x", core_offset: 0, ring: crate::transport::xdp::POLL_RING, rings: 1 };
        let stats = shared.stats.clone();
        let cfg = Arc::new(cfg);
        let secret = tcp_secret();
        let pool = WorkerPool::start(&pool_cfg, {
            let program = program.clone();
            move |id, _io, pool| {
                let sessions = shared.sessions(id, &cfg, pool)?;
                let tcp = crate::tcp::Config {
                    capacity: u32::try_from(cfg.max_sessions + cfg.max_sessions / 16 + 1024).unwrap_or(u32::MAX),
                    secret,
                    ..crate::tcp::Config::default()
                };
                let xdp_cfg = XdpConfig {
                    listen: Some(listen),
                    slots: shared.budget.limit(),
                    ..XdpConfig::on_queue(&iface, &program, id as u32, tcp, xdp.fault)?
                };
                crate::transport::xdp::XdpTransport::new(xdp_cfg, sessions, shared.stats[id].clone())
                    .map_err(|e| e.to_string())
            }
        })?;
        let addr = SocketAddr::V4(listen);
        Ok(Server { addr, layout, pool: Pool::Xdp(pool), stats, _xdp: Some(link) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn stats(&self) -> Vec<Arc<WorkerStats>> {
        self.stats.clone()
    }

    /// Asks every worker to stop accepting, say BYE to its sessions, drain and exit.
    pub fn stop(&self) {
        self.pool.stop();
    }

    /// A worker that has ended, if one has: before `stop` that means it failed, and its
    /// sessions are unreachable.
    pub fn ended_worker(&self) -> Option<usize> {
        self.pool.ended()
    }

    /// Waits for every worker to finish.
    pub fn join(self) -> Result<(), ServerError> {
        let mut result = Ok(());
        for outcome in self.pool.join() {
            if let Err(e) = outcome {
                result = Err(ServerError::Engine(e));
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::BlockingClient;

    #[test]
    fn accept_queue_len_counts_connections_not_yet_accepted() {
        use crate::transport::kernel::accept_queue_len;
        use std::os::fd::AsFd;
        let socket = listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(accept_queue_len(socket.as_fd()).unwrap(), 0);
        let clients: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        assert_eq!(accept_queue_len(socket.as_fd()).unwrap(), 3);
        drop(clients);
    }
    use crate::proto::Frame;
    use std::time::Duration;

    /// The whole engine in-process (so sanitizers see every unsafe block run): accept into the
    /// fixed table, multishot receive into provided buffers, inline and slot sends, teardown,
    /// and a drain on stop.
    #[test]
    fn in_process_server_answers_and_drains() {
        let cfg = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: 1,
            max_sessions: 64,
            recv_buffers: 8,
            recv_buffer_size: 256,
            files_per_ring: Some(64),
            // Tiny queues, so the SQ backlog and CQ overflow paths run too.
            sq_entries: 4,
            cq_entries: 8,
            ..ServeConfig::default()
        };
        let server = Server::start(cfg).expect("server starts");
        let mut clients: Vec<BlockingClient> =
            (0..20).map(|_| BlockingClient::connect(server.local_addr()).unwrap()).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.login(i as u64).unwrap();
            c.send(&Frame::Ping { seq: i as u64, t_ns: 5 }).unwrap();
            let pong = c.read_frame(Duration::from_secs(5)).unwrap().unwrap();
            assert_eq!(pong.frame(), Frame::Pong { seq: i as u64, t_ns: 5 });
        }
        // Larger than a receive buffer and than the inline outbox: spans buffers, uses the slot.
        let data = vec![7u8; 3000];
        clients[0].send(&Frame::Echo { data: &data }).unwrap();
        let reply = clients[0].read_frame(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(reply.frame(), Frame::EchoReply { data: &data });
        assert!(server.layout().rings_per_worker >= 2, "64 sessions in tables of 64 files need several rings");
        drop(clients.pop());
        server.stop();
        for c in &mut clients {
            let bye = c.read_frame(Duration::from_secs(5)).unwrap().unwrap();
            assert_eq!(bye.frame(), Frame::Bye);
        }
        // The server half-closed after BYE and waits for the clients' own close.
        drop(clients);
        let stats = server.stats();
        server.join().unwrap();
        assert_eq!(stats[0].active(), 0);
        assert_eq!(stats[0].slots_in_use.get(), 0);
    }

    /// Chat across two workers in-process (so sanitizers see the MSG_RING pushes and the
    /// mailbox): users land on both workers, every message is delivered once and receipted.
    #[test]
    fn in_process_chat_routes_across_workers() {
        let cfg = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: 2,
            max_sessions: 64,
            files_per_ring: Some(64),
            users: 100,
            ..ServeConfig::default()
        };
        let server = Server::start(cfg).expect("server starts");
        let mut clients: Vec<(u64, BlockingClient)> = Vec::new();
        for user in 1..=16u64 {
            let mut c = BlockingClient::connect(server.local_addr()).unwrap();
            let session = c.login(user).unwrap();
            clients.push((session >> 48, c));
        }
        assert!(clients.iter().any(|c| c.0 == 0) && clients.iter().any(|c| c.0 == 1), "sessions on both workers");
        for (i, (_, c)) in clients.iter_mut().enumerate() {
            let to = 1 + (i as u64 + 1) % 16;
            c.send(&Frame::Send { to_user: to, msg_id: i as u64, t_ns: 1, body: b"x" }).unwrap();
        }
        let (mut acks, mut notices, mut delivers) = (0, 0, 0);
        for (_, c) in clients.iter_mut() {
            while acks + notices + delivers < 48 {
                match c.read_frame(Duration::from_millis(200)) {
                    Ok(Some(f)) => match f.frame() {
                        Frame::Ack { .. } => acks += 1,
                        Frame::ReceiptNotice { .. } => notices += 1,
                        Frame::Deliver { from_user, msg_id, .. } => {
                            delivers += 1;
                            c.send(&Frame::Receipt { from_user, msg_id }).unwrap();
                        }
                        other => panic!("{other:?}"),
                    },
                    _ => break,
                }
            }
        }
        for (_, c) in clients.iter_mut() {
            while let Ok(Some(f)) = c.read_frame(Duration::from_millis(200)) {
                match f.frame() {
                    Frame::ReceiptNotice { .. } => notices += 1,
                    Frame::Ack { .. } => acks += 1,
                    Frame::Deliver { .. } => delivers += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!((acks, delivers, notices), (16, 16, 16));
        let stats = server.stats();
        assert!(stats.iter().map(|s| s.chat.forwarded.get()).sum::<u64>() > 0);
        server.stop();
        drop(clients);
        server.join().unwrap();
    }

    /// The session limit is one budget, not a share per worker: the kernel's reuseport hash may
    /// send one worker far more than half the connections (on some boots 5,130 of 10,000), and
    /// that worker must still admit them, adding rings as its tables fill.
    #[test]
    fn one_worker_may_take_most_of_the_budget() {
        let cfg = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: 2,
            max_sessions: 150,
            files_per_ring: Some(64),
            backlog: 8,
            ..ServeConfig::default()
        };
        let server = Server::start(cfg).expect("server starts");
        let stats = server.stats();
        let start_rings = server.layout().rings_per_worker as u64;
        // Keep only the connections the hash gives worker 0; the others are closed and their
        // sessions given back, so worker 0 ends up with 140 of the 150 (an even split gives 75,
        // which its first rings hold).
        let mut kept = Vec::new();
        let mut tries = 0;
        while kept.len() < 140 {
            tries += 1;
            assert!(tries < 5000, "the hash never gave worker 0 enough connections");
            let mut c = BlockingClient::connect(server.local_addr()).unwrap();
            let session =
                c.login(tries).unwrap_or_else(|e| panic!("session {} on worker 0 refused: {e}", kept.len() + 1));
            if session >> 48 == 0 {
                kept.push(c);
            } else {
                drop(c);
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while stats[1].slots_in_use.get() > 0 {
                    assert!(std::time::Instant::now() < deadline, "worker 1 did not free its session");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        assert_eq!(stats[0].slots_in_use.get(), 140);
        assert!(stats[0].transport.rings.get() > start_rings, "worker 0 grew past its {start_rings} rings");
        // The budget is spent at 150, wherever the last ten land.
        let mut rest: Vec<BlockingClient> = (0..10)
            .map(|i| {
                let mut c = BlockingClient::connect(server.local_addr()).unwrap();
                c.login(10_000 + i).unwrap();
                c
            })
            .collect();
        let mut extra = BlockingClient::connect(server.local_addr()).unwrap();
        match extra.read_frame(Duration::from_secs(5)).unwrap().map(|f| f.0) {
            Some(bytes) => assert!(matches!(
                crate::proto::parse(&bytes, 4096),
                Ok(crate::proto::Parsed::Frame { frame: Frame::Error { code: 5, .. }, .. })
            )),
            None => panic!("closed without ERROR 5"),
        }
        drop(extra);
        rest.clear();
        drop(kept);
        server.stop();
        server.join().unwrap();
        assert_eq!(stats.iter().map(|s| s.slots_in_use.get()).sum::<u64>(), 0);
    }

    /// Small fixed-file tables force one worker to spread its sessions over several rings: each
    /// ring stops accepting near its table's end and the others take over; the slab, not a
    /// table, is what finally refuses (ERROR 5).
    #[test]
    fn sessions_spread_over_rings_until_the_slab_is_full() {
        let cfg = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: 1,
            max_sessions: 200,
            files_per_ring: Some(64),
            backlog: 8,
            ..ServeConfig::default()
        };
        let server = Server::start(cfg).expect("server starts");
        let rings = server.layout().rings_per_worker;
        assert!(rings >= 4, "200 sessions in tables of 64 need several rings, got {rings}");
        let mut clients = Vec::new();
        for user in 0..200u64 {
            let mut c = BlockingClient::connect(server.local_addr()).unwrap();
            c.login(user).unwrap_or_else(|e| panic!("session {user}: {e}"));
            clients.push(c);
        }
        let stats = server.stats();
        assert_eq!(stats[0].transport.fixed_files_in_use.get(), 200);
        let mut extra = BlockingClient::connect(server.local_addr()).unwrap();
        match extra.read_frame(Duration::from_secs(5)).unwrap().map(|f| f.0) {
            Some(bytes) => assert!(matches!(
                crate::proto::parse(&bytes, 4096),
                Ok(crate::proto::Parsed::Frame { frame: Frame::Error { code: 5, .. }, .. })
            )),
            None => panic!("closed without ERROR 5"),
        }
        drop(extra);
        drop(clients);
        server.stop();
        server.join().unwrap();
        assert_eq!(stats[0].slots_in_use.get(), 0);
        assert_eq!(stats[0].transport.fixed_files_in_use.get(), 0);
    }

    fn refused(cfg: ServeConfig) -> String {
        match cfg.validate() {
            Err(ServerError::Config(m)) => m,
            other => panic!("accepted: {other:?}"),
        }
    }

    /// Every value that once panicked, wrapped or started a server that could not serve is
    /// refused, naming its flag and range.
    #[test]
    fn values_out_of_range_are_refused_naming_flag_and_range() {
        let base = || ServeConfig { workers: 1, max_sessions: 16, ..ServeConfig::default() };
        assert!(base().validate().is_ok());
        // 16 x 2^60 once wrapped to a zero-byte slab.
        let m = refused(ServeConfig { session_bytes: 1 << 60, ..base() });
        assert!(m.starts_with("--session-bytes") && m.contains("8192..=1073741824"), "{m}");
        let m = refused(ServeConfig { max_sessions: 1 << 32, ..base() });
        assert_eq!(m, "--max-sessions must be in 1..=4294967295");
        let m = refused(ServeConfig { workers: 255, max_sessions: 4_000_000_000, ..base() });
        assert!(
            m.starts_with("--max-sessions 4000000000 x --session-bytes 40960 x --workers 255")
                && m.contains("64.0 TiB"),
            "{m}"
        );
        let m = refused(ServeConfig { workers: 256, ..base() });
        assert!(m.starts_with("--workers must be in 1..=255"), "{m}");
        let m = refused(ServeConfig {
            offline: offline::OfflineLimits { ttl: Duration::from_secs(87_601 * 3600), ..Default::default() },
            ..base()
        });
        assert_eq!(m, "--offline-ttl must be in 0s..=87600h");
        assert!(
            refused(ServeConfig { recv_buffer_size: 0, ..base() }).starts_with("--recv-buffer-size must be in 64..=")
        );
        assert!(refused(ServeConfig { files_per_ring: Some(u32::MAX), ..base() }).contains("64..=1048576"));
        assert!(refused(ServeConfig { heartbeat_ms: 0, ..base() }).starts_with("--heartbeat must be in 1ms..="));
        assert!(
            refused(ServeConfig { hello_timeout_ms: 0, ..base() }).starts_with("--hello-timeout must be in 1ms..=")
        );
        assert!(
            refused(ServeConfig { backlog: u32::MAX, ..base() }).starts_with("--backlog must be in 0..=2147483647")
        );
        assert!(
            refused(ServeConfig { users: (1 << 32) + 1, ..base() }).starts_with("--users must be in 0..=4294967296")
        );
        assert!(refused(ServeConfig { groups: 1 << 63, ..base() }).starts_with("--groups must be below 2^63"));
        // The largest that is accepted is still accepted.
        let edge = ServeConfig { session_bytes: MAX_SESSION_BYTES, users: 1 << 32, backlog: i32::MAX as u32, ..base() };
        assert!(edge.validate().is_ok());
    }

    proptest::proptest! {
        /// Whatever the numbers, validate answers (no overflow, no panic), and what it accepts
        /// fits the address space and the slab's u32 slot count.
        #[test]
        fn validate_never_panics(
            workers in 0usize..300,
            max_sessions in proptest::prelude::any::<usize>(),
            session_bytes in proptest::prelude::any::<usize>(),
            max_frame in 0usize..100_000,
        ) {
            let cfg = ServeConfig { workers, max_sessions, session_bytes, max_frame, ..ServeConfig::default() };
            if cfg.validate().is_ok() {
                proptest::prop_assert!(cfg.slab_address_space() <= MAX_SLAB_ADDRESS_SPACE as u128);
                proptest::prop_assert!(max_sessions <= u32::MAX as usize && session_bytes <= MAX_SESSION_BYTES);
            }
        }
    }

    #[test]
    fn warns_when_full_slots_could_outgrow_the_box() {
        let cfg = ServeConfig {
            max_sessions: 1_000_000,
            session_bytes: 40 * 1024,
            slot_budget: 64 << 30,
            ..ServeConfig::default()
        };
        // 1M x (40 KiB + a 128-byte header): the budget is larger than every slot.
        assert_eq!(cfg.memory_if_every_slot_filled(), 1_000_000 * (40 * 1024 + 128));
        let w = cfg.memory_warning(24 << 30).unwrap();
        assert!(
            w.contains("--max-sessions 1,000,000") && w.contains("38.3 GiB") && w.contains("MemTotal of 24.0 GiB"),
            "{w}"
        );
        assert_eq!(cfg.memory_warning(64 << 30), None);
        // The default budget caps replies at 4 GiB: headers and partial frames (4.2 KB a
        // session) plus 4 GiB fit the box.
        let cfg = ServeConfig { max_sessions: 1_000_000, ..ServeConfig::default() };
        assert_eq!(cfg.memory_if_every_slot_filled(), 1_000_000 * (128 + 4096) + (4 << 30));
        assert_eq!(cfg.memory_warning(24 << 30), None);
    }
}

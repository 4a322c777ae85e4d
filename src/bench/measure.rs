//! The `loaded` measurement while the connections are held, and memory per connection from it.

use crate::host::process::ProcessMemory;
use crate::host::{HostError, memory, process};
use crate::schema::bench::{PerConnection, SystemMemory};

/// System and both processes' memory at one moment with `established` connections up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Held {
    pub memory: SystemMemory,
    pub established: u64,
    pub server: ProcessMemory,
    pub load: ProcessMemory,
    /// The server's own count of open sessions then (`None` if its /metrics did not answer).
    pub server_sessions: Option<u64>,
    /// The kernel's established sockets on the server's port then, both ends.
    pub kernel_sockets: Option<u64>,
    /// The xdp data plane: the server's TCP connections then (c2m's TCP, not the kernel's).
    pub xdp_connections: Option<u64>,
}

/// Measures now; `t` is seconds since the bench started.
pub fn take(t: f64, established: u64, server_pid: u32, load_pid: u32) -> Result<Held, HostError> {
    Ok(Held {
        memory: memory::system_memory(t)?,
        established,
        server: process::memory(server_pid)?,
        load: process::memory(load_pid)?,
        server_sessions: None,
        kernel_sockets: None,
        xdp_connections: None,
    })
}

/// Per connection, from `baseline` (taken before either process started, memory settled) to
/// `held`. Neither process existed at the baseline, so both count the same way: all of their
/// anonymous memory is growth, start-up included; `server_user` and `load_user` leave their
/// start-up out (RSS growth from just before their first connection). The floor is what MemFree
/// must have lost at least: Slab growth plus both processes' anonymous memory. Zero everywhere
/// when no connection was up.
pub fn per_connection(
    baseline: &SystemMemory,
    server_rss_start: u64,
    load_rss_start: u64,
    held: &Held,
) -> PerConnection {
    if held.established == 0 {
        return PerConnection::default();
    }
    let n = held.established as f64;
    let delta = |after: u64, before: u64| after as f64 - before as f64;
    let free_drop = delta(baseline.mem_free, held.memory.mem_free);
    let slab = delta(held.memory.slab, baseline.slab);
    let user = (held.server.anon + held.load.anon) as f64;
    let total_floor = (slab + user) / n;
    let total = free_drop / n;
    PerConnection {
        server_user: delta(held.server.rss, server_rss_start) / n,
        load_user: delta(held.load.rss, load_rss_start) / n,
        kernel_slab: slab / n,
        kernel_unreclaimable: delta(held.memory.slab_unreclaimable, baseline.slab_unreclaimable) / n,
        tcp_buffers: delta(held.memory.tcp_mem_bytes, baseline.tcp_mem_bytes) / n,
        kernel_total: (free_drop - user) / n,
        total,
        total_floor,
        below_floor: total < total_floor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_parts() {
        let baseline = SystemMemory {
            mem_free: 10_000_000_000,
            slab: 100_000_000,
            slab_unreclaimable: 50_000_000,
            tcp_mem_bytes: 4096,
            ..Default::default()
        };
        let held = Held {
            memory: SystemMemory {
                mem_free: 10_000_000_000 - 1_000_000_000,
                slab: 100_000_000 + 800_000_000,
                slab_unreclaimable: 50_000_000 + 600_000_000,
                tcp_mem_bytes: 4096 + 409_600,
                ..Default::default()
            },
            established: 100_000,
            server: ProcessMemory { rss: 30_000_000, pss: 0, anon: 25_000_000 },
            load: ProcessMemory { rss: 60_000_000, pss: 0, anon: 55_000_000 },
            server_sessions: Some(100_000),
            kernel_sockets: Some(200_000),
            xdp_connections: None,
        };
        let p = per_connection(&baseline, 10_000_000, 20_000_000, &held);
        assert_eq!(p.server_user, 200.0);
        assert_eq!(p.load_user, 400.0);
        assert_eq!(p.kernel_slab, 8_000.0);
        assert_eq!(p.kernel_unreclaimable, 6_000.0);
        assert_eq!(p.tcp_buffers, 4.096);
        assert_eq!(p.total, 10_000.0);
        // 1 GB dropped - 80 MB of both processes' anonymous memory = 920 MB.
        assert_eq!(p.kernel_total, 9_200.0);
        // 800 MB slab + 80 MB anonymous.
        assert_eq!(p.total_floor, 8_800.0);
        assert!(!p.below_floor);
        assert_eq!(p.headline(), 10_000.0);
        // MemFree fell by less than the slab grew: page cache came back meanwhile.
        let mut given_back = held.clone();
        given_back.memory.mem_free = 10_000_000_000 - 500_000_000;
        let p = per_connection(&baseline, 10_000_000, 20_000_000, &given_back);
        assert!(p.below_floor && p.total == 5_000.0);
        assert_eq!(p.headline(), 8_800.0);
        let none = Held { established: 0, ..held };
        assert_eq!(per_connection(&baseline, 0, 0, &none), PerConnection::default());
    }
}

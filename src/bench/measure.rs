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
}

/// Measures now; `t` is seconds since the bench started.
pub fn take(t: f64, established: u64, server_pid: u32, load_pid: u32) -> Result<Held, HostError> {
    Ok(Held {
        memory: memory::system_memory(t)?,
        established,
        server: process::memory(server_pid)?,
        load: process::memory(load_pid)?,
    })
}

/// Per connection, from `baseline` (taken with the server up and the load not yet started) to
/// `held`. The load did not exist at the baseline, so all of its RSS is growth; its
/// `load_rss_start` only separates its start-up from what its connections cost (`load_user`).
/// Zero everywhere when no connection was up.
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
    let server_growth = delta(held.server.rss, server_rss_start);
    let free_drop = delta(baseline.mem_free, held.memory.mem_free);
    PerConnection {
        server_user: server_growth / n,
        load_user: delta(held.load.rss, load_rss_start) / n,
        kernel_slab: delta(held.memory.slab, baseline.slab) / n,
        kernel_unreclaimable: delta(held.memory.slab_unreclaimable, baseline.slab_unreclaimable) / n,
        tcp_buffers: delta(held.memory.tcp_mem_bytes, baseline.tcp_mem_bytes) / n,
        kernel_total: (free_drop - server_growth - held.load.rss as f64) / n,
        total: free_drop / n,
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
            server: ProcessMemory { rss: 30_000_000, pss: 0 },
            load: ProcessMemory { rss: 60_000_000, pss: 0 },
        };
        let p = per_connection(&baseline, 10_000_000, 20_000_000, &held);
        assert_eq!(p.server_user, 200.0);
        assert_eq!(p.load_user, 400.0);
        assert_eq!(p.kernel_slab, 8_000.0);
        assert_eq!(p.kernel_unreclaimable, 6_000.0);
        assert_eq!(p.tcp_buffers, 4.096);
        assert_eq!(p.total, 10_000.0);
        // 1 GB dropped - 20 MB server growth - 60 MB load = 920 MB.
        assert_eq!(p.kernel_total, 9_200.0);
        let none = Held { established: 0, ..held };
        assert_eq!(per_connection(&baseline, 0, 0, &none), PerConnection::default());
    }
}

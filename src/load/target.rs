//! Where a load goes and where it comes from on a real network: the target resolved from a host
//! name, the source address the kernel would route from towards it (the default for a remote
//! target; a loopback target keeps the 127.0.1.x plan of [`super::sources`]), and a check that
//! given source addresses are this host's own, before any connect fails with EADDRNOTAVAIL.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

use super::sources::PortPlan;
use crate::units::thousands;

/// The port a target without one gets: `c2m serve`'s default.
pub const DEFAULT_PORT: u16 = 7700;

/// `host:port`, `[v6]:port`, an address, or a bare host (port [`DEFAULT_PORT`]); a name is
/// resolved, IPv4 first when it has both.
pub fn resolve(spec: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = spec.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = if spec.contains(':') { spec.to_string() } else { format!("{spec}:{DEFAULT_PORT}") };
    let found: Vec<SocketAddr> =
        with_port.to_socket_addrs().map_err(|e| format!("--server {spec:?}: cannot resolve it: {e}"))?.collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("--server {spec:?}: the name has no address"))
}

/// The address the kernel picks as source towards `target` (its routing decision; a UDP
/// connect sends nothing).
pub fn route_source(target: SocketAddr) -> Result<IpAddr, String> {
    let any: SocketAddr = if target.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }.expect("literal");
    let no_route = |e: std::io::Error| format!("no route from this host to {target}: {e} (pass --sources)");
    let probe = UdpSocket::bind(any).map_err(no_route)?;
    probe.connect(target).map_err(no_route)?;
    Ok(probe.local_addr().map_err(no_route)?.ip())
}

/// Every source address the plan uses for `connections` is one this host can bind (a bind to
/// port 0 fails with EADDRNOTAVAIL for an address that is not local).
pub fn check_local(plan: &PortPlan, connections: u64) -> Result<(), String> {
    let used = connections.div_ceil(plan.ports_per_address().max(1)).min(plan.sources.len());
    for i in 0..used {
        let Some(ip) = plan.sources.nth(i) else { break };
        if let Err(e) = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).map(drop) {
            return Err(match e.raw_os_error() {
                Some(libc::EADDRNOTAVAIL) => format!(
                    "--sources: {ip} is not an address of this host (`ip -br addr` lists them; add it with \
                     `ip addr add {ip}/32 dev IFACE`, or leave --sources out to use the route's source)"
                ),
                _ => format!("--sources: cannot bind {ip}: {e}"),
            });
        }
    }
    Ok(())
}

/// One line for the start of a run: where it goes, from which addresses and ports, and how many
/// connections that plan has room for.
pub fn describe(target: SocketAddr, plan: &PortPlan, specs: &[String], connections: u64) -> String {
    let per = plan.ports_per_address();
    format!(
        "c2m load: {} connections to {target} from {} ({} address{}) x ports {}-{} ({} each): room for {} connections",
        thousands(connections),
        specs.join(","),
        thousands(plan.sources.len()),
        if plan.sources.len() == 1 { "" } else { "es" },
        plan.first_port,
        plan.last_port,
        thousands(per),
        thousands(plan.capacity())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::sources::Sources;

    #[test]
    fn names_addresses_and_bare_hosts_resolve() {
        assert_eq!(resolve("127.0.0.1:7701"), Ok("127.0.0.1:7701".parse().unwrap()));
        assert_eq!(resolve("127.0.0.1"), Ok("127.0.0.1:7700".parse().unwrap()));
        assert_eq!(resolve("[::1]"), Ok("[::1]:7700".parse().unwrap()));
        let local = resolve("localhost:7702").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 7702, "{local}");
        assert_eq!(resolve("localhost").unwrap().port(), DEFAULT_PORT);
        let err = resolve("no-such-host.invalid:7700").unwrap_err();
        assert!(err.contains("--server") && err.contains("cannot resolve"), "{err}");
    }

    #[test]
    fn the_route_to_loopback_starts_on_loopback() {
        assert_eq!(route_source("127.0.0.1:7700".parse().unwrap()), Ok("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn sources_must_be_this_hosts() {
        let plan = |spec: &str| PortPlan {
            sources: Sources::parse(spec).unwrap(),
            first_port: 10000,
            last_port: 10009,
            skip_port: None,
        };
        assert_eq!(check_local(&plan("127.0.0.2-127.0.0.9"), 80), Ok(()));
        // 198.51.100.0/24 is TEST-NET-2: documentation only, never a host's address.
        let err = check_local(&plan("127.0.0.2,198.51.100.7"), 20).unwrap_err();
        assert!(err.contains("198.51.100.7 is not an address of this host"), "{err}");
        // Only the addresses the run uses are checked.
        assert_eq!(check_local(&plan("127.0.0.2,198.51.100.7"), 10), Ok(()));
    }
}

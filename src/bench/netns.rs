//! The test topology of an xdp run: `scripts/netns.sh` (built into the binary, so any working
//! directory will do) makes two network namespaces joined by a veth pair for the run, and they go
//! when it ends, whatever way it ends. Names carry the bench's PID, so two runs never share them.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};

const SCRIPT: &str = include_str!("../../scripts/netns.sh");

/// The server's address (c2m-s0's in scripts/netns.sh): 198.18.0.0/15 is for benchmarks, and it
/// exists only inside the run's namespaces.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// The two namespaces of one run, removed on drop.
pub struct XdpTopology {
    pub server_ns: String,
    pub client_ns: String,
    pub server_iface: String,
    pub client_iface: String,
    down: bool,
}

impl XdpTopology {
    /// Makes them: root and iproute2 needed (the script says what is missing).
    pub fn up() -> anyhow::Result<XdpTopology> {
        let pid = std::process::id();
        let mut t = XdpTopology {
            server_ns: format!("c2mb-{pid}-srv"),
            client_ns: format!("c2mb-{pid}-cli"),
            // An interface name has 15 characters at most.
            server_iface: format!("c2mb{pid}s"),
            client_iface: format!("c2mb{pid}c"),
            down: false,
        };
        if let Err(e) = t.script("up") {
            t.down = true;
            let _ = t.script("down");
            return Err(e.context("making the xdp run's network namespaces (scripts/netns.sh up)"));
        }
        Ok(t)
    }

    fn script(&self, verb: &str) -> anyhow::Result<()> {
        let out = Command::new("bash")
            .arg("-c")
            .arg(SCRIPT)
            .arg("netns.sh")
            .arg(verb)
            .env("C2M_NS_SRV", &self.server_ns)
            .env("C2M_NS_CLI", &self.client_ns)
            .env("C2M_VETH_SRV", &self.server_iface)
            .env("C2M_VETH_CLI", &self.client_iface)
            .output()
            .context("running bash")?;
        if !out.status.success() {
            bail!("netns.sh {verb}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Removes them now (also done on drop).
    pub fn down(&mut self) -> anyhow::Result<()> {
        if std::mem::replace(&mut self.down, true) {
            return Ok(());
        }
        self.script("down")
    }

    /// `c2m serve`'s data plane flags.
    pub fn server_args(&self) -> Vec<String> {
        let listen_ns = ["--dataplane", "xdp", "--iface", &self.server_iface, "--netns", &self.server_ns];
        listen_ns.iter().map(|s| s.to_string()).collect()
    }

    /// `c2m load`'s data plane flags.
    pub fn load_args(&self) -> Vec<String> {
        let flags = ["--dataplane", "xdp", "--iface", &self.client_iface, "--netns", &self.client_ns];
        flags.iter().map(|s| s.to_string()).collect()
    }
}

impl Drop for XdpTopology {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("c2m bench: {e:#}");
        }
    }
}

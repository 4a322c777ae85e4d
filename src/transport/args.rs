//! The data plane flags `c2m serve` and `c2m load` share, and what they resolve to.

use crate::tcp::FaultConfig;
use crate::xdp::XdpMode;

/// The data planes (see the module docs of `crate::transport`).
#[derive(Clone, Debug, Default)]
pub enum DataPlane {
    /// io_uring over kernel TCP sockets.
    #[default]
    Kernel,
    /// AF_XDP and c2m's own TCP.
    Xdp(XdpSettings),
}

#[derive(Clone, Debug)]
pub struct XdpSettings {
    pub iface: String,
    pub mode: XdpMode,
    /// Faults on received frames (a test option).
    pub fault: Option<FaultConfig>,
}

/// A data plane by name: the flag's value, a scenario's `dataplane` key, a result's field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPlaneName {
    #[default]
    Kernel,
    Xdp,
}

impl DataPlaneName {
    pub fn as_str(self) -> &'static str {
        match self {
            DataPlaneName::Kernel => "kernel",
            DataPlaneName::Xdp => "xdp",
        }
    }
}

impl std::fmt::Display for DataPlaneName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DataPlane {
    pub fn name(&self) -> DataPlaneName {
        match self {
            DataPlane::Kernel => DataPlaneName::Kernel,
            DataPlane::Xdp(_) => DataPlaneName::Xdp,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeName {
    Auto,
    Native,
    Generic,
}

/// `--dataplane`, `--iface`, `--xdp-mode`, `--xdp-fault`, `--netns`.
#[derive(Clone, Debug, clap::Args)]
pub struct DataPlaneArgs {
    /// The data plane: kernel (io_uring over kernel TCP sockets) or xdp (AF_XDP and c2m's own
    /// TCP on --iface; run it in the namespace that holds the interface, e.g. --netns c2m-srv).
    #[arg(long, value_enum, default_value = "kernel")]
    pub dataplane: DataPlaneName,
    /// The interface of the xdp data plane (`scripts/netns.sh up` makes c2m-s0 in c2m-srv and
    /// c2m-c0 in c2m-cli).
    #[arg(long)]
    pub iface: Option<String>,
    /// How the xdp steering program attaches: native (driver), generic (skb), or auto.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: XdpModeName,
    /// Faults on the frames the xdp data plane receives, per mille (a test option: netem is not
    /// built into this kernel), e.g. drop=20,reorder=30,duplicate=5,corrupt=5,delay=10.
    #[arg(long)]
    pub xdp_fault: Option<FaultConfig>,
    /// Run inside this network namespace (the listener, interface or sources are there; a
    /// metrics endpoint stays in the namespace c2m was started in).
    #[arg(long)]
    pub netns: Option<String>,
}

impl DataPlaneArgs {
    pub fn dataplane(&self) -> Result<DataPlane, String> {
        let mode = match self.xdp_mode {
            XdpModeName::Auto => XdpMode::Auto,
            XdpModeName::Native => XdpMode::Native,
            XdpModeName::Generic => XdpMode::Generic,
        };
        match (self.dataplane, &self.iface) {
            (DataPlaneName::Kernel, _) => Ok(DataPlane::Kernel),
            (DataPlaneName::Xdp, Some(iface)) => {
                Ok(DataPlane::Xdp(XdpSettings { iface: iface.clone(), mode, fault: self.xdp_fault }))
            }
            (DataPlaneName::Xdp, None) => {
                Err("--dataplane xdp needs --iface (c2m-s0 for a server in c2m-srv, c2m-c0 for a load in c2m-cli)"
                    .into())
            }
        }
    }
}

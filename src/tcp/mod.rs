//! c2m's own TCP for the AF_XDP data plane: sans-IO (no sockets, no clock: frames and the time
//! come in as arguments), a subset of RFC 9293 that interoperates with Linux, and memory made for
//! millions of connections: a 64-byte control block in a dense array, a 4-8 byte hash index, a
//! 12-byte timer wheel link, no buffer held by any connection (output lives in the owner's queue
//! until acknowledged; input goes straight to the owner), no scan over connections anywhere.
//!
//! - `wire`: Ethernet II + IPv4 + TCP parse and build, checksums.
//! - `seq`: sequence-number arithmetic.
//! - `tcb`: the control block, its states, its RTT estimator.
//! - `table`: 4-tuple -> slot, fixed capacity.
//! - `listen`: SYN-RECEIVED queue and SYN cookies.
//! - `endpoint` (+ `input`, `output`): the object a data plane drives.
//! - `fault`: a deterministic fault injector for tests and the data plane's test option.

pub mod endpoint;
pub mod fault;
mod input;
pub mod listen;
mod output;
pub mod seq;
pub mod table;
pub mod tcb;
pub mod wire;

#[cfg(test)]
mod endpoint_tests;

pub use endpoint::{App, CloseCause, Config, ConnectError, Endpoint, MemoryUse, TcbId, TcpStats, Tx};
pub use fault::{FaultConfig, FaultInjector, FaultStats};
pub use tcb::State;

//! c2m: hold millions of TCP connections on one Linux box and measure what that costs.
pub mod bench;
pub mod client;
pub mod engine;
pub mod host;
pub mod load;
pub mod proto;
pub mod results;
pub mod schema;
pub mod server;
pub mod slab;
pub mod stats;
pub mod tcp;
pub mod transport;
pub mod tune;
pub mod units;
pub mod xdp;

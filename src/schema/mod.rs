//! Every result type c2m writes or reads: the load generator's report, a `c2m bench` result,
//! a `c2m bench --peers` result and a `c2m bench --ab` result. A leaf: it depends on no other c2m module, and every module that
//! produces, reads or renders results depends on it, never on each other.

pub mod ab;
pub mod bench;
pub mod histogram;
pub mod load;
pub mod peers;

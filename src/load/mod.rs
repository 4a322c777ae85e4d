//! `c2m load`: the load generator, a second user of the engine.

pub mod report;

//! The report built from every committed result: results/REPORT.md and its SVG charts; and
//! `c2m results merge`, the report of a run from its shards' reports; `c2m results soak`, a
//! soak's verdict. The result types
//! themselves are in `crate::schema`.

pub mod ab_report;
pub mod chart;
pub mod checks;
pub mod files;
pub mod merge;
pub mod peers_table;
pub mod report;
pub mod soak;

//! The report built from every committed result: results/REPORT.md and its SVG charts. The
//! result types themselves are in `crate::schema`.

pub mod ab_report;
pub mod chart;
pub mod checks;
pub mod files;
pub mod peers_table;
pub mod report;

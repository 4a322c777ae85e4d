//! Result files on disk: finding and reading the c2m-bench-result files under results/.

use std::path::{Path, PathBuf};

use crate::schema::bench::{BenchResult, SCHEMA_NAME};
use crate::schema::load::RunStatus;
use crate::transport::DataPlaneName;

/// The complete c2m-bench-result under `dir` (two levels down) on the kernel data plane with the
/// most connections held (at least `min`), the newest of equals. Files that are not bench results
/// are skipped.
pub fn largest_result(dir: &Path, min: u64) -> Option<(PathBuf, BenchResult)> {
    largest_result_on(dir, min, DataPlaneName::Kernel)
}

/// [`largest_result`] among the runs on data plane `plane` (a connection's cost differs by
/// tens of times between them).
pub fn largest_result_on(dir: &Path, min: u64, plane: DataPlaneName) -> Option<(PathBuf, BenchResult)> {
    let mut best: Option<(PathBuf, BenchResult)> = None;
    for path in json_files(dir, 2) {
        let Ok(result) = read_result(&path) else { continue };
        let n = result.memory.connections;
        if result.status != RunStatus::Complete || n < min.max(1) || result.dataplane != plane {
            continue;
        }
        let key = (n, result.started_utc.clone());
        if best.as_ref().is_none_or(|(_, b)| key > (b.memory.connections, b.started_utc.clone())) {
            best = Some((path, result));
        }
    }
    best
}

/// The .json files under `dir`, `depth` levels down at most.
fn json_files(dir: &Path, depth: u32) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && depth > 0 {
            out.extend(json_files(&path, depth - 1));
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    out
}

/// Reads a c2m-bench-result file; the error says why it is not one.
pub fn read_result(path: &Path) -> Result<BenchResult, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if value.get("schema").and_then(|s| s.as_str()) != Some(SCHEMA_NAME) {
        return Err(format!("not a {SCHEMA_NAME}"));
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

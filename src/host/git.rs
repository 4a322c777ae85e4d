//! The git commit a run was made from.

use std::path::Path;
use std::process::Command;

/// `git rev-parse HEAD` in `dir`, with `-dirty` when `git status --porcelain` lists changes;
/// `unknown` when git fails (not a checkout, no git installed).
pub fn commit(dir: &Path) -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "HEAD"]).filter(|h| !h.is_empty()) else {
        return "unknown".into();
    };
    match git(&["status", "--porcelain"]) {
        Some(changes) if !changes.is_empty() => format!("{head}-dirty"),
        Some(_) => head,
        None => format!("{head}-dirty"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_checkout_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(commit(dir.path()), "unknown");
    }

    #[test]
    fn this_checkout_has_a_hash() {
        let c = commit(Path::new(env!("CARGO_MANIFEST_DIR")));
        if c != "unknown" {
            assert!(c.len() >= 40 && c[..40].chars().all(|ch| ch.is_ascii_hexdigit()), "{c}");
        }
    }
}

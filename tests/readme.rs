//! The README's short examples run as written: every ```sh block right after a
//! `<!-- readme-example -->` line is run by bash (`-e`, with the built `c2m` first on PATH, in an
//! empty directory, so nothing of the checkout is needed), and must exit 0 in time. Longer runs
//! (millions of connections, remote servers, root) stay unmarked.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MARK: &str = "<!-- readme-example -->";

/// The marked blocks of `text`, each with the line it starts on.
fn marked_blocks(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != MARK {
            continue;
        }
        assert_eq!(
            lines.get(i + 1).map(|l| l.trim()),
            Some("```sh"),
            "README line {}: a mark needs a ```sh block",
            i + 1
        );
        let body: Vec<&str> = lines[i + 2..].iter().take_while(|l| l.trim() != "```").copied().collect();
        blocks.push((i + 3, body.join("\n")));
    }
    blocks
}

#[test]
fn the_readmes_short_examples_run_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks = marked_blocks(&readme);
    assert!(blocks.len() >= 4, "only {} marked examples", blocks.len());
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_c2m")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    for (line, block) in blocks {
        let dir = tempfile::tempdir().unwrap();
        // A background server of an example is stopped (by its job's PID) whatever happens.
        let script = format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{block}\n");
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .env("PATH", &path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "README example at line {line} failed ({}):\n{block}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

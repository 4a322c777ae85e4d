//! Embeds the commit the binary is built from, and whether the tree had changes, so that a
//! result names the code that produced it (not the directory it happened to be written from).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"]).filter(|h| !h.is_empty()).unwrap_or_else(|| "unknown".into());
    // Only what the binary is built from; untracked files count (a module not yet added).
    let dirty = match git(&["status", "--porcelain", "--", "src", "build.rs", "Cargo.toml", "Cargo.lock"]) {
        Some(changes) => {
            if changes.is_empty() {
                "false"
            } else {
                "true"
            }
        }
        None => "unknown",
    };
    println!("cargo:rustc-env=C2M_GIT_COMMIT={commit}");
    // How it was compiled, for results that compare it with other programs.
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| "?".into());
    let rustc = Command::new(env("RUSTC"))
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "rustc ?".into());
    println!(
        "cargo:rustc-env=C2M_BUILD={rustc}, cargo profile {}, opt-level {}, debug {}, target {}",
        env("PROFILE"),
        env("OPT_LEVEL"),
        env("DEBUG"),
        env("TARGET")
    );
    println!("cargo:rustc-env=C2M_GIT_DIRTY={dirty}");
    // Rebuilt when HEAD moves, the index changes or a source does (a change makes it dirty).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        println!("cargo:rerun-if-changed={common}/refs");
    }
    for path in ["src", "build.rs", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={path}");
    }
}

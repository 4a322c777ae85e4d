//! The servers to compare: c2m itself, then the peers of `bench/peers/peers.toml`, each with the
//! program that runs it or the reason it cannot be run.
//!
//! The manifest lists one table per peer, `[[peer]]` (or `[[peers]]`, or `[peers.NAME]`), with
//! `name`, `bin`, `description`, `fd_per_connection` and `version_file`; `bin` and
//! `version_file` are relative to the checkout the manifest is in (`bench/peers/bin/tokio`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The manifest, relative to a checkout.
pub const PEERS_DIR: &str = "bench/peers";
pub const MANIFEST_FILE: &str = "peers.toml";
/// The order of a full run (`--peers` with no names).
pub const DEFAULT_ORDER: &[&str] = &["c2m", "tokio", "erlang", "epoll-c", "monoio"];

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// One peer as the manifest describes it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PeerEntry {
    pub name: String,
    pub bin: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub fd_per_connection: bool,
    #[serde(default)]
    pub version_file: Option<String>,
    /// A file whose first line says how it was built (compiler, flags, profile).
    #[serde(default)]
    pub build_file: Option<String>,
}

/// How a server is started.
#[derive(Clone, Debug, PartialEq)]
pub enum Launch {
    /// `c2m serve`, from this executable.
    C2m,
    /// A peer binary speaking the contract: `--listen IP:PORT --workers N`, `READY` on stdout.
    Peer,
}

/// A server the run was asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    pub name: String,
    pub description: String,
    pub bin: PathBuf,
    pub version: String,
    /// How it was built: compiler, flags, profile.
    pub build: String,
    pub fd_per_connection: bool,
    pub launch: Launch,
    /// Why it cannot run (not in the manifest, not built); `None` when it can.
    pub missing: Option<String>,
}

/// Where `bench/peers` is looked up: under the current directory, then in the checkout the
/// executable was built in (`target/release/c2m`'s `../../..`).
pub fn peers_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(PEERS_DIR)];
    if let Some(root) =
        std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
    {
        dirs.push(root.join(PEERS_DIR));
    }
    dirs
}

/// Parses a manifest's text.
pub fn parse(text: &str, path: &Path) -> Result<Vec<PeerEntry>, ManifestError> {
    let err = |message: String| ManifestError::Parse { path: path.to_path_buf(), message };
    let value: toml::Table = toml::from_str(text).map_err(|e| err(e.to_string()))?;
    let mut entries = Vec::new();
    for key in ["peer", "peers"] {
        match value.get(key) {
            Some(toml::Value::Array(list)) => {
                for item in list {
                    entries.push(item.clone().try_into::<PeerEntry>().map_err(|e| err(format!("[[{key}]]: {e}")))?);
                }
            }
            Some(toml::Value::Table(by_name)) => {
                for (name, item) in by_name {
                    let mut table =
                        item.as_table().cloned().ok_or_else(|| err(format!("[{key}.{name}] is not a table")))?;
                    table.entry("name").or_insert_with(|| toml::Value::String(name.clone()));
                    entries.push(
                        toml::Value::Table(table)
                            .try_into::<PeerEntry>()
                            .map_err(|e| err(format!("[{key}.{name}]: {e}")))?,
                    );
                }
            }
            Some(_) => return Err(err(format!("{key:?} is neither a list of tables nor a table"))),
            None => {}
        }
    }
    if entries.iter().any(|e| e.name.is_empty()) {
        return Err(err("a peer has no name".into()));
    }
    Ok(entries)
}

/// The manifest found in [`peers_dirs`], parsed, with its folder; `None` when there is none.
pub fn load() -> Result<Option<(PathBuf, Vec<PeerEntry>)>, ManifestError> {
    for dir in peers_dirs() {
        let path = dir.join(MANIFEST_FILE);
        if path.is_file() {
            let text =
                std::fs::read_to_string(&path).map_err(|source| ManifestError::Read { path: path.clone(), source })?;
            return Ok(Some((dir, parse(&text, &path)?)));
        }
    }
    Ok(None)
}

/// The names asked for: the given comma-separated list, or c2m and every peer (the default
/// order first, then any others the manifest has).
pub fn asked(names: Option<&str>, entries: &[PeerEntry]) -> Vec<String> {
    let mut out: Vec<String> = match names {
        Some(list) => list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        None => {
            let mut all: Vec<String> = DEFAULT_ORDER.iter().map(|s| s.to_string()).collect();
            all.extend(entries.iter().map(|e| e.name.clone()).filter(|n| !DEFAULT_ORDER.contains(&n.as_str())));
            all
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|n| seen.insert(n.clone()));
    out
}

/// Resolves each name to a server; c2m is `c2m_exe serve`. A peer that is not in the manifest
/// or whose program is not built is returned with `missing` set, never dropped.
pub fn resolve(names: &[String], manifest: Option<&(PathBuf, Vec<PeerEntry>)>, c2m_exe: &Path) -> Vec<Server> {
    names
        .iter()
        .map(|name| {
            if name == "c2m" {
                return Server {
                    name: "c2m".into(),
                    description: "c2m serve: thread-per-core io_uring, direct descriptors".into(),
                    bin: c2m_exe.to_path_buf(),
                    // The commit this binary was built from, not the one the run is started in.
                    version: format!(
                        "{} {}",
                        env!("CARGO_PKG_VERSION"),
                        crate::schema::bench::Build::this_binary().short()
                    ),
                    build: env!("C2M_BUILD").into(),
                    fd_per_connection: false,
                    launch: Launch::C2m,
                    missing: None,
                };
            }
            let Some((dir, entries)) = manifest else {
                return unavailable(name, format!("no {PEERS_DIR}/{MANIFEST_FILE} (looked in {:?})", peers_dirs()));
            };
            let Some(entry) = entries.iter().find(|e| &e.name == name) else {
                return unavailable(name, format!("{name:?} is not in {}", dir.join(MANIFEST_FILE).display()));
            };
            // The manifest is <checkout>/bench/peers/peers.toml; its paths start at <checkout>.
            let root = dir.parent().and_then(Path::parent).unwrap_or(dir);
            let bin = root.join(&entry.bin);
            let first_line = |file: &Option<String>| {
                file.as_ref()
                    .and_then(|f| std::fs::read_to_string(root.join(f)).ok())
                    .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
                    .unwrap_or_else(|| "unknown".into())
            };
            let (version, build) = (first_line(&entry.version_file), first_line(&entry.build_file));
            let missing =
                (!is_executable(&bin)).then(|| format!("{} is not built (no executable there)", bin.display()));
            Server {
                name: name.clone(),
                description: entry.description.clone(),
                bin,
                version,
                build,
                fd_per_connection: entry.fd_per_connection,
                launch: Launch::Peer,
                missing,
            }
        })
        .collect()
}

fn unavailable(name: &str, why: String) -> Server {
    Server {
        name: name.into(),
        description: String::new(),
        bin: PathBuf::new(),
        version: "unknown".into(),
        build: "unknown".into(),
        fd_per_connection: false,
        launch: Launch::Peer,
        missing: Some(why),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_and_table_forms() {
        let path = Path::new("peers.toml");
        let list = parse(
            "[[peer]]\nname = \"tokio\"\nbin = \"bin/tokio\"\nfd_per_connection = true\n\n\
             [[peer]]\nname = \"monoio\"\nbin = \"bin/monoio\"\nversion_file = \"bin/monoio.version\"\n",
            path,
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].fd_per_connection && !list[1].fd_per_connection);
        assert_eq!(list[1].version_file.as_deref(), Some("bin/monoio.version"));
        let table = parse("[peers.erlang]\nbin = \"bin/erlang\"\ndescription = \"OTP\"\n", path).unwrap();
        assert_eq!(table[0].name, "erlang");
        assert!(parse("[[peer]]\nbin = \"x\"\n", path).is_err(), "a peer without a name");
    }

    #[test]
    fn asked_names_keep_order_and_c2m_first_by_default() {
        let entries = vec![PeerEntry { name: "extra".into(), ..Default::default() }];
        assert_eq!(asked(None, &entries), ["c2m", "tokio", "erlang", "epoll-c", "monoio", "extra"]);
        assert_eq!(asked(Some("c2m, tokio,c2m"), &entries), ["c2m", "tokio"]);
    }

    #[test]
    fn unbuilt_and_unknown_peers_are_kept_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let entries = vec![PeerEntry { name: "tokio".into(), bin: "bin/tokio".into(), ..Default::default() }];
        let manifest = (dir.path().to_path_buf(), entries);
        let names: Vec<String> = ["c2m", "tokio", "nope"].iter().map(|s| s.to_string()).collect();
        let servers = resolve(&names, Some(&manifest), Path::new("/bin/true"));
        assert_eq!(servers[0].launch, Launch::C2m);
        assert!(servers[0].missing.is_none());
        assert!(servers[1].missing.as_deref().unwrap().contains("not built"));
        assert!(servers[2].missing.as_deref().unwrap().contains("not in"));
    }
}

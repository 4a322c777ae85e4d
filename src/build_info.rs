//! What this binary was built from (build.rs embeds the commit), for `c2m --version` and the
//! `c2m_build_info` metric.

/// The package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit built from, or `unknown` outside a git checkout.
pub const COMMIT: &str = env!("C2M_GIT_COMMIT");
/// `true` when the sources had uncommitted changes, `false`, or `unknown`.
pub const DIRTY: &str = env!("C2M_GIT_DIRTY");
/// `c2m --version`: `0.1.0 (commit 7b420bc…, dirty: false)`.
pub const LONG_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("C2M_GIT_COMMIT"), ", dirty: ", env!("C2M_GIT_DIRTY"), ")");

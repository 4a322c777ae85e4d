//! What the Rust peers (tokio, monoio) share, so that they differ only in their runtime.

pub mod cli;
pub mod protocol;

/// Raises the RLIMIT_NOFILE soft limit to the hard limit (one fd per connection); returns it.
pub fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

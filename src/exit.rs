//! The exit status every `c2m` command ends with, one meaning each (the README's table):
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done: the command did what it was asked |
//! | 1 | error: it could not (bad input file, a failed start, a system call) |
//! | 2 | usage: the command line was wrong (clap's own status) |
//! | 3 | fell short: it ran, but the result is below what was asked (a load or bench run that did not hold every connection, `tune check` for a count that does not fit) |

/// Done.
pub const DONE: i32 = 0;
/// An error stopped the command.
pub const ERROR: i32 = 1;
/// The command line was wrong (clap exits with it too).
pub const USAGE: i32 = 2;
/// The command ran, but the result fell short of what was asked.
pub const FELL_SHORT: i32 = 3;

/// A run that ended and wrote its results but fell short; the CLI ends with [`FELL_SHORT`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FellShort(pub String);

/// Values the command line parsed but that do not go together or are out of range, found after
/// parsing (clap's own checks exit with [`USAGE`] by themselves).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The status for an error that ended a command: [`FELL_SHORT`] or [`USAGE`] when it is (or
/// wraps) a [`FellShort`] or a [`Usage`], else [`ERROR`].
pub fn status_of(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<FellShort>()) {
        FELL_SHORT
    } else if err.chain().any(|e| e.is::<Usage>()) {
        USAGE
    } else {
        ERROR
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_shortfall_is_3_even_with_context_and_anything_else_is_1() {
        let short: anyhow::Result<()> = Err(FellShort("900 of 1000 held".into()).into());
        assert_eq!(status_of(&short.context("running the load").unwrap_err()), FELL_SHORT);
        assert_eq!(status_of(&anyhow::anyhow!("bind: address in use")), ERROR);
        assert_eq!(status_of(&anyhow::Error::new(Usage("--workers must be in 1..=255".into()))), USAGE);
    }
}

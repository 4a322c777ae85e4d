//! The command line every peer takes: `--listen IP:PORT` (required) and `--workers N` (threads;
//! default: the cores this process may run on). Anything else is refused with the usage.

use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerArgs {
    pub listen: SocketAddr,
    pub workers: usize,
}

pub fn usage(name: &str) -> String {
    format!("usage: {name} --listen IP:PORT [--workers N]")
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<PeerArgs, String> {
    let mut listen = None;
    let mut workers = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--workers" => {
                let n: usize = value()?.parse().map_err(|e| format!("--workers: {e}"))?;
                workers = Some(n.max(1));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let listen = listen.ok_or("--listen IP:PORT is required")?;
    let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    Ok(PeerArgs { listen, workers })
}

/// Parses this process's arguments; on error prints it and the usage, and exits 2.
pub fn from_env(name: &str) -> PeerArgs {
    parse(std::env::args().skip(1)).unwrap_or_else(|e| {
        eprintln!("{name}: {e}\n{}", usage(name));
        std::process::exit(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<PeerArgs, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn listen_and_workers_in_both_spellings() {
        let a = args("--listen 127.0.0.1:7 --workers 3").unwrap();
        assert_eq!((a.listen.to_string(), a.workers), ("127.0.0.1:7".to_string(), 3));
        assert_eq!(args("--workers=2 --listen=[::1]:8").unwrap().workers, 2);
        assert!(args("--listen 127.0.0.1:7").unwrap().workers >= 1);
    }

    #[test]
    fn missing_listen_and_unknown_flags_are_refused() {
        assert!(args("--workers 2").is_err());
        assert!(args("--listen 127.0.0.1:7 --fast").is_err());
        assert!(args("--listen").is_err());
        assert!(args("--listen nowhere").is_err());
    }
}

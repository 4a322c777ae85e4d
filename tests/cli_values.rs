//! Values out of range on the command line (findings F13, F14): each is refused at once with a
//! message that names the flag and what it accepts, never a panic, an overflow or a server that
//! starts and then cannot serve.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_c2m");

/// Runs c2m with `args`; it must exit by itself within 20 s. Returns (exit code, stdout + stderr).
fn run(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn c2m");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // Stop it by its PID before failing, so no server outlives the test.
            let _ = child.kill();
            let _ = child.wait();
            panic!("c2m {} was still running after 20 s: the value was accepted", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    child.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut text).unwrap();
    (status.code(), text)
}

/// `args` must be refused: a clean error exit (not 101, a panic) whose message names `flag` and
/// contains `says`.
fn refused(args: &[String], flag: &str, says: &str) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, text) = run(&args);
    let shown = format!("c2m {}\n{text}", args.join(" "));
    assert!(!text.contains("panicked"), "{shown}");
    assert!(matches!(code, Some(1) | Some(2)), "exit {code:?}: {shown}");
    assert!(text.contains(flag), "the message does not name {flag}: {shown}");
    assert!(text.contains(says), "the message does not say {says:?}: {shown}");
}

fn args(words: &[&str], extra: &[&str]) -> Vec<String> {
    words.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn serve(extra: &[&str]) -> Vec<String> {
    args(&["serve", "--listen", "127.0.0.1:0", "--workers", "1", "--max-sessions", "16"], extra)
}

/// A load against a port nothing listens on, so a value wrongly accepted ends soon.
fn load(extra: &[&str]) -> Vec<String> {
    args(&["load", "--server", "127.0.0.1:9", "--force", "--no-progress", "--workers", "1"], extra)
}

#[test]
fn serve_refuses_values_out_of_range() {
    // 10^20 seconds does not fit a Duration.
    refused(&serve(&["--offline-ttl", "100000000000000000000"]), "--offline-ttl", "87600h");
    refused(&serve(&["--offline-ttl", "100000h"]), "--offline-ttl", "87600h");
    // 16 slots of 2^60 bytes wrap the slab size to 0.
    refused(&serve(&["--session-bytes", "1152921504606846976"]), "--session-bytes", "1 GiB");
    refused(
        &args(&["serve", "--listen", "127.0.0.1:0", "--workers", "1"], &["--max-sessions", "4294967296"]),
        "--max-sessions",
        "4294967295",
    );
    // A slab per worker, each with room for every session: 255 x 4e9 x 8 KiB is past any address space.
    refused(
        &args(&["serve", "--listen", "127.0.0.1:0", "--workers", "255"], &["--max-sessions", "4000000000"]),
        "--max-sessions",
        "address space",
    );
    refused(&serve(&["--recv-buffer-size", "0"]), "--recv-buffer-size", "64..=");
    refused(&serve(&["--files-per-ring", "4294967295"]), "--files-per-ring", "64..=1048576");
    refused(&serve(&["--heartbeat-ms", "0"]), "--heartbeat-ms", "1..");
    refused(&serve(&["--heartbeat", "0s"]), "--heartbeat", "1ms..=");
    // Once bare milliseconds: a bare number now needs its unit rather than being read as seconds.
    refused(&serve(&["--drain-timeout", "30"]), "--drain-timeout", "30ms or 30s");
    refused(&serve(&["--hello-timeout", "10000"]), "--hello-timeout", "needs a unit");
    refused(&serve(&["--backlog", "4294967295"]), "--backlog", "0..=2147483647");
    refused(&serve(&["--users", "99999999999999999999g"]), "--users", "too large");
}

/// Counts take k/m on every command, durations their units.
#[test]
fn serve_takes_the_units_load_takes() {
    let (code, text) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--max-sessions",
        "2m",
        "--session-bytes",
        "0",
        "--heartbeat",
        "250ms",
        "--drain-timeout",
        "1s",
    ]);
    // Parsed (2m sessions accepted as a count), then refused by the check of the slot size alone:
    // a usage error.
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--session-bytes 0 is out of range"), "{text}");
}

#[test]
fn load_refuses_values_out_of_range() {
    // connections / rate = 10^20 s between two messages of one connection.
    refused(&load(&["-c", "1", "--rate", "0.00000000000000000001"]), "--rate", "at least");
    refused(
        &load(&["-c", "2", "--workload", "chat", "--msg-rate", "0.00000000000000000001"]),
        "--msg-rate",
        "at least",
    );
    refused(&load(&["-c", "2", "--connect-rate", "0.00000000000000000001"]), "--connect-rate", "at least");
    refused(&load(&["-c", "1", "--connect-rate", "NaN"]), "--connect-rate", "");
    refused(&load(&["-c", "1", "-d", "100000000000000000000"]), "--duration", "8760h");
    refused(&load(&["-c", "1", "--hold", "9000h"]), "--hold", "8760h");
    refused(&load(&["-c", "1", "--ping-interval", "100000000000000000000"]), "--ping-interval", "8760h");
    // first-user + connections - 1 would pass 2^64 (and user ids from 2^63 on are group ids).
    refused(&load(&["-c", "2", "--first-user", "18446744073709551615"]), "--first-user", "2^63");
    refused(&load(&["-c", "2", "--workload", "chat", "--body", "18446744073709551615"]), "--body", "--max-frame");
    refused(&load(&["-c", "99999999999999999999g"]), "--connections", "too large");
    refused(&load(&["-c", "1", "--keep-free", "99999999999999999999GiB"]), "--keep-free", "too large");
}

#[test]
fn hold_and_tune_refuse_or_answer_any_value() {
    // `Vec::with_capacity(connections)` and `Instant + hold` once overflowed.
    refused(
        &args(&["hold", "--server", "127.0.0.1:9"], &["-c", "18446744073709551615"]),
        "--connections",
        "1..=1048576",
    );
    refused(
        &args(&["hold", "--server", "127.0.0.1:9"], &["--hold-secs", "18446744073709551615"]),
        "--hold-secs",
        "0..=31536000",
    );
    // Any count is judged (it does not fit), its lift commands computed without wrapping.
    let (code, text) = run(&["tune", "check", "-c", "18446744073709551615", "--in-flight", "16GiB", "--json"]);
    assert_eq!(code, Some(3), "does not fit: {text}");
    assert!(!text.contains("panicked"), "{text}");
}

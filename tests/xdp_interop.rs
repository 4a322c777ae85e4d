//! The data planes against each other (issue 14), 20,000 chat clients each way with the ledger
//! exact (every message delivered once, 0 lost, 0 doubled, every SEND answered):
//! - c2m's TCP as the client (`c2m load --dataplane xdp`) against Linux TCP (`c2m serve` on the
//!   kernel data plane in the server namespace);
//! - Linux TCP as the client (`c2m load` on the kernel data plane) against c2m's TCP (the xdp
//!   server);
//! - both ends on c2m's TCP through loss, reordering, duplication and delay: each end's fault
//!   injector on the frames it receives (an XDP drop program cannot sit beside the load's own on
//!   the client veth, and netem and nftables are not here).
//!
//! Needs root (network namespaces, bpf(), AF_XDP).

mod common;

use std::time::Duration;

use common::ServerProcess;

const CLIENTS: &str = "20000";

/// One case at a time: three servers and loads of 20,000 clients each at once, with faults in
/// one of them, are more than two cores run within the load's connect and login timeouts.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// 20,000 chat clients, each sending a message every 4 s for 6 s: every one delivered once.
fn chat_is_exact(server: &ServerProcess, xdp_load: bool, extra: &[&str]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut args = vec!["-c", CLIENTS, "--workload", "chat", "--msg-rate", "0.25", "--duration", "6s"];
    args.extend_from_slice(extra);
    let report = common::run_load(server, xdp_load, &args);
    let (c, conns) = (&report["chat"], &report["connections"]);
    eprintln!("chat: {c}\nconnections: {conns}");
    assert_eq!(conns["established"], 20_000, "{conns}");
    assert_eq!(conns["lost"], 0, "{conns}");
    assert!(c["delivered"].as_u64().unwrap() >= 20_000, "{c}");
    assert_eq!(c["delivered"], c["expected"], "{c}");
    assert_eq!(c["lost"], 0, "{c}");
    assert_eq!(c["duplicates"], 0, "{c}");
    assert_eq!(c["unanswered"], 0, "{c}");
    // Sessions whose client's last RST was lost end at their heartbeat deadline (3 x 4 s).
    server.wait_metric("c2m_sessions_active", 0.0, Duration::from_secs(20));
    common::assert_no_leaks(server);
}

#[test]
fn c2m_tcp_clients_against_linux_tcp() {
    let server = ServerProcess::start_kernel_in_netns(&["--heartbeat", "4s"]);
    chat_is_exact(&server, true, &[]);
}

#[test]
fn linux_tcp_clients_against_c2m_tcp() {
    let server = ServerProcess::start_on(true, &["--heartbeat", "4s"]);
    chat_is_exact(&server, false, &[]);
}

#[test]
fn c2m_tcp_at_both_ends_through_loss_and_reordering() {
    let faults = "drop=10,reorder=20,duplicate=5,delay=10,max-delay-ms=10";
    let server = ServerProcess::start_on(true, &["--heartbeat", "4s", "--xdp-fault", faults]);
    chat_is_exact(&server, true, &["--xdp-fault", faults]);
    let text = server.scrape();
    assert!(common::sum(&text, "c2m_tcp_retransmits_total") > 0.0, "the faults were there: {text}");
}

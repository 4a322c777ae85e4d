//! `c2m load --metrics ADDR`: the run's live counters in the Prometheus text format, so a long
//! run can be watched (and graphed beside the server's) while it goes, not only in its report.

use std::fmt::Write;
use std::sync::Arc;

use super::stats::{Control, LoadStats, Phase};
use crate::stats::metrics_http::Render;

type Pick = fn(&LoadStats) -> u64;

/// Every family, with a `worker` label (the sum over it is the run's total), all present from
/// the first scrape.
const FAMILIES: [(&str, &str, &str, Pick); 25] = [
    ("c2m_load_connections_established", "gauge", "Connections logged in now.", |s| s.established.get()),
    ("c2m_load_connects_total", "counter", "TCP connects completed.", |s| s.connected.get()),
    ("c2m_load_logins_total", "counter", "Connections that logged in (WELCOME received).", |s| {
        s.established_total.get()
    }),
    ("c2m_load_connect_failures_total", "counter", "Connects or logins that failed or timed out.", |s| s.failed.get()),
    ("c2m_load_connections_lost_total", "counter", "Established connections the server or network closed.", |s| {
        s.lost.get()
    }),
    ("c2m_load_reconnects_total", "counter", "Connects opened again (--reconnect, --churn).", |s| s.reconnects.get()),
    ("c2m_load_relogins_total", "counter", "Logins after a connection's first.", |s| s.relogins.get()),
    ("c2m_load_connect_retries_total", "counter", "Failed connects or logins tried again.", |s| s.retried.get()),
    ("c2m_load_churned_total", "counter", "Clients that left by churn (BYE).", |s| s.churned.get()),
    ("c2m_load_connections_finished_total", "counter", "Connections whose close has completed.", |s| s.finished.get()),
    ("c2m_load_errors_total", "counter", "ERROR frames and protocol violations seen.", |s| s.errors.get()),
    ("c2m_load_messages_sent_total", "counter", "Messages sent (PING, ECHO or SEND).", |s| s.sent.get()),
    ("c2m_load_replies_received_total", "counter", "Replies received (PONG, ECHO_REPLY or ACK).", |s| s.received.get()),
    ("c2m_load_replies_late_total", "counter", "Replies that came after the connection's next send was due.", |s| {
        s.late.get()
    }),
    ("c2m_received_bytes_total", "counter", "Payload bytes received.", |s| s.transport.bytes_in.get()),
    ("c2m_sent_bytes_total", "counter", "Payload bytes sent.", |s| s.transport.bytes_out.get()),
    ("c2m_fixed_files_in_use", "gauge", "Direct descriptors in use.", |s| s.transport.fixed_files_in_use.get()),
    ("c2m_recv_no_buffers_total", "counter", "Receives re-armed after the buffer ring ran dry.", |s| {
        s.transport.recv_no_buffers.get()
    }),
    ("c2m_load_chat_acked_total", "counter", "Chat: SENDs ACKed.", |s| s.chat.acked.get()),
    ("c2m_load_chat_nacked_total", "counter", "Chat: SENDs NACKed (any code).", |s| {
        s.chat.nacked_unknown.get() + s.chat.nacked_full.get() + s.chat.nacked_other.get()
    }),
    ("c2m_load_chat_delivered_total", "counter", "Chat: DELIVERs received.", |s| s.chat.delivered.get()),
    ("c2m_load_chat_duplicates_total", "counter", "Chat: DELIVERs received a second time.", |s| {
        s.chat.duplicates.get()
    }),
    ("c2m_load_chat_receipted_total", "counter", "Chat: RECEIPT notices received.", |s| s.chat.receipted.get()),
    ("c2m_load_chat_expected_deliveries_total", "counter", "Chat: deliveries the ACKed SENDs should bring.", |s| {
        s.chat.expected.get()
    }),
    ("c2m_load_chat_window_full_total", "counter", "Chat: scheduled SENDs skipped, ledger window still open.", |s| {
        s.chat.window_full.get()
    }),
];

/// The render function for [`crate::stats::metrics_http::spawn`].
pub fn render(stats: Vec<Arc<LoadStats>>, control: Arc<Control>) -> Render {
    Arc::new(move || render_text(&stats, &control))
}

fn render_text(stats: &[Arc<LoadStats>], control: &Control) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for (name, kind, help, pick) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (w, s) in stats.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {}", pick(s));
        }
    }
    let now = control.phase();
    let _ = writeln!(out, "# HELP c2m_load_phase The run's phase: 1 for the current one.\n# TYPE c2m_load_phase gauge");
    for (phase, name) in [
        (Phase::Connect, "connect"),
        (Phase::Warmup, "warmup"),
        (Phase::Messages, "messages"),
        (Phase::Hold, "hold"),
        (Phase::Close, "close"),
    ] {
        let _ = writeln!(out, "c2m_load_phase{{phase=\"{name}\"}} {}", u8::from(phase == now));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::sum_metric;

    #[test]
    fn every_family_from_the_start_and_summed_over_workers() {
        let stats = vec![Arc::new(LoadStats::default()), Arc::new(LoadStats::default())];
        let control = Control::new(None);
        let text = render_text(&stats, &control);
        for (name, ..) in FAMILIES {
            assert_eq!(sum_metric(&text, name), Some(0.0), "{name}\n{text}");
        }
        stats[0].sent.add(3);
        stats[1].sent.add(4);
        stats[1].chat.nacked_full.inc();
        control.set_phase(Phase::Hold);
        let text = render_text(&stats, &control);
        assert_eq!(sum_metric(&text, "c2m_load_messages_sent_total"), Some(7.0));
        assert_eq!(sum_metric(&text, "c2m_load_chat_nacked_total"), Some(1.0));
        assert!(
            text.contains("c2m_load_phase{phase=\"hold\"} 1") && text.contains("c2m_load_phase{phase=\"connect\"} 0")
        );
    }
}

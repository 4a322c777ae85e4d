//! Unit tests for `Sessions`, the server's side of the transport seam: a worker's sessions driven
//! through the `Handler` calls a transport makes, with the transport played by the test (no
//! socket and no ring), so the order of calls is exactly the one under test.

use std::sync::Arc;

use super::budget::SessionBudget;
use super::route::ChatShared;
use super::sessions::Sessions;
use super::{ServeConfig, defaults};
use crate::engine::PoolShared;
use crate::proto::{Frame, FrameIter, encode_vec};
use crate::slab::ResidentBudget;
use crate::stats::WorkerStats;
use crate::transport::{ConnId, Handler, Request, Requests};

/// A worker's sessions, and a transport that holds no input of its own: what it is handed it
/// passes on, and what the owner leaves unconsumed is the test's to offer again.
struct Bench {
    sessions: Sessions,
    q: Requests,
    /// Everything sent so far, on every connection.
    wire: Vec<u8>,
}

impl Bench {
    fn new() -> Self {
        let cfg = ServeConfig { workers: 1, max_sessions: 4, users: 64, ..ServeConfig::default() };
        let chat = ChatShared::new(1, cfg.users, cfg.groups, cfg.group_size, cfg.offline).unwrap();
        let sessions = Sessions::new(
            0,
            Arc::new(cfg),
            Arc::new(WorkerStats::default()),
            Arc::new(SessionBudget::new(4)),
            Arc::new(ResidentBudget::new(defaults::bytes(defaults::SLOT_BUDGET) as usize)),
            Arc::new(chat),
            PoolShared::detached(),
        )
        .unwrap();
        Bench { sessions, q: Requests::default(), wire: Vec::new() }
    }

    fn requests(&mut self) -> Vec<Request> {
        let mut out = Vec::new();
        self.q.take(&mut out);
        out
    }

    /// Sends everything queued on `conn`, one send at a time, as a transport does once the peer
    /// reads; returns the requests the sends gave rise to.
    fn send_all(&mut self, conn: ConnId) -> Vec<Request> {
        let mut seen = Vec::new();
        while self.sessions.output_len(conn) > 0 {
            let bytes = self.sessions.output(conn).to_vec();
            self.wire.extend_from_slice(&bytes);
            self.sessions.sent(&mut self.q, conn, bytes.len());
            seen.extend(self.requests());
        }
        seen
    }

    fn echo_replies(&self) -> usize {
        FrameIter::new(&self.wire, 1 << 16).filter(|f| matches!(f, Ok(Frame::EchoReply { .. }))).count()
    }
}

#[test]
fn a_frame_completed_into_a_full_out_area_is_answered_once_sends_make_room() {
    // The last frame of a burst arrives split over two reads, and the second read, which
    // completes it, finds the out area full. All of that read is taken (its bytes completed the
    // frame, kept whole in the slot), so the transport holds nothing for the session, and no
    // more input comes. The frame must still be answered once sends make room: nothing else
    // will offer it again. (It was not: CI's burst test once got 99 replies of 100.)
    let mut b = Bench::new();
    let conn = b.sessions.admit().expect("room for a session");
    let hello = encode_vec(&Frame::Hello { user_id: 9, client_time_ns: 1 });
    assert_eq!(b.sessions.input(&mut b.q, conn, &hello), hello.len());
    b.send_all(conn);
    b.wire.clear();
    let echo = encode_vec(&Frame::Echo { data: &[5u8; 4000] });
    // An ECHO_REPLY is as long as its ECHO: this many fill the out area, unsent.
    let cfg = ServeConfig::default();
    let fits = (cfg.session_bytes - cfg.max_frame) / echo.len();
    for _ in 0..fits {
        assert_eq!(b.sessions.input(&mut b.q, conn, &echo), echo.len());
    }
    let head = 100;
    assert_eq!(b.sessions.input(&mut b.q, conn, &echo[..head]), head, "a partial frame is kept");
    let tail = &echo[head..];
    assert_eq!(b.sessions.input(&mut b.q, conn, tail), tail.len(), "the read that completes it is taken whole");
    b.requests();
    // Sends make room; the transport holds nothing of this session to offer again.
    b.send_all(conn);
    assert_eq!(b.echo_replies(), fits + 1, "every ECHO is answered");
    assert_eq!(b.sessions.output_len(conn), 0);
}

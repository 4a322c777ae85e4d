//! Traffic on a logged-in connection: replies reassembled into frames and measured, messages
//! staged on schedule and sent one send at a time.

use std::collections::VecDeque;

use super::{Conns, RECEIPTS_WAITING_PER_CONN};
use crate::load::chat::{Delivery, Ledger};
use crate::load::config::Workload;
use crate::load::conn::{self, Conn, ConnState, flag, state};
use crate::load::stats::{Interval, LoadStats, Phase, RunHistograms, record};
use crate::proto::{self, ErrorCode, Frame, Step};
use crate::transport::Requests;

/// What handling a reply needs, borrowed apart from the connection's slot (where a reply split
/// across reads is completed).
struct Replies<'a> {
    now: u64,
    /// Round trips enter the run's histograms only in the message phase.
    measuring: bool,
    /// The connection's user id (the sender of its SENDs).
    me: u64,
    slot: u32,
    in_flight: bool,
    hist: &'a mut RunHistograms,
    interval: &'a mut Interval,
    stats: &'a LoadStats,
    ledger: Option<&'a Ledger>,
    receipts: &'a mut VecDeque<(u32, u64, u64)>,
    /// What the replies amounted to.
    logged_in: bool,
    answered: u64,
    /// Why the connection must go, if it must.
    fault: Option<String>,
}

impl Replies<'_> {
    fn round_trip(&mut self, sent_ns: u64, due_ns: u64) {
        record(&mut self.interval.rtt_corrected, self.now.saturating_sub(due_ns));
        record(&mut self.interval.rtt_uncorrected, self.now.saturating_sub(sent_ns));
        if self.measuring {
            record(&mut self.hist.rtt_corrected, self.now.saturating_sub(due_ns));
            record(&mut self.hist.rtt_uncorrected, self.now.saturating_sub(sent_ns));
        }
    }

    /// Counts the connection among those answered in the message phase, once.
    fn mark_answered(&mut self, c: &mut ConnState) {
        if self.measuring && c.marks & conn::mark::ANSWERED_IN_MESSAGES == 0 {
            c.marks |= conn::mark::ANSWERED_IN_MESSAGES;
            self.stats.answered_in_messages.inc();
        }
    }

    /// One reply from the server.
    fn on_frame(&mut self, c: &mut ConnState, frame: Frame<'_>) -> Step {
        let live = c.state == state::LOGGED_IN;
        match frame {
            Frame::Welcome { .. } if c.state == state::HELLO_SENT => {
                c.state = state::LOGGED_IN;
                self.logged_in = true;
            }
            Frame::Pong { .. } | Frame::EchoReply { .. } if live && c.outstanding > 0 => {
                let Some((sent_ns, due_ns)) = conn::reply_times(&frame) else {
                    return self.fault("unexpected reply from server".into());
                };
                c.outstanding -= 1;
                self.answered += 1;
                self.mark_answered(c);
                self.round_trip(sent_ns, due_ns);
            }
            Frame::Pong { .. } | Frame::EchoReply { .. } => {
                return self.fault("unexpected reply from server".into());
            }
            Frame::Ack { msg_id } if live && c.outstanding > 0 => {
                c.outstanding -= 1;
                self.answered += 1;
                self.mark_answered(c);
                self.stats.chat.acked.inc();
                if let Some(t) = self.ledger.and_then(|l| l.acked(self.me, msg_id)) {
                    record(&mut self.interval.ack, self.now.saturating_sub(t));
                    if self.measuring {
                        record(&mut self.hist.ack, self.now.saturating_sub(t));
                    }
                }
            }
            Frame::Nack { msg_id, code } if live && c.outstanding > 0 => {
                c.outstanding -= 1;
                self.answered += 1;
                self.mark_answered(c);
                match ErrorCode::from_u16(code) {
                    Some(ErrorCode::UnknownRecipient) => self.stats.chat.nacked_unknown.inc(),
                    Some(ErrorCode::OfflineQueueFull) => self.stats.chat.nacked_full.inc(),
                    _ => self.stats.chat.nacked_other.inc(),
                }
                if let Some(l) = self.ledger {
                    self.stats.chat.expected.sub(l.refused(self.me, msg_id));
                }
            }
            Frame::Deliver { from_user, msg_id, t_ns, .. } if live => {
                if c.receipts_owed as usize >= RECEIPTS_WAITING_PER_CONN {
                    // Its RECEIPTs cannot go out as fast as DELIVERs come in: stop reading
                    // (this DELIVER is offered again) until they do.
                    c.flags |= flag::INPUT_PAUSED;
                    return Step::Block;
                }
                match self.ledger.map(|l| l.delivered(from_user, msg_id)) {
                    Some(Delivery::First) => {
                        self.stats.chat.delivered.inc();
                        record(&mut self.interval.deliver, self.now.saturating_sub(t_ns));
                        if self.measuring {
                            record(&mut self.hist.deliver, self.now.saturating_sub(t_ns));
                        }
                    }
                    Some(Delivery::Duplicate) => self.stats.chat.duplicates.inc(),
                    _ => self.stats.chat.unknown.inc(),
                }
                c.receipts_owed += 1;
                self.receipts.push_back((self.slot, from_user, msg_id));
            }
            Frame::ReceiptNotice { msg_id, .. } if live => {
                if let Some(t) = self.ledger.and_then(|l| l.receipted(self.me, msg_id)) {
                    self.stats.chat.receipted.inc();
                    record(&mut self.interval.receipt, self.now.saturating_sub(t));
                    if self.measuring {
                        record(&mut self.hist.receipt, self.now.saturating_sub(t));
                    }
                }
            }
            Frame::Error { code, .. } => {
                let name = ErrorCode::from_u16(code).map(|c| c.name()).unwrap_or("unknown");
                return self.fault(format!("server ERROR {code} {name}"));
            }
            Frame::Bye => return self.fault("server BYE".into()),
            other => return self.fault(format!("unexpected {} from server", other.kind().name())),
        }
        Step::Continue
    }

    fn fault(&mut self, why: String) -> Step {
        self.fault = Some(why);
        Step::Stop
    }
}

impl Conns {
    /// Reassembles replies and handles them; returns the bytes consumed (fewer than all when the
    /// connection's input must wait: see `RECEIPTS_WAITING_PER_CONN`).
    pub(super) fn take_input(&mut self, q: &mut Requests, slot: u32, data: &[u8]) -> usize {
        let c = &self.slab.header(slot).s;
        if !matches!(c.state, state::HELLO_SENT | state::LOGGED_IN) {
            return data.len();
        }
        let max_frame = self.cfg.max_frame;
        let me = self.user_of(slot);
        let now = self.now_ns();
        let ledger = self.control.ledger.clone();
        let mut r = Replies {
            now,
            measuring: self.control.phase() == Phase::Messages,
            me,
            slot,
            in_flight: self.cfg.in_flight > 0,
            hist: &mut self.hist,
            interval: &mut self.interval,
            stats: &self.stats,
            ledger: ledger.as_deref(),
            receipts: &mut self.receipts_waiting,
            logged_in: false,
            answered: 0,
            fault: None,
        };
        let view = self.slab.session(slot);
        let Conn { s: c, .. } = view.header;
        let mut partial_len = c.partial_len;
        let fed = proto::reassemble(&mut view.slot[..max_frame], &mut partial_len, data, max_frame, |frame| {
            r.on_frame(c, frame)
        });
        c.partial_len = partial_len;
        let mut touch = view.touch;
        let (consumed, fault) = match fed {
            Ok(fed) => {
                touch.upto(fed.touched);
                (fed.consumed, r.fault.take())
            }
            Err(bad) => (data.len(), Some(format!("bad frame from server: {bad:?}"))),
        };
        let (logged_in, answered, in_flight) = (r.logged_in, r.answered, r.in_flight);
        if answered > 0 {
            self.stats.received.add(answered);
        }
        if logged_in {
            self.logged_in(slot, now);
        }
        if let Some(why) = fault {
            self.lose(q, slot, why);
        } else if in_flight && (logged_in || answered > 0) {
            self.top_up(q, slot, now);
        }
        consumed
    }

    // ---- sending ----------------------------------------------------------------------

    /// A connection's state and its out area: inline in the header for ping and idle, in the
    /// slot for echo and chat (frames up to max_frame).
    pub(super) fn out_area(&mut self, slot: u32) -> (&mut ConnState, &mut [u8]) {
        let max_frame = self.cfg.max_frame;
        let in_slot = self.cfg.out_in_slot();
        let view = self.slab.session(slot);
        let Conn { s, out } = view.header;
        if in_slot {
            let mut touch = view.touch;
            touch.upto(3 * max_frame);
            (s, &mut view.slot[max_frame..3 * max_frame])
        } else {
            (s, &mut out[..])
        }
    }

    /// Stages every message that is due (as many as the out area holds) and sends.
    pub(super) fn send_due(&mut self, q: &mut Requests, slot: u32, now: u64) {
        if self.slab.header(slot).s.has(flag::LEAVING) {
            // Churn picked it: it says BYE once what is outstanding is answered.
            return;
        }
        if self.slab.header(slot).s.has(flag::SENDING) {
            // The previous send has not completed: this one goes when it does.
            self.stats.late.inc();
            return;
        }
        if self.cfg.workload == Workload::Chat {
            return self.send_due_chat(q, slot, now);
        }
        let (echo, len, interval) = (self.cfg.workload == Workload::Echo, self.frame_len, self.interval_ns);
        let mut staged = 0u64;
        let (c, out) = self.out_area(slot);
        while c.due_ns <= now && c.out_len as usize + len <= out.len() {
            let at = c.out_len as usize;
            conn::write_message(&mut out[at..], echo, len, now, c.due_ns);
            c.out_len += len as u16;
            c.due_ns += interval;
            c.outstanding += 1;
            staged += 1;
        }
        let next_due = c.due_ns;
        self.stats.sent.add(staged);
        q.send(slot);
        if self.control.phase() < Phase::Hold {
            self.wheel.schedule(slot, self.tick_of(next_due));
        }
    }

    /// Chat: stages every SEND that is due, after opening its entry in the ledger.
    fn send_due_chat(&mut self, q: &mut Requests, slot: u32, now: u64) {
        let Some(ledger) = self.control.ledger.clone() else { return };
        let me = self.user_of(slot);
        let (len, interval) = (self.frame_len, self.interval_ns);
        let body = std::mem::take(&mut self.body);
        let mut staged = 0u64;
        loop {
            let c = &self.slab.header(slot).s;
            if c.due_ns > now || c.out_len as usize + len > self.cfg.out_capacity() {
                break;
            }
            let msg_id = self.slab.header(slot).s.msg_seq + 1;
            let to = ledger.recipient_of(me, msg_id);
            let expected = ledger.recipients(me, to);
            let (c, out) = self.out_area(slot);
            let due = c.due_ns;
            c.due_ns += interval;
            c.msg_seq = msg_id;
            if !ledger.begin(me, msg_id, expected, due) {
                self.stats.chat.window_full.inc();
                continue;
            }
            let at = c.out_len as usize;
            proto::encode(&Frame::Send { to_user: to, msg_id, t_ns: due, body: &body }, &mut out[at..at + len]);
            c.out_len += len as u16;
            c.outstanding += 1;
            staged += 1;
            self.stats.chat.expected.add(expected);
        }
        self.body = body;
        let next_due = self.slab.header(slot).s.due_ns;
        self.stats.sent.add(staged);
        q.send(slot);
        if self.control.phase() < Phase::Hold {
            self.wheel.schedule(slot, self.tick_of(next_due));
        }
    }

    /// Chat: stages the RECEIPTs owed for DELIVERs, as far as the out areas have room (the
    /// rest wait for their sends to complete); a connection paused for owing too many reads
    /// again once half are out.
    pub(super) fn send_waiting_receipts(&mut self, q: &mut Requests) {
        if self.receipts_waiting.is_empty() {
            return;
        }
        let len = proto::HEADER_LEN + 16;
        let room = self.cfg.out_capacity();
        let mut waiting = std::mem::take(&mut self.receipts_waiting);
        let mut unpaused = std::mem::take(&mut self.unpaused);
        waiting.retain(|&(slot, from_user, msg_id)| {
            let (c, out) = self.out_area(slot);
            if c.state != state::LOGGED_IN {
                return false;
            }
            if c.out_len as usize + len > room {
                return true;
            }
            let at = c.out_len as usize;
            proto::encode(&Frame::Receipt { from_user, msg_id }, &mut out[at..at + len]);
            c.out_len += len as u16;
            c.receipts_owed -= 1;
            if c.has(flag::INPUT_PAUSED) && (c.receipts_owed as usize) < RECEIPTS_WAITING_PER_CONN / 2 {
                c.flags &= !flag::INPUT_PAUSED;
                unpaused.push(slot);
            }
            q.send(slot);
            false
        });
        self.receipts_waiting = waiting;
        for slot in unpaused.drain(..) {
            // A DELIVER that blocked after its read was taken whole (the read completed it in
            // the partial area, where it waits) is not held by the transport: it goes first,
            // fed with nothing new, then the transport offers what it holds.
            self.take_input(q, slot, &[]);
            if !self.slab.header(slot).s.has(flag::INPUT_PAUSED) {
                q.resume(slot);
            }
        }
        self.unpaused = unpaused;
    }

    /// Closed loop: stages messages until `in_flight` are outstanding (or the out area is full)
    /// and sends. Each is due now, so its corrected and uncorrected round trips are the same.
    pub(super) fn top_up(&mut self, q: &mut Requests, slot: u32, now: u64) {
        if self.control.phase() >= Phase::Hold {
            return;
        }
        let (echo, len, want) = (self.cfg.workload == Workload::Echo, self.frame_len, self.cfg.in_flight);
        let mut staged = 0u64;
        let (c, out) = self.out_area(slot);
        if c.state != state::LOGGED_IN || c.has(flag::LEAVING) {
            return;
        }
        // Appending behind a send in flight is safe: the kernel reads only [0, send_len).
        while c.outstanding < want && c.out_len as usize + len <= out.len() {
            let at = c.out_len as usize;
            conn::write_message(&mut out[at..], echo, len, now, now);
            c.out_len += len as u16;
            c.outstanding += 1;
            staged += 1;
        }
        self.stats.sent.add(staged);
        q.send(slot);
    }

    /// `n` bytes of the out area went out: the rest moves to the front, and the next messages
    /// go (staged ones, the closed loop's next, or those already due).
    pub(super) fn on_sent(&mut self, q: &mut Requests, slot: u32, n: usize) {
        let (c, out) = self.out_area(slot);
        conn::sent(c, out, n);
        if !matches!(c.state, state::HELLO_SENT | state::LOGGED_IN) {
            return;
        }
        let now = self.now_ns();
        let c = self.slab.header(slot).s;
        if c.out_len > 0 {
            q.send(slot);
        } else if self.cfg.in_flight > 0 {
            self.top_up(q, slot, now);
        } else if c.state == state::LOGGED_IN && c.due_ns <= now && self.control.phase() < Phase::Hold {
            self.send_due(q, slot, now);
        }
    }
}

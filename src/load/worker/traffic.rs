//! Traffic on a logged-in connection: replies reassembled into frames and measured, messages
//! staged on schedule and sent one send at a time.

use std::sync::atomic::Ordering;

use io_uring::types::Fixed;
use io_uring::{cqueue, opcode, squeue};
use nix::errno::Errno;

use super::{LoadWorker, phase, record};
use crate::engine::{Op, RingSet};
use crate::load::chat::Delivery;
use crate::load::config::Workload;
use crate::load::conn::{self, Conn, ConnState, flag, state};
use crate::proto::{self, Frame, GROUP_BIT};

impl LoadWorker {
    pub(super) fn arm_recv(&mut self, rings: &mut RingSet, slot: u32) {
        let (ring, file) = self.place(slot);
        let token = self.token(Op::Recv as u8, slot);
        let c = self.slab.header_mut(slot);
        c.s.flags |= flag::RECV_ARMED;
        c.s.inflight += 1;
        let bgid = rings.rings[ring].bufs.bgid();
        let entry = if self.cfg.recv_on_demand() {
            // One buffer's worth (length 0: the buffer's size); it waits in the kernel only
            // while a reply is owed.
            opcode::Recv::new(Fixed(file), std::ptr::null_mut(), 0)
                .buf_group(bgid)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        } else {
            opcode::RecvMulti::new(Fixed(file), bgid).build()
        };
        Self::push(rings, ring, entry.user_data(token));
    }

    pub(super) fn on_recv(&mut self, rings: &mut RingSet, ring: usize, slot: u32, cqe: &cqueue::Entry) {
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        if !more {
            let c = self.slab.header_mut(slot);
            c.s.flags &= !flag::RECV_ARMED;
            c.s.inflight -= 1;
        }
        let live = matches!(self.slab.header(slot).s.state, state::HELLO_SENT | state::LOGGED_IN);
        if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
            if res > 0 && live {
                self.stats.bytes_received.add(res as u64);
                self.take_input(rings, ring, slot, bid, res as usize);
            }
            rings.rings[ring].bufs.recycle(bid);
        }
        let still_live = matches!(self.slab.header(slot).s.state, state::HELLO_SENT | state::LOGGED_IN);
        match res {
            0 if still_live => self.lose(rings, slot, "closed by server".into()),
            _ if res == -libc::ENOBUFS => {
                self.stats.recv_no_buffers.inc();
            }
            _ if res < 0 && res != -libc::ECANCELED && still_live => {
                self.lose(rings, slot, format!("recv {:?}", Errno::from_raw(-res)))
            }
            _ => {}
        }
        let c = self.slab.header(slot);
        // On demand, a receive is armed again only while a reply is still owed (or the last
        // one found no buffer); a send that expects one arms it (see `flush`).
        let owed = !self.cfg.recv_on_demand()
            || c.s.state == state::HELLO_SENT
            || c.s.outstanding > 0
            || res == -libc::ENOBUFS;
        if !more && res != 0 && owed && matches!(c.s.state, state::HELLO_SENT | state::LOGGED_IN) {
            self.rearm.push(slot);
        }
        self.maybe_done(slot);
    }

    pub(super) fn take_input(&mut self, rings: &mut RingSet, ring: usize, slot: u32, bid: u16, len: usize) {
        let max_frame = self.cfg.max_frame;
        let now = self.now_ns();
        let measuring = self.control.phase.load(Ordering::Relaxed) == phase::MESSAGES;
        let data = rings.rings[ring].bufs.data(bid, len);
        let mut outcome: Option<String> = None;
        let mut logged_in = false;
        let mut replies = 0u64;
        let view = self.slab.session(slot);
        let (c, partial) = (&mut view.header.s, view.slot);
        let hist = &mut self.hist;
        let interval_rtt = &mut self.interval_rtt;
        let ledger = self.control.ledger.clone();
        let me = self.cfg.first_user + slot as u64 * self.cfg.workers as u64 + self.id as u64;
        let stats = &self.stats;
        let receipts = &mut self.receipts_waiting;
        let mut touch = view.touch;
        let (st, outstanding) = (&mut c.state, &mut c.outstanding);
        let result =
            conn::take_bytes(&mut c.partial_len, &mut partial[..max_frame], data, max_frame, |frame| match frame {
                Frame::Welcome { .. } if *st == state::HELLO_SENT => {
                    *st = state::LOGGED_IN;
                    logged_in = true;
                    true
                }
                Frame::Pong { .. } | Frame::EchoReply { .. } => match conn::reply_times(&frame) {
                    Some((sent_ns, due_ns)) if *st == state::LOGGED_IN && *outstanding > 0 => {
                        *outstanding -= 1;
                        replies += 1;
                        record(interval_rtt, now.saturating_sub(due_ns));
                        if measuring {
                            record(&mut hist.rtt_corrected, now.saturating_sub(due_ns));
                            record(&mut hist.rtt_uncorrected, now.saturating_sub(sent_ns));
                        }
                        true
                    }
                    _ => {
                        outcome = Some("unexpected reply from server".into());
                        false
                    }
                },
                Frame::Ack { msg_id } if *st == state::LOGGED_IN && *outstanding > 0 => {
                    *outstanding -= 1;
                    replies += 1;
                    stats.chat.acked.inc();
                    if let Some(t) = ledger.as_ref().and_then(|l| l.sent_ns(me, msg_id)) {
                        record(interval_rtt, now.saturating_sub(t));
                        if measuring {
                            record(&mut hist.ack, now.saturating_sub(t));
                        }
                    }
                    true
                }
                Frame::Nack { msg_id, code } if *st == state::LOGGED_IN && *outstanding > 0 => {
                    *outstanding -= 1;
                    replies += 1;
                    match proto::ErrorCode::from_u16(code) {
                        Some(proto::ErrorCode::UnknownRecipient) => stats.chat.nacked_unknown.inc(),
                        Some(proto::ErrorCode::OfflineQueueFull) => stats.chat.nacked_full.inc(),
                        _ => stats.chat.nacked_other.inc(),
                    }
                    if let Some(l) = &ledger {
                        stats.chat.expected.sub(l.refused(me, msg_id));
                    }
                    true
                }
                Frame::Deliver { from_user, msg_id, t_ns, .. } if *st == state::LOGGED_IN => {
                    match ledger.as_ref().map(|l| l.delivered(from_user, msg_id)) {
                        Some(Delivery::First) => {
                            stats.chat.delivered.inc();
                            if measuring {
                                record(&mut hist.deliver, now.saturating_sub(t_ns));
                            }
                        }
                        Some(Delivery::Duplicate) => stats.chat.duplicates.inc(),
                        _ => stats.chat.unknown.inc(),
                    }
                    receipts.push_back((slot, from_user, msg_id));
                    true
                }
                Frame::ReceiptNotice { msg_id, .. } if *st == state::LOGGED_IN => {
                    if let Some(t) = ledger.as_ref().and_then(|l| l.receipted(me, msg_id)) {
                        stats.chat.receipted.inc();
                        if measuring {
                            record(&mut hist.receipt, now.saturating_sub(t));
                        }
                    }
                    true
                }
                Frame::Error { code, .. } => {
                    let name = proto::ErrorCode::from_u16(code).map(|c| c.name()).unwrap_or("unknown");
                    outcome = Some(format!("server ERROR {code} {name}"));
                    false
                }
                Frame::Bye => {
                    outcome = Some("server BYE".into());
                    false
                }
                other => {
                    outcome = Some(format!("unexpected {} from server", other.kind().name()));
                    false
                }
            });
        if c.partial_len > 0 {
            touch.upto(c.partial_len as usize);
        }
        if let Err(bad) = result {
            outcome = Some(format!("bad frame from server: {:?}", bad.0));
        }
        if replies > 0 {
            self.stats.received.add(replies);
        }
        if logged_in {
            self.logged_in(slot, now);
        }
        if let Some(kind) = outcome {
            self.lose(rings, slot, kind);
        } else if self.cfg.in_flight > 0 && (logged_in || replies > 0) {
            self.top_up(rings, slot, now);
        }
    }

    pub(super) fn logged_in(&mut self, slot: u32, now: u64) {
        let c = self.slab.header_mut(slot);
        let t = c.s.t_ns;
        c.s.flags |= flag::COUNTED_UP;
        record(&mut self.hist.login, now - t);
        self.stats.established_total.inc();
        self.stats.established.add(1);
        self.wheel.cancel(slot);
        if self.cfg.workload != Workload::Idle
            && self.cfg.in_flight == 0
            && self.control.phase.load(Ordering::Relaxed) < phase::HOLD
        {
            // A random phase within one interval, so connections do not send in step; on the
            // tick grid, so a message is not counted late for waiting for the next tick.
            let jitter = self.rand_below(self.interval_ns);
            let first = self.on_grid(now + jitter);
            self.slab.header_mut(slot).s.due_ns = first;
            self.wheel.schedule(slot, self.tick_of(first));
        }
    }

    // ---- sending ----------------------------------------------------------------------

    /// A connection's state and its out area: inline in the header for ping and idle, in the
    /// slot for echo (frames up to max_frame).
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
    pub(super) fn send_due(&mut self, rings: &mut RingSet, slot: u32, now: u64) {
        if self.slab.header(slot).s.has(flag::SENDING) {
            // The previous send has not completed: this one goes when it does.
            self.stats.late.inc();
            return;
        }
        if self.cfg.workload == Workload::Chat {
            return self.send_due_chat(rings, slot, now);
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
        self.flush(rings, slot);
        if self.control.phase.load(Ordering::Relaxed) < phase::HOLD {
            self.wheel.schedule(slot, self.tick_of(next_due));
        }
    }

    /// Chat: stages every SEND that is due, each to a random peer of this load or (a share
    /// `--group-fraction`) a random group, after opening its entry in the ledger.
    fn send_due_chat(&mut self, rings: &mut RingSet, slot: u32, now: u64) {
        let Some(ledger) = self.control.ledger.clone() else { return };
        let me = self.cfg.first_user + slot as u64 * self.cfg.workers as u64 + self.id as u64;
        let (len, interval, chat) = (self.frame_len, self.interval_ns, self.cfg.chat);
        let body = vec![0x63u8; chat.body];
        let mut staged = 0u64;
        loop {
            let c = &self.slab.header(slot).s;
            if c.due_ns > now || c.out_len as usize + len > self.cfg.out_capacity() {
                break;
            }
            let group = chat.groups > 0 && (self.rand_below(1 << 20) as f64) < chat.group_fraction * (1 << 20) as f64;
            let to = if group {
                GROUP_BIT | self.rand_below(chat.groups)
            } else {
                let peer = self.cfg.first_user + self.rand_below(self.cfg.connections - 1);
                if peer >= me { peer + 1 } else { peer }
            };
            let expected = ledger.recipients(me, to);
            let (c, out) = self.out_area(slot);
            let (due, msg_id) = (c.due_ns, c.msg_seq + 1);
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
        let next_due = self.slab.header(slot).s.due_ns;
        self.stats.sent.add(staged);
        self.flush(rings, slot);
        if self.control.phase.load(Ordering::Relaxed) < phase::HOLD {
            self.wheel.schedule(slot, self.tick_of(next_due));
        }
    }

    /// Chat: stages the RECEIPTs owed for DELIVERs, as far as the out areas have room (the
    /// rest wait for their sends to complete).
    pub(super) fn send_waiting_receipts(&mut self, rings: &mut RingSet) {
        if self.receipts_waiting.is_empty() {
            return;
        }
        let len = proto::HEADER_LEN + 16;
        let room = self.cfg.out_capacity();
        let mut waiting = std::mem::take(&mut self.receipts_waiting);
        let mut touched = Vec::new();
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
            touched.push(slot);
            false
        });
        self.receipts_waiting = waiting;
        touched.dedup();
        for slot in touched {
            self.flush(rings, slot);
        }
    }

    /// Closed loop: stages messages until `in_flight` are outstanding (or the out area is full)
    /// and sends. Each is due now, so its corrected and uncorrected round trips are the same.
    pub(super) fn top_up(&mut self, rings: &mut RingSet, slot: u32, now: u64) {
        if self.control.phase.load(Ordering::Relaxed) >= phase::HOLD {
            return;
        }
        let (echo, len, want) = (self.cfg.workload == Workload::Echo, self.frame_len, self.cfg.in_flight);
        let mut staged = 0u64;
        let (c, out) = self.out_area(slot);
        if c.state != state::LOGGED_IN {
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
        self.flush(rings, slot);
    }

    /// Starts a send of everything staged, if none is in flight.
    pub(super) fn flush(&mut self, rings: &mut RingSet, slot: u32) {
        let (ring, file) = self.place(slot);
        let token = self.token(Op::Send as u8, slot);
        let (c, out) = self.out_area(slot);
        if c.has(flag::SENDING) || c.out_len == 0 {
            return;
        }
        c.flags |= flag::SENDING;
        c.send_len = c.out_len;
        c.inflight += 1;
        let needs_recv = !c.has(flag::RECV_ARMED);
        let entry = opcode::Send::new(Fixed(file), out.as_ptr(), c.send_len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(token);
        Self::push(rings, ring, entry);
        if needs_recv {
            // On demand: the reply to this send needs a receive (armed after the batch).
            self.rearm.push(slot);
        }
    }

    pub(super) fn on_send(&mut self, rings: &mut RingSet, slot: u32, res: i32) {
        let (c, out) = self.out_area(slot);
        c.inflight -= 1;
        let live = matches!(c.state, state::HELLO_SENT | state::LOGGED_IN);
        if res < 0 {
            c.flags &= !flag::SENDING;
            if live {
                self.lose(rings, slot, format!("send {:?}", Errno::from_raw(-res)));
            }
        } else {
            conn::sent(c, out, res as usize);
            self.stats.bytes_sent.add(res as u64);
            if live {
                let now = self.now_ns();
                if self.slab.header(slot).s.out_len > 0 {
                    self.flush(rings, slot);
                } else if self.cfg.in_flight > 0 {
                    self.top_up(rings, slot, now);
                } else if self.slab.header(slot).s.state == state::LOGGED_IN
                    && self.slab.header(slot).s.due_ns <= now
                    && self.control.phase.load(Ordering::Relaxed) < phase::HOLD
                {
                    self.send_due(rings, slot, now);
                }
            }
        }
        self.maybe_done(slot);
    }
}

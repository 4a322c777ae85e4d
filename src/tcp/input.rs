//! A segment for a connection with a control block (RFC 9293 §3.10.7.3-4, with RFC 5961's
//! checks): SYN-SENT, then the synchronized states in the RFC's order: sequence number, RST,
//! SYN, ACK, payload, FIN.

use super::endpoint::{App, CloseCause, ConnectError, Endpoint, now32};
use super::seq;
use super::tcb::{NO_CONN, State, flag};
use super::wire::{Segment, flags};

/// The most an ACK may lag `snd_una` and still be taken as a duplicate (RFC 5961 §5.2's
/// MAX.SND.WND: windows are never scaled here).
const MAX_SND_WND: u32 = u16::MAX as u32;

impl Endpoint {
    pub(super) fn rcv_window(&self, id: u32) -> u16 {
        if self.tcbs.get(id).has(flag::PAUSED) { 0 } else { self.cfg.rcv_wnd }
    }

    pub(super) fn segment_in_tcb<A: App, T: super::Tx>(
        &mut self,
        now: u64,
        id: u32,
        seg: &Segment<'_>,
        app: &mut A,
        tx: &mut T,
    ) {
        let state = self.tcbs.get(id).state();
        match state {
            State::Free => return,
            State::SynSent => return self.segment_in_syn_sent(now, id, seg, app, tx),
            _ => {}
        }
        let h = seg.hdr;
        let t = *self.tcbs.get(id);
        // A SYN on a synchronized connection, whatever its sequence number: challenge ACK
        // (RFC 5961 §4; an RST with it was dropped as a bad flag combination).
        if h.has(flags::SYN) {
            self.stats.challenge_acks += 1;
            return self.send_ack(id, tx);
        }
        // 1. Sequence number: does any of the segment fall in the receive window? The window
        // taken is the configured one even while paused (advertising 0): what the peer had in
        // flight is offered to the owner, which may hold it.
        let wnd = self.cfg.rcv_wnd as u32;
        let len = seg.seq_len();
        let acceptable = match (len, wnd) {
            (0, 0) => h.seq == t.rcv_nxt,
            (0, _) => seq::in_window(h.seq, t.rcv_nxt, wnd),
            (_, 0) => false,
            _ => seq::in_window(h.seq, t.rcv_nxt, wnd) || seq::in_window(h.seq.wrapping_add(len - 1), t.rcv_nxt, wnd),
        };
        if !acceptable {
            if h.has(flags::RST) {
                return;
            }
            self.stats.out_of_window += 1;
            if state == State::TimeWait && h.has(flags::FIN) {
                // The peer did not get our last ACK: it comes again, and TIME-WAIT restarts.
                let at = now + self.cfg.time_wait_ms as u64;
                self.arm(now, id, at);
            }
            return self.send_ack(id, tx);
        }
        // 2. RST: only an exact one resets; one elsewhere in the window gets a challenge ACK.
        if h.has(flags::RST) {
            if h.seq == t.rcv_nxt {
                self.stats.resets_in += 1;
                self.drop_tcb(id, CloseCause::Reset, app);
            } else {
                self.stats.challenge_acks += 1;
                self.send_ack(id, tx);
            }
            return;
        }
        // 4. ACK.
        if !h.has(flags::ACK) {
            return;
        }
        if !seq::between(t.snd_una.wrapping_sub(MAX_SND_WND), h.ack, t.snd_max()) {
            self.stats.bad_acks += 1;
            return self.send_ack(id, tx);
        }
        if seq::gt(h.ack, t.snd_una) {
            if !self.ack_advanced(now, id, h.ack, app) {
                return;
            }
        } else if h.ack == t.snd_una {
            // A duplicate ACK (RFC 5681 §2): nothing new, same window, data outstanding. With a
            // zero window the peer is not asking for anything: it holds back, not loses.
            let t = self.tcbs.get_mut(id);
            if t.in_flight() > 0
                && seg.payload.is_empty()
                && !h.has(flags::FIN)
                && h.window == t.snd_wnd
                && h.window > 0
            {
                t.dupacks = t.dupacks.saturating_add(1);
                if t.dupacks == 3 {
                    self.fast_retransmit(now, id);
                }
            }
        }
        if seq::ge(h.ack, t.snd_una) {
            let t = self.tcbs.get_mut(id);
            let reopened = t.snd_wnd == 0 && h.window > 0 && t.in_flight() > 0;
            t.snd_wnd = h.window;
            if reopened {
                // What was sent into the closed window was not taken: send it again now rather
                // than at the (backed-off) timer.
                self.go_back(id);
            }
        }
        let mut ack_now = false;
        // 5. Payload: in order only; what starts before rcv_nxt is trimmed, what starts after it
        // is dropped with a duplicate ACK (the peer sends it again).
        let t = *self.tcbs.get(id);
        let mut payload = seg.payload;
        let mut fin = h.has(flags::FIN);
        let mut at = h.seq;
        if seq::lt(at, t.rcv_nxt) {
            let old = t.rcv_nxt.wrapping_sub(at) as usize;
            if old > payload.len() {
                fin = false;
            }
            payload = payload.get(old..).unwrap_or(&[]);
            at = t.rcv_nxt;
        }
        if at != t.rcv_nxt {
            self.stats.out_of_order += 1;
            self.send_ack(id, tx);
            self.push_output(now, id, app, tx);
            return;
        }
        if !payload.is_empty() {
            if matches!(t.state(), State::Established | State::FinWait1 | State::FinWait2) {
                let take = payload.len().min(wnd as usize);
                let consumed = if t.has(flag::DETACHED) { take } else { app.input(t.conn, &payload[..take]).min(take) };
                self.stats.bytes_in += consumed as u64;
                let t = self.tcbs.get_mut(id);
                t.rcv_nxt = t.rcv_nxt.wrapping_add(consumed as u32);
                if consumed < payload.len() {
                    fin = false;
                    ack_now = true;
                    if consumed < take {
                        t.set(flag::PAUSED, true);
                    }
                } else if !t.has(flag::DETACHED) && app.input_held(t.conn) {
                    // Taken but held: the window closes now (an ACK says so).
                    t.set(flag::PAUSED, true);
                    ack_now = true;
                } else if t.has(flag::ACK_DELAYED) {
                    // Every second segment is acknowledged at once (RFC 5681 §4.2).
                    ack_now = true;
                } else {
                    t.set(flag::ACK_DELAYED, true);
                }
            } else {
                // Data after the peer's FIN: nothing to give it to.
                ack_now = true;
                fin = false;
            }
        }
        // 6. FIN, once everything before it has been taken.
        if fin && matches!(t.state(), State::Established | State::FinWait1 | State::FinWait2) {
            let t = self.tcbs.get_mut(id);
            t.rcv_nxt = t.rcv_nxt.wrapping_add(1);
            ack_now = true;
            let (conn, detached) = (t.conn, t.has(flag::DETACHED));
            match t.state() {
                State::Established => t.set_state(State::CloseWait),
                State::FinWait1 => t.set_state(State::Closing),
                _ => {}
            }
            if !detached {
                app.input_ended(conn);
            }
            if self.tcbs.get(id).state() == State::FinWait2 {
                self.enter_time_wait(now, id, app);
            }
        }
        let sent = self.push_output(now, id, app, tx);
        if ack_now && sent == 0 {
            self.send_ack(id, tx);
        }
        if self.tcbs.get(id).has(flag::ACK_DELAYED) {
            self.reschedule(now, id);
        }
    }

    /// New data (or our FIN) acknowledged. Returns false if the connection is gone.
    fn ack_advanced<A: App>(&mut self, now: u64, id: u32, ack: u32, app: &mut A) -> bool {
        let (rto_min, rto_max) = (self.cfg.rto_min_ms as u16, self.cfg.rto_max_ms as u16);
        let t = *self.tcbs.get(id);
        let acked = ack.wrapping_sub(t.snd_una);
        // Where our FIN sits, if one is queued: right after the owner's output.
        let fin_seq = (t.state().fin_queued() && !t.has(flag::DETACHED))
            .then(|| t.snd_una.wrapping_add(app.output_len(t.conn) as u32));
        let fin_acked = fin_seq.is_some_and(|f| seq::gt(ack, f));
        let data_acked = acked - fin_acked as u32;
        let t = self.tcbs.get_mut(id);
        if seq::gt(ack, t.snd_nxt) {
            // It acknowledges what was sent before a go-back-N retransmission.
            t.snd_nxt = ack;
        }
        t.snd_una = ack;
        t.retries = 0;
        t.dupacks = 0;
        if fin_acked {
            t.set(flag::FIN_SENT, false);
        }
        t.on_ack_rtt(ack, now32(now), rto_min, rto_max);
        // Slow start below ssthresh, then congestion avoidance (RFC 5681 §3.1).
        let mss = t.peer_mss as u32;
        let grow = if t.cwnd < t.ssthresh { acked.min(mss) } else { (mss * mss / t.cwnd.max(1) as u32).max(1) };
        t.cwnd = (t.cwnd as u32 + grow).min(u16::MAX as u32) as u16;
        let (conn, detached, idle) = (t.conn, t.has(flag::DETACHED), t.snd_una == t.snd_nxt);
        if data_acked > 0 && !detached {
            app.acked(conn, data_acked as usize);
        }
        if fin_acked {
            match self.tcbs.get(id).state() {
                State::FinWait1 => self.tcbs.get_mut(id).set_state(State::FinWait2),
                State::Closing => self.enter_time_wait(now, id, app),
                State::LastAck => {
                    self.drop_tcb(id, CloseCause::Closed, app);
                    return false;
                }
                _ => {}
            }
        }
        if self.tcbs.get(id).state() != State::TimeWait {
            // RFC 6298 §5.2-5.3: stop the timer when all is acknowledged, else restart it.
            if idle {
                self.disarm(now, id);
            } else {
                let at = now + self.tcbs.get(id).rto as u64;
                self.arm(now, id, at);
            }
        }
        true
    }

    /// Three duplicate ACKs: the segment at snd_una was lost. Everything after it was too, as far
    /// as a receiver like ours is concerned (in-order only), so go back to snd_una.
    fn fast_retransmit(&mut self, now: u64, id: u32) {
        self.stats.fast_retransmits += 1;
        let t = self.tcbs.get_mut(id);
        let mss = t.peer_mss as u32;
        t.ssthresh = (t.in_flight() / 2).max(2 * mss).min(u16::MAX as u32) as u16;
        t.cwnd = t.ssthresh;
        self.go_back(id);
        let at = now + self.tcbs.get(id).rto as u64;
        self.arm(now, id, at);
    }

    /// Rewinds snd_nxt to snd_una: what was sent goes again (not timed: Karn).
    pub(super) fn go_back(&mut self, id: u32) {
        let t = self.tcbs.get_mut(id);
        let max = t.snd_max();
        t.rtt_seq = max;
        t.set(flag::RECOVERING, true);
        t.set(flag::RTT_TIMING, false);
        t.set(flag::FIN_SENT, false);
        t.snd_nxt = t.snd_una;
    }

    /// SYN-SENT: waiting for the SYN-ACK.
    fn segment_in_syn_sent<A: App, T: super::Tx>(
        &mut self,
        now: u64,
        id: u32,
        seg: &Segment<'_>,
        app: &mut A,
        tx: &mut T,
    ) {
        let h = seg.hdr;
        let t = *self.tcbs.get(id);
        if h.has(flags::ACK) && h.ack != t.snd_nxt {
            self.stats.bad_acks += 1;
            return self.reset_answer(seg, tx);
        }
        if h.has(flags::RST) {
            if h.has(flags::ACK) {
                self.stats.resets_in += 1;
                self.stats.connect_failed += 1;
                self.free_tcb(id);
                app.connect_failed(t.conn, ConnectError::Refused);
            }
            return;
        }
        if !h.has(flags::SYN) || !h.has(flags::ACK) {
            // A SYN alone would be a simultaneous open: not supported, dropped.
            return;
        }
        let (rto_min, rto_max) = (self.cfg.rto_min_ms as u16, self.cfg.rto_max_ms as u16);
        let mut n = t;
        // RFC 6298 §5.7: the RTO backed off by SYN retries does not carry over to the data.
        self.init_tcb(&mut n, h.mss.unwrap_or(536));
        n.set_state(State::Established);
        n.rcv_nxt = h.seq.wrapping_add(1);
        n.snd_una = h.ack;
        n.snd_wnd = h.window;
        if t.retries == 0 {
            n.on_ack_rtt(h.ack, now32(now), rto_min, rto_max);
        } else {
            n.set(flag::RTT_TIMING, false);
        }
        n.retries = 0;
        *self.tcbs.get_mut(id) = n;
        self.disarm(now, id);
        self.stats.connected += 1;
        app.connected(t.conn);
        // The owner may have queued output already: the first data segment carries the ACK.
        if self.tcbs.is_used(id) && self.push_output(now, id, app, tx) == 0 {
            self.send_ack(id, tx);
        }
    }

    /// Our FIN is acknowledged and the peer's received: the owner is told, the block waits.
    pub(super) fn enter_time_wait<A: App>(&mut self, now: u64, id: u32, app: &mut A) {
        let t = self.tcbs.get_mut(id);
        if t.state() != State::TimeWait {
            self.time_wait += 1;
        }
        t.set_state(State::TimeWait);
        t.set(flag::ACK_DELAYED, false);
        let (conn, detached) = (t.conn, t.has(flag::DETACHED));
        t.conn = NO_CONN;
        t.set(flag::DETACHED, true);
        if !detached {
            self.stats.closed += 1;
            app.closed(conn, CloseCause::Closed);
        }
        let at = now + self.cfg.time_wait_ms as u64;
        self.arm(now, id, at);
    }

    /// The connection ends now: the owner is told why, the block is freed.
    pub(super) fn drop_tcb<A: App>(&mut self, id: u32, why: CloseCause, app: &mut A) {
        let t = *self.tcbs.get(id);
        self.free_tcb(id);
        match why {
            CloseCause::Closed => self.stats.closed += 1,
            CloseCause::Reset => self.stats.reset += 1,
            CloseCause::TimedOut => self.stats.timed_out += 1,
        }
        if !t.has(flag::DETACHED) {
            app.closed(t.conn, why);
        }
    }
}

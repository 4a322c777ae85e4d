//! Sending: data segments cut from the owner's output queue, ACKs, and the per-connection timer
//! (one wheel item per control block, standing for its retransmission / window-probe / TIME-WAIT
//! deadline and its delayed ACK).

use super::endpoint::{App, CloseCause, ConnectError, Endpoint, Tx, addrs, now32};
use super::seq;
use super::tcb::{State, flag, time_reached};
use super::wire::{self, HEADERS_LEN, flags};

impl Endpoint {
    /// Sends what the owner has queued and the windows allow, and the FIN after it once queued.
    /// Returns how many segments went out (each carries the ACK, so a delayed one is done).
    pub(super) fn push_output<A: App, T: Tx>(&mut self, now: u64, id: u32, app: &mut A, tx: &mut T) -> u32 {
        let mut segments = 0;
        loop {
            let t = *self.tcbs.get(id);
            if !t.state().may_send_data() || t.has(flag::DETACHED) {
                break;
            }
            let out_len = app.output_len(t.conn).min(u32::MAX as usize / 2) as u32;
            let sent = t.data_in_flight();
            let unsent = out_len.saturating_sub(sent);
            let wnd = (t.snd_wnd as u32).min(t.cwnd as u32);
            let room = wnd.saturating_sub(t.in_flight());
            let fin_due = t.state().fin_queued() && !t.has(flag::FIN_SENT);
            let mut n = unsent.min(room).min(t.peer_mss as u32);
            if n == 0 && !(fin_due && unsent == 0) {
                if unsent > 0 && !t.has(flag::TIMER) {
                    // Window closed with nothing in flight: the timer probes it (persist).
                    let at = now + t.rto as u64;
                    self.arm(now, id, at);
                }
                break;
            }
            let Some(buf) = tx.buffer() else {
                self.stats.tx_full += 1;
                if !t.has(flag::TIMER) {
                    let at = now + t.rto as u64;
                    self.arm(now, id, at);
                }
                break;
            };
            let mut copied = 0u32;
            while copied < n {
                let piece = app.output(t.conn, (sent + copied) as usize);
                let k = piece.len().min((n - copied) as usize);
                let at = HEADERS_LEN + copied as usize;
                match buf.get_mut(at..at + k) {
                    Some(dst) if k > 0 => dst.copy_from_slice(&piece[..k]),
                    _ => break,
                }
                copied += k as u32;
            }
            n = copied;
            let fin = fin_due && sent + n == out_len;
            if n == 0 && !fin {
                break;
            }
            let mut fl = flags::ACK;
            if n > 0 && sent + n == out_len {
                fl |= flags::PSH;
            }
            if fin {
                fl |= flags::FIN;
            }
            let window = self.rcv_window(id);
            let (local, remote) = addrs(&t);
            let hdr = self.header(local, remote, t.snd_nxt, t.rcv_nxt, fl, window, None);
            let Some(len) = wire::finish(buf, &hdr, n as usize) else { break };
            tx.send(len);
            self.stats.segments_out += 1;
            self.stats.bytes_out += n as u64;
            segments += 1;
            let t = self.tcbs.get_mut(id);
            if seq::lt(t.snd_nxt, t.snd_max()) {
                self.stats.retransmits += 1;
            }
            t.snd_nxt = t.snd_nxt.wrapping_add(n + fin as u32);
            t.set(flag::FIN_SENT, fin || t.has(flag::FIN_SENT));
            t.time_segment(t.snd_nxt, now32(now));
            self.ack_sent(id);
            let t = self.tcbs.get(id);
            if !t.has(flag::TIMER) {
                let at = now + t.rto as u64;
                self.arm(now, id, at);
            }
            if fin {
                break;
            }
        }
        segments
    }

    /// An ACK with the current numbers and window (a delayed one is done with it).
    pub(super) fn send_ack<T: Tx>(&mut self, id: u32, tx: &mut T) {
        let t = *self.tcbs.get(id);
        let (local, remote) = addrs(&t);
        let window = self.rcv_window(id);
        self.send_ctl(tx, local, remote, t.snd_nxt, t.rcv_nxt, flags::ACK, window, None);
        self.ack_sent(id);
    }

    /// A segment carried the ACK: a delayed one is no longer due, and its wheel item goes unless
    /// the deadline still needs it (then it may fire early, and is put back where it belongs).
    fn ack_sent(&mut self, id: u32) {
        let t = self.tcbs.get_mut(id);
        if t.has(flag::ACK_DELAYED) {
            t.set(flag::ACK_DELAYED, false);
            if !t.has(flag::TIMER) {
                self.wheel.cancel(id);
            }
        }
    }

    /// Sets the connection's deadline (retransmission, probe or TIME-WAIT) to `at`.
    pub(super) fn arm(&mut self, now: u64, id: u32, at: u64) {
        let t = self.tcbs.get_mut(id);
        t.timer_at = at as u32;
        t.set(flag::TIMER, true);
        self.reschedule(now, id);
    }

    pub(super) fn disarm(&mut self, now: u64, id: u32) {
        self.tcbs.get_mut(id).set(flag::TIMER, false);
        self.reschedule(now, id);
    }

    /// Puts the wheel item where the earlier of the deadline and a delayed ACK falls (or takes it
    /// off the wheel when neither is pending).
    pub(super) fn reschedule(&mut self, now: u64, id: u32) {
        let t = *self.tcbs.get(id);
        let deadline =
            t.has(flag::TIMER).then(|| now.saturating_add_signed(t.timer_at.wrapping_sub(now32(now)) as i32 as i64));
        let delack = t.has(flag::ACK_DELAYED).then(|| now + self.cfg.delayed_ack_ms as u64);
        match (deadline, delack) {
            (None, None) => self.wheel.cancel(id),
            (Some(a), None) | (None, Some(a)) => self.schedule(id, a),
            (Some(a), Some(b)) => self.schedule(id, a.min(b)),
        }
    }

    /// A control block's wheel item fired.
    pub(super) fn tcb_timer<A: App, T: Tx>(&mut self, now: u64, id: u32, app: &mut A, tx: &mut T) {
        if !self.tcbs.is_used(id) {
            return;
        }
        if self.tcbs.get(id).has(flag::ACK_DELAYED) {
            self.send_ack(id, tx);
        }
        let t = *self.tcbs.get(id);
        if t.has(flag::TIMER) && time_reached(now32(now), t.timer_at) {
            self.tcbs.get_mut(id).set(flag::TIMER, false);
            self.timer_expired(now, id, app, tx);
        }
        if self.tcbs.is_used(id) {
            self.reschedule(now, id);
        }
    }

    fn timer_expired<A: App, T: Tx>(&mut self, now: u64, id: u32, app: &mut A, tx: &mut T) {
        let t = *self.tcbs.get(id);
        let rto_max = self.cfg.rto_max_ms as u16;
        match t.state() {
            State::Free => {}
            State::TimeWait => {
                self.stats.time_wait_expired += 1;
                self.free_tcb(id);
            }
            State::SynSent => {
                if t.retries >= self.cfg.syn_retries || self.connect_timed_out(now, &t) {
                    self.stats.connect_failed += 1;
                    self.free_tcb(id);
                    return app.connect_failed(t.conn, ConnectError::TimedOut);
                }
                let t = self.tcbs.get_mut(id);
                t.retries += 1;
                t.back_off(rto_max);
                t.set(flag::RTT_TIMING, false);
                let (t, (local, remote)) = (*t, addrs(t));
                self.stats.retransmits += 1;
                let (wnd, mss) = (self.cfg.rcv_wnd, self.cfg.mss);
                self.send_ctl(tx, local, remote, t.snd_una, 0, flags::SYN, wnd, Some(mss));
                let at = self.syn_timer_at(now, &t, now + t.rto as u64);
                self.arm(now, id, at);
            }
            _ if t.in_flight() > 0 => {
                if t.retries >= self.cfg.max_retries {
                    return self.give_up(id, app, tx);
                }
                self.stats.rto_expired += 1;
                let t = self.tcbs.get_mut(id);
                t.retries += 1;
                t.back_off(rto_max);
                // RFC 5681 §3.1: ssthresh to half the flight, cwnd to one segment.
                let mss = t.peer_mss as u32;
                t.ssthresh = (t.in_flight() / 2).max(2 * mss).min(u16::MAX as u32) as u16;
                t.cwnd = mss as u16;
                t.dupacks = 0;
                let at = now + t.rto as u64;
                self.go_back(id);
                self.arm(now, id, at);
                self.push_output(now, id, app, tx);
            }
            _ => {
                let unsent = !t.has(flag::DETACHED) && app.output_len(t.conn) > 0;
                if unsent && t.snd_wnd == 0 {
                    // Zero-window probe: an old sequence number makes the peer answer with its
                    // window (as Linux's tcp_xmit_probe_skb does).
                    if t.retries >= self.cfg.max_retries {
                        return self.give_up(id, app, tx);
                    }
                    self.stats.window_probes += 1;
                    let t = self.tcbs.get_mut(id);
                    t.retries += 1;
                    t.back_off(rto_max);
                    let (t, (local, remote)) = (*t, addrs(t));
                    let window = self.rcv_window(id);
                    self.send_ctl(tx, local, remote, t.snd_una.wrapping_sub(1), t.rcv_nxt, flags::ACK, window, None);
                    self.arm(now, id, now + t.rto as u64);
                } else {
                    // Output that found no transmit buffer: try again now.
                    self.push_output(now, id, app, tx);
                }
            }
        }
    }

    /// Retries exhausted: an RST (at snd_una: the peer acknowledged nothing past it), and the
    /// owner is told.
    fn give_up<A: App, T: Tx>(&mut self, id: u32, app: &mut A, tx: &mut T) {
        let t = *self.tcbs.get(id);
        let (local, remote) = addrs(&t);
        self.stats.resets_out += 1;
        self.send_ctl(tx, local, remote, t.snd_una, t.rcv_nxt, flags::RST | flags::ACK, 0, None);
        self.drop_tcb(id, CloseCause::TimedOut, app);
    }
}

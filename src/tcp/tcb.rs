//! The per-connection control block: 64 bytes, `Pod`, in one dense array (see `table.rs`).
//!
//! What it does not hold is the point: no send buffer (unacknowledged output lives in the owner's
//! memory until [`App::acked`](super::App::acked)), no receive buffer (in-order input goes
//! straight to the owner, which consumes it or pauses), no timer node (the endpoint's wheel links
//! items by index). Times are the low 32 bits of the endpoint's millisecond clock, compared with
//! wrapping arithmetic (deadlines are never weeks away).

use bytemuck::{Pod, Zeroable};

use super::seq;
use super::table::{Key, Linked};

/// Connection states (RFC 9293 §3.3.2). `FREE` is zero, so a zeroed block is a free one.
/// LISTEN and SYN-RECEIVED are not here: a passive open lives in the listen queue
/// (`listen.rs`) until its handshake completes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Free = 0,
    SynSent,
    Established,
    FinWait1,
    FinWait2,
    Closing,
    TimeWait,
    CloseWait,
    LastAck,
}

impl State {
    const ALL: [State; 9] = [
        State::Free,
        State::SynSent,
        State::Established,
        State::FinWait1,
        State::FinWait2,
        State::Closing,
        State::TimeWait,
        State::CloseWait,
        State::LastAck,
    ];

    pub fn from_u8(v: u8) -> State {
        State::ALL.get(v as usize).copied().unwrap_or(State::Free)
    }

    /// Our FIN is queued or sent.
    pub fn fin_queued(self) -> bool {
        matches!(self, State::FinWait1 | State::Closing | State::LastAck)
    }

    /// The peer's FIN has been received: no more input.
    pub fn input_ended(self) -> bool {
        matches!(self, State::CloseWait | State::LastAck | State::Closing | State::TimeWait)
    }

    /// The owner may still have output to send (data goes out in these states).
    pub fn may_send_data(self) -> bool {
        matches!(self, State::Established | State::CloseWait | State::FinWait1 | State::Closing | State::LastAck)
    }
}

/// Bits of [`Tcb::flags`].
pub mod flag {
    /// Data was received and not yet acknowledged (delayed ACK pending).
    pub const ACK_DELAYED: u16 = 1;
    /// The owner takes no input: window 0, data not acknowledged.
    pub const PAUSED: u16 = 2;
    /// Our FIN is in flight (snd_nxt counts it).
    pub const FIN_SENT: u16 = 4;
    /// `timer_at` holds a retransmission / probe / TIME-WAIT deadline.
    pub const TIMER: u16 = 8;
    /// `rtt_seq`/`rtt_at` time a segment (Karn: never a retransmitted one).
    pub const RTT_TIMING: u16 = 16;
    /// After a go-back-N retransmission: `rtt_seq` is the highest sequence sent before it, which
    /// the peer may still acknowledge; no RTT sample until new data goes past it.
    pub const RECOVERING: u16 = 32;
    /// The owner has been told the connection is gone (or never had one): no more `App` calls.
    pub const DETACHED: u16 = 64;
    /// At least one valid RTT sample: srtt/rttvar are measured, not initial.
    pub const RTT_VALID: u16 = 128;
}

/// No owner connection (TIME-WAIT, after the owner was told).
pub const NO_CONN: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct Tcb {
    pub remote_ip: u32,
    pub local_ip: u32,
    pub remote_port: u16,
    pub local_port: u16,
    /// Oldest unacknowledged sequence number.
    pub snd_una: u32,
    /// Next sequence number to send.
    pub snd_nxt: u32,
    /// Next sequence number expected from the peer.
    pub rcv_nxt: u32,
    /// The owner's id for this connection ([`NO_CONN`] once detached).
    pub conn: u32,
    /// Hash-chain link, or free-list link while free (index + 1; 0 = none).
    pub link: u32,
    /// The segment being timed for RTT (or, while RECOVERING, the highest sequence sent).
    pub rtt_seq: u32,
    /// Deadline of the retransmission / zero-window probe / TIME-WAIT timer.
    pub timer_at: u32,
    /// When the timed segment was sent (ms, low 16 bits: an RTT is under a minute).
    pub rtt_at: u16,
    /// The peer's advertised window (no scaling: at most 65,535).
    pub snd_wnd: u16,
    /// Largest segment the peer takes.
    pub peer_mss: u16,
    /// Congestion window and slow-start threshold, bytes (no more than 65,535 can be in flight).
    pub cwnd: u16,
    pub ssthresh: u16,
    /// Smoothed RTT ×8 and RTT variance ×4, in ms (RFC 6298 kept as Linux does, in fixed point).
    pub srtt8: u16,
    pub rttvar4: u16,
    /// Current retransmission timeout, ms (backed off; at most 65,535).
    pub rto: u16,
    pub state: u8,
    /// Retransmissions (or unanswered probes) since the last forward progress.
    pub retries: u8,
    /// Duplicate ACKs in a row (three start a fast retransmission).
    pub dupacks: u8,
    pub _pad: u8,
    /// [`flag`] bits.
    pub flags: u16,
    pub _spare: u16,
}

pub const TCB_SIZE: usize = std::mem::size_of::<Tcb>();
const _: () = assert!(TCB_SIZE == 64);

impl Linked for Tcb {
    fn key(&self) -> Key {
        Key {
            local_ip: self.local_ip,
            remote_ip: self.remote_ip,
            local_port: self.local_port,
            remote_port: self.remote_port,
        }
    }
    fn link(&self) -> u32 {
        self.link
    }
    fn set_link(&mut self, link: u32) {
        self.link = link;
    }
}

impl Tcb {
    pub fn new(key: Key) -> Tcb {
        Tcb {
            local_ip: key.local_ip,
            remote_ip: key.remote_ip,
            local_port: key.local_port,
            remote_port: key.remote_port,
            ..Tcb::zeroed()
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state)
    }

    pub fn set_state(&mut self, s: State) {
        self.state = s as u8;
    }

    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub fn set(&mut self, f: u16, on: bool) {
        if on {
            self.flags |= f;
        } else {
            self.flags &= !f;
        }
    }

    /// Sequence space in flight (data, plus a FIN).
    pub fn in_flight(&self) -> u32 {
        self.snd_nxt.wrapping_sub(self.snd_una)
    }

    /// Output bytes sent and not yet acknowledged (the FIN not counted).
    pub fn data_in_flight(&self) -> u32 {
        self.in_flight() - self.has(flag::FIN_SENT) as u32
    }

    /// The highest sequence number sent so far (after a go-back-N, more than `snd_nxt`).
    pub fn snd_max(&self) -> u32 {
        if self.has(flag::RECOVERING) { seq::max(self.rtt_seq, self.snd_nxt) } else { self.snd_nxt }
    }

    /// Starts timing a segment ending at `end`, unless one is timed or it is a retransmission.
    pub fn time_segment(&mut self, end: u32, now: u32) {
        if self.has(flag::RTT_TIMING) {
            return;
        }
        if self.has(flag::RECOVERING) {
            if seq::le(end, self.rtt_seq) {
                return;
            }
            self.set(flag::RECOVERING, false);
        }
        self.rtt_seq = end;
        self.rtt_at = now as u16;
        self.set(flag::RTT_TIMING, true);
    }

    /// An ACK of `ack` arrived at `now`: takes an RTT sample if it covers the timed segment, and
    /// sets `rto` from it (RFC 6298 §2, clamped to `[rto_min, rto_max]`).
    pub fn on_ack_rtt(&mut self, ack: u32, now: u32, rto_min: u16, rto_max: u16) {
        if !self.has(flag::RTT_TIMING) || seq::lt(ack, self.rtt_seq) {
            return;
        }
        self.set(flag::RTT_TIMING, false);
        let r = (now as u16).wrapping_sub(self.rtt_at).min(8191);
        self.sample_rtt(r, rto_min, rto_max);
    }

    pub fn sample_rtt(&mut self, r: u16, rto_min: u16, rto_max: u16) {
        if !self.has(flag::RTT_VALID) {
            // First sample: SRTT = R, RTTVAR = R/2.
            self.srtt8 = r << 3;
            self.rttvar4 = r << 1;
            self.set(flag::RTT_VALID, true);
        } else {
            // RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|; SRTT = 7/8 SRTT + 1/8 R.
            let srtt = (self.srtt8 >> 3) as i32;
            let delta = (srtt - r as i32).unsigned_abs() as i32;
            let rttvar4 = self.rttvar4 as i32 - (self.rttvar4 as i32 >> 2) + delta;
            let srtt8 = self.srtt8 as i32 - (self.srtt8 as i32 >> 3) + r as i32;
            self.rttvar4 = rttvar4.clamp(0, u16::MAX as i32) as u16;
            self.srtt8 = srtt8.clamp(0, u16::MAX as i32) as u16;
        }
        // RTO = SRTT + max(G, 4 RTTVAR), G = 1 ms.
        let rto = (self.srtt8 >> 3) as u32 + (self.rttvar4 as u32).max(1);
        self.rto = rto.clamp(rto_min as u32, rto_max as u32) as u16;
    }

    /// The timer expired: doubles the RTO (RFC 6298 §5.5), at most `rto_max`.
    pub fn back_off(&mut self, rto_max: u16) {
        self.rto = (self.rto as u32 * 2).min(rto_max as u32) as u16;
    }
}

/// `a` is at or after `b` on the wrapping millisecond clock.
pub fn time_reached(now: u32, at: u32) -> bool {
    seq::ge(now, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_64_bytes_and_zero_is_free() {
        assert_eq!(std::mem::size_of::<Tcb>(), 64);
        assert_eq!(Tcb::zeroed().state(), State::Free);
        assert_eq!(State::from_u8(200), State::Free);
        for s in State::ALL {
            assert_eq!(State::from_u8(s as u8), s);
        }
    }

    #[test]
    fn rtt_estimator_follows_rfc6298() {
        let mut t = Tcb::zeroed();
        t.sample_rtt(100, 200, 60_000);
        // SRTT 100, RTTVAR 50: RTO = 100 + 200 = 300.
        assert_eq!((t.srtt8 >> 3, t.rttvar4 >> 2, t.rto), (100, 50, 300));
        t.sample_rtt(100, 200, 60_000);
        // RTTVAR = 37.5, SRTT = 100: RTO = 250.
        assert_eq!((t.srtt8 >> 3, t.rto), (100, 250));
        for _ in 0..50 {
            t.sample_rtt(100, 200, 60_000);
        }
        assert_eq!(t.rto, 200, "a steady RTT converges to the floor");
        t.back_off(60_000);
        assert_eq!(t.rto, 400);
        t.rto = 50_000;
        t.back_off(60_000);
        assert_eq!(t.rto, 60_000);
    }

    #[test]
    fn karn_no_sample_from_a_retransmission() {
        let mut t = Tcb::zeroed();
        t.rto = 1000;
        t.snd_nxt = 500;
        t.rtt_seq = 500;
        t.set(flag::RECOVERING, true);
        t.time_segment(400, 10);
        assert!(!t.has(flag::RTT_TIMING), "retransmitted data is not timed");
        t.time_segment(600, 10);
        assert!(t.has(flag::RTT_TIMING) && !t.has(flag::RECOVERING));
        t.on_ack_rtt(599, 50, 200, 60_000);
        assert!(t.has(flag::RTT_TIMING), "an ACK short of the timed segment takes no sample");
        t.on_ack_rtt(600, 50, 200, 60_000);
        assert_eq!(t.srtt8 >> 3, 40);
    }

    #[test]
    fn times_wrap() {
        assert!(time_reached(5, u32::MAX - 5));
        assert!(!time_reached(u32::MAX - 5, 5));
    }
}

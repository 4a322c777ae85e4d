//! Opening connections on schedule (paced, within the concurrency bound, from the source plan)
//! and logging them in.

use super::Conns;
use crate::load::config::Workload;
use crate::load::conn::{flag, state};
use crate::load::stats::{Phase, record};
use crate::proto::{self, Frame};
use crate::transport::Requests;

impl Conns {
    /// Starts the connects that are due, within the concurrency bound.
    pub(super) fn start_due_connects(&mut self, q: &mut Requests, now_ns: u64) {
        while self.next < self.total && self.connecting < self.concurrency {
            // Unpaced connects have no schedule: each is due when it is issued.
            let due = match self.cfg.connect_rate > 0.0 {
                true => self.cfg.connect_due(self.id, self.next).as_nanos() as u64,
                false => now_ns,
            };
            if due > now_ns {
                break;
            }
            self.start_connect(q, due, now_ns);
        }
    }

    /// Asks the data plane to open the next connection.
    fn start_connect(&mut self, q: &mut Requests, due_ns: u64, now_ns: u64) {
        // Slots are handed out in order and never freed (a client that comes back keeps its
        // slot), so the next slot is `next`.
        let Some(slot) = self.slab.alloc() else { return };
        debug_assert_eq!(slot as u64, self.next);
        self.next += 1;
        self.open(q, slot, due_ns, now_ns);
    }

    /// Opens `slot`'s connection from its place in the source plan (the same source each time
    /// it comes back: its last connection ended with an RST, so no TIME_WAIT holds the port).
    pub(super) fn open(&mut self, q: &mut Requests, slot: u32, due_ns: u64, now_ns: u64) {
        self.connecting += 1;
        let source =
            self.cfg.ports.source_of(self.global(slot)).expect("validated: the port plan covers every connection");
        let c = &mut self.slab.header_mut(slot).s;
        // A new connection: nothing of the last one's traffic carries over.
        let kept = c.flags & flag::EVER_UP;
        let attempts = c.attempts;
        let msg_seq = c.msg_seq;
        *c = bytemuck::Zeroable::zeroed();
        c.flags = kept | flag::CONNECT_PENDING;
        (c.attempts, c.msg_seq) = (attempts, msg_seq);
        c.state = state::CONNECTING;
        c.due_ns = due_ns;
        c.t_ns = now_ns;
        q.connect(slot, source, self.cfg.target);
    }

    /// The data plane answered a connect (or let go of one that was closed meanwhile).
    pub(super) fn connect_done(&mut self, slot: u32) {
        let c = &mut self.slab.header_mut(slot).s;
        if c.has(flag::CONNECT_PENDING) {
            c.flags &= !flag::CONNECT_PENDING;
            self.connecting -= 1;
        }
    }

    /// Sends HELLO; WELCOME must come within the connect timeout too.
    pub(super) fn login(&mut self, q: &mut Requests, slot: u32, now: u64) {
        let hello = Frame::Hello { user_id: self.user_of(slot), client_time_ns: now };
        let timeout = self.cfg.connect_timeout;
        let (c, out) = self.out_area(slot);
        c.state = state::HELLO_SENT;
        c.t_ns = now;
        c.out_len = proto::encode(&hello, out) as u16;
        q.send(slot);
        if !timeout.is_zero() {
            self.wheel.schedule(slot, self.tick_of(now + timeout.as_nanos() as u64));
        }
    }

    /// WELCOME arrived: counted up, and the connection's message schedule starts.
    pub(super) fn logged_in(&mut self, slot: u32, now: u64) {
        let c = self.slab.header_mut(slot);
        let (t, again) = (c.s.t_ns, c.s.has(flag::EVER_UP));
        c.s.flags |= flag::COUNTED_UP | flag::EVER_UP;
        c.s.attempts = 0;
        if again {
            self.stats.relogins.inc();
            // What it sent before and never saw settled still counts, from the side table.
            if let Some(ledger) = &self.control.ledger {
                ledger.retire_open(self.user_of(slot));
            }
        }
        record(&mut self.hist.login, now - t);
        self.stats.established_total.inc();
        self.stats.established.add(1);
        self.wheel.cancel(slot);
        if self.cfg.workload != Workload::Idle && self.cfg.in_flight == 0 && self.control.phase() < Phase::Hold {
            // The connection's own phase within one interval, so connections do not send in
            // step; on the tick grid, so a message is not counted late for waiting for the next
            // tick.
            let offset = self.cfg.first_message_offset(self.global(slot)).as_nanos() as u64;
            let first = self.on_grid(now + offset);
            self.slab.header_mut(slot).s.due_ns = first;
            self.wheel.schedule(slot, self.tick_of(first));
        }
    }
}

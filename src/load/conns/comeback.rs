//! Clients that come back (`--reconnect`, `--churn`): a connection that was let go waits out
//! its backoff (or its time away), then opens again on the same slot as the same user, paced
//! and within the connect concurrency; churn picks logged-in clients at random, lets what they
//! have outstanding finish, and has them say BYE.

use std::time::Duration;

use super::Conns;
use crate::load::conn::{flag, state};
use crate::load::shard::mix64;
use crate::load::stats::Phase;
use crate::proto::{self, Frame};
use crate::transport::{Close, Requests};

/// How long a churned client's graceful close may take before it is reset.
const LEAVE_LIMIT: Duration = Duration::from_secs(5);
/// Draws per churned leave: a drawn slot that is not logged in is passed over.
const CHURN_DRAWS: u32 = 4;

impl Conns {
    /// Whether a connection lost (or failed) now is opened again.
    pub(super) fn retrying(&self) -> bool {
        self.cfg.comeback.reconnect && self.control.phase() < Phase::Close
    }

    fn noise(&mut self) -> u64 {
        self.draws = self.draws.wrapping_add(1);
        mix64((self.id as u64) << 48 ^ self.draws ^ self.mono_base)
    }

    /// The data plane let go of `slot`: it waits to come back, or it is done.
    pub(super) fn parted(&mut self, slot: u32) {
        let c = &mut self.slab.header_mut(slot).s;
        let (wanted, churned) = (c.has(flag::COMEBACK), c.has(flag::CHURNED));
        c.flags &= !(flag::COMEBACK | flag::CHURNED);
        if !wanted || self.control.phase() >= Phase::Close {
            c.state = state::DONE;
            self.stats.finished.inc();
            return;
        }
        let (noise, now) = (self.noise(), self.now_ns());
        let c = &mut self.slab.header_mut(slot).s;
        c.attempts = c.attempts.saturating_add(1);
        let wait = match churned {
            true => self.cfg.comeback.away(noise),
            false => self.cfg.comeback.backoff(c.attempts, noise),
        };
        c.state = state::WAITING;
        c.due_ns = now + wait.as_nanos() as u64;
        let due = c.due_ns;
        self.wheel.schedule(slot, self.tick_of(due));
    }

    /// A waiting slot's timer: due (it queues for a connect) or not yet (the wheel's reach is
    /// 65 s).
    pub(super) fn on_waiting_timer(&mut self, slot: u32, now: u64) {
        let due = self.slab.header(slot).s.due_ns;
        if due <= now {
            self.comebacks.push_back(slot);
        } else {
            self.wheel.schedule(slot, self.tick_of(due));
        }
    }

    /// Opens the queued comebacks, within the concurrency bound and the reconnect pacing.
    pub(super) fn start_comebacks(&mut self, q: &mut Requests, now: u64) {
        while self.connecting < self.concurrency {
            let Some(&slot) = self.comebacks.front() else { return };
            if !self.pacer.take(now) {
                return;
            }
            self.comebacks.pop_front();
            if self.slab.header(slot).s.state != state::WAITING {
                continue;
            }
            self.stats.reconnects.inc();
            self.open(q, slot, now, now);
        }
    }

    /// Churn: draws this tick's leavers, and lets those whose traffic is done say BYE.
    pub(super) fn churn(&mut self, q: &mut Requests, now: u64) {
        let phase = self.control.phase();
        if self.cfg.comeback.churn <= 0.0 || !matches!(phase, Phase::Warmup | Phase::Messages) {
            self.churn_credit.restart(now);
            return;
        }
        let per_ns = self.cfg.comeback.churn_per_ns(self.stats.established.get());
        for _ in 0..self.churn_credit.due(now, per_ns) {
            for _ in 0..CHURN_DRAWS {
                let slot = (self.noise() % self.next.max(1)) as u32;
                let c = &mut self.slab.header_mut(slot).s;
                if c.state == state::LOGGED_IN && !c.has(flag::LEAVING) {
                    c.flags |= flag::LEAVING;
                    self.leaving.push(slot);
                    break;
                }
            }
        }
        let mut leaving = std::mem::take(&mut self.leaving);
        leaving.retain(|&slot| {
            let c = self.slab.header(slot).s;
            if c.state != state::LOGGED_IN || !c.has(flag::LEAVING) {
                return false;
            }
            let quiet = c.outstanding == 0 && c.out_len == 0 && c.receipts_owed == 0 && !c.has(flag::SENDING);
            if quiet {
                self.leave(q, slot, now);
            }
            !quiet
        });
        self.leaving = leaving;
    }

    /// Says BYE and closes gracefully; it comes back after its time away.
    fn leave(&mut self, q: &mut Requests, slot: u32, now: u64) {
        let (c, out) = self.out_area(slot);
        c.out_len = proto::encode(&Frame::Bye, out) as u16;
        c.state = state::CLOSING;
        c.flags = (c.flags & !flag::LEAVING) | flag::CHURNED | flag::COMEBACK;
        let was_up = c.has(flag::COUNTED_UP);
        c.flags &= !flag::COUNTED_UP;
        if was_up {
            self.stats.established.sub(1);
        }
        self.stats.churned.inc();
        self.wheel.schedule(slot, self.tick_of(now + LEAVE_LIMIT.as_nanos() as u64));
        q.send(slot);
        q.close(slot, Close::Graceful);
    }

    /// A churned client's close took too long: reset it.
    pub(super) fn on_leave_timer(&mut self, q: &mut Requests, slot: u32) {
        if self.slab.header(slot).s.has(flag::CHURNED) {
            q.close(slot, Close::Abort);
        }
    }
}

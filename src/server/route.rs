//! Chat routing on a server worker: SEND to a session here, on another worker (mailbox +
//! MSG_RING), to the offline store, or to a group's members (one mailbox item per destination
//! worker); RECEIPT relayed back to the sender the same way; logins published in the directory.

use std::sync::Arc;
use std::time::Instant;

use super::directory::{Directory, GEN_MASK, Place};
use super::mailbox::{Mailbox, Routed};
use super::offline::{Offer, OfflineLimits, OfflineStore, SHARDS};
use super::session::{self, Request, chat, flag, state};
use super::sessions::Sessions;
use crate::proto::{self, ErrorCode, Frame, GroupLayout, Kind};
use crate::stats::CloseReason;
use crate::transport::Requests;

/// What every worker shares for routing.
pub struct ChatShared {
    pub dir: Directory,
    pub store: OfflineStore,
    pub mail: Vec<Mailbox>,
    pub groups: GroupLayout,
}

impl ChatShared {
    pub fn new(workers: usize, users: u64, groups: u64, group_size: u32, limits: OfflineLimits) -> ChatShared {
        ChatShared {
            dir: Directory::new(users),
            store: OfflineStore::new(limits),
            mail: (0..workers).map(|_| Mailbox::default()).collect(),
            groups: GroupLayout { users, groups, size: group_size },
        }
    }
}

/// Where a frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Stored,
    Refused,
    Dropped,
}

fn kind_of(frame: &[u8]) -> Option<Kind> {
    frame.get(2).and_then(|&k| Kind::from_u8(k))
}

impl Sessions {
    fn place_of(&self, slot: u32) -> Place {
        Place { worker: self.id as u8, generation: self.slab.generation(slot) & GEN_MASK, slot }
    }

    /// Routes what the session's input asked for (see [`session::Request`]) and queues the
    /// sender's ACKs and NACKs, for which `on_bytes` kept room.
    pub(super) fn route_requests(&mut self, q: &mut Requests, slot: u32) {
        let list = std::mem::take(&mut *self.routing.list.borrow_mut());
        if list.is_empty() {
            return;
        }
        let frames = std::mem::take(&mut *self.routing.frames.borrow_mut());
        self.routing.reserved.set(0);
        let user = self.slab.header(slot).user_id;
        for request in &list {
            match *request {
                Request::Login { user } => self.login(q, slot, user),
                Request::Send { to_user, msg_id, ref frame } => {
                    let reply = match self.route_send(q, user, to_user, &frames[frame.clone()]) {
                        Ok(()) => Frame::Ack { msg_id },
                        Err(code) => {
                            self.stats.protocol_errors[code.index()].inc();
                            Frame::nack(msg_id, code)
                        }
                    };
                    let (_, mut out) = session::split(self.slab.session(slot), self.cfg.max_frame);
                    if out.push(&reply) {
                        self.stats.frames_out[reply.kind().index()].inc();
                    }
                }
                Request::Receipt { from_user, msg_id } => {
                    let notice = proto::encode_vec(&Frame::ReceiptNotice { to_user: user, msg_id });
                    if self.route_frame(q, from_user, &notice) != Outcome::Delivered {
                        self.stats.chat.notices_dropped.inc();
                    }
                }
            }
        }
        // Give the buffers back for the next input (no allocation in steady state).
        let (mut list, mut frames) = (list, frames);
        list.clear();
        frames.clear();
        *self.routing.list.borrow_mut() = list;
        *self.routing.frames.borrow_mut() = frames;
    }

    fn route_send(&mut self, q: &mut Requests, from: u64, to: u64, frame: &[u8]) -> Result<(), ErrorCode> {
        if let Some(group) = self.chat.groups.group_of(to) {
            self.fan_out(q, from, group, frame);
            return Ok(());
        }
        if !self.chat.dir.contains(to) {
            return Err(ErrorCode::UnknownRecipient);
        }
        match self.route_frame(q, to, frame) {
            Outcome::Delivered | Outcome::Stored => Ok(()),
            Outcome::Refused => Err(ErrorCode::OfflineQueueFull),
            Outcome::Dropped => Ok(()),
        }
    }

    /// Sends `frame` to `user` wherever the user is: a session here, another worker, or (a
    /// DELIVER only) the offline store.
    fn route_frame(&mut self, q: &mut Requests, user: u64, frame: &[u8]) -> Outcome {
        let storable = kind_of(frame) == Some(Kind::Deliver);
        let mut place = self.chat.dir.get(user);
        // Bounded: each round follows a login that happened meanwhile.
        for _ in 0..4 {
            match place {
                Some(p) if p.worker as usize == self.id && self.deliver_local(q, user, p, frame) => {
                    return Outcome::Delivered;
                }
                Some(p) if p.worker as usize == self.id => {}
                Some(p) => {
                    self.post(q, p.worker as usize, Routed::ToSession { user, place: p, frame: frame.into() });
                    return Outcome::Delivered;
                }
                None => {}
            }
            if !storable {
                return Outcome::Dropped;
            }
            match self.chat.store.offer(&self.chat.dir, user, frame, Instant::now()) {
                Offer::Stored => {
                    self.stats.chat.offline_stored.inc();
                    return Outcome::Stored;
                }
                Offer::Full => {
                    self.stats.chat.offline_refused.inc();
                    return Outcome::Refused;
                }
                Offer::Online(p) if Some(p) == place => break,
                Offer::Online(p) => place = Some(p),
            }
        }
        Outcome::Dropped
    }

    /// A group message: members here get it now; each other worker gets one mailbox item with
    /// its members; offline members' copies go to the store.
    fn fan_out(&mut self, q: &mut Requests, from: u64, group: u64, frame: &[u8]) {
        self.stats.chat.group_sends.inc();
        let mut per_worker = std::mem::take(&mut self.fanout);
        per_worker.resize_with(self.chat.mail.len(), Vec::new);
        let members: Vec<u64> = self.chat.groups.members(group).filter(|&m| m != from).collect();
        let mut local = Vec::new();
        for m in members {
            match self.chat.dir.get(m) {
                Some(p) if p.worker as usize == self.id => local.push((m, p)),
                Some(p) => per_worker[p.worker as usize].push((m, p)),
                None => {
                    if self.route_frame(q, m, frame) != Outcome::Stored {
                        // Online meanwhile (delivered) or refused by a bound.
                        if self.chat.dir.get(m).is_none() {
                            self.stats.chat.group_member_dropped.inc();
                        }
                    }
                }
            }
        }
        let shared: Option<Arc<[u8]>> = per_worker.iter().any(|v| !v.is_empty()).then(|| frame.into());
        for (w, members) in per_worker.iter_mut().enumerate() {
            if !members.is_empty() {
                let item =
                    Routed::Group { members: std::mem::take(members), frame: shared.clone().expect("made above") };
                self.post(q, w, item);
            }
        }
        self.fanout = per_worker;
        for (m, p) in local {
            self.deliver_member(q, m, p, frame);
        }
    }

    fn deliver_member(&mut self, q: &mut Requests, user: u64, place: Place, frame: &[u8]) {
        if !self.deliver_local(q, user, place, frame) && self.route_frame(q, user, frame) == Outcome::Refused {
            self.stats.chat.group_member_dropped.inc();
        }
    }

    /// Queues `frame` to the session at `place` if it is still `user`'s and logged in here.
    /// A session whose out area is full is closed as a slow consumer (its user's messages then
    /// go to the offline store until it logs in again).
    fn deliver_local(&mut self, q: &mut Requests, user: u64, place: Place, frame: &[u8]) -> bool {
        let slot = place.slot;
        if slot >= self.slab.high_water() || self.slab.generation(slot) & GEN_MASK != place.generation {
            return false;
        }
        let s = self.slab.header(slot);
        if s.state != state::LOGGED_IN || s.user_id != user || s.has(flag::CLOSED | flag::CLOSE_AFTER_SEND) {
            return false;
        }
        let (_, mut out) = session::split(self.slab.session(slot), self.cfg.max_frame);
        if !out.push_encoded(frame) {
            self.close_now(q, slot, CloseReason::SlowConsumer);
            return false;
        }
        if let Some(kind) = kind_of(frame) {
            self.stats.frames_out[kind.index()].inc();
            if kind == Kind::Deliver {
                self.stats.chat.delivered.inc();
            }
        }
        q.send(slot);
        true
    }

    /// Hands `item` to worker `to` and wakes it (IORING_OP_MSG_RING from our ring 0), unless a
    /// wake-up is already on its way. Before every worker has started, mail waits for the
    /// destination's next tick.
    fn post(&mut self, q: &mut Requests, to: usize, item: Routed) {
        self.stats.chat.forwarded.inc();
        if !self.chat.mail[to].post(item) {
            return;
        }
        self.stats.chat.wakes_sent.inc();
        q.wake(to);
    }

    /// Takes this worker's mail (on a MSG_RING completion, and at every tick as a safety net).
    pub(super) fn take_mail(&mut self, q: &mut Requests) {
        let mut items = std::mem::take(&mut self.mail_buf);
        self.chat.mail[self.id].take(&mut items);
        self.stats.chat.mail_taken.add(items.len() as u64);
        for item in items.drain(..) {
            match item {
                Routed::ToSession { user, place, frame } => {
                    if !self.deliver_local(q, user, place, &frame) {
                        let outcome = self.route_frame(q, user, &frame);
                        if outcome == Outcome::Refused
                            || (outcome == Outcome::Dropped && kind_of(&frame) == Some(Kind::Deliver))
                        {
                            self.stats.chat.group_member_dropped.inc();
                        } else if outcome == Outcome::Dropped {
                            self.stats.chat.notices_dropped.inc();
                        }
                    }
                }
                Routed::Group { members, frame } => {
                    for (m, p) in members {
                        self.deliver_member(q, m, p, &frame);
                    }
                }
                Routed::Replaced { user, place } => self.replaced(q, user, place),
            }
        }
        self.mail_buf = items;
    }

    /// Publishes a login in the directory (closing an older session of the same user) and
    /// hands the session what was stored for it.
    fn login(&mut self, q: &mut Requests, slot: u32, user: u64) {
        if !self.chat.dir.contains(user) {
            return;
        }
        let place = self.place_of(slot);
        if let Some(old) = self.chat.dir.publish(user, place) {
            if old.worker as usize == self.id {
                self.replaced(q, user, old);
            } else {
                self.post(q, old.worker as usize, Routed::Replaced { user, place: old });
            }
        }
        self.slab.header_mut(slot).chat |= chat::LISTED;
        self.drain_offline(q, slot);
    }

    /// Moves stored messages into the session's out area, as many as fit; the rest follow as
    /// sends make room.
    pub(super) fn drain_offline(&mut self, q: &mut Requests, slot: u32) {
        let user = self.slab.header(slot).user_id;
        let mut frames = std::mem::take(&mut self.offline_buf);
        let (_, out) = session::split(self.slab.session(slot), self.cfg.max_frame);
        self.chat.store.take(user, out.room(), Instant::now(), &mut frames);
        for frame in frames.drain(..) {
            let (_, mut out) = session::split(self.slab.session(slot), self.cfg.max_frame);
            if out.push_encoded(&frame) {
                self.stats.frames_out[Kind::Deliver.index()].inc();
                self.stats.chat.delivered.inc();
                self.stats.chat.offline_delivered.inc();
            } else if self.chat.store.offer(&self.chat.dir, user, &frame, Instant::now()) != Offer::Stored {
                // Cannot happen (take fits the room); counted, not silent, if it ever does.
                self.stats.chat.group_member_dropped.inc();
            }
        }
        self.offline_buf = frames;
        let pending = self.chat.store.has(user);
        let s = self.slab.header_mut(slot);
        if pending {
            s.chat |= chat::OFFLINE_PENDING;
        } else {
            s.chat &= !chat::OFFLINE_PENDING;
        }
        if self.slab.header(slot).has_output() {
            q.send(slot);
        }
    }

    /// A newer session of `user` logged in: this one says ERROR 9 and closes.
    fn replaced(&mut self, q: &mut Requests, user: u64, place: Place) {
        let slot = place.slot;
        if slot >= self.slab.high_water() || self.slab.generation(slot) & GEN_MASK != place.generation {
            return;
        }
        let s = self.slab.header_mut(slot);
        if s.state != state::LOGGED_IN || s.user_id != user || s.has(flag::CLOSED | flag::CLOSE_AFTER_SEND) {
            return;
        }
        // The directory already names the new session.
        s.chat &= !(chat::LISTED | chat::OFFLINE_PENDING);
        let code = ErrorCode::LoggedInElsewhere;
        self.stats.protocol_errors[code.index()].inc();
        let (_, mut out) = session::split(self.slab.session(slot), self.cfg.max_frame);
        if out.push(&Frame::error(code, code.name())) {
            self.stats.frames_out[Kind::Error.index()].inc();
        }
        self.apply(q, slot, session::Verdict::CloseAfterSend(CloseReason::Replaced));
    }

    /// The session stops receiving messages: new ones for its user go elsewhere (a newer
    /// session, or the offline store).
    pub(super) fn unlist(&mut self, slot: u32) {
        let s = self.slab.header_mut(slot);
        if s.chat & chat::LISTED == 0 {
            return;
        }
        s.chat &= !(chat::LISTED | chat::OFFLINE_PENDING);
        let user = s.user_id;
        let place = self.place_of(slot);
        self.chat.dir.withdraw(user, place);
    }

    /// Per tick: expire one shard of the offline store; worker 0 publishes the store's totals.
    pub(super) fn chat_tick(&mut self, q: &mut Requests) {
        self.take_mail(q);
        self.sweep_shard = (self.sweep_shard + 1) % SHARDS;
        if self.sweep_shard % self.chat.mail.len() == self.id {
            self.chat.store.sweep(self.sweep_shard, Instant::now());
        }
        if self.id == 0 {
            let (messages, bytes) = self.chat.store.held();
            self.stats.chat.offline_held_messages.set(messages);
            self.stats.chat.offline_held_bytes.set(bytes);
            self.stats.chat.offline_expired.set(self.chat.store.expired.load(std::sync::atomic::Ordering::Relaxed));
        }
    }
}

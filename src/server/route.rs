//! Chat routing on a server worker, and the delivery guarantee (DESIGN "Chat delivery
//! guarantee"): a SEND is ACKed only once its message is reserved in the budget (`quota.rs`),
//! so nothing after the ACK can run out of room; from then on the message is always held by
//! exactly one of: a queue to another worker (`mailbox.rs`), the recipient session's
//! delivered-but-unreceipted list (`pending.rs`), or the store (`offline.rs`), until the
//! recipient's RECEIPT releases it (or its TTL does, counted).
//!
//! A DELIVER goes to a session here, to another worker (mailbox + MSG_RING), or to the store; a
//! group's copies go once per destination worker. A session whose out area is full is not
//! closed: its messages wait in the store, in order, and it drains them as sends make room. A
//! RECEIPT is relayed only for a message delivered to that session; when a session ends, what it
//! never receipted goes back to the store (in front, in order) or to the user's newer session.

use std::collections::VecDeque;
use std::time::Instant;

use super::directory::{Directory, GEN_MASK, Place};
use super::mailbox::{Mailbox, Routed};
use super::offline::{Offer, OfflineLimits, OfflineStore, SHARDS, deliver_ids};
use super::quota::charge;
use super::session::{self, Request, chat, flag, state};
use super::sessions::Sessions;
use crate::proto::{self, ErrorCode, Frame, GroupLayout, Kind};
use crate::transport::Requests;

/// What every worker shares for routing.
pub struct ChatShared {
    pub dir: Directory,
    pub store: OfflineStore,
    pub mail: Vec<Mailbox>,
    pub groups: GroupLayout,
}

impl ChatShared {
    pub fn new(
        workers: usize,
        users: u64,
        groups: u64,
        group_size: u32,
        limits: OfflineLimits,
    ) -> std::io::Result<ChatShared> {
        Ok(ChatShared {
            dir: Directory::try_new(users)?,
            store: OfflineStore::new(users, limits)?,
            mail: (0..workers).map(|_| Mailbox::default()).collect(),
            groups: GroupLayout { users, groups, size: group_size },
        })
    }
}

fn kind_of(frame: &[u8]) -> Option<Kind> {
    frame.get(2).and_then(|&k| Kind::from_u8(k))
}

impl Sessions {
    fn place_of(&self, slot: u32) -> Place {
        Place { worker: self.id as u8, generation: self.slab.generation(slot) & GEN_MASK, slot }
    }

    /// Routes what the session's input asked for (see [`session::Request`]) and queues the
    /// sender's ACKs and NACKs, for which `on_bytes` kept room. `closing`: the same input closed
    /// the session (BYE, a fatal frame): a HELLO in it neither takes the user over nor drains
    /// their store. Stored messages are drained last, so they never take an ACK's room.
    pub(super) fn route_requests(&mut self, q: &mut Requests, slot: u32, closing: bool) {
        let list = std::mem::take(&mut *self.routing.list.borrow_mut());
        if list.is_empty() {
            return;
        }
        let frames = std::mem::take(&mut *self.routing.frames.borrow_mut());
        self.routing.reserved.set(0);
        for request in &list {
            let user = self.slab.header(slot).user_id;
            match *request {
                Request::Login { user } if !closing => self.login(q, slot, user),
                Request::Login { .. } => {}
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
                Request::Receipt { from_user, msg_id } => self.receipt(q, slot, user, from_user, msg_id),
            }
        }
        if !closing && self.slab.header(slot).chat & chat::OFFLINE_PENDING != 0 {
            self.drain_offline(q, slot);
        }
        // Give the buffers back for the next input (no allocation in steady state).
        let (mut list, mut frames) = (list, frames);
        list.clear();
        frames.clear();
        *self.routing.list.borrow_mut() = list;
        *self.routing.frames.borrow_mut() = frames;
    }

    /// A SEND: reserved whole (every copy of a group message) and delivered, or refused.
    fn route_send(&mut self, q: &mut Requests, from: u64, to: u64, frame: &[u8]) -> Result<(), ErrorCode> {
        let bytes = charge(frame.len());
        if let Some(group) = self.chat.groups.group_of(to) {
            let members: Vec<u64> = self.chat.groups.members(group).filter(|&m| m != from).collect();
            if !self.chat.store.quotas().reserve(from, &members, bytes) {
                self.stats.chat.offline_refused.inc();
                return Err(ErrorCode::OfflineQueueFull);
            }
            self.stats.chat.group_sends.inc();
            self.fan_out(q, &members, frame);
            return Ok(());
        }
        if !self.chat.dir.contains(to) {
            return Err(ErrorCode::UnknownRecipient);
        }
        if !self.chat.store.quotas().reserve(from, &[to], bytes) {
            self.stats.chat.offline_refused.inc();
            return Err(ErrorCode::OfflineQueueFull);
        }
        self.deliver(q, to, frame);
        Ok(())
    }

    /// Takes a reserved DELIVER to `user` wherever the user is: a session here (or its overflow
    /// in the store), another worker, or the store. It cannot fail: its room is reserved.
    fn deliver(&mut self, q: &mut Requests, user: u64, frame: &[u8]) {
        let mut place = self.chat.dir.get(user);
        // Bounded: each round follows a login that happened meanwhile.
        for _ in 0..4 {
            match place {
                Some(p) if p.worker as usize == self.id && self.deliver_local(q, user, p, frame) => return,
                Some(p) if p.worker as usize == self.id => {}
                Some(p) => {
                    return self.post(q, p.worker as usize, Routed::ToSession { user, place: p, frame: frame.into() });
                }
                None => {}
            }
            match self.chat.store.offer(&self.chat.dir, user, frame, Instant::now()) {
                Offer::Stored => {
                    self.stats.chat.offline_stored.inc();
                    return;
                }
                Offer::Online(p) if Some(p) == place => break,
                Offer::Online(p) => place = Some(p),
            }
        }
        // Logins kept racing with it: keep it anyway; the next login or drain takes it.
        self.chat.store.push(user, frame.into(), Instant::now());
        self.stats.chat.offline_stored.inc();
    }

    /// The session at `place`, if it is still `user`'s, logged in here and not closing.
    fn session_of(&self, user: u64, place: Place) -> Option<u32> {
        let slot = place.slot;
        if slot >= self.slab.high_water() || self.slab.generation(slot) & GEN_MASK != place.generation {
            return None;
        }
        let s = self.slab.header(slot);
        let open = s.state == state::LOGGED_IN && s.user_id == user && !s.has(flag::CLOSED | flag::CLOSE_AFTER_SEND);
        open.then_some(slot)
    }

    /// Queues a reserved DELIVER to the session at `place`, if it is still `user`'s (`false`:
    /// route it again). A session with stored messages waiting, or no room, gets it through the
    /// store, in order, as it drains.
    fn deliver_local(&mut self, q: &mut Requests, user: u64, place: Place, frame: &[u8]) -> bool {
        let Some(slot) = self.session_of(user, place) else { return false };
        if self.slab.header(slot).chat & chat::OFFLINE_PENDING == 0 {
            let (_, mut out) = session::split(self.slab.session(slot), self.cfg.max_frame);
            if out.push_encoded(frame) {
                let (from_user, msg_id) = deliver_ids(frame);
                self.pending.add(slot, from_user, msg_id, frame.into());
                self.stats.frames_out[Kind::Deliver.index()].inc();
                self.stats.chat.delivered.inc();
                q.send(slot);
                return true;
            }
        }
        self.chat.store.push(user, frame.into(), Instant::now());
        self.stats.chat.overflowed.inc();
        self.slab.header_mut(slot).chat |= chat::OFFLINE_PENDING;
        true
    }

    /// A RECEIPT notice (informational, never stored) to the sender's session wherever it is;
    /// one that finds no session, or no room, is counted and dropped.
    fn relay_notice(&mut self, q: &mut Requests, sender: u64, frame: &[u8]) {
        match self.chat.dir.get(sender) {
            Some(p) if p.worker as usize == self.id => self.notice_local(q, sender, p, frame),
            Some(p) => {
                self.post(q, p.worker as usize, Routed::ToSession { user: sender, place: p, frame: frame.into() })
            }
            None => self.stats.chat.notices_dropped.inc(),
        }
    }

    fn notice_local(&mut self, q: &mut Requests, sender: u64, place: Place, frame: &[u8]) {
        let Some(slot) = self.session_of(sender, place) else {
            return self.stats.chat.notices_dropped.inc();
        };
        let (_, mut out) = session::split(self.slab.session(slot), self.cfg.max_frame);
        if !out.push_encoded(frame) {
            return self.stats.chat.notices_dropped.inc();
        }
        self.stats.frames_out[Kind::ReceiptNotice.index()].inc();
        q.send(slot);
    }

    /// The recipient's RECEIPT: relayed (and the message's reservation released) only for a
    /// message this session was delivered and holds; any other is counted and dropped.
    fn receipt(&mut self, q: &mut Requests, slot: u32, user: u64, from_user: u64, msg_id: u64) {
        let Some(m) = self.pending.receipt(slot, from_user, msg_id) else {
            return self.stats.chat.receipts_refused.inc();
        };
        self.chat.store.quotas().release(from_user, user, charge(m.frame.len()));
        self.stats.chat.receipted.inc();
        let notice = proto::encode_vec(&Frame::ReceiptNotice { to_user: user, msg_id });
        self.relay_notice(q, from_user, &notice);
    }

    /// A group message's reserved copies: members here get theirs now; each other worker gets
    /// one mailbox item with its members; offline members' copies go to the store.
    fn fan_out(&mut self, q: &mut Requests, members: &[u64], frame: &[u8]) {
        let mut per_worker = std::mem::take(&mut self.fanout);
        per_worker.resize_with(self.chat.mail.len(), Vec::new);
        for &m in members {
            match self.chat.dir.get(m) {
                Some(p) if p.worker as usize == self.id => {
                    if !self.deliver_local(q, m, p, frame) {
                        self.deliver(q, m, frame);
                    }
                }
                Some(p) => per_worker[p.worker as usize].push((m, p)),
                None => self.deliver(q, m, frame),
            }
        }
        if per_worker.iter().any(|v| !v.is_empty()) {
            let shared: std::sync::Arc<[u8]> = frame.into();
            for (w, members) in per_worker.iter_mut().enumerate() {
                if !members.is_empty() {
                    let item = Routed::Group { members: std::mem::take(members), frame: shared.clone() };
                    self.post(q, w, item);
                }
            }
        }
        self.fanout = per_worker;
    }

    /// Hands `item` to worker `to` and wakes it (IORING_OP_MSG_RING from our ring 0), unless a
    /// wake-up is already on its way. Before every worker has started, mail waits for the
    /// destination's next tick. The queue is bounded by the budget: every DELIVER in it is
    /// reserved, and notices are at most one per receipted message.
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
                Routed::ToSession { user, place, frame } if kind_of(&frame) == Some(Kind::Deliver) => {
                    if !self.deliver_local(q, user, place, &frame) {
                        self.deliver(q, user, &frame);
                    }
                }
                // A notice whose sender moved meanwhile is dropped (informational), counted.
                Routed::ToSession { user, place, frame } => self.notice_local(q, user, place, &frame),
                Routed::Group { members, frame } => {
                    for (m, p) in members {
                        if !self.deliver_local(q, m, p, &frame) {
                            self.deliver(q, m, &frame);
                        }
                    }
                }
                Routed::Replaced { user, place } => self.replaced(q, user, place),
            }
        }
        self.mail_buf = items;
    }

    /// Publishes a login in the directory (closing an older session of the same user); what
    /// was stored for the user is drained once the input's requests are routed.
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
        let s = self.slab.header_mut(slot);
        s.chat |= chat::LISTED;
        if self.chat.store.has(user) {
            s.chat |= chat::OFFLINE_PENDING;
        }
    }

    /// Moves stored messages into the session's out area, as many as fit; the rest follow as
    /// sends make room.
    pub(super) fn drain_offline(&mut self, q: &mut Requests, slot: u32) {
        let user = self.slab.header(slot).user_id;
        let mut frames = std::mem::take(&mut self.offline_buf);
        let (_, out) = session::split(self.slab.session(slot), self.cfg.max_frame);
        self.chat.store.take(user, out.room(), Instant::now(), &mut frames);
        let mut left = VecDeque::new();
        for frame in frames.drain(..) {
            let (_, mut out) = session::split(self.slab.session(slot), self.cfg.max_frame);
            if left.is_empty() && out.push_encoded(&frame) {
                let (from_user, msg_id) = deliver_ids(&frame);
                self.stats.frames_out[Kind::Deliver.index()].inc();
                self.stats.chat.delivered.inc();
                self.stats.chat.offline_delivered.inc();
                self.pending.add(slot, from_user, msg_id, frame);
            } else {
                // Cannot happen (take fits the room); kept, in order, if it ever does.
                left.push_back(frame);
            }
        }
        self.offline_buf = frames;
        self.chat.store.return_front(user, &mut left, Instant::now());
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
        let Some(slot) = self.session_of(user, place) else { return };
        // The directory already names the new session.
        self.slab.header_mut(slot).chat &= !(chat::LISTED | chat::OFFLINE_PENDING);
        let code = ErrorCode::LoggedInElsewhere;
        self.stats.protocol_errors[code.index()].inc();
        let (_, mut out) = session::split(self.slab.session(slot), self.cfg.max_frame);
        if out.push(&Frame::error(code, code.name())) {
            self.stats.frames_out[Kind::Error.index()].inc();
        }
        self.apply(q, slot, session::Verdict::CloseAfterSend(crate::stats::CloseReason::Replaced));
    }

    /// The session stops receiving messages: new ones for its user go elsewhere (a newer
    /// session, or the store).
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

    /// The session is gone: what it was delivered and never receipted goes back to the store,
    /// in front and in order, or (the user is online again) to the newer session.
    pub(super) fn put_back(&mut self, q: &mut Requests, slot: u32) {
        let unreceipted = self.pending.take_all(slot);
        if unreceipted.is_empty() {
            return;
        }
        let user = self.slab.header(slot).user_id;
        self.stats.chat.put_back.add(unreceipted.len() as u64);
        let mut frames: VecDeque<Box<[u8]>> = unreceipted.into_iter().map(|m| m.frame).collect();
        if !self.chat.store.put_back(&self.chat.dir, user, &mut frames, Instant::now()) {
            for frame in frames {
                self.deliver(q, user, &frame);
            }
        }
    }

    /// Per tick: mail as a safety net, expire one shard of the store; worker 0 publishes the
    /// shared totals.
    pub(super) fn chat_tick(&mut self, q: &mut Requests) {
        self.take_mail(q);
        self.sweep_shard = (self.sweep_shard + 1) % SHARDS;
        if self.sweep_shard % self.chat.mail.len() == self.id {
            self.chat.store.sweep(self.sweep_shard, Instant::now());
        }
        self.stats.chat.pending.set(self.pending.len() as u64);
        if self.id == 0 {
            let (messages, bytes) = self.chat.store.held();
            self.stats.chat.offline_held_messages.set(messages);
            self.stats.chat.offline_held_bytes.set(bytes);
            let (messages, bytes) = self.chat.store.quotas().held();
            self.stats.chat.held_messages.set(messages);
            self.stats.chat.held_bytes.set(bytes);
            self.stats.chat.offline_expired.set(self.chat.store.expired.load(std::sync::atomic::Ordering::Relaxed));
        }
    }
}

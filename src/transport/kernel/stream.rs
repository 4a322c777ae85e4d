//! Bytes in and out of an open connection: receive arming (poll, multishot, on demand), input
//! handed to the owner or held while it is paused, sends from the owner's memory, and the
//! close, graceful or not.

use io_uring::opcode;
use io_uring::squeue::Flags;
use io_uring::types::{CancelBuilder, Fixed};

use super::held::Held;
use super::{KernelOp, KernelTransport, RecvArm, flag};
use crate::engine::{Completion, Io};
use crate::stats::TransportStats;
use crate::transport::{Close, ConnId, Failure, Handler};

impl<H: Handler, S: AsRef<TransportStats>> KernelTransport<H, S> {
    /// The op of a connection's armed wait for input: what a cancel targets.
    fn armed_op(&self) -> KernelOp {
        match self.recv {
            RecvArm::Poll => KernelOp::Readable,
            RecvArm::Multishot | RecvArm::OnDemand => KernelOp::Recv,
        }
    }

    /// Arms the connection's wait for input: a multishot poll, a multishot receive, or (on
    /// demand) a one-shot receive.
    pub(super) fn arm_input(&mut self, io: &mut Io<KernelOp>, conn: ConnId) {
        let s = &mut self.socks[conn as usize];
        if s.has(flag::RECV_ARMED | flag::TEARDOWN | flag::PAUSED | flag::INPUT_ENDED) {
            return;
        }
        s.flags |= flag::RECV_ARMED;
        let (ring, file) = (s.ring as usize, s.file);
        let bgid = io.ring(ring).bufs().bgid();
        let entry = match self.recv {
            RecvArm::Poll => {
                opcode::PollAdd::new(Fixed(file), (libc::POLLIN | libc::POLLRDHUP) as u32).multi(true).build()
            }
            RecvArm::Multishot => opcode::RecvMulti::new(Fixed(file), bgid).build(),
            // Length 0: the provided buffer's own size.
            RecvArm::OnDemand => opcode::Recv::new(Fixed(file), std::ptr::null_mut(), 0)
                .buf_group(bgid)
                .build()
                .flags(Flags::BUFFER_SELECT),
        };
        let op = self.armed_op();
        self.submit(io, ring, op, conn, entry);
    }

    /// Poll arming: the connection's multishot poll fired (or ended).
    pub(super) fn on_readable(&mut self, io: &mut Io<KernelOp>, c: Completion<KernelOp>) {
        let conn = c.slot;
        let s = &mut self.socks[conn as usize];
        if !c.more() {
            s.flags &= !flag::RECV_ARMED;
        }
        if c.result > 0 {
            if c.result & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as i32 != 0 {
                s.flags |= flag::PEER_HUP;
            }
            self.read(io, conn);
        }
        let s = self.socks[conn as usize];
        if !c.more() && !s.has(flag::TEARDOWN | flag::INPUT_ENDED) {
            // The poll ended (the cancel of a pause since lifted, or an error on the socket):
            // arm it again unless paused; a receive that follows says what happened.
            self.rearm.push(conn);
        }
    }

    /// Poll arming: a one-shot, non-blocking receive into a provided buffer. At most one is in
    /// flight; a poll that fires meanwhile asks for another once it completes.
    fn read(&mut self, io: &mut Io<KernelOp>, conn: ConnId) {
        let s = &mut self.socks[conn as usize];
        if s.has(flag::TEARDOWN | flag::PAUSED | flag::INPUT_ENDED) {
            return;
        }
        if s.has(flag::READING) {
            s.flags |= flag::READ_AGAIN;
            return;
        }
        s.flags = (s.flags | flag::READING) & !flag::READ_AGAIN;
        let (ring, file) = (s.ring as usize, s.file);
        // MSG_DONTWAIT: with nothing to read it completes with EAGAIN instead of arming a poll
        // of its own (the multishot one waits).
        let entry = opcode::Recv::new(Fixed(file), std::ptr::null_mut(), 0)
            .buf_group(io.ring(ring).bufs().bgid())
            .flags(libc::MSG_DONTWAIT)
            .build()
            .flags(Flags::BUFFER_SELECT);
        self.submit(io, ring, KernelOp::Recv, conn, entry);
    }

    pub(super) fn on_recv(&mut self, io: &mut Io<KernelOp>, c: Completion<KernelOp>) {
        let (conn, res, more, ring) = (c.slot, c.result, c.more(), c.ring);
        let poll = self.recv == RecvArm::Poll;
        let s = &mut self.socks[conn as usize];
        if !more {
            // With poll arming this was the one-shot receive; the poll stays armed.
            s.flags &= if poll { !flag::READING } else { !flag::RECV_ARMED };
        }
        let full = res > 0 && res as u32 >= io.ring(ring).bufs().buf_len();
        if poll && (res == -libc::ENOBUFS || full || (res > 0 && s.has(flag::PEER_HUP))) {
            // More may be waiting than one buffer held, or the FIN behind the data: the poll
            // does not fire again for what was already there.
            s.flags |= flag::READ_AGAIN;
        }
        let mut kept = false;
        match res {
            1.. => {
                if let Some(bid) = c.buffer() {
                    self.stats().bytes_in.add(res as u64);
                    kept = self.take_input(io, conn, Held { ring: ring as u16, bid, offset: 0, len: res as u32 });
                }
            }
            0 => self.input_ended(io, conn),
            _ if res == -libc::ENOBUFS => self.stats().recv_no_buffers.inc(),
            _ if res == -libc::ECANCELED || res == -libc::EAGAIN => {}
            _ => self.fail(io, conn, Failure::Recv(-res)),
        }
        // Every buffer the kernel handed out goes back (now, or when a paused connection is done
        // with it), whatever the completion said.
        if let (Some(bid), false) = (c.buffer(), kept) {
            io.recycle(ring, bid);
        }
        let s = self.socks[conn as usize];
        if s.has(flag::TEARDOWN) {
            return;
        }
        let again = match self.recv {
            RecvArm::Poll => s.has(flag::READ_AGAIN),
            // The multishot ended (no buffer left, CQ pressure, or the cancel of a pause that
            // has since been lifted): receive again once the buffers are back, unless paused.
            RecvArm::Multishot => !more && res != 0,
            // On demand: again only while the owner still wants input (or the last receive
            // found no buffer).
            RecvArm::OnDemand => res != 0 && (res == -libc::ENOBUFS || self.handler.wants_input(conn)),
        };
        if again {
            self.rearm.push(conn);
        }
    }

    /// Hands received input to the owner, or holds it while the connection is paused. Returns
    /// whether the buffer was kept (held) rather than done with.
    fn take_input(&mut self, io: &mut Io<KernelOp>, conn: ConnId, input: Held) -> bool {
        let s = self.socks[conn as usize];
        if !s.has(flag::OPEN) || s.has(flag::CLOSING | flag::TEARDOWN) {
            // Closing: input is read and dropped.
            return false;
        }
        if s.has(flag::PAUSED) {
            return self.hold(io, conn, input);
        }
        let data = io.buffer(input.ring as usize, input.bid, input.len as usize);
        let consumed = self.handler.input(&mut self.q, conn, data);
        if consumed >= data.len() {
            return false;
        }
        if !self.hold(io, conn, Held { offset: consumed as u32, ..input }) {
            return false;
        }
        self.pause(io, conn);
        true
    }

    /// Keeps a buffer for a paused connection, if its ring can spare it; if not, the connection
    /// fails (its owner could not keep up: a slow consumer).
    fn hold(&mut self, io: &mut Io<KernelOp>, conn: ConnId, input: Held) -> bool {
        let ring_buffers = io.ring(input.ring as usize).bufs().count();
        let kept = self.held.hold(conn, input, ring_buffers);
        self.stats().held_buffers.set(self.held.len() as u64);
        if !kept {
            self.fail(io, conn, Failure::InputOverflow);
        }
        kept
    }

    /// Stops reading from a connection whose owner left input unconsumed; the socket's own
    /// buffers then push back on the peer (TCP flow control).
    fn pause(&mut self, io: &mut Io<KernelOp>, conn: ConnId) {
        let s = &mut self.socks[conn as usize];
        s.flags |= flag::PAUSED;
        if s.has(flag::RECV_ARMED) {
            self.cancel_recv(io, conn);
        }
    }

    /// Offers a paused connection its held input again; un-pauses it and receives again once
    /// the owner has consumed all of it.
    pub(super) fn resume(&mut self, io: &mut Io<KernelOp>, conn: ConnId) {
        if !self.socks[conn as usize].has(flag::PAUSED) {
            return;
        }
        while let Some(front) = self.held.front(conn) {
            if self.socks[conn as usize].has(flag::CLOSING | flag::TEARDOWN) {
                self.release_held(io, conn);
                break;
            }
            let data = &io.buffer(front.ring as usize, front.bid, front.len as usize)[front.offset as usize..];
            let consumed = self.handler.input(&mut self.q, conn, data);
            if consumed < data.len() {
                return self.held.advance(conn, consumed);
            }
            if let Some(h) = self.held.pop_front(conn) {
                io.recycle(h.ring as usize, h.bid);
            }
            self.stats().held_buffers.set(self.held.len() as u64);
        }
        let s = &mut self.socks[conn as usize];
        s.flags &= !flag::PAUSED;
        if !s.has(flag::TEARDOWN | flag::INPUT_ENDED) {
            // Re-armed (and, with poll arming, read again if input is waiting) after the batch;
            // a receive whose cancel is still under way is re-armed when it ends.
            s.flags |= flag::READ_AGAIN;
            self.rearm.push(conn);
        }
    }

    /// Gives every held buffer of a connection back and un-pauses it.
    pub(super) fn release_held(&mut self, io: &mut Io<KernelOp>, conn: ConnId) {
        if self.held.has(conn) {
            let mut held = std::mem::take(&mut self.scratch);
            self.held.take_all(conn, &mut held);
            for h in held.drain(..) {
                io.recycle(h.ring as usize, h.bid);
            }
            self.scratch = held;
            self.stats().held_buffers.set(self.held.len() as u64);
        }
        self.socks[conn as usize].flags &= !flag::PAUSED;
    }

    /// After the batch: arms a connection's receive again and, with poll arming, reads what
    /// may be waiting.
    pub(super) fn rearm_one(&mut self, io: &mut Io<KernelOp>, conn: ConnId) {
        let s = self.socks[conn as usize];
        if !s.has(flag::OPEN | flag::CLOSING) || s.has(flag::TEARDOWN | flag::PAUSED | flag::INPUT_ENDED) {
            return;
        }
        self.arm_input(io, conn);
        if self.recv == RecvArm::Poll && self.socks[conn as usize].has(flag::READ_AGAIN) {
            self.read(io, conn);
        }
    }

    /// The peer's FIN.
    fn input_ended(&mut self, io: &mut Io<KernelOp>, conn: ConnId) {
        let s = &mut self.socks[conn as usize];
        s.flags |= flag::INPUT_ENDED;
        if s.has(flag::CLOSING) {
            self.finish_close(io, conn);
        } else if s.has(flag::OPEN) && !s.has(flag::TEARDOWN) {
            self.handler.input_ended(&mut self.q, conn);
        }
    }

    /// The connection broke: the owner hears why, and it is closed.
    fn fail(&mut self, io: &mut Io<KernelOp>, conn: ConnId, why: Failure) {
        if self.socks[conn as usize].has(flag::TEARDOWN) {
            return;
        }
        self.handler.failed(&mut self.q, conn, why);
        self.teardown(io, conn, Close::Now);
    }

    // ---- output ---------------------------------------------------------------------------

    /// Starts a send of what the owner has queued, if no send is in flight; moves a graceful
    /// close on once everything is out.
    pub(super) fn flush(&mut self, io: &mut Io<KernelOp>, conn: ConnId) {
        let s = self.socks[conn as usize];
        if !s.has(flag::OPEN | flag::CLOSING) || s.has(flag::SENDING | flag::TEARDOWN) {
            return;
        }
        if self.handler.peek_output(conn, 0).is_empty() {
            return self.finish_close(io, conn);
        }
        let bytes = self.handler.output(conn);
        let (ptr, len) = (bytes.as_ptr(), bytes.len() as u32);
        let s = &mut self.socks[conn as usize];
        s.flags |= flag::SENDING;
        s.send_len = len;
        let (ring, file) = (s.ring as usize, s.file);
        let needs_recv = self.recv == RecvArm::OnDemand && !s.has(flag::RECV_ARMED);
        let entry = opcode::Send::new(Fixed(file), ptr, len).flags(libc::MSG_NOSIGNAL).build();
        self.submit(io, ring, KernelOp::Send, conn, entry);
        if needs_recv {
            // On demand: the reply to this send needs a receive (armed after the batch).
            self.rearm.push(conn);
        }
    }

    pub(super) fn on_send(&mut self, io: &mut Io<KernelOp>, c: Completion<KernelOp>) {
        let conn = c.slot;
        let s = &mut self.socks[conn as usize];
        s.flags &= !flag::SENDING;
        s.send_len = 0;
        if s.has(flag::TEARDOWN) {
            return;
        }
        if c.result < 0 {
            return self.fail(io, conn, Failure::Send(-c.result));
        }
        self.stats().bytes_out.add(c.result as u64);
        self.handler.sent(&mut self.q, conn, c.result as usize);
        self.flush(io, conn);
    }

    /// A graceful close whose output is all sent: FIN (a half-close) and drain input until the
    /// peer closes too, or close now if its input has ended (or is not being read).
    fn finish_close(&mut self, io: &mut Io<KernelOp>, conn: ConnId) {
        let s = self.socks[conn as usize];
        if !s.has(flag::CLOSING) || s.has(flag::TEARDOWN | flag::SENDING) {
            return;
        }
        if !self.handler.peek_output(conn, 0).is_empty() {
            return self.flush(io, conn);
        }
        if !s.has(flag::RECV_ARMED | flag::READING) || s.has(flag::INPUT_ENDED) {
            // The peer is gone or its input ended: nothing to wait for.
            self.teardown(io, conn, Close::Now);
        } else if !s.has(flag::WRITE_SHUT) {
            // FIN after the last words; the close follows the peer's own close (or the owner's
            // deadline), with its input drained, so the close never meets unread data.
            self.socks[conn as usize].flags |= flag::WRITE_SHUT;
            let entry = opcode::Shutdown::new(Fixed(s.file), libc::SHUT_WR).build();
            self.submit(io, s.ring as usize, KernelOp::HalfClose, conn, entry);
        }
    }

    pub(super) fn close(&mut self, io: &mut Io<KernelOp>, conn: ConnId, how: Close) {
        let s = &mut self.socks[conn as usize];
        if s.has(flag::TEARDOWN) {
            return;
        }
        if s.has(flag::CONNECTING) {
            // The chain ends first; then it is closed (see `connect_done`).
            s.flags |= flag::CLOSE_WANTED;
            return;
        }
        match how {
            Close::Graceful if s.has(flag::CLOSING) => {}
            Close::Graceful => {
                s.flags = (s.flags | flag::CLOSING) & !flag::OPEN;
                self.release_held(io, conn);
                self.flush(io, conn);
            }
            Close::Now | Close::Abort => self.teardown(io, conn, how),
        }
    }

    /// Closes a connection: cancel its armed receive, and shut the write side (FIN after what
    /// was sent) unless a half-close did already or the close is abortive. The slot is retired
    /// here; once the engine reports it quiet (all of that completed), the descriptor is closed
    /// (see `on_quiet`).
    pub(super) fn teardown(&mut self, io: &mut Io<KernelOp>, conn: ConnId, how: Close) {
        let s = &mut self.socks[conn as usize];
        if s.has(flag::TEARDOWN) {
            return;
        }
        s.flags = (s.flags | flag::TEARDOWN) & !(flag::OPEN | flag::CLOSING);
        let s = *s;
        self.release_held(io, conn);
        if s.has(flag::RECV_ARMED) {
            self.cancel_recv(io, conn);
        }
        if how != Close::Abort && !s.has(flag::WRITE_SHUT) {
            let entry = opcode::Shutdown::new(Fixed(s.file), libc::SHUT_WR).build();
            self.submit(io, s.ring as usize, KernelOp::Shutdown, conn, entry);
        }
        io.retire(conn);
    }

    /// Cancels a connection's armed poll or receive (its final completion still arrives).
    pub(super) fn cancel_recv(&mut self, io: &mut Io<KernelOp>, conn: ConnId) {
        let ring = self.socks[conn as usize].ring as usize;
        let target = io.token(ring, self.armed_op(), conn);
        let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(target)).build();
        self.submit(io, ring, KernelOp::Cancel, conn, entry);
    }
}

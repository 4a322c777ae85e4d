//! One session's state machine: bytes in, frames handled, replies queued. No I/O here, so every
//! rule of the protocol is unit-tested without a socket.
//!
//! Memory: the hot state is a 128-byte [`Session`] header. Small replies (WELCOME, PONG, ERROR)
//! go to an inline outbox inside the header, so a session that only logs in and pings never
//! touches its 40 KiB slot. The slot holds a partial frame's tail (the first `max_frame` bytes,
//! the "in area") and replies that do not fit inline (the rest, the "out area").

use bytemuck::{Pod, Zeroable};

use std::cell::{Cell, RefCell};
use std::ops::Range;

use crate::proto::{self, ErrorCode, Frame, Kind, ProtoError};
use crate::slab::{SlotView, Touch};
use crate::stats::{CloseReason, WorkerStats};

pub const INLINE_OUT: usize = 80;

/// Session states (the `state` byte). Zero is "free" so a zeroed header is a free slot.
pub mod state {
    pub const FREE: u8 = 0;
    /// Accepted, waiting for HELLO.
    pub const OPEN: u8 = 1;
    pub const LOGGED_IN: u8 = 2;
}

/// Bits of the `flags` byte.
pub mod flag {
    /// Input is ignored; the session closes once its output has been sent (a graceful close
    /// was asked of the transport).
    pub const CLOSE_AFTER_SEND: u8 = 2;
    /// The session is closed (or broke): nothing more is said or read; its slot is freed when
    /// the transport lets go of it.
    pub const CLOSED: u8 = 4;
    /// Its replies filled the out area: the input it could not handle waits in the transport
    /// until sends make room (backpressure).
    pub const PAUSED: u8 = 16;
}

/// Bits of the `chat` byte.
pub mod chat {
    /// The session is this user's entry in the directory (withdrawn when it leaves).
    pub const LISTED: u8 = 1;
    /// Offline messages wait for room in the out area.
    pub const OFFLINE_PENDING: u8 = 2;
}

/// The hot per-session state, 128 bytes, in the slab's dense header array. What the transport
/// needs per connection (descriptor, armed receives, ...) it keeps in its own array.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Session {
    pub user_id: u64,
    /// Tick of the last whole frame received (heartbeat deadline base).
    pub last_frame_tick: u32,
    /// Tick of the accept (hello deadline base).
    pub opened_tick: u32,
    /// Bytes queued in the slot's out area, and how many of them are sent.
    pub slot_out_len: u32,
    pub slot_out_sent: u32,
    /// Bytes the transport is sending in place (0: none): they must not move until `sent`.
    pub send_len: u32,
    /// Bytes of a partial frame kept in the slot's in area.
    pub in_len: u16,
    pub state: u8,
    pub flags: u8,
    pub inline_len: u8,
    pub inline_sent: u8,
    pub close_reason: u8,
    /// Chat bits (see [`chat`]).
    pub chat: u8,
    pub _pad: [u8; 12],
    pub inline_out: [u8; INLINE_OUT],
}

const _: () = assert!(std::mem::size_of::<Session>() == 128);

impl Session {
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub fn has_output(&self) -> bool {
        self.inline_sent < self.inline_len || self.slot_out_sent < self.slot_out_len
    }

    /// Nothing buffered in the slot: its pages can be given back.
    pub fn slot_idle(&self) -> bool {
        self.in_len == 0 && self.slot_out_len == 0
    }
}

/// What the worker must do after a session handled its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Open,
    /// Send what is queued, then close (ERROR or BYE queued as needed).
    CloseAfterSend(CloseReason),
    /// Close now: nothing more can be said.
    CloseNow(CloseReason),
    /// The out area is full: the first `n` bytes of the input were handled, the rest (from the
    /// frame whose reply did not fit) was not. Feed it again once replies have been sent.
    Blocked(usize),
}

/// What frame handling needs from its worker.
pub struct Env<'a> {
    pub stats: &'a WorkerStats,
    pub max_frame: usize,
    pub heartbeat_ms: u32,
    pub session_id: u64,
    pub now_tick: u32,
    /// Wall-clock nanoseconds, read only when a WELCOME needs them (not per completion).
    pub wall_ns: fn() -> u64,
    /// Chat frames handled here, for the worker to route once the input is consumed.
    pub requests: &'a RouteRequests,
}

/// Largest reply a routed request may need (NACK).
const ROUTE_REPLY: usize = proto::HEADER_LEN + 10;

/// What a session asked of the router, in order. The worker routes them after `on_bytes`:
/// routing touches other sessions, which cannot be borrowed while this one is.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Login {
        user: u64,
    },
    /// A SEND: `frame` is its DELIVER, encoded in [`Requests::frames`].
    Send {
        to_user: u64,
        msg_id: u64,
        frame: Range<usize>,
    },
    Receipt {
        from_user: u64,
        msg_id: u64,
    },
}

#[derive(Default)]
pub struct RouteRequests {
    pub list: RefCell<Vec<Request>>,
    pub frames: RefCell<Vec<u8>>,
    /// Out-area bytes promised to the ACKs/NACKs of the requests listed.
    pub reserved: Cell<usize>,
}

/// Where replies go: the header's inline outbox, then the slot's out area. Borrowed apart from
/// the slot's in area, so a frame parsed in place there can be answered without a copy.
pub struct Outbox<'a> {
    pub s: &'a mut Session,
    /// The slot's out area (`slot[max_frame..]`).
    area: &'a mut [u8],
    touch: Touch<'a>,
    /// Offset of `area` in the slot (= max_frame), for the touch mark.
    base: usize,
}

/// Splits a session's view into its in area (partial frame bytes) and its outbox.
pub fn split<'a>(view: SlotView<'a, Session>, max_frame: usize) -> (&'a mut [u8], Outbox<'a>) {
    let (in_area, area) = view.slot.split_at_mut(max_frame);
    (in_area, Outbox { s: view.header, area, touch: view.touch, base: max_frame })
}

impl Outbox<'_> {
    /// Bytes the out area can still take (a lower bound: the inline outbox is not counted).
    pub fn room(&self) -> usize {
        let s = &*self.s;
        let used = if s.send_len == 0 { s.slot_out_len - s.slot_out_sent } else { s.slot_out_len };
        self.area.len().saturating_sub(used as usize)
    }

    /// Queues an already encoded frame (a routed DELIVER or RECEIPT notice): its one copy into
    /// this session's outgoing data.
    pub fn push_encoded(&mut self, bytes: &[u8]) -> bool {
        self.write(bytes.len(), |out| out.copy_from_slice(bytes))
    }

    /// Queues `frame`: inline if it fits and nothing waits in the slot (so order is kept), else
    /// in the out area. `false`: no room left (a slow consumer, or the slots' resident budget is
    /// spent).
    pub fn push(&mut self, frame: &Frame<'_>) -> bool {
        self.write(frame.encoded_len(), |out| {
            proto::encode(frame, out);
        })
    }

    /// Finds room for `n` bytes and lets `fill` write them there.
    fn write(&mut self, n: usize, fill: impl FnOnce(&mut [u8])) -> bool {
        let s = &mut *self.s;
        if s.slot_out_len == 0 && s.inline_len as usize + n <= INLINE_OUT {
            let at = s.inline_len as usize;
            fill(&mut s.inline_out[at..at + n]);
            s.inline_len += n as u8;
            return true;
        }
        if s.slot_out_len as usize + n > self.area.len() && s.send_len == 0 && s.slot_out_sent > 0 {
            // Move the unsent part to the front; only while no send reads the area.
            self.area.copy_within(s.slot_out_sent as usize..s.slot_out_len as usize, 0);
            s.slot_out_len -= s.slot_out_sent;
            s.slot_out_sent = 0;
        }
        let at = s.slot_out_len as usize;
        if at + n > self.area.len() || !self.touch.reserve(self.base + at + n) {
            return false;
        }
        fill(&mut self.area[at..at + n]);
        s.slot_out_len += n as u32;
        true
    }
}

/// The bytes of the next send, if one may start now: inline bytes go before slot bytes.
pub fn next_send<'a>(s: &'a Session, slot: &'a [u8], max_frame: usize) -> Option<&'a [u8]> {
    if s.send_len != 0 {
        return None;
    }
    if s.inline_sent < s.inline_len {
        return Some(&s.inline_out[s.inline_sent as usize..s.inline_len as usize]);
    }
    if s.slot_out_sent < s.slot_out_len {
        return Some(&slot[max_frame + s.slot_out_sent as usize..max_frame + s.slot_out_len as usize]);
    }
    None
}

/// The queued output after its first `skip` bytes, one contiguous piece (the inline bytes, then
/// the slot's): what a transport that keeps unacknowledged bytes reads, without pinning them.
pub fn peek_output<'a>(s: &'a Session, slot: &'a [u8], max_frame: usize, skip: usize) -> &'a [u8] {
    let inline = &s.inline_out[s.inline_sent as usize..s.inline_len as usize];
    if skip < inline.len() {
        return &inline[skip..];
    }
    let start = max_frame + s.slot_out_sent as usize + (skip - inline.len());
    let end = max_frame + s.slot_out_len as usize;
    slot.get(start..end).unwrap_or(&[])
}

/// Accounts for `n` bytes from the head of the output having gone out (or been acknowledged):
/// inline bytes first, then the slot's. Unpins the send in flight.
pub fn sent(s: &mut Session, n: u32) {
    s.send_len = 0;
    let inline_left = (s.inline_len - s.inline_sent) as u32;
    let from_inline = n.min(inline_left);
    s.inline_sent += from_inline as u8;
    if s.inline_sent >= s.inline_len {
        s.inline_sent = 0;
        s.inline_len = 0;
    }
    s.slot_out_sent += n - from_inline;
    if s.slot_out_sent >= s.slot_out_len {
        s.slot_out_sent = 0;
        s.slot_out_len = 0;
    }
}

/// Moves the unsent bytes of the out area to its front. Called when a send completes (nothing
/// reads the area then): under steady traffic a send is nearly always in flight when replies are
/// added, so without this the area would only ever fill up.
pub fn rewind_out_area(s: &mut Session, slot: &mut [u8], max_frame: usize) {
    if s.send_len != 0 || s.slot_out_sent == 0 {
        return;
    }
    let area = &mut slot[max_frame..];
    area.copy_within(s.slot_out_sent as usize..s.slot_out_len as usize, 0);
    s.slot_out_len -= s.slot_out_sent;
    s.slot_out_sent = 0;
}

/// Queues a fatal ERROR and says to close after it.
fn fatal(out: &mut Outbox<'_>, env: &Env<'_>, code: ErrorCode, reason: CloseReason) -> Verdict {
    env.stats.protocol_errors[code.index()].inc();
    if out.push(&Frame::error(code, code.name())) {
        env.stats.frames_out[Kind::Error.index()].inc();
    }
    Verdict::CloseAfterSend(reason)
}

fn protocol_error(out: &mut Outbox<'_>, env: &Env<'_>, e: ProtoError) -> Verdict {
    fatal(out, env, e.code(), CloseReason::ProtocolError)
}

/// Queues the timeout ERROR (hello or heartbeat deadline passed).
pub fn timed_out(out: &mut Outbox<'_>, env: &Env<'_>) -> Verdict {
    fatal(out, env, ErrorCode::Timeout, CloseReason::Timeout)
}

/// Queues the shutdown BYE.
pub fn say_bye(out: &mut Outbox<'_>, env: &Env<'_>) -> Verdict {
    if out.push(&Frame::Bye) {
        env.stats.frames_out[Kind::Bye.index()].inc();
    }
    Verdict::CloseAfterSend(CloseReason::Shutdown)
}

fn reply(out: &mut Outbox<'_>, env: &Env<'_>, frame: Frame<'_>) -> Verdict {
    if out.push(&frame) {
        env.stats.frames_out[frame.kind().index()].inc();
        Verdict::Open
    } else {
        Verdict::Blocked(0)
    }
}

/// Handles one whole frame. A frame whose reply found no room (`Blocked`) counts as not handled
/// at all, so handling it again later is exact.
fn handle(out: &mut Outbox<'_>, env: &Env<'_>, frame: Frame<'_>) -> Verdict {
    let verdict = answer(out, env, frame);
    if !matches!(verdict, Verdict::Blocked(_)) {
        env.stats.frames_in[frame.kind().index()].inc();
        out.s.last_frame_tick = env.now_tick;
    }
    verdict
}

fn answer(out: &mut Outbox<'_>, env: &Env<'_>, frame: Frame<'_>) -> Verdict {
    let logged_in = out.s.state == state::LOGGED_IN;
    match frame {
        Frame::Hello { user_id, .. } if !logged_in => {
            let welcome = Frame::Welcome {
                session_id: env.session_id,
                server_time_ns: (env.wall_ns)(),
                heartbeat_ms: env.heartbeat_ms,
            };
            let verdict = reply(out, env, welcome);
            if verdict == Verdict::Open {
                out.s.state = state::LOGGED_IN;
                out.s.user_id = user_id;
                env.requests.list.borrow_mut().push(Request::Login { user: user_id });
            }
            verdict
        }
        // A second HELLO on a session.
        Frame::Hello { .. } => fatal(out, env, ErrorCode::Malformed, CloseReason::ProtocolError),
        // A server-to-client kind is not a kind a server accepts.
        _ if !frame.kind().is_client_to_server() => fatal(out, env, ErrorCode::UnknownKind, CloseReason::ProtocolError),
        _ if !logged_in => fatal(out, env, ErrorCode::NotLoggedIn, CloseReason::ProtocolError),
        Frame::Ping { seq, t_ns } => reply(out, env, Frame::Pong { seq, t_ns }),
        Frame::Echo { data } => reply(out, env, Frame::EchoReply { data }),
        // Routed by the worker once this input is consumed; the ACK (or NACK) it will queue
        // is promised room now, so a full out area blocks the SEND before anything is routed.
        Frame::Send { to_user, msg_id, t_ns, body } => {
            let promised = env.requests.reserved.get() + ROUTE_REPLY;
            if out.room() < promised {
                return Verdict::Blocked(0);
            }
            env.requests.reserved.set(promised);
            let deliver = Frame::Deliver { from_user: out.s.user_id, msg_id, t_ns, body };
            let mut frames = env.requests.frames.borrow_mut();
            let at = frames.len();
            frames.resize(at + deliver.encoded_len(), 0);
            proto::encode(&deliver, &mut frames[at..]);
            env.requests.list.borrow_mut().push(Request::Send { to_user, msg_id, frame: at..frames.len() });
            Verdict::Open
        }
        Frame::Receipt { from_user, msg_id } => {
            env.requests.list.borrow_mut().push(Request::Receipt { from_user, msg_id });
            Verdict::Open
        }
        // The client is leaving: send what is queued, then close. Nothing is said back.
        Frame::Bye => Verdict::CloseAfterSend(CloseReason::Bye),
        _ => Verdict::Open,
    }
}

/// Consumes received bytes: completes a partial frame kept in the slot, handles whole frames in
/// place in `data`, and keeps an incomplete tail in the slot (see `proto::reassemble`). (Byte
/// counts are the caller's: the same bytes may be fed again after a `Blocked`.)
pub fn on_bytes(view: SlotView<'_, Session>, env: &Env<'_>, data: &[u8]) -> Verdict {
    let (in_area, mut out) = split(view, env.max_frame);
    if out.s.has(flag::CLOSE_AFTER_SEND | flag::CLOSED) {
        return Verdict::Open;
    }
    let mut in_len = out.s.in_len;
    let mut last = Verdict::Open;
    let fed =
        proto::reassemble(in_area, &mut in_len, data, env.max_frame, |frame| match handle(&mut out, env, frame) {
            Verdict::Open => proto::Step::Continue,
            Verdict::Blocked(_) => proto::Step::Block,
            verdict => {
                last = verdict;
                proto::Step::Stop
            }
        });
    out.s.in_len = in_len;
    match fed {
        Err(e) => {
            // Bytes may have gone into the in area before the bad ones: give all of it back.
            out.touch.upto(env.max_frame);
            protocol_error(&mut out, env, e)
        }
        Ok(fed) => {
            out.touch.upto(fed.touched);
            if fed.blocked { Verdict::Blocked(fed.consumed) } else { last }
        }
    }
}

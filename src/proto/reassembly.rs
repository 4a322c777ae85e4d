//! Frame reassembly, shared by the server's sessions and the load generator's connections: a
//! byte stream arrives in reads of any size, frames come out whole and in order.
//!
//! Whole frames are handed out in place, straight from the read; only a frame split across
//! reads is copied, into the connection's own `partial` area (its slot), where it is completed
//! by the next reads. The caller decides, frame by frame, to go on, to stop (a closing frame:
//! the rest is dropped), or to block (the frame's answer found no room: it is not consumed, and
//! is offered again later, from where it lies).

use super::{Frame, FrameIter, Parsed, ProtoError, parse};

/// What the caller does after a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Handled; go on.
    Continue,
    /// Handled; stop here (the rest of the input is not looked at).
    Stop,
    /// Not handled: leave it for the next try.
    Block,
}

/// What [`reassemble`] did with a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the read consumed (all of it unless blocked: a blocked frame that lies in the
    /// read is not consumed; one that was completed in `partial` is, and stays there).
    pub consumed: usize,
    pub blocked: bool,
    /// How far into `partial` bytes were written (for the slot's resident-page mark).
    pub touched: usize,
}

/// Feeds `data` through a connection's reassembly. `partial[..*partial_len]` is a frame begun
/// in earlier reads (or one a block left there, whole): it is completed first; then every whole
/// frame in `data` goes to `on_frame` in order, in place; an incomplete tail is copied into
/// `partial` (which must hold `max_frame` bytes). A bad header or payload ends it with the error
/// (nothing after it is looked at). Never panics on any input.
pub fn reassemble(
    partial: &mut [u8],
    partial_len: &mut u16,
    data: &[u8],
    max_frame: usize,
    mut on_frame: impl FnMut(Frame<'_>) -> Step,
) -> Result<Fed, ProtoError> {
    let mut rest = data;
    let mut touched = 0;
    if *partial_len > 0 {
        // Finish the frame whose start arrived earlier: first its header, then its body.
        loop {
            let have = *partial_len as usize;
            match parse(&partial[..have], max_frame)? {
                Parsed::Incomplete { need } => {
                    let take = need.saturating_sub(have).min(rest.len()).min(partial.len() - have);
                    if take == 0 {
                        return Ok(Fed { consumed: data.len(), blocked: false, touched });
                    }
                    partial[have..have + take].copy_from_slice(&rest[..take]);
                    *partial_len += take as u16;
                    touched = touched.max(have + take);
                    rest = &rest[take..];
                }
                Parsed::Frame { frame, .. } => {
                    let consumed = data.len() - rest.len();
                    match on_frame(frame) {
                        // The whole frame stays in `partial` for the next try.
                        Step::Block => return Ok(Fed { consumed, blocked: true, touched }),
                        Step::Stop => {
                            *partial_len = 0;
                            return Ok(Fed { consumed: data.len(), blocked: false, touched });
                        }
                        Step::Continue => {
                            *partial_len = 0;
                            break;
                        }
                    }
                }
            }
        }
    }
    let base = data.len() - rest.len();
    let mut frames = FrameIter::new(rest, max_frame);
    loop {
        let at = frames.consumed();
        let Some(frame) = frames.next() else { break };
        match on_frame(frame?) {
            Step::Continue => {}
            Step::Stop => return Ok(Fed { consumed: data.len(), blocked: false, touched }),
            Step::Block => return Ok(Fed { consumed: base + at, blocked: true, touched }),
        }
    }
    let tail = frames.remaining();
    partial[..tail.len()].copy_from_slice(tail);
    *partial_len = tail.len() as u16;
    Ok(Fed { consumed: data.len(), blocked: false, touched: touched.max(tail.len()) })
}

#[cfg(test)]
mod tests {
    use super::super::{Kind, encode_vec};
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 4096;

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(encode_vec(&Frame::Welcome { session_id: 7, server_time_ns: 8, heartbeat_ms: 9 }));
        s.extend(encode_vec(&Frame::Pong { seq: 1, t_ns: 2 }));
        s.extend(encode_vec(&Frame::EchoReply { data: &[5u8; 300] }));
        s.extend(encode_vec(&Frame::Error { code: 5, text: b"server full" }));
        s
    }

    /// Feeds `chunks` in order; returns the kinds seen.
    fn feed(chunks: &[&[u8]]) -> Result<Vec<Kind>, ProtoError> {
        let (mut partial, mut len) = (vec![0u8; MAX], 0u16);
        let mut kinds = Vec::new();
        for chunk in chunks {
            let fed = reassemble(&mut partial, &mut len, chunk, MAX, |f| {
                kinds.push(f.kind());
                Step::Continue
            })?;
            assert_eq!(fed.consumed, chunk.len());
        }
        assert_eq!(len, 0, "nothing left over");
        Ok(kinds)
    }

    #[test]
    fn whole_frames_come_out_in_order() {
        use Kind::*;
        assert_eq!(feed(&[&stream()]).unwrap(), vec![Welcome, Pong, EchoReply, Error]);
    }

    #[test]
    fn a_bad_header_is_an_error_not_a_panic() {
        assert!(feed(&[&[2, 0, 0x82, 0]]).is_err());
        assert!(feed(&[&[20, 0, 0x82, 7]]).is_err());
        // The same, arriving a byte at a time into the partial area.
        assert!(feed(&[&[20], &[0], &[0x82], &[7]]).is_err());
    }

    #[test]
    fn a_blocked_frame_in_the_read_is_not_consumed() {
        let s = stream();
        let (mut partial, mut len) = (vec![0u8; MAX], 0u16);
        let mut n = 0;
        let fed = reassemble(&mut partial, &mut len, &s, MAX, |_| {
            n += 1;
            if n == 2 { Step::Block } else { Step::Continue }
        })
        .unwrap();
        let welcome = encode_vec(&Frame::Welcome { session_id: 7, server_time_ns: 8, heartbeat_ms: 9 }).len();
        assert_eq!(fed, Fed { consumed: welcome, blocked: true, touched: 0 });
        // Offered again from the blocked frame on: the rest comes out.
        let mut kinds = Vec::new();
        let fed = reassemble(&mut partial, &mut len, &s[welcome..], MAX, |f| {
            kinds.push(f.kind());
            Step::Continue
        })
        .unwrap();
        assert_eq!(fed.consumed, s.len() - welcome);
        assert_eq!(kinds, vec![Kind::Pong, Kind::EchoReply, Kind::Error]);
    }

    #[test]
    fn a_blocked_frame_completed_in_partial_stays_there() {
        let pong = encode_vec(&Frame::Pong { seq: 1, t_ns: 2 });
        let (mut partial, mut len) = (vec![0u8; MAX], 0u16);
        reassemble(&mut partial, &mut len, &pong[..5], MAX, |_| Step::Continue).unwrap();
        assert_eq!(len, 5);
        let fed = reassemble(&mut partial, &mut len, &pong[5..], MAX, |_| Step::Block).unwrap();
        assert_eq!((fed.consumed, fed.blocked, len as usize), (pong.len() - 5, true, pong.len()));
        // The next try (with no new bytes) finds it whole in `partial`.
        let mut seen = 0;
        let fed = reassemble(&mut partial, &mut len, &[], MAX, |_| {
            seen += 1;
            Step::Continue
        })
        .unwrap();
        assert_eq!((seen, fed.consumed, len), (1, 0, 0));
    }

    #[test]
    fn stop_drops_the_rest() {
        let s = stream();
        let (mut partial, mut len) = (vec![0u8; MAX], 0u16);
        let mut n = 0;
        let fed = reassemble(&mut partial, &mut len, &s, MAX, |_| {
            n += 1;
            Step::Stop
        })
        .unwrap();
        assert_eq!((n, fed.consumed, len), (1, s.len(), 0));
    }

    proptest! {
        /// However the stream is cut into reads, the same frames come out.
        #[test]
        fn any_split_gives_the_same_frames(cuts in proptest::collection::vec(0usize..400, 0..12)) {
            let s = stream();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (s.len() + 1)).collect();
            points.push(0);
            points.push(s.len());
            points.sort();
            let chunks: Vec<&[u8]> = points.windows(2).map(|w| &s[w[0]..w[1]]).collect();
            prop_assert_eq!(feed(&chunks).unwrap().len(), 4);
        }

        /// Any bytes, cut anywhere: an error or frames, never a panic, never more consumed than given.
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
            let cut = cut.min(bytes.len());
            let (mut partial, mut len) = (vec![0u8; MAX], 0u16);
            for chunk in [&bytes[..cut], &bytes[cut..]] {
                match reassemble(&mut partial, &mut len, chunk, MAX, |_| Step::Continue) {
                    Ok(fed) => prop_assert!(fed.consumed <= chunk.len()),
                    Err(_) => break,
                }
            }
        }
    }
}

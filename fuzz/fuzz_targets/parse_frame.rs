//! Feeds arbitrary bytes to the frame parser.
//!
//! Checks that parsing never panics and that every frame it accepts is
//! canonical: re-encoding gives back exactly the bytes it was parsed from. The
//! server relies on that when it relays a payload it has parsed.
#![no_main]

use c2m::proto::{FrameIter, encode_vec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick max_frame, so limits other than the default
    // (including ones below the header size) get exercised too.
    let Some((limit, stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_frame = usize::from(u16::from_le_bytes(*limit));

    let mut frames = FrameIter::new(stream, max_frame);
    let mut start = 0;
    while let Some(Ok(frame)) = frames.next() {
        let len = frame.encoded_len();
        assert!(len <= max_frame, "accepted a frame over max_frame");
        assert_eq!(encode_vec(&frame), &stream[start..start + len], "{frame:?}");
        start += len;
    }
    assert_eq!(frames.consumed(), start);
    assert!(frames.consumed() <= stream.len());
});

//! Arbitrary bytes as a relay frame (`devicelink_relay::Frame::decode`).
//!
//! Properties: the decoder is total; it accepts nothing longer than
//! `MAX_FRAME_LEN` or outside its type's size range; an accepted handshake
//! message has a header that parses and a length inside its kind's range;
//! and every accepted frame re-encodes to exactly the input.
#![no_main]

use devicelink::handshake::MessageHeader;
use devicelink_relay::{Frame, FrameType, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::decode(data) else {
        return;
    };
    assert!(data.len() <= MAX_FRAME_LEN);
    let (min, max) = frame.frame_type().size_range();
    assert!((min..=max).contains(&data.len()));
    if let Frame::Message { header, bytes } = &frame {
        assert_eq!(frame.frame_type(), FrameType::Message);
        let again = MessageHeader::parse(bytes).expect("accepted header parses");
        assert_eq!(&again, header);
        header.check_size(bytes).expect("accepted size fits its kind");
    }
    assert_eq!(frame.encode(), data, "accepted a non-canonical frame");
});

//! Arbitrary bytes, read as UTF-8 (lossily), as a scanned QR text.
//!
//! Property: `PairingOffer::from_text` is total, and accepts only canonical
//! texts: whatever it accepts, `to_text()` reproduces exactly. The binary form
//! round-trips too.
#![no_main]

use devicelink::PairingOffer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(offer) = PairingOffer::from_text(&text) {
        assert_eq!(offer.to_text(), text, "accepted a non-canonical offer text");
        let bytes = offer.to_bytes();
        let again = PairingOffer::from_bytes(&bytes).expect("own bytes decode");
        assert_eq!(again, offer);
        assert_eq!(again.token_id(), offer.token_id());
        assert_eq!(
            offer.redemption_proof().token_id(),
            offer.token_id(),
            "the redemption proof must redeem the offer's own token"
        );
    }
    // The binary decoder on the raw bytes.
    if let Ok(offer) = PairingOffer::from_bytes(data) {
        assert_eq!(
            &offer.to_bytes()[..],
            data,
            "accepted non-canonical offer bytes"
        );
    }
});

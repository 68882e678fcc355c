//! VRRP adverts come from anyone on the segment: decoding arbitrary bytes must never panic, and
//! whatever decodes must survive a re-encode unchanged (same fields, valid checksum).
#![no_main]

use libfuzzer_sys::fuzz_target;
use setgate_vrrp::packet::{decode, Advert};

fuzz_target!(|data: &[u8]| {
    let Ok(rx) = decode(data) else { return };
    let again = decode(&rx.advert.encode_ip(rx.src, rx.dst)).expect("a re-encoded advert decodes");
    assert_eq!(again, rx);
    // The encoder never panics either, whatever the fields.
    let _ = Advert { max_advert_int: u16::MAX, ..rx.advert }.encode(rx.dst, rx.src);
});

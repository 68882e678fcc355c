//! Arbitrary bytes from a broker into setgate-amqp's frame reader, as federation reads a broker's
//! Connection.Start and the proxy an upstream's: it must end with a frame or an error, never
//! panic, and never describe a frame by more than its name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use setgate_amqp::frame;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = data;
        let mut buf = Vec::new();
        while let Ok(f) = frame::read_frame(&mut r, &mut buf, frame::HANDSHAKE_FRAME_MAX).await {
            let _ = frame::describe(&f);
            let _ = frame::expect_start(&f);
        }
    });
});

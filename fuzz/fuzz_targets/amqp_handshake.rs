//! Arbitrary bytes from a client into a `set` listener's handshake reader: it must end (StartOk or
//! an error) without panicking, whatever arrives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut client, mut server) = tokio::io::duplex(1 << 17);
        client.write_all(data).await.unwrap();
        client.shutdown().await.unwrap();
        // The reader answers (protocol header, Connection.Start) into the duplex; its buffer is
        // larger than any answer, so it never blocks on a client that does not read.
        let _ = setgate_proxy::amqp::handshake::accept_client(
            &mut server,
            &setgate_proxy::amqp::frame::start_frame(&[]),
        )
        .await;
    });
});

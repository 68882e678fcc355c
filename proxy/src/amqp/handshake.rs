//! The client side of a `set` listener's handshake: protocol header, our Connection.Start, the
//! client's Connection.StartOk. That is as far as setgate goes; the rest is the broker's.

use super::frame::{self, FrameError, HANDSHAKE_FRAME_MAX, PROTOCOL_HEADER};
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{connection, AMQPClass};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// What the client said: its StartOk, parsed and as raw bytes to forward unchanged.
#[derive(Debug)]
pub struct ClientHello {
    /// The parsed Connection.StartOk.
    pub start_ok: connection::StartOk,
    /// The frame exactly as the client sent it.
    pub raw: Vec<u8>,
}

/// A handshake that failed, and whether we had sent our Connection.Start (only then may we answer
/// with Connection.Close).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct HandshakeError {
    /// What went wrong.
    pub error: FrameError,
    /// True once Connection.Start was sent.
    pub started: bool,
}

/// Runs the client handshake up to and including Connection.StartOk.
pub async fn accept_client<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    start: &[u8],
) -> Result<ClientHello, HandshakeError> {
    let not_started = |error| HandshakeError {
        error,
        started: false,
    };
    match frame::read_protocol_header(s).await {
        Ok(()) => {}
        Err(e @ FrameError::BadProtocolHeader(_)) => {
            // As RabbitMQ does: tell the client which protocol we speak, then close.
            let _ = s.write_all(PROTOCOL_HEADER).await;
            return Err(not_started(e));
        }
        Err(e) => return Err(not_started(e)),
    }
    s.write_all(start)
        .await
        .map_err(|e| not_started(e.into()))?;
    let started = |error| HandshakeError {
        error,
        started: true,
    };
    let mut buf = Vec::new();
    loop {
        let f = frame::read_frame(s, &mut buf, HANDSHAKE_FRAME_MAX)
            .await
            .map_err(started)?;
        match f {
            // Heartbeats are not negotiated yet, but harmless.
            AMQPFrame::Heartbeat => continue,
            AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
            ) => {
                return Ok(ClientHello { start_ok, raw: buf });
            }
            other => {
                return Err(started(FrameError::Unexpected {
                    expected: "Connection.StartOk",
                    got: frame::describe(&other),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn wrong_protocol_header_gets_ours_back() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let err = accept_client(&mut server, &frame::start_frame(&[]))
            .await
            .unwrap_err();
        assert!(!err.started);
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, PROTOCOL_HEADER);
    }

    #[tokio::test]
    async fn wrong_method_after_start_is_refused() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(PROTOCOL_HEADER).await.unwrap();
        // A Connection.Close instead of StartOk.
        client
            .write_all(&frame::close_frame(200, "bye"))
            .await
            .unwrap();
        let err = accept_client(&mut server, &frame::start_frame(&[]))
            .await
            .unwrap_err();
        assert!(err.started);
        assert!(
            err.to_string().contains("expected Connection.StartOk"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_start_ok_on_the_wrong_channel_is_refused_without_its_response() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(PROTOCOL_HEADER).await.unwrap();
        let start_ok = frame::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: Default::default(),
                mechanism: "PLAIN".into(),
                response: b"\0alice\0s3cret-pw".to_vec().into(),
                locale: "en_US".into(),
            })),
        ));
        client.write_all(&start_ok).await.unwrap();
        let err = accept_client(&mut server, &frame::start_frame(&[]))
            .await
            .unwrap_err();
        assert!(err.started);
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains("s3cret"), "{text}");
            assert!(text.contains("Connection.StartOk on channel 1"), "{text}");
        }
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    /// Feeds `bytes` to the handshake reader as a client would, then closes; the reader must end
    /// (with a StartOk or an error) and never panic.
    fn run(bytes: Vec<u8>) -> Result<(), TestCaseError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (mut client, mut server) = tokio::io::duplex(1 << 16);
            let writer = tokio::spawn(async move {
                let _ = client.write_all(&bytes).await;
                let _ = client.shutdown().await;
                // Keep reading what setgate answers so its writes never block.
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
            });
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                accept_client(&mut server, &frame::start_frame(&[])),
            )
            .await;
            drop(server);
            let _ = writer.await;
            prop_assert!(
                r.is_ok(),
                "the handshake reader did not finish on closed input"
            );
            Ok(())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn arbitrary_bytes_never_panic_or_hang(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            run(bytes)?;
        }

        #[test]
        fn arbitrary_frames_after_a_valid_header_never_panic_or_hang(
            frame_type in prop_oneof![Just(1u8), Just(2u8), Just(3u8), Just(8u8), any::<u8>()],
            channel in prop_oneof![Just(0u16), any::<u16>()],
            payload in proptest::collection::vec(any::<u8>(), 0..400),
            declared in prop_oneof![Just(None), any::<u32>().prop_map(Some)],
            end in prop_oneof![Just(0xCEu8), any::<u8>()],
        ) {
            let mut bytes = PROTOCOL_HEADER.to_vec();
            bytes.push(frame_type);
            bytes.extend_from_slice(&channel.to_be_bytes());
            bytes.extend_from_slice(&declared.unwrap_or(payload.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&payload);
            bytes.push(end);
            run(bytes)?;
        }
    }
}

//! Copying bytes both ways between a client and its server, with no buffer held while idle.
//!
//! `tokio::io::copy_bidirectional` keeps two 8 KiB buffers per connection for its whole life; with
//! thousands of idle AMQP connections (most of a broker's clients are idle most of the time) that is
//! most of the proxy's memory. Here each read goes into a buffer on the polling thread's stack and
//! is written out at once; only when the writer cannot take all of it does the rest move to a heap
//! buffer, which is freed as soon as it drains. An idle connection therefore costs its task and its
//! two sockets, nothing more.

use metrics::Counter;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of one read. 32 KiB lets a busy connection move a lot per syscall; it lives on the stack
/// only for the duration of one poll.
const READ_SIZE: usize = 32 * 1024;

/// Bytes moved in each direction when the splice ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Client to server.
    pub up: u64,
    /// Server to client.
    pub down: u64,
}

/// One direction of the copy.
#[derive(Debug, Default)]
struct Half {
    /// Bytes read but not yet written, only while the writer is slow.
    pending: Option<(Box<[u8]>, usize)>,
    need_flush: bool,
    read_done: bool,
    done: bool,
    total: u64,
}

impl Half {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        counters: &[Counter],
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if let Some((buf, pos)) = &mut self.pending {
                while *pos < buf.len() {
                    let n = ready!(writer.as_mut().poll_write(cx, &buf[*pos..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *pos += n;
                }
                self.pending = None;
                self.need_flush = true;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut rb = ReadBuf::uninit(&mut stack);
            match reader.as_mut().poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // Nothing more to read now: make sure what we wrote leaves (TLS buffers records).
                    if self.need_flush && writer.as_mut().poll_flush(cx)?.is_ready() {
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let data = rb.filled();
            if data.is_empty() {
                self.read_done = true;
                continue;
            }
            self.total += data.len() as u64;
            for c in counters {
                c.increment(data.len() as u64);
            }
            let mut off = 0;
            while off < data.len() {
                match writer.as_mut().poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => off += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending = Some((data[off..].into(), 0));
                        return Poll::Pending;
                    }
                }
            }
            self.need_flush = true;
        }
    }
}

/// Copies both ways until both sides have closed (half-closes are passed on), or either fails.
pub struct Splice<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    up: Half,
    down: Half,
    up_counters: &'a [Counter],
    down_counters: &'a [Counter],
}

/// Splices `client` and `server`; `up_counters` count client-to-server bytes, `down_counters` the
/// other way.
pub fn splice<'a, A, B>(
    client: &'a mut A,
    server: &'a mut B,
    up_counters: &'a [Counter],
    down_counters: &'a [Counter],
) -> Splice<'a, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Splice {
        a: client,
        b: server,
        up: Half::default(),
        down: Half::default(),
        up_counters,
        down_counters,
    }
}

impl<A, B> Future for Splice<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<Transferred>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.up.done {
            if let Poll::Ready(Err(e)) = this.up.poll_copy(
                cx,
                Pin::new(&mut *this.a),
                Pin::new(&mut *this.b),
                this.up_counters,
            ) {
                return Poll::Ready(Err(e));
            }
        }
        if !this.down.done {
            if let Poll::Ready(Err(e)) = this.down.poll_copy(
                cx,
                Pin::new(&mut *this.b),
                Pin::new(&mut *this.a),
                this.down_counters,
            ) {
                return Poll::Ready(Err(e));
            }
        }
        if this.up.done && this.down.done {
            Poll::Ready(Ok(Transferred {
                up: this.up.total,
                down: this.down.total,
            }))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close() {
        let (mut client, mut proxy_client) = tokio::io::duplex(64);
        let (mut proxy_server, mut server) = tokio::io::duplex(64);
        let task =
            tokio::spawn(
                async move { splice(&mut proxy_client, &mut proxy_server, &[], &[]).await },
            );
        // More than the duplex capacity in each direction, so writes block and bytes go pending.
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let p2 = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&p2).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        let t = task.await.unwrap().unwrap();
        assert_eq!(
            t,
            Transferred {
                up: 200_000,
                down: 3
            }
        );
    }
}

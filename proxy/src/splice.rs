//! Copying bytes both ways between a client and its server, with no buffer held while idle.
//!
//! `tokio::io::copy_bidirectional` keeps two 8 KiB buffers per connection for its whole life; with
//! thousands of idle AMQP connections (most of a broker's clients are idle most of the time) that is
//! most of the proxy's memory. Here each read goes into a buffer on the polling thread's stack and
//! is written out at once; only when the writer cannot take all of it does the rest move to a heap
//! buffer, which is freed as soon as it drains. An idle connection therefore costs its task and its
//! two sockets, nothing more.
//!
//! A `set` connection's splice also follows the AMQP frame boundaries of both directions
//! ([`Splice::track_frames`], a few counters per read), so that setgate can stop it between two
//! frames ([`Splice::finish`]) and speak to either side itself: a Connection.Close sent there is
//! a well-formed frame in the middle of a well-formed stream.

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

/// Where a stream of AMQP frames is: in the 7-byte header of the next frame (`have` bytes of it
/// read), or `left` bytes before the end of the current frame's payload and frame-end octet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Frames {
    header: [u8; 7],
    have: usize,
    left: u64,
}

impl Frames {
    /// True between two frames.
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Takes bytes of `data` up to the end of the current header or frame at most; returns how
    /// many it took.
    fn step(&mut self, data: &[u8]) -> usize {
        if self.left > 0 {
            let n = data
                .len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX));
            self.left -= n as u64;
            return n;
        }
        let n = data.len().min(7 - self.have);
        self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
        self.have += n;
        if self.have == 7 {
            let h = &self.header;
            // Payload, then the frame-end octet.
            self.left = u64::from(u32::from_be_bytes([h[3], h[4], h[5], h[6]])) + 1;
            self.have = 0;
        }
        n
    }

    /// Follows all of `data`.
    fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.step(data);
            data = &data[n..];
        }
    }

    /// Follows `data` up to the next frame boundary; returns how many bytes that is (0 when
    /// already at one, `data.len()` when the frame goes on past it).
    fn finish_frame(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        while used < data.len() && !self.at_boundary() {
            used += self.step(&data[used..]);
        }
        used
    }
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
    /// The frame position of what was read, when the splice follows AMQP frames.
    frames: Option<Frames>,
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
            if let Some(f) = &mut self.frames {
                f.advance(data);
            }
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

impl Half {
    /// Copies on until this direction is between two frames with nothing pending, then stops
    /// reading: `Ok(true)`. What the reader sends past that boundary is read and dropped (the
    /// connection is being closed). `Ok(false)` when that cannot be: frames are not followed,
    /// or the reader closed or the writer was shut down first.
    fn poll_finish<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<bool>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done || self.read_done {
            return Poll::Ready(Ok(false));
        }
        let Some(mut frames) = self.frames else {
            return Poll::Ready(Ok(false));
        };
        loop {
            // What is pending was read, and followed, whole: write all of it first.
            if let Some((buf, pos)) = &mut self.pending {
                while *pos < buf.len() {
                    let n = ready!(writer.as_mut().poll_write(cx, &buf[*pos..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *pos += n;
                }
                self.pending = None;
            }
            if frames.at_boundary() {
                self.frames = Some(frames);
                ready!(writer.as_mut().poll_flush(cx))?;
                return Poll::Ready(Ok(true));
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut rb = ReadBuf::uninit(&mut stack);
            ready!(reader.as_mut().poll_read(cx, &mut rb))?;
            let data = rb.filled();
            if data.is_empty() {
                self.read_done = true;
                return Poll::Ready(Ok(false));
            }
            let end = frames.finish_frame(data);
            self.frames = Some(frames);
            // The rest of the frame; anything after it is dropped.
            self.pending = Some((data[..end].into(), 0));
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

/// Whether each side of a [`Splice`] was left between two frames by [`Splice::finish`], so
/// setgate may write a frame of its own to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Boundaries {
    /// The client's side: everything written to it ends on a frame boundary.
    pub client: bool,
    /// The server's side.
    pub server: bool,
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

impl<A, B> Splice<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    /// Follows the AMQP frames of both directions from here on. Both streams must be at a frame
    /// boundary now (a `set` connection is, right after the handshake setgate read itself).
    pub fn track_frames(mut self) -> Self {
        self.up.frames = Some(Frames::default());
        self.down.frames = Some(Frames::default());
        self
    }

    /// Stops the copy cleanly: each direction is copied on to the end of the frame it is in,
    /// then no further. Returns which sides were left between two frames. Bound it with a
    /// timeout: a peer in the middle of a frame may never send the rest.
    pub async fn finish(&mut self) -> Boundaries {
        let (mut up, mut down): (Option<bool>, Option<bool>) = (None, None);
        std::future::poll_fn(|cx| {
            if up.is_none() {
                if let Poll::Ready(r) =
                    self.up
                        .poll_finish(cx, Pin::new(&mut *self.a), Pin::new(&mut *self.b))
                {
                    up = Some(r.unwrap_or(false));
                }
            }
            if down.is_none() {
                if let Poll::Ready(r) =
                    self.down
                        .poll_finish(cx, Pin::new(&mut *self.b), Pin::new(&mut *self.a))
                {
                    down = Some(r.unwrap_or(false));
                }
            }
            match (up, down) {
                (Some(server), Some(client)) => Poll::Ready(Boundaries { client, server }),
                _ => Poll::Pending,
            }
        })
        .await
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

    /// An AMQP frame of `size` payload bytes on `channel`.
    fn frame(channel: u16, size: u32) -> Vec<u8> {
        let mut f = vec![3u8];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&size.to_be_bytes());
        f.extend((0..size).map(|i| i as u8));
        f.push(0xCE);
        f
    }

    #[test]
    fn frames_are_followed_across_any_cut() {
        let frames = [frame(0, 0), frame(1, 300), frame(2, 7), frame(0, 1)];
        let stream: Vec<u8> = frames.concat();
        let ends: Vec<usize> = frames
            .iter()
            .scan(0, |at, f| {
                *at += f.len();
                Some(*at)
            })
            .collect();
        for cut in [1, 2, 3, 6, 7, 8, 13, 64, 1000] {
            let mut f = Frames::default();
            let mut at = 0;
            for chunk in stream.chunks(cut) {
                f.advance(chunk);
                at += chunk.len();
                assert_eq!(f.at_boundary(), ends.contains(&at), "cut {cut}, at {at}");
            }
            // finish_frame stops exactly at the end of the frame it is in.
            let mut f = Frames::default();
            f.advance(&stream[..cut.min(ends[1] - 1)]);
            let rest = &stream[cut.min(ends[1] - 1)..];
            let n = f.finish_frame(rest);
            assert!(f.at_boundary());
            assert!(ends.contains(&(cut.min(ends[1] - 1) + n)), "cut {cut}: {n}");
        }
    }

    #[tokio::test]
    async fn finish_completes_the_frame_in_flight_and_drops_what_follows() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1 << 16);
        let (mut proxy_server, mut server) = tokio::io::duplex(1 << 16);
        let (first, second, third) = (frame(1, 40), frame(1, 100), frame(0, 4));
        // One whole frame and the start of the next reach the client's side first.
        server.write_all(&first).await.unwrap();
        server.write_all(&second[..30]).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (copying_done, copy_stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut sp = splice(&mut proxy_client, &mut proxy_server, &[], &[]).track_frames();
            tokio::select! {
                _ = &mut sp => panic!("the splice ended on its own"),
                _ = stopped => {}
            }
            copying_done.send(()).unwrap();
            let b = sp.finish().await;
            drop(sp);
            proxy_client.write_all(b"CLOSE").await.unwrap();
            proxy_client.shutdown().await.unwrap();
            b
        });
        let mut got = vec![0u8; first.len() + 30];
        client.read_exact(&mut got).await.unwrap();
        stop.send(()).unwrap();
        copy_stopped.await.unwrap();
        // The rest of the frame in flight, then one more frame that must not reach the client.
        server
            .write_all(&[&second[30..], &third[..]].concat())
            .await
            .unwrap();
        let b = task.await.unwrap();
        assert_eq!(
            b,
            Boundaries {
                client: true,
                server: true
            }
        );
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, [&second[30..], b"CLOSE"].concat());
    }

    #[tokio::test]
    async fn finish_without_frame_tracking_claims_no_boundary() {
        let (_client, mut proxy_client) = tokio::io::duplex(64);
        let (mut proxy_server, _server) = tokio::io::duplex(64);
        let mut sp = splice(&mut proxy_client, &mut proxy_server, &[], &[]);
        assert_eq!(sp.finish().await, Boundaries::default());
    }
}

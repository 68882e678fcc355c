//! Reading a wire's confirms, and a busy upstream's deliveries, in rounds instead of as each
//! arrives.
//!
//! Under a live publisher a flow was woken about 1,650 times a second at 12k msg/s, and 44% of
//! those wake-ups were for the downstream's confirms alone: one 21-byte `Basic.Ack` (with
//! `multiple`) every 1.4 ms. A wake-up (the thread leaving `epoll_wait`, a context switch, a
//! `recv`) was most of setgate's CPU per message. Confirms only decide when the source is
//! acked, and those acks wait up to `ACK_DELAY` to go out together anyway, so nothing gains from
//! reading a confirm the moment it lands.
//!
//! While publishes are in flight, the socket's `SO_RCVLOWAT` is raised to [`CONFIRM_MARK`]: the
//! kernel wakes no one for a lone confirm (or heartbeat), and what arrived is read when the
//! round ends, [`ROUND`] after it began: the mark drops back to one byte, and Linux signals the
//! socket readable at once if bytes wait. [`CONFIRM_MARK`] bytes (a dozen confirms, most
//! returned messages) are read as they come; anything shorter, a Close from the broker
//! included, at the round's end. The peer closing or resetting the connection wakes the flow at
//! once whatever the mark. Nothing published: the mark stays at one byte.
//!
//! Rounds follow one another while publishes await confirms: once what a round's end
//! signalled is read, the next round begins ([`LazyReads::resume`]). A draining flow publishes
//! and is confirmed without pause, and when a round began only at the next publish, the
//! confirms landing in between woke it one by one. On a drain of four flows
//! (`setgate-bench federation --exchanges 4 --messages 100000`), with rounds that follow one
//! another and that a flow allows with its window full (`forward::round_holds_little`), each
//! flow's downstream socket was read about 730 times instead of 3,300, and setgate's CPU per
//! message went from 6.5-7.6 us to 4.3-4.8.
//!
//! A consuming wire does the same with deliveries while its upstream is busy: a turn of
//! reading that brought [`BUSY`] deliveries or more begins a round with the mark at
//! [`DELIVERY_MARK`], and rounds go on while each brings as many. A source sending thousands
//! of messages a second sent them a dozen at a time, each dozen a wake-up, a read, a batch and
//! a write to the downstream; in rounds, a batch holds what came in [`ROUND`]. A quiet
//! upstream's deliveries (a paced flow, a trickle) are read as they come, with no delay added.
//! The flow allows these rounds only at rates where a round holds back a small part of its
//! prefetch (`forward::round_holds_little`): a source that has sent all its window waits for
//! acks, and deliveries left unread meanwhile would hold the flow up to a round.
//!
//! The same over TLS: the wire's TLS runs over a socket of its own (`connect::transport`), and a
//! confirm's record (43 bytes) is as far under the mark as a plain confirm.

use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Bytes that wake a publishing wire while a round lasts: a dozen confirm frames.
pub(super) const CONFIRM_MARK: libc::c_int = 256;
/// Bytes that wake a consuming wire while a round lasts: a few hundred small deliveries, a
/// few large ones.
pub(super) const DELIVERY_MARK: libc::c_int = 64 * 1024;
/// Deliveries that one turn of reading brings for a consuming wire to read in rounds: a busy
/// upstream, sending faster than the flow is woken.
pub(super) const BUSY: usize = 8;
/// Longest a confirm (or a busy upstream's delivery) waits to be read. Well under `ACK_DELAY`
/// (10 ms), so the source's acks still go out on time.
pub(crate) const ROUND: Duration = Duration::from_millis(4);

/// The read mark of one TCP socket.
pub(super) struct LazyReads {
    fd: RawFd,
    /// The mark while a round is on.
    mark: libc::c_int,
    /// Rounds may begin (the flow allows them, see [`crate::wire::Wire::rounds`]).
    allowed: bool,
    /// The mark is raised (a round is on).
    lazy: bool,
    /// Bytes were read since the mark last dropped to one byte: what the drop signalled was
    /// taken, so a new round loses nothing (see [`LazyReads::resume`]).
    fresh: bool,
    round_ends: Pin<Box<Sleep>>,
}

impl LazyReads {
    /// `fd` must stay open as long as this lives (the wire owns both).
    pub fn new(fd: RawFd, mark: libc::c_int) -> LazyReads {
        LazyReads {
            fd,
            mark,
            allowed: true,
            lazy: false,
            fresh: false,
            round_ends: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// A round begins unless one is on (for a publishing wire: a publish is going out). A
    /// socket that refuses the option stays as it was (reads as each byte comes).
    pub fn begin(&mut self) {
        if self.allowed && !self.lazy && set_lowat(self.fd, self.mark) {
            self.lazy = true;
            self.round_ends.as_mut().reset(Instant::now() + ROUND);
        }
    }

    /// A round is on: the mark is raised.
    #[cfg(test)]
    pub fn on(&self) -> bool {
        self.lazy
    }

    /// Bytes were read.
    pub fn read(&mut self) {
        self.fresh = true;
    }

    /// Everything readable was read and the wire wants another round (publishes still await
    /// confirms; the upstream is busy): it begins at once, unless nothing was read since the
    /// mark last dropped. A drop signals bytes that wait, but the kernel checks the mark again
    /// when epoll collects the signal: raised before that, it would leave those bytes
    /// unsignalled, and a flow that waits for their confirms would never be woken for them.
    /// Registers `cx` for the round's end.
    pub fn resume(&mut self, cx: &mut Context<'_>) {
        if self.fresh {
            self.begin();
        }
        self.poll_round(cx);
    }

    /// Whether rounds may begin; a round on ends now when they may not.
    pub fn allow(&mut self, allowed: bool) {
        self.allowed = allowed;
        if !allowed {
            self.eager();
        }
    }

    /// Before reading: ends the round if its time is up, else arranges for `cx` to be woken
    /// when it is.
    pub fn poll_round(&mut self, cx: &mut Context<'_>) {
        if self.lazy && self.round_ends.as_mut().poll(cx).is_ready() {
            self.eager();
        }
    }

    /// Back to reading every byte as it comes (a round's end, a close).
    pub fn eager(&mut self) {
        if self.lazy {
            // A socket that took the raised mark takes the default back; if it somehow did
            // not, the next round's end tries again.
            self.lazy = !set_lowat(self.fd, 1);
            self.fresh = false;
            if self.lazy {
                self.round_ends.as_mut().reset(Instant::now() + ROUND);
            }
        }
    }
}

/// Sets `SO_RCVLOWAT`; Linux signals the socket readable at once when what waits now reaches
/// the new mark.
fn set_lowat(fd: RawFd, bytes: libc::c_int) -> bool {
    // SAFETY: setsockopt(2) on a socket the caller keeps open, with a pointer to a live
    // c_int and its exact length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::addr_of!(bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (theirs, _) = l.accept().await.unwrap();
        (ours, theirs)
    }

    /// Whether `s` becomes readable within `within`.
    async fn woken(s: &TcpStream, within: Duration) -> bool {
        tokio::time::timeout(within, s.readable()).await.is_ok()
    }

    const CONFIRM: &[u8] = &[
        1, 0, 1, 0, 0, 0, 13, 0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 9, 1, 206,
    ];

    /// A round begun on our end of a connection, and a confirm sent to it that wakes no one.
    async fn a_confirm_in_a_round() -> (TcpStream, TcpStream, LazyReads) {
        let (ours, mut theirs) = pair().await;
        let mut lazy = LazyReads::new(ours.as_raw_fd(), CONFIRM_MARK);
        lazy.begin();
        theirs.write_all(CONFIRM).await.unwrap();
        // The kernel's rule, not a race: below the mark the socket is never signalled.
        assert!(!woken(&ours, Duration::from_millis(100)).await);
        (ours, theirs, lazy)
    }

    #[tokio::test]
    async fn a_confirm_in_a_round_wakes_no_one_until_the_round_ends() {
        let (ours, _theirs, mut lazy) = a_confirm_in_a_round().await;
        tokio::time::sleep(ROUND).await;
        std::future::poll_fn(|cx| {
            lazy.poll_round(cx);
            std::task::Poll::Ready(())
        })
        .await;
        assert!(!lazy.lazy);
        assert!(woken(&ours, Duration::from_secs(5)).await);
        let mut buf = [0u8; 64];
        assert_eq!(ours.try_read(&mut buf).unwrap(), CONFIRM.len());
    }

    #[tokio::test]
    async fn a_mark_of_bytes_wakes_at_once_and_a_refused_round_reads_each_byte() {
        let (ours, mut theirs) = pair().await;
        let mut lazy = LazyReads::new(ours.as_raw_fd(), CONFIRM_MARK);
        lazy.begin();
        theirs
            .write_all(&[0u8; CONFIRM_MARK as usize])
            .await
            .unwrap();
        assert!(woken(&ours, Duration::from_secs(5)).await);
        let mut buf = [0u8; 512];
        assert_eq!(ours.try_read(&mut buf).unwrap(), CONFIRM_MARK as usize);
        // Read to the end, so the readiness seen next is new.
        assert!(ours.try_read(&mut buf).is_err());

        // A tight window: no round begins, a lone confirm is read as it comes.
        lazy.allow(false);
        assert!(!lazy.lazy);
        lazy.begin();
        assert!(!lazy.lazy);
        theirs.write_all(CONFIRM).await.unwrap();
        assert!(woken(&ours, Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_peer_that_closes_wakes_a_round_at_once() {
        let (ours, theirs, _lazy) = a_confirm_in_a_round().await;
        drop(theirs);
        assert!(woken(&ours, Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_round_ended_early_signals_what_waits() {
        let (ours, _theirs, mut lazy) = a_confirm_in_a_round().await;
        lazy.eager();
        assert!(woken(&ours, Duration::from_secs(5)).await);
    }
}

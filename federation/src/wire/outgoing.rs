//! What a wire has queued to write: its own frames in one buffer, and large bodies written from
//! where they were read.
//!
//! A forwarded body was copied into the wire's buffer, then by the kernel into the socket: with
//! 64 KiB bodies that first copy was most of setgate's own CPU per message (a profile of a drain
//! put 14% of it in `encode_publish`'s `memcpy`, against 18% for each of the kernel's copies in
//! and out). A body of [`SPLICE_MIN`] bytes or more is now written straight from the delivery's
//! read buffer (a [`Bytes`] the delivery shares), with the frames around it, in one `writev`.
//! Smaller bodies are still copied: for them a copy costs less than a slice of its own.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Range;

/// Bodies (or body frames' parts) at least this long are written from where they were read.
pub(super) const SPLICE_MIN: usize = 2048;
/// Capacity of a wire's buffer to begin with (it grows with a batch, and keeps what it grew to).
const FIRST: usize = 64 * 1024;
/// Most slices handed to one vectored write.
const MAX_SLICES: usize = 64;

/// The bytes a wire has to write, in order.
#[derive(Default)]
pub(super) struct Outgoing {
    /// The wire's own frames (and small bodies).
    pub buf: Vec<u8>,
    /// Bodies spliced in: each goes right after `buf[..at]`, in order of `at`.
    bodies: VecDeque<(usize, Bytes)>,
    /// Bytes of `buf` written.
    written: usize,
    /// Bytes of the first body written.
    body_written: usize,
}

impl Outgoing {
    /// A wire's: its buffer starts at [`FIRST`].
    pub fn new() -> Outgoing {
        Outgoing {
            buf: Vec::with_capacity(FIRST),
            ..Outgoing::default()
        }
    }

    /// Bytes of [`Outgoing::buf`] written (all that is written when nothing is spliced).
    pub fn written(&self) -> usize {
        self.written
    }

    /// Nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.written == self.buf.len() && self.bodies.is_empty()
    }

    /// Everything was written: the buffer starts over (keeping its memory).
    pub fn reset_if_written(&mut self) -> bool {
        if self.is_empty() && !self.buf.is_empty() {
            self.buf.clear();
            self.written = 0;
            return true;
        }
        false
    }

    /// Appends `body[range]` (a body frame's payload): spliced in when it is long, copied
    /// otherwise.
    pub fn body(&mut self, body: &Bytes, range: Range<usize>) {
        if range.len() >= SPLICE_MIN {
            self.bodies.push_back((self.buf.len(), body.slice(range)));
        } else {
            self.buf.extend_from_slice(&body[range]);
        }
    }

    /// Whether bodies are spliced in, so that a write should be vectored.
    pub fn spliced(&self) -> bool {
        !self.bodies.is_empty()
    }

    /// What to write next, in order, as slices (at most [`MAX_SLICES`]).
    pub fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut out = Vec::with_capacity(MAX_SLICES.min(2 * self.bodies.len() + 1));
        let mut from = self.written;
        for (i, (at, body)) in self.bodies.iter().enumerate() {
            if out.len() + 2 > MAX_SLICES {
                return out;
            }
            if *at > from {
                out.push(IoSlice::new(&self.buf[from..*at]));
            }
            let skip = if i == 0 { self.body_written } else { 0 };
            out.push(IoSlice::new(&body[skip..]));
            from = from.max(*at);
        }
        if from < self.buf.len() {
            out.push(IoSlice::new(&self.buf[from..]));
        }
        out
    }

    /// The next `n` bytes, in the order of [`Outgoing::slices`], were written.
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            match self.bodies.front() {
                Some((at, body)) if self.written == *at => {
                    let left = body.len() - self.body_written;
                    if n < left {
                        self.body_written += n;
                        return;
                    }
                    n -= left;
                    self.bodies.pop_front();
                    self.body_written = 0;
                }
                next => {
                    let until = next.map_or(self.buf.len(), |(at, _)| *at);
                    let step = n.min(until - self.written);
                    assert!(step > 0, "advanced past what was queued");
                    self.written += step;
                    n -= step;
                }
            }
        }
    }

    /// All of it, joined (tests read what a wire wrote).
    #[cfg(test)]
    pub fn joined(&self) -> Vec<u8> {
        self.slices()
            .iter()
            .flat_map(|s| s.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer with frames around two spliced bodies, a copied small one between them.
    fn queued() -> (Outgoing, Vec<u8>) {
        let mut o = Outgoing::default();
        let mut want = Vec::new();
        for (i, len) in [SPLICE_MIN, 10, SPLICE_MIN + 5].into_iter().enumerate() {
            let head = [i as u8; 7];
            o.buf.extend_from_slice(&head);
            want.extend_from_slice(&head);
            let body = Bytes::from(vec![100 + i as u8; len]);
            want.extend_from_slice(&body);
            o.body(&body, 0..len);
            o.buf.push(206);
            want.push(206);
        }
        (o, want)
    }

    #[test]
    fn long_bodies_are_spliced_in_order_and_short_ones_copied() {
        let (o, want) = queued();
        assert!(o.spliced());
        assert_eq!(o.bodies.len(), 2);
        assert_eq!(o.joined(), want);
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        // Every write length, from a byte at a time to all at once.
        for step in [1, 3, 7, 8, 100, SPLICE_MIN - 1, SPLICE_MIN + 9, 1 << 20] {
            let (mut o, want) = queued();
            let mut wrote = Vec::new();
            while !o.is_empty() {
                let next: Vec<u8> = o.slices().iter().flat_map(|s| s.iter().copied()).collect();
                let n = step.min(next.len());
                wrote.extend_from_slice(&next[..n]);
                o.advance(n);
            }
            assert_eq!(wrote, want, "writes of {step} bytes");
            assert!(o.reset_if_written());
            assert!(o.buf.is_empty() && !o.spliced());
        }
    }

    #[test]
    fn a_body_first_or_back_to_back_has_no_empty_slice() {
        let mut o = Outgoing::default();
        o.body(&Bytes::from(vec![1; SPLICE_MIN]), 0..SPLICE_MIN);
        o.body(&Bytes::from(vec![2; SPLICE_MIN + 1]), 1..SPLICE_MIN + 1);
        let s = o.slices();
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|s| !s.is_empty()));
        o.advance(2 * SPLICE_MIN);
        assert!(o.is_empty());
    }

    #[test]
    fn one_write_takes_at_most_max_slices() {
        let mut o = Outgoing::default();
        for _ in 0..MAX_SLICES {
            o.buf.push(0);
            o.body(&Bytes::from(vec![1; SPLICE_MIN]), 0..SPLICE_MIN);
        }
        let s = o.slices();
        assert!(s.len() <= MAX_SLICES);
        let n: usize = s.iter().map(|s| s.len()).sum();
        o.advance(n);
        assert!(!o.is_empty(), "the rest waits for the next write");
    }
}

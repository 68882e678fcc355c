//! The buffer a wire reads into, and the read buffers it goes back to.
//!
//! Whole frames leave the buffer as one shared [`Bytes`] ([`Reads::take`]), and deliveries keep
//! their properties and bodies as slices of it (until their batch is written to its outlet), so
//! nothing is copied on the way through. The price is that the memory under a read cannot be
//! read into again while a delivery holds part of it. Taking a fresh allocation each time cost
//! more than the copies saved: with 64 KiB bodies a profile of a drain put 8% of setgate's CPU
//! in page faults and clearing fresh pages, and 7% in copying the start of the next frame into
//! each new buffer. So a wire keeps the buffers it read into before ([`SPARES`] at most) and
//! reads into one of them again once nothing holds it; a buffer holds several large frames, so
//! the start of a frame is copied once per [`BUFFER`] read, not once per read.

use bytes::{Bytes, BytesMut};

/// Size of a wire's first buffer: most wires (publishing ones: confirms) never need another.
pub(super) const FIRST: usize = 64 * 1024;
/// Size of a buffer taken when the one in use is held.
const BUFFER: usize = 256 * 1024;
/// Room under which a new buffer is taken (or the one in use reclaimed) before reading.
const MIN_READ: usize = 16 * 1024;
/// Buffers kept to be read into again: with the one in use, enough for a batch of deliveries
/// (`forward::BATCH_BYTES`, 512 KiB, and the delivery that passes it).
const SPARES: usize = 3;

/// What was read and not yet taken (the start of a frame at most, between reads), and the
/// buffers to read into again.
pub(super) struct Reads {
    pub buf: BytesMut,
    /// `buf` has [`BUFFER`] bytes of memory, so it may be read into again as a spare.
    pooled: bool,
    spare: Vec<BytesMut>,
}

impl Reads {
    pub fn new() -> Reads {
        Reads {
            buf: BytesMut::with_capacity(FIRST),
            pooled: false,
            spare: Vec::new(),
        }
    }

    /// Makes room for a read: the rest of the buffer while it has [`MIN_READ`] bytes; else the
    /// buffer from its start, when nothing taken from it is held any more; else a spare that
    /// nothing holds; else a new buffer.
    pub fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() >= MIN_READ || self.buf.try_reclaim(MIN_READ) {
            return;
        }
        let free = self.spare.iter_mut().position(|b| b.try_reclaim(BUFFER));
        let mut next = match free {
            Some(i) => self.spare.swap_remove(i),
            None => BytesMut::with_capacity(BUFFER),
        };
        // The start of a frame; one longer than a buffer (a large frame_max) grows it.
        next.extend_from_slice(&self.buf);
        next.reserve(MIN_READ);
        let mut old = std::mem::replace(&mut self.buf, next);
        if std::mem::replace(&mut self.pooled, true) && self.spare.len() < SPARES {
            old.clear();
            self.spare.push(old);
        }
    }

    /// Takes the first `n` bytes read: they stay in memory as long as anything holds a part.
    pub fn take(&mut self, n: usize) -> Bytes {
        self.buf.split_to(n).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills the rest of the buffer as a read would.
    fn read(r: &mut Reads, byte: u8) {
        r.make_room();
        let room = r.buf.capacity() - r.buf.len();
        r.buf.extend(std::iter::repeat_n(byte, room));
    }

    #[test]
    fn a_buffer_nothing_holds_is_read_into_again_and_a_held_one_is_not() {
        let mut r = Reads::new();
        read(&mut r, 1);
        let first = r.take(r.buf.len());
        // Held: the next read goes to a new buffer.
        read(&mut r, 2);
        assert!(
            first.iter().all(|b| *b == 1),
            "a held read is never written over"
        );
        let held = r.take(r.buf.len());
        drop(first);
        read(&mut r, 3);
        let third = r.take(r.buf.len());
        assert!(held.iter().all(|b| *b == 2));
        // Nothing holds the second: the read after the third goes back to it.
        let at = held.as_ptr();
        drop(held);
        read(&mut r, 4);
        assert_eq!(r.buf.as_ptr(), at, "the spare was read into again");
        assert!(third.iter().all(|b| *b == 3));
    }

    #[test]
    fn the_start_of_a_frame_moves_to_the_next_buffer() {
        let mut r = Reads::new();
        read(&mut r, 1);
        let held = r.take(r.buf.len() - 10);
        // Ten bytes of a frame left, the buffer full: they lead the next one.
        read(&mut r, 2);
        assert_eq!(&r.buf[..10], &[1; 10]);
        assert!(r.buf[10..].iter().all(|b| *b == 2));
        drop(held);
    }

    #[test]
    fn a_wire_that_holds_nothing_keeps_its_first_buffer() {
        let mut r = Reads::new();
        let at = r.buf.as_ptr();
        for _ in 0..10 {
            read(&mut r, 7);
            assert_eq!(r.buf.as_ptr(), at, "read from the start of the same buffer");
            assert_eq!(r.buf.len(), FIRST, "all of it read into");
            drop(r.take(r.buf.len()));
        }
        assert!(r.spare.is_empty());
    }
}

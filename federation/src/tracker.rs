//! Which upstream deliveries may be acknowledged, given downstream confirms in any order.
//!
//! Every upstream delivery gets the next sequence number when it is handed to the downstream
//! (forwarded or dropped). Confirms resolve sequence numbers in any order; only the resolved
//! *prefix* is turned into upstream acks, so a `multiple` ack never covers a delivery whose
//! publish is still unconfirmed. Runs of confirmed deliveries become one `multiple` ack; a
//! rejected one (nack or return) is requeued on its own.

use std::collections::VecDeque;

/// A publish sequence number, counted by the tracker from 0.
pub(crate) type Seq = u64;

/// How the downstream answered one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Confirmed (or nothing to confirm: dropped by the hop check, or on-publish).
    Done,
    /// Nacked or returned: give it back to the upstream queue.
    Rejected,
}

/// What to send on the upstream channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamAck {
    /// `basic.ack(tag, multiple)`.
    Ack { tag: u64, multiple: bool },
    /// `basic.nack(tag, requeue = true)`.
    Requeue { tag: u64 },
}

/// Sequence number -> delivery tag, with the outcomes received so far.
#[derive(Debug, Default)]
pub(crate) struct AckTracker {
    /// Sequence number of `entries[0]`.
    first: Seq,
    /// (delivery tag, outcome once known), in publish order.
    entries: VecDeque<(u64, Option<Outcome>)>,
    /// How many entries from the front are resolved (what `take_acks` would remove).
    ready: usize,
}

impl AckTracker {
    /// Records a delivery about to be published; returns its sequence number.
    pub fn push(&mut self, tag: u64) -> Seq {
        debug_assert!(
            self.entries.back().is_none_or(|(t, _)| *t < tag),
            "delivery tags go up"
        );
        self.entries.push_back((tag, None));
        self.first + self.entries.len() as u64 - 1
    }

    /// Records the downstream's answer for `seq`. Unknown or repeated numbers are ignored.
    pub fn resolve(&mut self, seq: Seq, outcome: Outcome) {
        if let Some(i) = seq.checked_sub(self.first) {
            if let Some(e) = self.entries.get_mut(i as usize) {
                e.1.get_or_insert(outcome);
            }
        }
        while self.entries.get(self.ready).is_some_and(|e| e.1.is_some()) {
            self.ready += 1;
        }
    }

    /// Deliveries at the front whose upstream ack is decided.
    pub fn ready(&self) -> usize {
        self.ready
    }

    /// Removes the resolved prefix and returns the acks it allows, in order.
    pub fn take_acks(&mut self) -> Vec<UpstreamAck> {
        let mut out = Vec::new();
        let mut run: Option<(u64, usize)> = None; // (last tag, length) of confirmed deliveries
        let flush = |run: &mut Option<(u64, usize)>, out: &mut Vec<UpstreamAck>| {
            if let Some((tag, n)) = run.take() {
                out.push(UpstreamAck::Ack {
                    tag,
                    multiple: n > 1,
                });
            }
        };
        while let Some(&(tag, Some(outcome))) = self.entries.front() {
            self.entries.pop_front();
            self.first += 1;
            self.ready -= 1;
            match outcome {
                Outcome::Done => run = Some((tag, run.map_or(1, |(_, n)| n + 1))),
                Outcome::Rejected => {
                    flush(&mut run, &mut out);
                    out.push(UpstreamAck::Requeue { tag });
                }
            }
        }
        flush(&mut run, &mut out);
        out
    }

    /// Deliveries handed on whose upstream ack is not decided yet.
    pub fn outstanding(&self) -> usize {
        self.entries.len()
    }

    /// Publishes still waiting for the downstream's answer.
    pub fn unconfirmed(&self) -> usize {
        self.entries.iter().filter(|e| e.1.is_none()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UpstreamAck::*;

    #[test]
    fn in_order_confirms_become_one_multiple_ack() {
        let mut t = AckTracker::default();
        let seqs: Vec<Seq> = (1..=5).map(|tag| t.push(tag)).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
        for s in seqs {
            t.resolve(s, Outcome::Done);
        }
        assert_eq!(
            t.take_acks(),
            vec![Ack {
                tag: 5,
                multiple: true
            }]
        );
        assert_eq!(t.outstanding(), 0);
        assert_eq!(t.take_acks(), vec![]);
    }

    #[test]
    fn a_single_confirm_is_not_multiple() {
        let mut t = AckTracker::default();
        let s = t.push(7);
        t.resolve(s, Outcome::Done);
        assert_eq!(
            t.take_acks(),
            vec![Ack {
                tag: 7,
                multiple: false
            }]
        );
    }

    #[test]
    fn out_of_order_confirms_wait_for_the_gap() {
        let mut t = AckTracker::default();
        let a = t.push(10);
        let b = t.push(11);
        let c = t.push(12);
        t.resolve(c, Outcome::Done);
        t.resolve(b, Outcome::Done);
        assert_eq!(
            t.take_acks(),
            vec![],
            "10 is unconfirmed: nothing may be acked"
        );
        assert_eq!(t.unconfirmed(), 1);
        t.resolve(a, Outcome::Done);
        assert_eq!(
            t.take_acks(),
            vec![Ack {
                tag: 12,
                multiple: true
            }]
        );
    }

    #[test]
    fn a_nack_splits_the_run_and_is_requeued_alone() {
        let mut t = AckTracker::default();
        let s: Vec<Seq> = (1..=6).map(|tag| t.push(tag)).collect();
        for (i, seq) in s.iter().enumerate() {
            t.resolve(
                *seq,
                if i == 2 || i == 3 {
                    Outcome::Rejected
                } else {
                    Outcome::Done
                },
            );
        }
        assert_eq!(
            t.take_acks(),
            vec![
                Ack {
                    tag: 2,
                    multiple: true
                },
                Requeue { tag: 3 },
                Requeue { tag: 4 },
                Ack {
                    tag: 6,
                    multiple: true
                },
            ]
        );
    }

    #[test]
    fn sequence_numbers_continue_across_drains_and_tags_may_skip() {
        let mut t = AckTracker::default();
        let a = t.push(1);
        t.resolve(a, Outcome::Done);
        assert_eq!(
            t.take_acks(),
            vec![Ack {
                tag: 1,
                multiple: false
            }]
        );
        let b = t.push(5);
        let c = t.push(9);
        assert_eq!((b, c), (1, 2));
        t.resolve(c, Outcome::Done);
        t.resolve(b, Outcome::Done);
        assert_eq!(
            t.take_acks(),
            vec![Ack {
                tag: 9,
                multiple: true
            }]
        );
    }

    #[test]
    fn stale_or_repeated_answers_are_ignored() {
        let mut t = AckTracker::default();
        let a = t.push(1);
        t.resolve(a, Outcome::Rejected);
        t.resolve(a, Outcome::Done);
        t.resolve(99, Outcome::Done);
        assert_eq!(t.take_acks(), vec![Requeue { tag: 1 }]);
        t.resolve(a, Outcome::Done);
        assert_eq!(t.take_acks(), vec![]);
    }
}

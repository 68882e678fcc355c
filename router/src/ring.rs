//! The consistent-hash ring: sorted virtual-node points and the SET that owns each.
//!
//! The `consistent_hash` crate's `StaticHashRing` defines the same ring (first virtual node at or
//! after the key, wrapping, ties by node key), and `tests/crate_equivalence.rs` checks that both
//! agree key for key. It is not on the lookup path because `calc_candidates` allocates (it
//! inserts the first candidate into a fresh splay-tree set) on every lookup, which the router
//! promises never to do, and because it is slower (`benches/lookup.rs`, 4 SETs: 12.2 M lookups/s
//! against this ring's 66.4 M). This ring is two flat arrays and, in front of them, a slot per
//! range of the hash's top bits that names the range's owner when one SET owns all of it, as most
//! do. A binary search over all the points read a dozen cache lines (15.7 M lookups/s in the same
//! run; 43.9 M with an index of where each range begins, three cache lines), and in a SET-routed
//! flow, with brokers evicting them between batches, it was a sixth of setgate's CPU per message.

use crate::hash::vnode_point;

/// Virtual nodes per unit of weight (V). A SET of weight `w` has `w * V` virtual nodes.
///
/// 4096 keeps one SET's share within about ±0.35% (one standard deviation) of its target with 4
/// equal SETs, so the ±2% promise holds with a wide margin. Changing it moves keys on every edge:
/// it is part of the contract and of the fingerprint's version line.
pub const VNODES_PER_WEIGHT: u32 = 4096;

/// The most weight all SETs together may carry: `MAX_TOTAL_WEIGHT * V` = about 1 M virtual
/// nodes, 28 MB with the slots and a ~0.1 s build, which a SIGHUP reload can afford. Weights are
/// relative, so a larger table is always expressible with smaller numbers.
pub const MAX_TOTAL_WEIGHT: u64 = 256;

/// A built ring. Points and owners are separate arrays so a walk over points reads only `u64`s.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ring {
    /// Virtual-node points, ascending; equal points ordered by their SET's name bytes.
    points: Vec<u64>,
    /// `owners[i]` is the index (in the caller's SET list) of the SET owning `points[i]`.
    owners: Vec<u32>,
    /// One slot per range of keys sharing their top bits (`key >> shift`): the owner of every
    /// key of the range ([`UNIFORM`] set) when one SET owns them all, else the index of the
    /// range's first point (or of the first point after it, for a range with none). Empty when
    /// there are no points.
    slots: Vec<u32>,
    /// `64 - bits`, where `2^bits` is about four times the number of points (see [`slots`]).
    shift: u32,
}

/// A slot that holds its range's owner, not an index.
const UNIFORM: u32 = 1 << 31;
/// Most ranges: 2^22 slots (16 MB) for the largest rings, four points a range there.
const MAX_SLOT_BITS: u32 = 22;

impl Ring {
    /// Builds the ring for `sets`, given as (name, weight) in the caller's order; owners are
    /// indexes into that slice. Weight 0 contributes no virtual node.
    pub(crate) fn build(sets: &[(&str, u32)]) -> Ring {
        let total: u64 = sets.iter().map(|&(_, w)| u64::from(w)).sum();
        let len = usize::try_from(total * u64::from(VNODES_PER_WEIGHT))
            .expect("total weight is validated against MAX_TOTAL_WEIGHT");
        let mut vnodes = Vec::with_capacity(len);
        let mut buf = Vec::with_capacity(64);
        for (owner, &(name, weight)) in sets.iter().enumerate() {
            let owner = u32::try_from(owner).expect("fewer than 2^32 SETs");
            for index in 0..u64::from(weight) * u64::from(VNODES_PER_WEIGHT) {
                vnodes.push((vnode_point(&mut buf, name, index), owner));
            }
        }
        Ring::from_vnodes(vnodes, sets)
    }

    /// Sorts `(point, owner)` pairs into a ring. Two SETs' virtual nodes landing on the same
    /// point (a 64-bit collision, which the contract must still define) are ordered by SET name
    /// bytes, so the SET whose name sorts first owns keys hashing exactly there.
    fn from_vnodes(mut vnodes: Vec<(u64, u32)>, sets: &[(&str, u32)]) -> Ring {
        let name = |owner: u32| sets[owner as usize].0.as_bytes();
        vnodes.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| name(a.1).cmp(name(b.1))));
        let (points, owners): (Vec<u64>, Vec<u32>) = vnodes.into_iter().unzip();
        let (slots, shift) = slots(&points, &owners);
        Ring {
            points,
            owners,
            slots,
            shift,
        }
    }

    /// The SET owning `point`: the first virtual node whose point is `>=` it, wrapping past the
    /// largest point to the smallest. `None` when the ring is empty (every weight is 0).
    #[inline]
    pub(crate) fn owner(&self, point: u64) -> Option<u32> {
        let slot = *self.slots.get((point >> self.shift) as usize)?; // none: no points
        if slot & UNIFORM != 0 {
            return Some(slot & !UNIFORM);
        }
        // Points of later ranges are above `point`: the walk stops at the first of them.
        let mut i = slot as usize;
        while self.points.get(i).is_some_and(|&p| p < point) {
            i += 1;
        }
        let i = if i == self.points.len() { 0 } else { i };
        self.owners.get(i).copied()
    }

    /// The virtual-node points, ascending.
    pub(crate) fn points(&self) -> &[u64] {
        &self.points
    }

    /// The owner of the virtual node at `index` of [`Ring::points`], wrapping past the end to
    /// the first (as a lookup does); `None` when the ring is empty.
    pub(crate) fn owner_at(&self, index: usize) -> Option<u32> {
        let i = if index >= self.owners.len() { 0 } else { index };
        self.owners.get(i).copied()
    }

    /// Number of virtual nodes.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }
}

/// The slots of a ring of `points` (ascending) and their `owners`, and the shift that gives a
/// key's slot. About four slots a point, so that most ranges hold no point or points of one SET
/// (with the point after them): a lookup then reads one slot and nothing else, where a binary
/// search read a dozen cache lines, and a range index with one slot a point three.
fn slots(points: &[u64], owners: &[u32]) -> (Vec<u32>, u32) {
    if points.is_empty() {
        return (Vec::new(), 63);
    }
    let bits = (points.len().next_power_of_two().trailing_zeros() + 2).min(MAX_SLOT_BITS);
    let shift = 64 - bits;
    let mut slots = Vec::with_capacity(1 << bits);
    let mut lo = 0;
    for b in 0..1u64 << bits {
        let mut hi = lo;
        while hi < points.len() && (points[hi] >> shift) == b {
            hi += 1;
        }
        // The keys of range b go to points lo..hi, or past them to the point at hi (the first
        // point, wrapping).
        let after = owners[if hi == points.len() { 0 } else { hi }];
        let slot = if owners[lo..hi].iter().all(|&o| o == after) {
            debug_assert!(after & UNIFORM == 0, "fewer than 2^31 SETs");
            UNIFORM | after
        } else {
            u32::try_from(lo)
                .ok()
                .filter(|&i| i & UNIFORM == 0)
                .expect("fewer than 2^31 virtual nodes")
        };
        slots.push(slot);
        lo = hi;
    }
    (slots, shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(vnodes: &[(u64, u32)], sets: &[(&str, u32)]) -> Ring {
        Ring::from_vnodes(vnodes.to_vec(), sets)
    }

    #[test]
    fn owner_is_first_point_at_or_after_the_key_and_wraps() {
        let sets = [("a", 1), ("b", 1)];
        let r = ring(&[(100, 0), (200, 1)], &sets);
        assert_eq!(r.owner(0), Some(0));
        assert_eq!(
            r.owner(100),
            Some(0),
            "a key exactly on a point belongs to it"
        );
        assert_eq!(r.owner(101), Some(1));
        assert_eq!(r.owner(200), Some(1));
        assert_eq!(
            r.owner(201),
            Some(0),
            "past the last point wraps to the first"
        );
        assert_eq!(r.owner(u64::MAX), Some(0));
    }

    #[test]
    fn equal_points_go_to_the_set_whose_name_sorts_first() {
        // Owner 0 is "zeta", owner 1 is "alpha": insertion order must not matter.
        let sets = [("zeta", 1), ("alpha", 1)];
        let r = ring(&[(50, 0), (50, 1), (90, 0)], &sets);
        assert_eq!(r.owner(50), Some(1));
        assert_eq!(r.owner(10), Some(1));
        assert_eq!(r.owner(51), Some(0));
    }

    #[test]
    fn empty_ring_has_no_owner() {
        assert_eq!(Ring::build(&[("a", 0)]).owner(5), None);
        assert_eq!(Ring::default().owner(5), None);
    }

    #[test]
    fn weight_w_gives_w_times_v_vnodes() {
        let r = Ring::build(&[("a", 1), ("b", 0), ("c", 2)]);
        assert_eq!(r.len(), 3 * VNODES_PER_WEIGHT as usize);
        assert!(r.points.windows(2).all(|w| w[0] <= w[1]));
        assert!(!r.owners.contains(&1));
    }

    #[test]
    fn the_slots_find_the_point_a_binary_search_over_all_of_them_finds() {
        let sets = [("a", 1), ("b", 1), ("c", 1)];
        // Points clustered, repeated, at both ends, and spread, for sizes around powers of two.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for n in [1, 2, 3, 4, 5, 7, 8, 9, 100, 1024, 1025] {
            let mut vnodes: Vec<(u64, u32)> = (0..n)
                .map(|i| {
                    let p = match i % 5 {
                        0 => next(),
                        1 => next() >> 40,
                        2 => u64::MAX - (next() >> 50),
                        _ => 1 << 63 | (next() & 0xff),
                    };
                    (p, (next() % 3) as u32)
                })
                .collect();
            vnodes.extend([(0, 1), (u64::MAX, 2)].iter().take(n % 3));
            let r = ring(&vnodes, &sets);
            let plain = |point: u64| {
                let i = r.points.partition_point(|&p| p < point);
                r.owners
                    .get(if i == r.points.len() { 0 } else { i })
                    .copied()
            };
            let mut queries: Vec<u64> = (0..2000).map(|_| next()).collect();
            for &p in &r.points {
                queries.extend([p.wrapping_sub(1), p, p.wrapping_add(1)]);
            }
            queries.extend([0, 1, u64::MAX, 1 << 63, (1 << 63) - 1]);
            for q in queries {
                assert_eq!(r.owner(q), plain(q), "{n} points, key {q:#x}");
            }
        }
    }
}

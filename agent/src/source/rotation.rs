//! Checks the agent makes of every pod at its polls (is its namespace path still there, is its
//! cgroup still in use), spread over a second: each poll checks the next slice of the pods, so
//! every pod comes round once every [`ROUND`] polls. All of them at every 50 ms poll cost a
//! node of 1,000 pods a sixth of a CPU and more, and stalled the agent's loop in one piece.
use std::{
    collections::BTreeMap,
    ops::Bound::{Excluded, Unbounded},
};

/// Polls per round: a second at 50 ms.
pub const ROUND: usize = 20;

/// Where the last slice ended.
#[derive(Debug)]
pub struct Rotation<K> {
    last: Option<K>,
}

impl<K> Default for Rotation<K> {
    fn default() -> Self {
        Self { last: None }
    }
}

impl<K: Ord + Clone> Rotation<K> {
    /// The keys of `map` this poll checks: the `len / ROUND` (rounded up) that follow the
    /// last slice's, from the start again after the end.
    pub fn next_slice<V>(&mut self, map: &BTreeMap<K, V>) -> Vec<K> {
        let n = map.len().div_ceil(ROUND);
        let after = match &self.last {
            Some(k) => map.range((Excluded(k), Unbounded)),
            None => map.range::<K, _>(..),
        };
        // n ≤ len: the wrap reaches at most back to the cursor, so no key comes twice.
        let slice: Vec<K> = after
            .chain(map.iter())
            .take(n)
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(k) = slice.last() {
            self.last = Some(k.clone());
        }
        slice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_comes_round_once_a_round() {
        for len in [0usize, 1, 2, 19, 20, 21, 45, 1000] {
            let map: BTreeMap<usize, ()> = (0..len).map(|k| (k, ())).collect();
            let mut r = Rotation::default();
            let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
            for _ in 0..ROUND {
                let slice = r.next_slice(&map);
                assert_eq!(
                    slice.len(),
                    len.div_ceil(ROUND),
                    "{len} keys: a slice a poll"
                );
                for k in slice {
                    *seen.entry(k).or_default() += 1;
                }
            }
            assert_eq!(seen.len(), len, "{len} keys: all seen in a round");
            if len >= ROUND {
                let most = seen.values().max().copied().unwrap_or(0);
                assert!(
                    most <= 2,
                    "{len} keys: none more than twice a round ({most})"
                );
            }
        }
    }

    #[test]
    fn a_removed_cursor_key_does_not_restart_the_round() {
        let mut map: BTreeMap<u32, ()> = (0..40).map(|k| (k, ())).collect();
        let mut r = Rotation::default();
        assert_eq!(r.next_slice(&map), [0, 1]);
        map.remove(&1);
        assert_eq!(r.next_slice(&map), [2, 3]);
    }
}

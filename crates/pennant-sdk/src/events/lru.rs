//! The context keys the event processor has seen: a least-recently-used set of fixed capacity, as LaunchDarkly's
//! SDKs keep to send one `index` event per context.

use std::collections::HashMap;

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Node {
    key: Box<str>,
    prev: usize,
    next: usize,
}

/// A set of at most `capacity` keys; adding one to a full set forgets the least recently noticed.
#[derive(Debug)]
pub(crate) struct ContextKeys {
    capacity: usize,
    index: HashMap<Box<str>, usize, foldhash::fast::RandomState>,
    /// Slots of a doubly linked list, most recent at `head`.
    nodes: Vec<Node>,
    head: usize,
    tail: usize,
}

impl ContextKeys {
    /// An empty set of at most `capacity` keys (at least one).
    pub(crate) fn new(capacity: usize) -> ContextKeys {
        let capacity = capacity.max(1);
        ContextKeys {
            capacity,
            index: HashMap::with_capacity_and_hasher(capacity.min(4096), Default::default()),
            nodes: Vec::with_capacity(capacity.min(4096)),
            head: NIL,
            tail: NIL,
        }
    }

    /// Notes that `key` was seen; true when it was not in the set (it is now, as the most recent).
    pub(crate) fn notice(&mut self, key: &str) -> bool {
        if let Some(&slot) = self.index.get(key) {
            self.unlink(slot);
            self.push_front(slot);
            return false;
        }
        let slot = if self.nodes.len() < self.capacity {
            self.nodes.push(Node { key: key.into(), prev: NIL, next: NIL });
            self.nodes.len() - 1
        } else {
            // Full: reuse the least recent slot.
            let slot = self.tail;
            self.unlink(slot);
            let old = std::mem::replace(&mut self.nodes[slot].key, key.into());
            self.index.remove(&old);
            slot
        };
        self.index.insert(key.into(), slot);
        self.push_front(slot);
        true
    }

    /// Forgets every key.
    pub(crate) fn clear(&mut self) {
        self.index.clear();
        self.nodes.clear();
        self.head = NIL;
        self.tail = NIL;
    }

    /// How many keys are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    fn unlink(&mut self, slot: usize) {
        let (prev, next) = (self.nodes[slot].prev, self.nodes[slot].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
    }

    fn push_front(&mut self, slot: usize) {
        self.nodes[slot].prev = NIL;
        self.nodes[slot].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_are_noticed_once() {
        let mut keys = ContextKeys::new(10);
        assert!(keys.notice("a"));
        assert!(!keys.notice("a"));
        assert!(keys.notice("b"));
        assert!(!keys.notice("a"));
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn the_least_recently_noticed_key_is_forgotten_first() {
        let mut keys = ContextKeys::new(3);
        for k in ["a", "b", "c"] {
            assert!(keys.notice(k));
        }
        assert!(!keys.notice("a"), "a is now the most recent; b the least");
        assert!(keys.notice("d"), "full: b is forgotten");
        assert_eq!(keys.len(), 3);
        assert!(!keys.notice("a"));
        assert!(!keys.notice("c"));
        assert!(!keys.notice("d"));
        assert!(keys.notice("b"), "b was forgotten; now a is the least recent and goes");
        assert!(keys.notice("a"));
        assert_eq!(keys.len(), 3);
    }

    #[test]
    fn capacity_one_and_clear() {
        let mut keys = ContextKeys::new(1);
        assert!(keys.notice("a"));
        assert!(keys.notice("b"));
        assert!(keys.notice("a"));
        assert!(!keys.notice("a"));
        keys.clear();
        assert_eq!(keys.len(), 0);
        assert!(keys.notice("a"), "forgotten after a clear");
        let mut zero = ContextKeys::new(0);
        assert!(zero.notice("x"));
        assert!(!zero.notice("x"), "a capacity of 0 is taken as 1");
    }

    #[test]
    fn many_keys_stay_consistent() {
        let mut keys = ContextKeys::new(100);
        for round in 0..3 {
            for i in 0..1000 {
                keys.notice(&format!("k{}", (i * 7 + round) % 250));
            }
            assert_eq!(keys.len(), 100);
        }
        // The 100 most recent keys of the last round are remembered.
        let recent: Vec<String> = (900..1000).map(|i| format!("k{}", (i * 7 + 2) % 250)).collect();
        for k in &recent {
            assert!(!keys.notice(k), "{k}");
        }
    }
}

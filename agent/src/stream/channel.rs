//! Joins the two ends of a pipe so each message is reported once.
//!
//! A pipe's writer and reader are both on this host, so every message is
//! captured twice: once by `write` and once by `read`. The writer's copy is
//! canonical (it is complete and first in time); the reader's copy only
//! tells who received it and is then dropped. Matching is by content hash,
//! in FIFO order per pipe inode.
//!
//! Ordering: the reader's `read` can return before the writer's `write`
//! exits, so a reader copy may arrive first; it is held for `window_ns`
//! waiting for its writer copy. If none comes (the writer was not captured),
//! the reader copy is emitted on its own, with the pipe's known writer.

use std::collections::{HashMap, VecDeque};

/// Counters of the join.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChannelStats {
    /// Reader copies matched to a writer copy and dropped (duplicates).
    pub deduplicated: u64,
    /// Reader copies emitted alone (writer side not seen).
    pub reader_only: u64,
    /// Writer copies whose reader copy never came before eviction.
    pub unconfirmed: u64,
}

struct Held<T> {
    hash: u64,
    deadline: u64,
    reader: u32,
    item: T,
}

struct Channel<T> {
    writer: Option<u32>,
    reader: Option<u32>,
    awaiting_read: VecDeque<u64>,
    held_reads: VecDeque<Held<T>>,
}

impl<T> Default for Channel<T> {
    fn default() -> Self {
        Self {
            writer: None,
            reader: None,
            awaiting_read: VecDeque::new(),
            held_reads: VecDeque::new(),
        }
    }
}

/// All pipe channels, keyed by pipe inode.
pub struct Channels<T> {
    map: HashMap<u64, Channel<T>>,
    window_ns: u64,
    max_awaiting: usize,
    /// Counters.
    pub stats: ChannelStats,
}

/// An item to emit with the process at the other end (if known).
pub type Emit<T> = (T, Option<u32>);

impl<T> Channels<T> {
    /// A join that holds reader copies for `window_ns`.
    pub fn new(window_ns: u64, max_awaiting: usize) -> Self {
        Self {
            map: HashMap::new(),
            window_ns,
            max_awaiting: max_awaiting.max(1),
            stats: ChannelStats::default(),
        }
    }

    /// Channels tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no channel is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The known reader of pipe `ino`.
    pub fn reader(&self, ino: u64) -> Option<u32> {
        self.map.get(&ino).and_then(|c| c.reader)
    }

    /// A writer copy. Returns it with its reader, resolving the reader with
    /// `resolve` when no exchange has shown it yet.
    pub fn on_write(
        &mut self,
        ino: u64,
        writer: u32,
        hash: u64,
        item: T,
        resolve: impl FnOnce() -> Option<u32>,
    ) -> Emit<T> {
        let ch = self.map.entry(ino).or_default();
        ch.writer = Some(writer);
        if let Some(pos) = ch.held_reads.iter().position(|h| h.hash == hash) {
            let held = ch.held_reads.remove(pos).expect("present");
            ch.reader = Some(held.reader);
            self.stats.deduplicated += 1;
            return (item, Some(held.reader));
        }
        if ch.reader.is_none() {
            ch.reader = resolve();
        }
        if ch.awaiting_read.len() >= self.max_awaiting {
            ch.awaiting_read.pop_front();
            self.stats.unconfirmed += 1;
        }
        ch.awaiting_read.push_back(hash);
        (item, ch.reader)
    }

    /// A reader copy: dropped if its writer copy was seen, else held.
    pub fn on_read(&mut self, ino: u64, reader: u32, hash: u64, ts_ns: u64, item: T) {
        let ch = self.map.entry(ino).or_default();
        ch.reader = Some(reader);
        if let Some(pos) = ch.awaiting_read.iter().position(|h| *h == hash) {
            // Entries before it were never read back (reader lost them).
            self.stats.unconfirmed += pos as u64;
            ch.awaiting_read.drain(..=pos);
            self.stats.deduplicated += 1;
            return;
        }
        ch.held_reads.push_back(Held {
            hash,
            deadline: ts_ns + self.window_ns,
            reader,
            item,
        });
    }

    /// Reader copies whose window passed, with the pipe's writer.
    pub fn expire(&mut self, now_ns: u64, out: &mut dyn FnMut(Emit<T>)) {
        for ch in self.map.values_mut() {
            while ch.held_reads.front().is_some_and(|h| h.deadline <= now_ns) {
                let h = ch.held_reads.pop_front().expect("present");
                self.stats.reader_only += 1;
                out((h.item, ch.writer));
            }
        }
    }

    /// Forgets a pipe once neither end is open; emits held reader copies.
    pub fn close(&mut self, ino: u64, out: &mut dyn FnMut(Emit<T>)) {
        if let Some(ch) = self.map.remove(&ino) {
            for h in ch.held_reads {
                self.stats.reader_only += 1;
                out((h.item, ch.writer));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_then_reader_emits_once() {
        let mut c = Channels::new(1000, 8);
        let (item, peer) = c.on_write(7, 1, 42, "m", || Some(2));
        assert_eq!((item, peer), ("m", Some(2)));
        c.on_read(7, 2, 42, 5, "m-read");
        let mut out = vec![];
        c.expire(u64::MAX, &mut |e| out.push(e));
        assert!(out.is_empty());
        assert_eq!(c.stats.deduplicated, 1);
    }

    #[test]
    fn reader_first_is_held_then_matched() {
        let mut c = Channels::new(1000, 8);
        c.on_read(7, 2, 42, 5, "m-read");
        let (_, peer) = c.on_write(7, 1, 42, "m", || None);
        assert_eq!(peer, Some(2));
        let mut out = vec![];
        c.expire(u64::MAX, &mut |e| out.push(e));
        assert!(out.is_empty());
    }

    #[test]
    fn reader_only_after_window() {
        let mut c: Channels<&str> = Channels::new(1000, 8);
        c.on_read(7, 2, 42, 5, "m-read");
        let mut out = vec![];
        c.expire(500, &mut |e| out.push(e));
        assert!(out.is_empty());
        c.expire(1005, &mut |e| out.push(e));
        assert_eq!(out, vec![("m-read", None)]);
        assert_eq!(c.stats.reader_only, 1);
    }

    #[test]
    fn identical_messages_match_in_fifo_order() {
        let mut c = Channels::new(1000, 8);
        c.on_write(7, 1, 42, 1, || Some(2));
        c.on_write(7, 1, 42, 2, || Some(2));
        c.on_read(7, 2, 42, 5, 3);
        c.on_read(7, 2, 42, 6, 4);
        let mut out = vec![];
        c.expire(u64::MAX, &mut |e| out.push(e));
        assert!(out.is_empty());
        assert_eq!(c.stats.deduplicated, 2);
    }
}

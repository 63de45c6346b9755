//! Joins the two ends of a pipe so each message is reported once.
//!
//! A pipe's writer and reader are both on this host, so every message is
//! captured twice: once by `write` and once by `read`. Copies are matched
//! per pipe inode, in FIFO order, by a key of the message's true length and
//! a hash of its head — so a copy that lost its tail (capture cap) still
//! matches the other end's complete copy.
//!
//! Which copy is reported: the writer's (first in time) unless it is
//! truncated and the reader's is not. The other copy only tells who was at
//! that end and is dropped.
//!
//! Ordering: the reader's `read` can return before the writer's `write`
//! exits, so a reader copy may arrive first; it is held for `window_ns`
//! waiting for its writer copy. A truncated writer copy is held the same
//! way, waiting for a complete reader copy, and so is a writer copy whose
//! reader could not be found in /proc (it already exited). When the window passes, the
//! held copy is reported on its own, with the pipe's other end as known.

use std::collections::VecDeque;

use crate::collections::FastMap;

/// Counters of the join.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChannelStats {
    /// Second copies matched and dropped (duplicates).
    pub deduplicated: u64,
    /// Reader copies reported alone (writer side not seen).
    pub reader_only: u64,
    /// Writer copies whose reader copy never came before eviction.
    pub unconfirmed: u64,
}

/// A captured copy offered to the join.
pub struct Offer<T> {
    /// Caller's tag for this copy (its event sequence number), handed back
    /// when the other end's copy later confirms it.
    pub tag: u64,
    /// Match key: true length and head hash.
    pub key: u64,
    /// Bytes were lost from this copy.
    pub truncated: bool,
    /// Kernel timestamp, ns.
    pub ts_ns: u64,
    /// The payload.
    pub item: T,
}

struct Held<T> {
    copy: Offer<T>,
    deadline: u64,
    writer_side: bool,
}

struct Channel<T> {
    writer: Option<u32>,
    reader: Option<u32>,
    awaiting_read: VecDeque<(u64, u64)>,
    held: VecDeque<Held<T>>,
}

impl<T> Default for Channel<T> {
    fn default() -> Self {
        Self {
            writer: None,
            reader: None,
            awaiting_read: VecDeque::new(),
            held: VecDeque::new(),
        }
    }
}

/// All pipe channels, keyed by pipe inode.
pub struct Channels<T> {
    map: FastMap<u64, Channel<T>>,
    window_ns: u64,
    max_awaiting: usize,
    /// Counters.
    pub stats: ChannelStats,
}

/// An item to report, with the process at the other end (if known) and the
/// other end's copy's timestamp (if it was seen).
pub type Emit<T> = (T, Option<u32>, Option<u64>);

/// A reported writer copy whose reader copy arrived later: (tag, reader
/// pid, reader timestamp).
pub type Confirm = (u64, u32, u64);

impl<T> Channels<T> {
    /// A join that holds unmatched copies for `window_ns`.
    pub fn new(window_ns: u64, max_awaiting: usize) -> Self {
        Self {
            map: FastMap::default(),
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

    /// A writer copy from process `writer`. `resolve` finds the reader when
    /// no exchange has shown it yet. Calls `out` when something is reported.
    pub fn on_write(
        &mut self,
        ino: u64,
        writer: u32,
        c: Offer<T>,
        resolve: impl FnOnce() -> Option<u32>,
        out: &mut dyn FnMut(Emit<T>),
    ) {
        let window = self.window_ns;
        let ch = self.map.entry(ino).or_default();
        ch.writer = Some(writer);
        if let Some(pos) = ch
            .held
            .iter()
            .position(|h| !h.writer_side && h.copy.key == c.key)
        {
            let held = ch.held.remove(pos).expect("present");
            self.stats.deduplicated += 1;
            // The reader copy wins only if it is whole and ours is not.
            if c.truncated && !held.copy.truncated {
                return out((held.copy.item, Some(writer), Some(c.ts_ns)));
            }
            return out((c.item, ch.reader, Some(held.copy.ts_ns)));
        }
        if ch.reader.is_none() {
            ch.reader = resolve();
        }
        // Truncated, or nobody known to read it yet: wait for the reader's copy.
        // Behind an already held writer copy: wait too, so messages leave in
        // the order they were written.
        if c.truncated || ch.reader.is_none() || ch.held.iter().any(|h| h.writer_side) {
            let deadline = c.ts_ns + window;
            ch.held.push_back(Held {
                copy: c,
                deadline,
                writer_side: true,
            });
            return;
        }
        if ch.awaiting_read.len() >= self.max_awaiting {
            ch.awaiting_read.pop_front();
            self.stats.unconfirmed += 1;
        }
        ch.awaiting_read.push_back((c.key, c.tag));
        out((c.item, ch.reader, None));
    }

    /// A reader copy from process `reader`: dropped if its writer copy was
    /// reported (then `confirm` gets the writer copy's tag), swapped in for a
    /// truncated held writer copy, else held.
    pub fn on_read(
        &mut self,
        ino: u64,
        reader: u32,
        c: Offer<T>,
        out: &mut dyn FnMut(Emit<T>),
        confirm: &mut dyn FnMut(Confirm),
    ) {
        let window = self.window_ns;
        let ch = self.map.entry(ino).or_default();
        ch.reader = Some(reader);
        if let Some(pos) = ch.awaiting_read.iter().position(|(k, _)| *k == c.key) {
            // Entries before it were never read back (the reader lost them).
            self.stats.unconfirmed += pos as u64;
            let (_, tag) = ch.awaiting_read[pos];
            ch.awaiting_read.drain(..=pos);
            self.stats.deduplicated += 1;
            return confirm((tag, reader, c.ts_ns));
        }
        if let Some(pos) = ch
            .held
            .iter()
            .position(|h| h.writer_side && h.copy.key == c.key)
        {
            // Writer copies held before this one were read earlier (pipes and
            // streams are FIFO), so their reader copies are lost: release
            // them first, in order.
            let mut pos = pos;
            let mut i = 0;
            while i < pos {
                if ch.held[i].writer_side {
                    let h = ch.held.remove(i).expect("present");
                    out((h.copy.item, ch.reader, None));
                    pos -= 1;
                } else {
                    i += 1;
                }
            }
            let held = ch.held.remove(pos).expect("present");
            self.stats.deduplicated += 1;
            if held.copy.truncated && !c.truncated {
                return out((c.item, ch.writer, Some(held.copy.ts_ns)));
            }
            return out((held.copy.item, Some(reader), Some(c.ts_ns)));
        }
        let deadline = c.ts_ns + window;
        ch.held.push_back(Held {
            copy: c,
            deadline,
            writer_side: false,
        });
    }

    /// A reader copy whose writer copy was already reported: recognised by
    /// its key alone, so the caller can drop it without parsing it. Returns
    /// the writer copy's tag.
    pub fn confirm_read(&mut self, ino: u64, reader: u32, key: u64) -> Option<u64> {
        let ch = self.map.get_mut(&ino)?;
        let pos = ch.awaiting_read.iter().position(|(k, _)| *k == key)?;
        ch.reader = Some(reader);
        // Entries before it were never read back (the reader lost them).
        self.stats.unconfirmed += pos as u64;
        let (_, tag) = ch.awaiting_read[pos];
        ch.awaiting_read.drain(..=pos);
        self.stats.deduplicated += 1;
        Some(tag)
    }

    /// Held copies whose window passed, with the other end as known.
    pub fn expire(&mut self, now_ns: u64, out: &mut dyn FnMut(Emit<T>)) {
        let max_awaiting = self.max_awaiting;
        // Copies due on different channels leave in the order they were
        // captured: a one-sided HTTP exchange has its request and its
        // response on two channels, and the response must not come first.
        let mut due: Vec<(u64, Emit<T>)> = Vec::new();
        let mut out_in_order = |ts: u64, e: Emit<T>| due.push((ts, e));
        for ch in self.map.values_mut() {
            while ch.held.front().is_some_and(|h| h.deadline <= now_ns) {
                let h = ch.held.pop_front().expect("present");
                if h.writer_side {
                    // Reported now; its reader copy may still come (a slow
                    // reader): remember it so that copy is dropped.
                    if ch.awaiting_read.len() >= max_awaiting {
                        ch.awaiting_read.pop_front();
                        self.stats.unconfirmed += 1;
                    }
                    ch.awaiting_read.push_back((h.copy.key, h.copy.tag));
                    out_in_order(h.copy.ts_ns, (h.copy.item, ch.reader, None));
                } else {
                    self.stats.reader_only += 1;
                    out_in_order(h.copy.ts_ns, (h.copy.item, ch.writer, None));
                }
            }
        }
        due.sort_by_key(|(ts, _)| *ts);
        for (_, e) in due {
            out(e);
        }
    }

    /// Forgets pipes whose reader or writer is `pid` (it exited), after
    /// reporting what they held.
    pub fn forget_process(&mut self, pid: u32, out: &mut dyn FnMut(Emit<T>)) {
        let gone: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, c)| c.reader == Some(pid))
            .map(|(k, _)| *k)
            .collect();
        for ino in gone {
            let ch = self.map.remove(&ino).expect("present");
            for h in ch.held {
                if !h.writer_side {
                    self.stats.reader_only += 1;
                }
                let peer = if h.writer_side { ch.reader } else { ch.writer };
                out((h.copy.item, peer, None));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(key: u64, truncated: bool, item: &'static str) -> Offer<&'static str> {
        Offer {
            tag: 0,
            key,
            truncated,
            ts_ns: 5,
            item,
        }
    }

    type Out = Vec<(&'static str, Option<u32>)>;

    fn collect(v: &mut Out) -> impl FnMut(Emit<&'static str>) + '_ {
        move |(i, p, _)| v.push((i, p))
    }

    #[test]
    fn writer_then_reader_reports_once_and_confirms() {
        let mut c = Channels::new(1000, 8);
        let mut out = vec![];
        let mut confirmed = vec![];
        let mut w = copy(42, false, "w");
        w.tag = 9;
        c.on_write(7, 1, w, || Some(2), &mut collect(&mut out));
        let mut r = copy(42, false, "r");
        r.ts_ns = 8;
        c.on_read(7, 2, r, &mut collect(&mut out), &mut |x| confirmed.push(x));
        c.expire(u64::MAX, &mut collect(&mut out));
        assert_eq!(out, vec![("w", Some(2))]);
        assert_eq!(confirmed, vec![(9, 2, 8)]);
        assert_eq!(c.stats.deduplicated, 1);
    }

    #[test]
    fn a_reported_writer_copy_is_confirmed_by_key_alone() {
        let mut c = Channels::new(1000, 8);
        let mut w = copy(42, false, "w");
        w.tag = 3;
        c.on_write(7, 1, w, || Some(2), &mut |_| {});
        assert_eq!(c.confirm_read(7, 2, 41), None, "another message");
        assert_eq!(c.confirm_read(7, 2, 42), Some(3));
        assert_eq!(c.confirm_read(7, 2, 42), None, "confirmed once");
        assert_eq!(c.stats.deduplicated, 1);
    }

    #[test]
    fn reader_first_is_held_then_matched_with_its_timestamp() {
        let mut c = Channels::new(1000, 8);
        let mut got = vec![];
        c.on_read(
            7,
            2,
            copy(42, false, "r"),
            &mut |e| got.push(e),
            &mut |_| {},
        );
        assert!(got.is_empty());
        c.on_write(7, 1, copy(42, false, "w"), || None, &mut |e| got.push(e));
        assert_eq!(got, vec![("w", Some(2), Some(5))]);
    }

    #[test]
    fn reader_only_after_window() {
        let mut c = Channels::new(1000, 8);
        let mut out = vec![];
        c.on_read(
            7,
            2,
            copy(42, false, "r"),
            &mut collect(&mut out),
            &mut |_| {},
        );
        c.expire(500, &mut collect(&mut out));
        assert!(out.is_empty());
        c.expire(1005, &mut collect(&mut out));
        assert_eq!(out, vec![("r", None)]);
        assert_eq!(c.stats.reader_only, 1);
    }

    #[test]
    fn complete_reader_copy_replaces_truncated_writer_copy() {
        let mut c = Channels::new(1000, 8);
        let mut out = vec![];
        c.on_write(
            7,
            1,
            copy(42, true, "w-cut"),
            || Some(2),
            &mut collect(&mut out),
        );
        assert!(
            out.is_empty(),
            "truncated writer copy waits for the reader's"
        );
        c.on_read(
            7,
            2,
            copy(42, false, "r-whole"),
            &mut collect(&mut out),
            &mut |_| {},
        );
        assert_eq!(out, vec![("r-whole", Some(1))]);
        let mut out = vec![];
        c.on_read(
            7,
            2,
            copy(43, false, "r-whole"),
            &mut collect(&mut out),
            &mut |_| {},
        );
        c.on_write(
            7,
            1,
            copy(43, true, "w-cut"),
            || Some(2),
            &mut collect(&mut out),
        );
        assert_eq!(out, vec![("r-whole", Some(1))]);
    }

    #[test]
    fn messages_behind_a_held_writer_copy_keep_their_order() {
        let mut c = Channels::new(1000, 8);
        let mut out = vec![];
        c.on_write(
            7,
            1,
            copy(1, true, "big-cut"),
            || Some(2),
            &mut collect(&mut out),
        );
        c.on_write(
            7,
            1,
            copy(2, false, "next"),
            || Some(2),
            &mut collect(&mut out),
        );
        assert!(out.is_empty(), "the second waits behind the first");
        c.on_read(
            7,
            2,
            copy(1, true, "big-cut-read"),
            &mut collect(&mut out),
            &mut |_| {},
        );
        c.on_read(
            7,
            2,
            copy(2, false, "next-read"),
            &mut collect(&mut out),
            &mut |_| {},
        );
        assert_eq!(out, vec![("big-cut", Some(2)), ("next", Some(2))]);
    }

    #[test]
    fn late_reader_copy_of_an_expired_writer_copy_is_still_dropped() {
        let mut c = Channels::new(1000, 8);
        let mut out = vec![];
        c.on_write(
            7,
            1,
            copy(1, true, "cut"),
            || Some(2),
            &mut collect(&mut out),
        );
        c.expire(u64::MAX, &mut collect(&mut out));
        assert_eq!(out, vec![("cut", Some(2))]);
        c.on_read(
            7,
            2,
            copy(1, true, "cut-read"),
            &mut collect(&mut out),
            &mut |_| {},
        );
        c.expire(u64::MAX, &mut collect(&mut out));
        assert_eq!(out.len(), 1, "the slow reader's copy is a duplicate");
    }

    #[test]
    fn identical_messages_match_in_fifo_order() {
        let mut c = Channels::new(1000, 8);
        let mut out = vec![];
        let mut confirmed = vec![];
        for (tag, item) in [(1, "a"), (2, "b")] {
            let mut w = copy(42, false, item);
            w.tag = tag;
            c.on_write(7, 1, w, || Some(2), &mut collect(&mut out));
        }
        for item in ["ra", "rb"] {
            c.on_read(
                7,
                2,
                copy(42, false, item),
                &mut collect(&mut out),
                &mut |x| confirmed.push(x.0),
            );
        }
        assert_eq!(out.len(), 2);
        assert_eq!(confirmed, vec![1, 2]);
    }
}

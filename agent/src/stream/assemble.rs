//! Rebuilds whole syscalls from ring-buffer chunks. Chunks of one syscall
//! are contiguous per thread, but two threads writing the same fd interleave
//! in the ring, so partial syscalls are kept per thread id. A single-chunk
//! syscall (the common case) passes through without a copy.

use std::collections::HashMap;

use crate::capture::DataChunk;

/// A whole syscall's captured bytes, with what is known to be missing.
#[derive(Debug)]
pub struct Segment<'a> {
    /// The bytes, in order.
    pub data: &'a [u8],
    /// Bytes missing at the end (capture cap, fault, lost records).
    pub missing_tail: u64,
    /// Bytes missing in the middle (lost records), reported before `data`'s
    /// later part; the framer only needs to know a gap happened.
    pub missing_inner: u64,
}

struct Partial {
    tgid: u32,
    fd: u32,
    egress: bool,
    ts_ns: u64,
    total: u64,
    next: u64,
    lost: u64,
    data: Vec<u8>,
}

/// Per-thread reassembly of multi-chunk syscalls.
#[derive(Default)]
pub struct Assembler {
    partial: HashMap<u32, Partial>,
    /// Syscalls whose chunks stopped arriving (ring buffer full), flushed
    /// with a gap.
    pub incomplete: u64,
}

/// What the assembler produced: the stream and timestamp of a whole syscall.
pub struct Whole<'a> {
    /// Process id.
    pub tgid: u32,
    /// File descriptor.
    pub fd: u32,
    /// Written by the process.
    pub egress: bool,
    /// Timestamp of the syscall exit.
    pub ts_ns: u64,
    /// Its bytes.
    pub segment: Segment<'a>,
}

impl Assembler {
    /// Feeds a chunk; calls `out` for every syscall it completes (a stale
    /// partial of the same thread first, then possibly this one).
    pub fn push(&mut self, c: &DataChunk<'_>, out: &mut dyn FnMut(Whole<'_>)) {
        let whole = c.offset == 0 && !c.truncated && c.data.len() as u64 == c.total_len;
        if whole {
            self.flush_tid(c.tid, out);
            out(Whole {
                tgid: c.tgid,
                fd: c.fd,
                egress: c.egress,
                ts_ns: c.ts_ns,
                segment: Segment {
                    data: c.data,
                    missing_tail: 0,
                    missing_inner: 0,
                },
            });
            return;
        }
        if c.offset == 0 && !c.truncated {
            self.flush_tid(c.tid, out);
        }
        let p = self.partial.entry(c.tid).or_insert_with(|| Partial {
            tgid: c.tgid,
            fd: c.fd,
            egress: c.egress,
            ts_ns: c.ts_ns,
            total: c.total_len,
            next: 0,
            lost: 0,
            data: Vec::with_capacity(c.total_len.min(4 << 20) as usize),
        });
        if (p.tgid, p.fd, p.egress, p.total) != (c.tgid, c.fd, c.egress, c.total_len) {
            // A different syscall of this thread: the old one lost its end.
            self.flush_tid(c.tid, out);
            return self.push(c, out);
        }
        let offset = c.offset as u64;
        if offset > p.next {
            p.lost += offset - p.next; // records lost in between
            p.next = offset;
        }
        if c.truncated {
            let p = self.partial.remove(&c.tid).expect("present");
            out(Whole {
                tgid: p.tgid,
                fd: p.fd,
                egress: p.egress,
                ts_ns: p.ts_ns,
                segment: Segment {
                    data: &p.data,
                    missing_tail: p.total.saturating_sub(p.next),
                    missing_inner: p.lost,
                },
            });
            return;
        }
        p.data.extend_from_slice(c.data);
        p.next = offset + c.data.len() as u64;
        if p.next >= p.total {
            let p = self.partial.remove(&c.tid).expect("present");
            out(Whole {
                tgid: p.tgid,
                fd: p.fd,
                egress: p.egress,
                ts_ns: p.ts_ns,
                segment: Segment {
                    data: &p.data,
                    missing_tail: 0,
                    missing_inner: p.lost,
                },
            });
        }
    }

    /// Flushes a thread's partial syscall (its remaining chunks were lost).
    pub fn flush_tid(&mut self, tid: u32, out: &mut dyn FnMut(Whole<'_>)) {
        if let Some(p) = self.partial.remove(&tid) {
            self.incomplete += 1;
            out(Whole {
                tgid: p.tgid,
                fd: p.fd,
                egress: p.egress,
                ts_ns: p.ts_ns,
                segment: Segment {
                    data: &p.data,
                    missing_tail: p.total.saturating_sub(p.next),
                    missing_inner: p.lost,
                },
            });
        }
    }

    /// Flushes partials older than `before_ns`.
    pub fn flush_older(&mut self, before_ns: u64, out: &mut dyn FnMut(Whole<'_>)) {
        let stale: Vec<u32> = self
            .partial
            .iter()
            .filter(|(_, p)| p.ts_ns < before_ns)
            .map(|(t, _)| *t)
            .collect();
        for tid in stale {
            self.flush_tid(tid, out);
        }
    }

    /// Partial syscalls held.
    pub fn len(&self) -> usize {
        self.partial.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Comm;
    use mcpscope_common::Syscall;

    fn chunk(tid: u32, offset: u32, total: u64, data: &[u8], truncated: bool) -> DataChunk<'_> {
        DataChunk {
            tgid: 1,
            tid,
            fd: 1,
            syscall: Syscall::Write,
            egress: true,
            ts_ns: 1,
            total_len: total,
            offset,
            truncated,
            cgroup_id: 0,
            comm: Comm::default(),
            data,
        }
    }

    fn run(a: &mut Assembler, chunks: &[DataChunk<'_>]) -> Vec<(Vec<u8>, u64, u64)> {
        let mut v = Vec::new();
        for c in chunks {
            a.push(c, &mut |w| {
                v.push((
                    w.segment.data.to_vec(),
                    w.segment.missing_tail,
                    w.segment.missing_inner,
                ))
            });
        }
        v
    }

    #[test]
    fn interleaved_threads_are_reassembled_separately() {
        let mut a = Assembler::default();
        let out = run(
            &mut a,
            &[
                chunk(1, 0, 6, b"aaa", false),
                chunk(2, 0, 4, b"bb", false),
                chunk(1, 3, 6, b"AAA", false),
                chunk(2, 2, 4, b"BB", false),
            ],
        );
        assert_eq!(
            out,
            vec![(b"aaaAAA".to_vec(), 0, 0), (b"bbBB".to_vec(), 0, 0)]
        );
    }

    #[test]
    fn truncation_marker_and_lost_records() {
        let mut a = Assembler::default();
        let out = run(
            &mut a,
            &[
                chunk(1, 0, 100, b"0123", false),
                chunk(1, 4, 100, b"", true),
            ],
        );
        assert_eq!(out, vec![(b"0123".to_vec(), 96, 0)]);
        let out = run(
            &mut a,
            &[chunk(1, 0, 9, b"abc", false), chunk(1, 6, 9, b"ghi", false)],
        );
        assert_eq!(out, vec![(b"abcghi".to_vec(), 0, 3)]);
    }
}

//! Rebuilds whole syscalls from ring-buffer chunks. Chunks of one syscall
//! are contiguous per thread, but two threads writing the same fd interleave
//! in the ring, so partial syscalls are kept per thread id. A single-chunk
//! syscall (the common case) passes through without a copy.

use crate::collections::FastMap;

use crate::capture::DataChunk;

/// A whole syscall's captured bytes, with what is known to be missing.
#[derive(Debug)]
pub struct Segment<'a> {
    /// The bytes, in order.
    pub data: &'a [u8],
    /// Bytes missing at the end (fault, lost records).
    pub missing_tail: u64,
    /// Bytes missing in the middle (capture cap with its tail captured, or
    /// lost records), all counted at `gap_at`.
    pub missing_inner: u64,
    /// Index in `data` where the inner gap is.
    pub gap_at: usize,
}

/// A whole syscall: its stream, file, timestamp and bytes.
pub struct Whole<'a> {
    /// Inode of the file behind the fd (0 = unknown).
    pub ino: u64,
    /// `mcpscope_common::FILE_*`.
    pub file_kind: u32,
    /// Process id.
    pub tgid: u32,
    /// File descriptor.
    pub fd: u32,
    /// Written by the process.
    pub egress: bool,
    /// Timestamp of the syscall exit.
    pub ts_ns: u64,
    /// The TCP connection, as the kernel read it.
    pub flow: mcpscope_common::Flow,
    /// Its bytes.
    pub segment: Segment<'a>,
}

struct Partial {
    ino: u64,
    file_kind: u32,
    tgid: u32,
    fd: u32,
    egress: bool,
    ts_ns: u64,
    flow: mcpscope_common::Flow,
    total: u64,
    next: u64,
    lost: u64,
    gap_at: usize,
    data: Vec<u8>,
}

impl Partial {
    fn whole(&self) -> Whole<'_> {
        Whole {
            ino: self.ino,
            file_kind: self.file_kind,
            tgid: self.tgid,
            fd: self.fd,
            egress: self.egress,
            ts_ns: self.ts_ns,
            flow: self.flow,
            segment: Segment {
                data: &self.data,
                missing_tail: self.total.saturating_sub(self.next),
                missing_inner: self.lost,
                gap_at: self.gap_at,
            },
        }
    }
}

/// Per-thread reassembly of multi-chunk syscalls.
#[derive(Default)]
pub struct Assembler {
    partial: FastMap<u32, Partial>,
    /// Syscalls whose chunks stopped arriving (ring buffer full), flushed
    /// with a gap.
    pub incomplete: u64,
}

impl Assembler {
    /// Feeds a chunk; calls `out` for every syscall it completes (a stale
    /// partial of the same thread first, then possibly this one).
    pub fn push(&mut self, c: &DataChunk<'_>, out: &mut dyn FnMut(Whole<'_>)) {
        let whole = c.offset == 0 && !c.truncated && c.data.len() as u64 == c.total_len;
        if whole {
            self.flush_tid(c.tid, out);
            let segment = Segment {
                data: c.data,
                missing_tail: 0,
                missing_inner: 0,
                gap_at: 0,
            };
            let (ino, file_kind, tgid, fd, egress, ts_ns) =
                (c.ino, c.file_kind, c.tgid, c.fd, c.egress, c.ts_ns);
            return out(Whole {
                ino,
                file_kind,
                tgid,
                fd,
                egress,
                ts_ns,
                flow: c.flow,
                segment,
            });
        }
        if c.offset == 0 && !c.truncated {
            self.flush_tid(c.tid, out);
        }
        let p = self.partial.entry(c.tid).or_insert_with(|| Partial {
            ino: c.ino,
            file_kind: c.file_kind,
            tgid: c.tgid,
            fd: c.fd,
            egress: c.egress,
            ts_ns: c.ts_ns,
            flow: c.flow,
            total: c.total_len,
            next: 0,
            lost: 0,
            gap_at: 0,
            data: Vec::with_capacity(c.total_len.min(4 << 20) as usize),
        });
        if (p.tgid, p.fd, p.egress, p.total) != (c.tgid, c.fd, c.egress, c.total_len) {
            // A different syscall of this thread: the old one lost its end.
            self.flush_tid(c.tid, out);
            return self.push(c, out);
        }
        let offset = c.offset as u64;
        if offset > p.next {
            if p.lost == 0 {
                p.gap_at = p.data.len();
            }
            p.lost += offset - p.next; // the capture cap, or lost records
            p.next = offset;
        }
        p.data.extend_from_slice(c.data);
        p.next = offset + c.data.len() as u64;
        if c.truncated || p.next >= p.total {
            // The truncation marker (with the syscall's tail) ends it.
            let p = self.partial.remove(&c.tid).expect("present");
            out(p.whole());
        }
    }

    /// Flushes a thread's partial syscall (its remaining chunks were lost).
    pub fn flush_tid(&mut self, tid: u32, out: &mut dyn FnMut(Whole<'_>)) {
        if let Some(p) = self.partial.remove(&tid) {
            self.incomplete += 1;
            out(p.whole());
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
            ino: 0,
            file_kind: 0,
            flow: Default::default(),
            tls: false,
            data,
        }
    }

    fn run(a: &mut Assembler, chunks: &[DataChunk<'_>]) -> Vec<(Vec<u8>, u64, u64, usize)> {
        let mut v = Vec::new();
        for c in chunks {
            a.push(c, &mut |w| {
                let s = &w.segment;
                v.push((s.data.to_vec(), s.missing_tail, s.missing_inner, s.gap_at))
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
            vec![(b"aaaAAA".to_vec(), 0, 0, 0), (b"bbBB".to_vec(), 0, 0, 0)]
        );
    }

    #[test]
    fn truncation_marker_with_and_without_tail() {
        let mut a = Assembler::default();
        // No tail (e.g. vectored): the rest is missing at the end.
        let out = run(
            &mut a,
            &[
                chunk(1, 0, 100, b"0123", false),
                chunk(1, 4, 100, b"", true),
            ],
        );
        assert_eq!(out, vec![(b"0123".to_vec(), 96, 0, 0)]);
        // The marker carries the syscall's tail: the gap sits inside.
        let out = run(
            &mut a,
            &[
                chunk(1, 0, 100, b"0123", false),
                chunk(1, 97, 100, b"yz\n", true),
            ],
        );
        assert_eq!(out, vec![(b"0123yz\n".to_vec(), 0, 93, 4)]);
    }

    #[test]
    fn lost_records_leave_a_positioned_gap() {
        let mut a = Assembler::default();
        let out = run(
            &mut a,
            &[chunk(1, 0, 9, b"abc", false), chunk(1, 6, 9, b"ghi", false)],
        );
        assert_eq!(out, vec![(b"abcghi".to_vec(), 0, 3, 3)]);
    }
}

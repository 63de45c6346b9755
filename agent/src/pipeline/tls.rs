//! TLS plaintext writes wait for their socket: the kernel sends them with
//! fd `FD_UNBOUND` and names the socket with a `TlsBind` record when the
//! thread's next TCP write goes out (see the kernel's `tls.rs`). Held
//! chunks are bounded per thread; the oldest beyond the bound, and chunks
//! whose bind never came, are counted.

use std::collections::VecDeque;

use crate::collections::FastMap;

use mcpscope_common::{Flow, FD_UNBOUND, FILE_SOCKET};

use crate::capture::{Comm, DataChunk, TlsBind};

/// Chunks held per thread.
const MAX_HELD: usize = 256;
/// How long a chunk waits for its bind before it goes out unbound.
const BIND_WAIT_NS: u64 = 1_000_000_000;

/// An owned copy of a [`DataChunk`].
struct Held {
    tgid: u32,
    tid: u32,
    syscall: mcpscope_common::Syscall,
    ts_ns: u64,
    total_len: u64,
    offset: u32,
    truncated: bool,
    cgroup_id: u64,
    comm: Comm,
    data: Vec<u8>,
}

impl Held {
    fn of(c: &DataChunk<'_>) -> Self {
        Held {
            tgid: c.tgid,
            tid: c.tid,
            syscall: c.syscall,
            ts_ns: c.ts_ns,
            total_len: c.total_len,
            offset: c.offset,
            truncated: c.truncated,
            cgroup_id: c.cgroup_id,
            comm: c.comm,
            data: c.data.to_vec(),
        }
    }

    /// The chunk, bound to a socket (held chunks are always writes).
    fn chunk(&self, fd: u32, ino: u64, flow: Flow) -> DataChunk<'_> {
        DataChunk {
            tgid: self.tgid,
            tid: self.tid,
            fd,
            syscall: self.syscall,
            egress: true,
            ts_ns: self.ts_ns,
            total_len: self.total_len,
            offset: self.offset,
            truncated: self.truncated,
            cgroup_id: self.cgroup_id,
            comm: self.comm,
            ino,
            file_kind: FILE_SOCKET,
            tls: true,
            flow,
            data: &self.data,
        }
    }
}

/// Counters of the TLS write binding.
#[derive(Debug, Default, Clone, Copy)]
pub struct TlsBindStats {
    /// Chunks bound to their socket.
    pub bound: u64,
    /// Chunks whose bind never came (sent on with the thread's last socket,
    /// or with no socket when it had none).
    pub unbound: u64,
    /// Chunks dropped: more than the per-thread bound waiting.
    pub evicted: u64,
}

/// Unbound TLS writes by thread, and each thread's last socket.
#[derive(Default)]
pub struct TlsHold {
    held: FastMap<u32, VecDeque<Held>>,
    /// tid → (tgid, fd, ino, flow) of its last bind.
    last: FastMap<u32, (u32, u32, u64, Flow)>,
    /// Counters.
    pub stats: TlsBindStats,
}

impl TlsHold {
    /// Holds an unbound write chunk.
    pub fn hold(&mut self, c: &DataChunk<'_>) {
        debug_assert_eq!(c.fd, FD_UNBOUND);
        let q = self.held.entry(c.tid).or_default();
        if q.len() >= MAX_HELD {
            q.pop_front();
            self.stats.evicted += 1;
        }
        q.push_back(Held::of(c));
    }

    /// The thread's writes went out on `b`'s socket: hands each held chunk,
    /// bound, to `out`.
    pub fn bind(&mut self, b: &TlsBind, out: &mut dyn FnMut(&DataChunk<'_>)) {
        self.last.insert(b.tid, (b.tgid, b.fd, b.ino, b.flow));
        if let Some(q) = self.held.remove(&b.tid) {
            for h in q {
                self.stats.bound += 1;
                out(&h.chunk(b.fd, b.ino, b.flow));
            }
        }
    }

    /// Sends on chunks that waited longer than the bind wait.
    pub fn expire(&mut self, now_ns: u64, out: &mut dyn FnMut(&DataChunk<'_>)) {
        let cutoff = now_ns.saturating_sub(BIND_WAIT_NS);
        let stale: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, q)| q.front().is_some_and(|h| h.ts_ns < cutoff))
            .map(|(t, _)| *t)
            .collect();
        for tid in stale {
            self.release(tid, out);
        }
    }

    /// Sends on a thread's held chunks with its last socket (or none).
    fn release(&mut self, tid: u32, out: &mut dyn FnMut(&DataChunk<'_>)) {
        let Some(q) = self.held.remove(&tid) else {
            return;
        };
        let (_, fd, ino, flow) =
            self.last
                .get(&tid)
                .copied()
                .unwrap_or((0, FD_UNBOUND, 0, Flow::ZERO));
        for h in q {
            self.stats.unbound += 1;
            out(&h.chunk(fd, ino, flow));
        }
    }

    /// A process exited: its threads' held chunks go on as they are.
    pub fn forget_process(&mut self, tgid: u32, out: &mut dyn FnMut(&DataChunk<'_>)) {
        let gone: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, q)| q.front().is_some_and(|h| h.tgid == tgid))
            .map(|(t, _)| *t)
            .collect();
        for t in gone {
            self.release(t, out);
        }
        self.last.retain(|_, v| v.0 != tgid);
    }
}

//! Maps and load-time globals shared by the programs.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    Global,
};
use mcpscope_common::{
    counter, DataHeader, FileOffsets, SslConn, SslKey, StreamInfo, TlsThread, CHUNK_SIZE,
    STREAM_TRACKED,
};

/// tgid of the agent itself: its own I/O is never captured.
#[no_mangle]
pub static AGENT_TGID: Global<u32> = Global::new(0);

/// Per-syscall capture cap in bytes (≤ `MAX_CAPTURE_CAP`).
#[no_mangle]
pub static CAPTURE_CAP: Global<u32> = Global::new(mcpscope_common::DEFAULT_CAPTURE_CAP);

/// Offset of `group_dead` in `sched_process_exit`'s record, read by userspace
/// from tracefs (it moved between kernel versions); 0 = absent.
#[no_mangle]
pub static EXIT_GROUP_DEAD_OFFSET: Global<u32> = Global::new(0);

/// BTF-derived offsets for the fd → inode walk (see `files.rs`).
#[no_mangle]
pub static FILE_OFFSETS: Global<FileOffsets> = Global::new(FileOffsets::ZERO);

/// Captured bytes and lifecycle records to userspace. Userspace resizes it
/// at load time (`--ringbuf-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Per-(tgid, fd) capture decision and file identity.
/// LRU: fds that vanish without `close` (exec, exit) age out by themselves.
#[map]
pub static STREAMS: LruHashMap<u64, StreamInfo> = LruHashMap::with_max_entries(65536, 0);

/// Threads that called into the TLS library, and the connection their
/// plaintext belongs to. LRU: threads end without telling us. Resized at
/// load (`--tls-threads`).
#[map]
pub static TLS_THREADS: LruHashMap<u64, TlsThread> =
    LruHashMap::with_max_entries(mcpscope_common::DEFAULT_TLS_THREADS, 0);

/// The socket of each `SSL *` seen (see `TlsThread`). LRU: `SSL_free` is
/// not traced; stale pointers age out.
#[map]
pub static SSL_CONNS: LruHashMap<SslKey, SslConn> = LruHashMap::with_max_entries(65536, 0);

/// TLS connections (tgid, fd) with plaintext captured: `STREAM_TRACKED`,
/// or `STREAM_IGNORED` once userspace found them not MCP. Kept apart from
/// `STREAMS` so the ciphertext syscalls on the same fd stay uncaptured.
#[map]
pub static TLS_FDS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// Loss and volume counters, indexed by `mcpscope_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Progress of one syscall's copy, read and written by the `bpf_loop`
/// callback.
#[repr(C)]
pub struct CopyState {
    pub buf: u64,
    pub iovcnt: u64,
    pub want_total: u64,
    pub done: u64,
    pub seg_base: u64,
    pub seg_left: u64,
    pub iov_idx: u64,
    pub records: u64,
}

/// One record under construction (header followed by up to CHUNK_SIZE
/// bytes), preceded by the copy's progress.
///
/// Verifier: the progress lives in this map value rather than on the stack
/// on purpose. Stack scalars stay precise, so every bpf_loop iteration
/// (done = 0, 16K, 32K, …) is a new verifier state and the 1M-instruction
/// budget runs out; map-value loads are opaque scalars, bounded by explicit
/// checks, so the callback's states converge after one pass.
#[repr(C)]
pub struct Scratch {
    pub copy: CopyState,
    pub hdr: DataHeader,
    pub data: [u8; CHUNK_SIZE],
}

/// Per-CPU scratch record: 32 KiB does not fit the 512-byte BPF stack.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Adds `n` to counter `idx` on this CPU (per-CPU: no atomics needed).
#[inline(always)]
pub fn count(idx: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, programs do not preempt each other on a CPU.
        unsafe { *p += n };
    }
}

/// `bpf_ringbuf_query` flag: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
/// `bpf_ringbuf_output` flags: skip / force the reader's wakeup.
pub const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// Pending bytes that make a record wake the reader (1/32 of the default ring).
const WAKEUP_BYTES: u64 = 512 * 1024;

/// The bytes pending in `EVENTS` and the output flags for a record of `size`
/// bytes. Waking the reader costs more than the copy (an irq_work, then a
/// cross-CPU wakeup, per record): wake it only when a batch is pending;
/// userspace also drains the ring on its 20 ms tick, which bounds the
/// latency. Only the record that crosses the threshold wakes: once woken,
/// the reader drains everything there is (forcing every record past the
/// threshold would cost an irq_work each until it has).
#[inline(always)]
pub fn wakeup_flags(size: u64) -> (u64, u64) {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA);
    let flags = if pending < WAKEUP_BYTES && pending + size >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    (pending, flags)
}

/// The state of TLS connection `key` (tgid, fd) in `TLS_FDS`, made
/// `STREAM_TRACKED` if it has none. A lookup first: an LRU insert that
/// finds the key takes a free element and the bucket locks before it fails.
#[inline(always)]
pub fn tls_fd_state(key: u64) -> u32 {
    // SAFETY: plain u32 value.
    if let Some(state) = unsafe { TLS_FDS.get(key) } {
        return *state;
    }
    let _ = TLS_FDS.insert(key, STREAM_TRACKED, BPF_NOEXIST as u64);
    STREAM_TRACKED
}

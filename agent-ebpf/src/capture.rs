//! Syscall data capture: enter saves arguments, exit copies the bytes.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_loop, bpf_probe_read_user,
        bpf_probe_read_user_buf, bpf_task_pt_regs,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use mcpscope_common::{
    counter, stream_key, DataHeader, Flow, RecordKind, SslConn, SslKey, StreamInfo, Syscall,
    TlsThread, CHUNK_SIZE, DATA_HEADER_LEN, FILE_OTHER, FILE_SOCKET, FLAG_EGRESS, FLAG_TLS,
    FLAG_TRUNCATED, MAX_CAPTURE_CAP, MAX_CHUNKS, MAX_IOV, STREAM_CIPHERTEXT, STREAM_RULED_OUT,
    STREAM_TRACKED,
};

use crate::files::file_of;
use crate::maps::{
    count, tls_fd_state, wakeup_flags, CopyState, Scratch, AGENT_TGID, BPF_RB_NO_WAKEUP,
    CAPTURE_CAP, COUNTERS, EVENTS, SCRATCH, SSL_CONNS, STREAMS, TLS_THREADS,
};

// Offset of `ret` in the sys_exit tracepoint record (see
// /sys/kernel/tracing/events/syscalls/sys_exit_write/format): the stable
// syscall-tracepoint ABI, identical for every syscall.
const EXIT_RET: usize = 16;

/// x86_64 `struct pt_regs` (the ptrace ABI, stable): the registers the task
/// entered the syscall with, as u64 slots. The first three arguments are
/// `di`, `si`, `dx`.
const REGS_DX: usize = 12;
const REGS_SI: usize = 13;
pub(crate) const REGS_DI: usize = 14;

/// x86_64 `struct user_msghdr`: msg_iov at 16, msg_iovlen at 24.
const MSGHDR_IOV: u64 = 16;
const MSGHDR_IOVLEN: u64 = 24;

/// `struct iovec { void *iov_base; size_t iov_len; }`.
#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// A syscall's data arguments, or a TLS call's.
#[derive(Clone, Copy)]
pub(crate) struct SyscallArgs {
    /// Buffer pointer, or iovec array pointer for vectored calls.
    pub buf: u64,
    /// iovec count for vectored calls, otherwise 0.
    pub iovcnt: u64,
    /// File descriptor.
    pub fd: u32,
}

/// One program per syscall, at its exit only: the return value says how
/// many bytes moved, and the arguments are still in the task's saved
/// registers. No entry program, so no per-thread map of arguments: the
/// entry tracepoint and a hash-map insert and delete per syscall cost
/// more than all the rest of a ruled-out fd's path (bpf_stats: ~70 ns
/// for the entry program of a ruled-out fd, ~480 ns with the insert).
macro_rules! syscall_exit {
    ($exit:ident, $sc:expr) => {
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            on_exit(&ctx, $sc);
            0
        }
    };
}

syscall_exit!(exit_read, Syscall::Read);
syscall_exit!(exit_write, Syscall::Write);
syscall_exit!(exit_readv, Syscall::Readv);
syscall_exit!(exit_writev, Syscall::Writev);
syscall_exit!(exit_recvfrom, Syscall::Recvfrom);
syscall_exit!(exit_sendto, Syscall::Sendto);
syscall_exit!(exit_recvmsg, Syscall::Recvmsg);
syscall_exit!(exit_sendmsg, Syscall::Sendmsg);

/// The saved registers of the current task's syscall, as u64 slots.
#[inline(always)]
pub(crate) fn saved_regs() -> *const u64 {
    // SAFETY: both helpers take and return BTF pointers of the current
    // task, valid for the whole program. Verifier: the result is a
    // PTR_TO_BTF_ID of `struct pt_regs`, so loads from it are checked
    // against that struct's fields and made fault-safe (no helper call).
    unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u64 }
}

/// The data arguments of the syscall `sc` that is returning: fd and
/// buffer, the iovec array for `readv`/`writev`, and for
/// `recvmsg`/`sendmsg` the iovec array their `msghdr` names (still valid
/// user memory: the kernel only writes back its lengths and flags).
#[inline(always)]
fn args_of(sc: Syscall, regs: *const u64, fd: u32) -> Option<SyscallArgs> {
    // SAFETY: in-bounds slots of `struct pt_regs` (see `saved_regs`).
    let ptr = unsafe { *regs.add(REGS_SI) };
    let (buf, iovcnt) = match sc {
        Syscall::Readv | Syscall::Writev => (ptr, unsafe { *regs.add(REGS_DX) }),
        Syscall::Recvmsg | Syscall::Sendmsg => {
            let iov = unsafe { bpf_probe_read_user((ptr + MSGHDR_IOV) as *const u64) };
            let n = unsafe { bpf_probe_read_user((ptr + MSGHDR_IOVLEN) as *const u64) };
            match (iov, n) {
                (Ok(iov), Ok(n)) => (iov, n),
                _ => {
                    count(counter::READ_FAULTS, 1);
                    return None;
                }
            }
        }
        _ => (ptr, 0),
    };
    Some(SyscallArgs { buf, iovcnt, fd })
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext, sc: Syscall) {
    // SAFETY: reads from the tracepoint record at its fixed offset.
    let ret = match unsafe { ctx.read_at::<i64>(EXIT_RET) } {
        Ok(r) if r > 0 => r as u64,
        _ => return, // error, EOF or nothing moved
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        return;
    }
    let regs = saved_regs();
    // SAFETY: in-bounds slot of `struct pt_regs` (see `saved_regs`).
    let fd = unsafe { *regs.add(REGS_DI) } as u32;
    let key = stream_key(tgid, fd);
    // SAFETY: plain-data map value, valid while the program runs.
    // Verifier: kept as a reference and copied only where it is `Some`: a
    // copied-out `Option` spills its uninitialised payload on the `None`
    // path, a read of an unset register that the verifier refuses.
    let known = unsafe { STREAMS.get(key) };
    if known.is_some_and(|i| i.state != STREAM_TRACKED && i.state != STREAM_CIPHERTEXT) {
        return; // ruled out: one lookup
    }
    let thread = TLS_THREADS.get_ptr_mut(pid_tgid);
    let info = match known {
        Some(i) => *i,
        None => {
            let Some(args) = args_of(sc, regs, fd) else {
                return;
            };
            let head = classify_head(&args, sc, ret);
            if head == Head::Text {
                on_tls_thread_io(thread, fd, sc, pid_tgid, || file_of(fd));
                return; // maybe the middle of a message: ask again next time
            }
            let (file_kind, ino, flow) = file_of(fd);
            let tcp = file_kind == FILE_SOCKET && flow.lport != 0;
            let state = if head == Head::Binary && tcp {
                // TLS ciphertext (or another binary protocol): a TLS
                // thread's syscalls on it still reach `on_tls_thread_io`.
                STREAM_CIPHERTEXT
            } else if file_kind == FILE_OTHER || head == Head::Binary {
                STREAM_RULED_OUT
            } else {
                STREAM_TRACKED
            };
            let info = StreamInfo {
                state,
                file_kind,
                ino,
                flow,
            };
            // BPF_NOEXIST: never overwrite a decision userspace made meanwhile.
            let _ = STREAMS.insert(key, info, BPF_NOEXIST as u64);
            if state == STREAM_RULED_OUT {
                return; // not a transport of MCP text
            }
            info
        }
    };
    on_tls_thread_io(thread, fd, sc, pid_tgid, || identity(&info));
    if info.state != STREAM_TRACKED {
        return; // ciphertext: never captured
    }
    // At a stream's first syscall, read a second time (its registers and,
    // for msghdr calls, two user words): cheaper than carrying an
    // `Option` out of the match, which the verifier refuses (see `known`).
    let Some(args) = args_of(sc, regs, fd) else {
        return;
    };
    copy_out(&args, sc, ret, pid_tgid, &info);
}

/// Kind, inode and connection of a stream, as `file_of` gives them.
#[inline(always)]
fn identity(info: &StreamInfo) -> (u32, u64, Flow) {
    (info.file_kind, info.ino, info.flow)
}

/// A thread that uses the TLS library (`thread`: its state, if it is one)
/// moved bytes on `fd`: a TCP read
/// names the connection its next `SSL_read` decrypts; the first TCP write
/// after an `SSL_write` names the connection of that plaintext (a
/// `TlsBind` record). `file` gives the fd's kind, inode and connection:
/// from its stream's entry where it has one, else read from the task's
/// file table, and only when needed.
#[inline(always)]
fn on_tls_thread_io(
    thread: Option<*mut TlsThread>,
    fd: u32,
    sc: Syscall,
    pid_tgid: u64,
    file: impl FnOnce() -> (u32, u64, Flow),
) {
    let Some(t) = thread else {
        return; // not a TLS thread
    };
    // SAFETY: this thread's own map value; only this thread writes it.
    let t = unsafe { &mut *t };
    let egress = sc.is_egress();
    if egress && t.pending_ssl == 0 {
        return;
    }
    let (kind, ino, flow) = file();
    if kind != FILE_SOCKET || flow.lport == 0 {
        return; // not TCP (a pipe, the event loop's socketpair …)
    }
    if !egress {
        t.read_fd = fd;
        t.read_ino = ino;
        t.read_flow = flow;
        t.read_fresh = 1;
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey {
        ssl: t.pending_ssl,
        tgid,
        _pad: 0,
    };
    let conn = SslConn {
        fd,
        _pad: 0,
        ino,
        flow,
    };
    let _ = SSL_CONNS.insert(&key, &conn, 0);
    t.pending_ssl = 0;
    let _ = tls_fd_state(stream_key(tgid, fd));
    let bind = DataHeader {
        kind: RecordKind::TlsBind as u32,
        flags: FLAG_TLS | FLAG_EGRESS,
        tgid,
        tid: pid_tgid as u32,
        fd,
        syscall: sc as u32,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        total_len: 0,
        offset: 0,
        len: 0,
        cgroup_id: 0,
        comm: [0; 16],
        ino,
        file_kind: FILE_SOCKET,
        _pad: 0,
        flow,
    };
    if EVENTS
        .output::<DataHeader>(&bind, BPF_RB_NO_WAKEUP)
        .is_err()
    {
        count(counter::RINGBUF_FULL_RECORDS, 1);
    }
}

/// What the first bytes of an fd's first syscall say about it.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Head {
    /// JSON (`{`, `[` after blanks) or an HTTP/1 start line: capture.
    Mcp,
    /// Something else textual: perhaps the middle of a message (the agent
    /// started late), so the next syscall is asked again.
    Text,
    /// A NUL byte among the moved bytes: never JSON-RPC or HTTP/1 text (JSON
    /// escapes a NUL), so the fd can be ruled out for good — an event loop's
    /// wake-up socketpair (`"\0"`), an eventfd counter, a binary protocol.
    Binary,
}

/// Cheap content test for an fd seen for the first time, over at most the
/// first 16 of the `ret` bytes the syscall moved.
#[inline(always)]
fn classify_head(args: &SyscallArgs, sc: Syscall, ret: u64) -> Head {
    let base = if sc.is_vectored() {
        if args.iovcnt == 0 {
            return Head::Text;
        }
        match unsafe { bpf_probe_read_user(args.buf as *const IoVec) } {
            Ok(iov) => iov.base,
            Err(_) => return Head::Text,
        }
    } else {
        args.buf
    };
    // 16 bytes on the stack; a fault (short buffer at a page end) falls back
    // to 4, and `valid` says how many were really read.
    let (head, mut valid) = match unsafe { bpf_probe_read_user(base as *const [u8; 16]) } {
        Ok(h) => (h, 16u64),
        Err(_) => match unsafe { bpf_probe_read_user(base as *const [u8; 4]) } {
            Ok(h) => (
                [h[0], h[1], h[2], h[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                4,
            ),
            Err(_) => return Head::Text,
        },
    };
    if sc.is_vectored() {
        valid = 0; // the first iovec may be shorter than `ret`: no NUL verdict
    } else if ret < valid {
        valid = ret; // bytes past `ret` are stale buffer contents
    }
    let word = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if matches!(
        &word.to_le_bytes(),
        b"HTTP" | b"GET " | b"POST" | b"PUT " | b"DELE" | b"HEAD" | b"OPTI" | b"PATC"
    ) {
        return Head::Mcp;
    }
    // Constant bound: the verifier unrolls or bounds this loop.
    let mut i = 0;
    while i < 16 {
        match head[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'{' | b'[' => return Head::Mcp,
            _ => break,
        }
    }
    // Constant bound again; `valid` only shortens it.
    let mut j = 0;
    while j < 16 {
        if (j as u64) < valid && head[j] == 0 {
            return Head::Binary;
        }
        j += 1;
    }
    Head::Text
}

/// Copies `ret` bytes (capped) from the syscall's buffer(s) into the ring
/// buffer, one record per chunk, then a truncation marker if capped.
#[inline(always)]
pub(crate) fn copy_out(
    args: &SyscallArgs,
    sc: Syscall,
    ret: u64,
    pid_tgid: u64,
    info: &StreamInfo,
) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value, exclusively ours while this program runs.
    let s: &mut Scratch = unsafe { &mut *scratch };
    let mut cap = CAPTURE_CAP.load() as u64;
    if cap > MAX_CAPTURE_CAP {
        cap = MAX_CAPTURE_CAP;
    }
    let want_total = if ret < cap { ret } else { cap };

    s.hdr.kind = RecordKind::Data as u32;
    s.hdr.flags = if sc.is_egress() { FLAG_EGRESS } else { 0 };
    if sc.is_tls() {
        s.hdr.flags |= FLAG_TLS;
    }
    s.hdr.tgid = (pid_tgid >> 32) as u32;
    s.hdr.tid = pid_tgid as u32;
    s.hdr.fd = args.fd;
    s.hdr.syscall = sc as u32;
    s.hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
    s.hdr.total_len = ret;
    s.hdr.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    s.hdr.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    s.hdr.ino = info.ino;
    s.hdr.file_kind = info.file_kind;
    s.hdr._pad = 0;
    s.hdr.flow = info.flow;

    let vectored = sc.is_vectored();
    s.copy = CopyState {
        buf: args.buf,
        iovcnt: if vectored { args.iovcnt } else { 0 },
        want_total,
        done: 0,
        seg_base: if vectored { 0 } else { args.buf },
        seg_left: if vectored { 0 } else { want_total },
        iov_idx: 0,
        records: 0,
    };
    if !vectored && want_total <= CHUNK_SIZE as u64 {
        // Fast path, most messages: one buffer, one chunk, no loop.
        // Verifier: same bound-keeping mask as in copy_step.
        let n = (want_total as usize) & (2 * CHUNK_SIZE - 1);
        if n <= CHUNK_SIZE {
            let src = args.buf as *const u8;
            if unsafe { bpf_probe_read_user_buf(src, &mut s.data[..n]) }.is_ok() {
                s.hdr.offset = 0;
                s.hdr.len = n as u32;
                emit(s, DATA_HEADER_LEN + n);
                s.copy.done = n as u64;
                s.copy.records = 1;
            } else {
                count(counter::READ_FAULTS, 1);
            }
        }
    } else {
        // Verifier: an open-coded loop of MAX_CHUNKS iterations with several
        // branches exceeds the 1M-instruction budget; bpf_loop (5.17+) with the
        // state in the map value (see `Scratch`) is verified in one pass.
        unsafe {
            bpf_loop(
                MAX_CHUNKS + MAX_IOV,
                copy_step as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
    }
    let (done, records) = (s.copy.done, s.copy.records);
    if records > 0 {
        count(counter::CAPTURED_SYSCALLS, 1);
        count(counter::CAPTURED_BYTES, done);
    }
    if done < ret {
        // Capped (or a fault): tell userspace exactly where the gap is, and
        // send the syscall's last bytes with the marker — they end the line
        // (its newline; the TypeScript SDK's `id`), so framing stays exact.
        s.hdr.flags |= FLAG_TRUNCATED;
        let mut tail = 0usize;
        if !vectored {
            let mut t = ret - done;
            if t > CHUNK_SIZE as u64 {
                t = CHUNK_SIZE as u64;
            }
            // Verifier: same bound-keeping mask as in copy_step.
            let t = (t as usize) & (2 * CHUNK_SIZE - 1);
            if t <= CHUNK_SIZE {
                let src = (args.buf + ret - t as u64) as *const u8;
                if unsafe { bpf_probe_read_user_buf(src, &mut s.data[..t]) }.is_ok() {
                    tail = t;
                }
            }
        }
        count(counter::TRUNCATED_SYSCALLS, 1);
        count(counter::TRUNCATED_BYTES, ret - done - tail as u64);
        s.hdr.offset = (ret - tail as u64) as u32;
        s.hdr.len = tail as u32;
        emit(s, DATA_HEADER_LEN + tail);
    }
}

/// One step of the copy: load the next iovec if the current segment is
/// used up, else copy one chunk. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn copy_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU map value; copy_out filled header and progress.
    let s: &mut Scratch = unsafe { &mut *scratch };
    let c = &mut s.copy;
    if c.done >= c.want_total {
        return 1;
    }
    if c.seg_left == 0 {
        if c.iov_idx >= c.iovcnt || c.iov_idx >= MAX_IOV as u64 {
            return 1;
        }
        let p = (c.buf + c.iov_idx * 16) as *const IoVec;
        c.iov_idx += 1;
        match unsafe { bpf_probe_read_user(p) } {
            Ok(iov) => {
                c.seg_base = iov.base;
                c.seg_left = iov.len;
            }
            Err(_) => {
                count(counter::READ_FAULTS, 1);
                return 1;
            }
        }
        return 0; // an empty iovec just costs one iteration
    }
    let mut n = c.want_total - c.done;
    if n > c.seg_left {
        n = c.seg_left;
    }
    if n > CHUNK_SIZE as u64 {
        n = CHUNK_SIZE as u64;
    }
    // Verifier: the helper's size must have a provable upper bound within
    // the destination. The compare above does it; this mask (a no-op for
    // n ≤ CHUNK_SIZE, a power of two) keeps the bound visible to the
    // verifier even if LLVM reorders the comparisons.
    let n = (n as usize) & (2 * CHUNK_SIZE - 1);
    if n > CHUNK_SIZE {
        return 1;
    }
    let src = c.seg_base as *const u8;
    if unsafe { bpf_probe_read_user_buf(src, &mut s.data[..n]) }.is_err() {
        count(counter::READ_FAULTS, 1);
        return 1;
    }
    s.hdr.offset = s.copy.done as u32;
    s.hdr.len = n as u32;
    emit(s, DATA_HEADER_LEN + n);
    let c = &mut s.copy;
    c.records += 1;
    c.done += n as u64;
    c.seg_base += n as u64;
    c.seg_left -= n as u64;
    0
}

/// Writes the first `size` bytes of the scratch record to the ring buffer,
/// counting a full buffer.
#[inline(always)]
fn emit(s: &mut Scratch, size: usize) {
    // Verifier: bpf_ringbuf_output needs size ≤ the scratch value; callers
    // pass DATA_HEADER_LEN + n with n ≤ CHUNK_SIZE.
    if size > DATA_HEADER_LEN + CHUNK_SIZE {
        return;
    }
    // SAFETY: header and data are contiguous (#[repr(C)]); `size` was
    // checked against their combined length above.
    let bytes = unsafe { core::slice::from_raw_parts(&s.hdr as *const _ as *const u8, size) };
    let (pending, flags) = wakeup_flags(size as u64);
    if EVENTS.output::<[u8]>(bytes, flags).is_err() {
        count(counter::RINGBUF_FULL_RECORDS, 1);
        count(counter::RINGBUF_FULL_BYTES, (size - DATA_HEADER_LEN) as u64);
    } else if let Some(p) = COUNTERS.get_ptr_mut(counter::RINGBUF_PENDING_BYTES) {
        // Fill level for the metrics.
        // SAFETY: per-CPU slot.
        unsafe { *p = pending + size as u64 };
    }
}

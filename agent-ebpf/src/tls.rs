//! TLS plaintext from OpenSSL: a uprobe at `SSL_read`/`SSL_write` (and the
//! `_ex` variants) saves the buffer, a uretprobe copies what was moved.
//! Attached by userspace to every `libssl.so*` and to executables that
//! link OpenSSL statically (node).
//!
//! Which connection: neither Python nor Node give OpenSSL the socket (both
//! use memory BIOs), so the syscall side tells (see `TlsThread`): the first
//! `SSL_read` after a TCP read takes that socket; a write whose `SSL *` has
//! no socket yet is sent with fd `FD_UNBOUND` and the thread's next TCP
//! write emits a `TlsBind` record naming it. Either way the `SSL *` keeps
//! its socket (`SSL_CONNS`) for all its later calls.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use mcpscope_common::{
    counter, stream_key, Flow, SslArgs, SslConn, SslKey, StreamInfo, Syscall, TlsThread,
    FD_UNBOUND, FILE_SOCKET, STREAM_IGNORED, STREAM_TRACKED,
};

use crate::capture::{copy_out, SyscallArgs};
use crate::maps::{count, tls_fd_state, AGENT_TGID, SSL_CONNS, TLS_THREADS};

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    on_call(&ctx, Syscall::SslWrite, false);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    on_call(&ctx, Syscall::SslWrite, true);
    0
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    on_call(&ctx, Syscall::SslRead, false);
    0
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    on_call(&ctx, Syscall::SslRead, true);
    0
}

/// `SSL_do_handshake(ssl)`: the `SSL *` starts a connection; a socket bound
/// to the same address before (freed and reused) no longer holds.
#[uprobe]
pub fn ssl_handshake(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == AGENT_TGID.load() {
        return 0;
    }
    if let Some(ssl) = ctx.arg::<u64>(0) {
        let key = SslKey {
            ssl,
            tgid: (pid_tgid >> 32) as u32,
            _pad: 0,
        };
        let _ = SSL_CONNS.remove(&key);
    }
    // A TLS thread from its handshake on: the TCP reads that finish the
    // handshake name the socket of its first SSL_read.
    let _ = tls_thread(pid_tgid);
    0
}

/// The return of any of the four.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    on_return(&ctx);
    0
}

/// `SSL_write(ssl, buf, num)` / `SSL_write_ex(ssl, buf, num, *written)`, and
/// the same shapes for reads: the buffer is argument 1, the `_ex` count
/// pointer argument 3. Saved in the thread's state until the return.
#[inline(always)]
fn on_call(ctx: &ProbeContext, sc: Syscall, ex: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == AGENT_TGID.load() {
        return;
    }
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let len_ptr = if ex {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    let Some(thread) = tls_thread(pid_tgid) else {
        return count(counter::TLS_CALLS_LOST, 1);
    };
    // SAFETY: map value of this thread; only this thread writes it.
    unsafe { &mut *thread }.call = SslArgs {
        ssl,
        buf,
        len_ptr,
        syscall: sc as u32,
        _pad: 0,
    };
}

/// This thread's TLS state (see `TlsThread`), created at its first call.
/// A lookup first: an LRU insert that finds the key takes a free element
/// and the bucket locks before it fails.
#[inline(always)]
fn tls_thread(pid_tgid: u64) -> Option<*mut TlsThread> {
    if let Some(t) = TLS_THREADS.get_ptr_mut(pid_tgid) {
        return Some(t);
    }
    let fresh = TlsThread {
        read_fd: FD_UNBOUND,
        ..TlsThread::default()
    };
    // BPF_NOEXIST: never overwrite what the syscall side wrote meanwhile.
    let _ = TLS_THREADS.insert(pid_tgid, fresh, BPF_NOEXIST as u64);
    TLS_THREADS.get_ptr_mut(pid_tgid)
}

#[inline(always)]
fn on_return(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(thread) = TLS_THREADS.get_ptr_mut(pid_tgid) else {
        // Only a call that reached `on_call` has a return probe: its
        // thread's state (and the call with it) was evicted meanwhile.
        return count(counter::TLS_CALLS_LOST, 1);
    };
    // SAFETY: map value of this thread; only this thread writes it.
    let thread = unsafe { &mut *thread };
    let args = thread.call;
    thread.call.ssl = 0;
    if args.ssl == 0 {
        // The state was evicted and made anew by a syscall in between.
        return count(counter::TLS_CALLS_LOST, 1);
    }
    // All four return `int`: only the low 32 bits of rax are the value
    // (node leaves garbage above them).
    let ret = ctx.ret::<u64>() as u32 as i32;
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey {
        ssl: args.ssl,
        tgid,
        _pad: 0,
    };
    let Some(sc) = Syscall::from_u32(args.syscall) else {
        return;
    };
    // The socket of this SSL: bound by its writes (exact: the next TCP
    // write), or, before any, by a read right after a TCP read (successful
    // or not). A task-based runtime (anyio) may read a socket in one
    // callback and decrypt in another, so a read never overrides a binding.
    let mut conn = unsafe { SSL_CONNS.get(&key) }.copied();
    if sc == Syscall::SslRead {
        let fresh = thread.read_fresh != 0;
        thread.read_fresh = 0;
        if conn.is_none() && fresh {
            let c = SslConn {
                fd: thread.read_fd,
                _pad: 0,
                ino: thread.read_ino,
                flow: thread.read_flow,
            };
            let _ = SSL_CONNS.insert(&key, &c, 0);
            conn = Some(c);
        }
    }
    let n = if args.len_ptr != 0 {
        // _ex: returns 1 on success and stores the count.
        if ret != 1 {
            return;
        }
        match unsafe { bpf_probe_read_user(args.len_ptr as *const u64) } {
            Ok(n) => n,
            Err(_) => return count(counter::READ_FAULTS, 1),
        }
    } else if ret > 0 {
        ret as u64
    } else {
        return;
    };
    if n == 0 {
        return;
    }
    let (fd, ino, flow) = match conn {
        _ if sc == Syscall::SslWrite => {
            // Always bound by the thread's next TCP write (a TlsBind
            // record): exact even when an `SSL *` address was reused.
            thread.pending_ssl = args.ssl;
            (FD_UNBOUND, 0, Flow::ZERO)
        }
        Some(c) => (c.fd, c.ino, c.flow),
        None => (thread.read_fd, thread.read_ino, thread.read_flow),
    };
    if fd != FD_UNBOUND {
        if tls_fd_state(stream_key(tgid, fd)) == STREAM_IGNORED {
            return; // userspace found this connection not MCP
        }
    }
    let sargs = SyscallArgs {
        buf: args.buf,
        iovcnt: 0,
        fd,
    };
    let info = StreamInfo {
        state: STREAM_TRACKED,
        file_kind: FILE_SOCKET,
        ino,
        flow,
    };
    copy_out(&sargs, sc, n, pid_tgid, &info);
}

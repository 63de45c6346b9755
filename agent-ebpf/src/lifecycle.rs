//! Process and fd lifecycle: exec, exit and close of tracked fds. Userspace
//! uses them to end streams (so fd reuse starts a new one) and to refresh
//! cached identities.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use mcpscope_common::{stream_key, ProcRecord, RecordKind, STREAM_CIPHERTEXT, STREAM_RULED_OUT};

use crate::capture::{saved_regs, REGS_DI};
use crate::maps::{wakeup_flags, AGENT_TGID, EVENTS, EXIT_GROUP_DEAD_OFFSET, STREAMS, TLS_FDS};

/// `sys_exit_close`: only fds we track produce a record (and leave the map),
/// so closing ordinary files costs one hash lookup.
///
/// At the exit, not the entry: with no program on any `sys_enter_*`
/// tracepoint, the kernel's `sys_enter` hook has no probe, and every
/// syscall on the host (a Python client makes ~240 a call, most of them
/// getpid and epoll_wait) skips it: ~15 ns each here. At the exit the fd
/// is closed already: another thread that reuses its number in between
/// may be judged by the old entry, or have its own new entry removed
/// (decided again at its next syscall), but no entry outlives the close.
/// At the entry, a racing syscall on the old fd could put its entry back
/// after the removal, and the next file at that number inherited it.
#[tracepoint]
pub fn exit_close(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        return 0;
    }
    // SAFETY: in-bounds slot of `struct pt_regs` (see `saved_regs`): the
    // fd argument, as the task entered the syscall. (A failed close,
    // EBADF, finds no entry below.)
    let fd = unsafe { *saved_regs().add(REGS_DI) };
    let key = stream_key(tgid, fd as u32);
    // SAFETY: plain-data values.
    // Verifier: the second lookup stays behind the first's null test (two
    // results combined as `a || b` get merged by LLVM into `ptr | ptr`,
    // which is prohibited).
    match unsafe { STREAMS.get(key) } {
        Some(info) if info.state == STREAM_RULED_OUT || info.state == STREAM_CIPHERTEXT => {
            // Userspace never heard of this fd as a stream: forget it without
            // a record, unless it carried TLS plaintext (a TCP socket whose
            // port was already released, read after a reset, looks like a
            // plain binary socket: its close must still end the TLS streams).
            let _ = STREAMS.remove(key);
            if unsafe { TLS_FDS.get(key) }.is_none() {
                return 0;
            }
        }
        Some(_) => {}
        None => {
            if unsafe { TLS_FDS.get(key) }.is_none() {
                return 0;
            }
        }
    }
    let _ = STREAMS.remove(key);
    let _ = TLS_FDS.remove(key);
    emit(RecordKind::Close, pid_tgid, fd as u32);
    0
}

/// `sched_process_exec`: the image changed; cached exe/cmdline are stale.
#[tracepoint]
pub fn sched_exec(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == AGENT_TGID.load() {
        return 0;
    }
    emit(RecordKind::Exec, pid_tgid, 0);
    0
}

/// `sched_process_exit`: fires per thread; report only the end of the whole
/// process (`group_dead`, offset from tracefs), or the leader if absent.
#[tracepoint]
pub fn sched_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let off = EXIT_GROUP_DEAD_OFFSET.load();
    let last = if off != 0 {
        // SAFETY: offset comes from this kernel's tracefs format file.
        matches!(unsafe { ctx.read_at::<u8>(off as usize) }, Ok(v) if v != 0)
    } else {
        (pid_tgid >> 32) == (pid_tgid & 0xffff_ffff)
    };
    if last {
        emit(RecordKind::Exit, pid_tgid, 0);
    }
    0
}

#[inline(always)]
fn emit(kind: RecordKind, pid_tgid: u64, fd: u32) {
    let rec = ProcRecord {
        kind: kind as u32,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let (_, flags) = wakeup_flags(core::mem::size_of::<ProcRecord>() as u64);
    if EVENTS.output::<ProcRecord>(&rec, flags).is_err() {
        crate::maps::count(mcpscope_common::counter::RINGBUF_FULL_RECORDS, 1);
    }
}

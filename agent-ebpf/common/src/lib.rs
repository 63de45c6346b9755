//! Records shared by the kernel programs (`mcpscope-ebpf`) and the userspace
//! agent (`mcpscope`). Every type here is `#[repr(C)]`, has no padding the
//! compiler could fill with garbage, and is defined exactly once.
//!
//! The ring buffer carries two record shapes, told apart by their first `u32`
//! ([`RecordKind`]): a [`DataHeader`] followed by `len` captured bytes, or a
//! fixed-size [`ProcRecord`].
#![no_std]

/// Bytes of `task_struct.comm`.
pub const COMM_LEN: usize = 16;

/// Captured bytes per ring-buffer record. One syscall's data is split into
/// records of at most this size. The per-CPU scratch record (header + chunk)
/// must stay under the kernel's 32 KiB per-CPU value limit (E2BIG otherwise).
pub const CHUNK_SIZE: usize = 16 * 1024;

/// Upper bound of records one syscall may produce (the copy loop's bound,
/// which the verifier needs to be constant). `CHUNK_SIZE * MAX_CHUNKS` is the
/// largest configurable per-syscall capture cap (2 MiB).
pub const MAX_CHUNKS: u32 = 128;

/// Largest per-syscall capture cap the kernel side supports.
pub const MAX_CAPTURE_CAP: u64 = CHUNK_SIZE as u64 * MAX_CHUNKS as u64;

/// Default per-syscall capture cap: a 600 KB line written by one `write`
/// arrives whole.
pub const DEFAULT_CAPTURE_CAP: u32 = 1024 * 1024;

/// Threads whose TLS call state the kernel keeps at once by default (the
/// size of `TLS_THREADS` in the object; `--tls-threads` resizes it at load).
pub const DEFAULT_TLS_THREADS: u32 = 16384;

/// Largest iovec array walked for readv/writev/sendmsg/recvmsg.
pub const MAX_IOV: u32 = 64;

/// What a ring-buffer record is; the first `u32` of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A [`DataHeader`] and the bytes it describes.
    Data = 1,
    /// A process called `execve` ([`ProcRecord`]).
    Exec = 2,
    /// The last thread of a process exited ([`ProcRecord`]).
    Exit = 3,
    /// A tracked fd was closed ([`ProcRecord`], `fd` set).
    Close = 4,
    /// A [`DataHeader`] without data: the TLS plaintext this thread wrote
    /// since its last bind went out through socket `fd` (its `ino`, `flow`).
    TlsBind = 5,
}

impl RecordKind {
    /// Decodes the first `u32` of a record.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Data),
            2 => Some(Self::Exec),
            3 => Some(Self::Exit),
            4 => Some(Self::Close),
            5 => Some(Self::TlsBind),
            _ => None,
        }
    }
}

/// The syscall that moved the bytes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Read = 0,
    Write = 1,
    Readv = 2,
    Writev = 3,
    Recvfrom = 4,
    Sendto = 5,
    Recvmsg = 6,
    Sendmsg = 7,
    /// OpenSSL `SSL_read` / `SSL_read_ex` (uprobe): TLS plaintext in.
    SslRead = 8,
    /// OpenSSL `SSL_write` / `SSL_write_ex` (uprobe): TLS plaintext out.
    SslWrite = 9,
}

impl Syscall {
    /// Decodes [`DataHeader::syscall`].
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Read,
            1 => Self::Write,
            2 => Self::Readv,
            3 => Self::Writev,
            4 => Self::Recvfrom,
            5 => Self::Sendto,
            6 => Self::Recvmsg,
            7 => Self::Sendmsg,
            8 => Self::SslRead,
            9 => Self::SslWrite,
            _ => return None,
        })
    }

    /// True when data flows out of the calling process.
    pub const fn is_egress(self) -> bool {
        matches!(
            self,
            Self::Write | Self::Writev | Self::Sendto | Self::Sendmsg | Self::SslWrite
        )
    }

    /// True for TLS-library calls (plaintext), false for syscalls.
    pub const fn is_tls(self) -> bool {
        matches!(self, Self::SslRead | Self::SslWrite)
    }

    /// True when the buffer argument is an iovec array.
    pub const fn is_vectored(self) -> bool {
        matches!(
            self,
            Self::Readv | Self::Writev | Self::Recvmsg | Self::Sendmsg
        )
    }

    /// Lower-case syscall name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Readv => "readv",
            Self::Writev => "writev",
            Self::Recvfrom => "recvfrom",
            Self::Sendto => "sendto",
            Self::Recvmsg => "recvmsg",
            Self::Sendmsg => "sendmsg",
            Self::SslRead => "SSL_read",
            Self::SslWrite => "SSL_write",
        }
    }
}

/// [`DataHeader::flags`]: the bytes were written by the process (egress).
pub const FLAG_EGRESS: u32 = 1;
/// [`DataHeader::flags`]: this record is the truncation marker. Bytes from
/// the end of the previous chunk up to `offset` were not captured; the
/// record carries the syscall's last `len` bytes (its tail, possibly empty),
/// so `offset + len == total_len` when the tail could be read.
pub const FLAG_TRUNCATED: u32 = 2;

/// [`DataHeader::flags`]: the bytes are TLS plaintext, captured by a
/// uprobe on the TLS library (`fd` is the connection's socket as far as the
/// kernel side could tell).
pub const FLAG_TLS: u32 = 4;

/// Header of a [`RecordKind::Data`] record; `len` bytes of data follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataHeader {
    /// [`RecordKind::Data`].
    pub kind: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// File descriptor.
    pub fd: u32,
    /// [`Syscall`] as `u32`.
    pub syscall: u32,
    /// `bpf_ktime_get_ns()` at syscall exit (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Bytes the syscall transferred (its return value), the true length.
    pub total_len: u64,
    /// Offset of this chunk within the syscall's data.
    pub offset: u32,
    /// Bytes of data following this header.
    pub len: u32,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    /// `task_struct.comm`, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// Inode of the file behind the fd (pipe inode is shared by both ends),
    /// 0 when the kernel could not tell.
    pub ino: u64,
    /// `FILE_*` kind of the file behind the fd.
    pub file_kind: u32,
    /// Padding (keeps the header a multiple of 8 bytes).
    pub _pad: u32,
    /// The socket's connection, for TCP (zero otherwise).
    pub flow: Flow,
}

/// A TCP connection as one end sees it: enough for userspace to match the
/// two ends of a loopback connection without racing /proc (a short HTTP
/// connection is often closed before userspace could look it up).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Local port (host order); 0 = not a TCP/IP socket.
    pub lport: u16,
    /// Remote port (host order).
    pub rport: u16,
    /// Local address XOR remote address (IPv6 folded to 32 bits): the same
    /// value at both ends of a connection.
    pub addr_xor: u32,
}

/// [`DataHeader::file_kind`]: not determined (no BTF offsets).
pub const FILE_UNKNOWN: u32 = 0;
/// A pipe or FIFO.
pub const FILE_PIPE: u32 = 1;
/// A socket.
pub const FILE_SOCKET: u32 = 2;
/// Anything else (regular file, tty, device): never captured.
pub const FILE_OTHER: u32 = 3;

/// Value of the `STREAMS` map: the capture decision and what the fd is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamInfo {
    /// `STREAM_TRACKED` or `STREAM_IGNORED`.
    pub state: u32,
    /// `FILE_*`.
    pub file_kind: u32,
    /// Inode number.
    pub ino: u64,
    /// The TCP connection (sockets only).
    pub flow: Flow,
}

/// Field offsets, from the running kernel's BTF, that let the kernel side
/// walk `task->files->fdt->fd[fd]->f_inode` (Rust eBPF has no CO-RE).
/// All zero = unavailable: the kernel then leaves `file_kind` unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOffsets {
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.fd`.
    pub fdt_fd: u32,
    /// `fdtable.max_fds`.
    pub fdt_max_fds: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `inode.i_mode`.
    pub inode_mode: u32,
    /// `file.private_data` (a socket file's `struct socket`).
    pub file_private_data: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_family`.
    pub skc_family: u32,
    /// `sock.__sk_common.skc_num` (local port, host order).
    pub skc_num: u32,
    /// `sock.__sk_common.skc_dport` (remote port, network order).
    pub skc_dport: u32,
    /// `sock.__sk_common.skc_daddr`.
    pub skc_daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr`.
    pub skc_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr`.
    pub skc_v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`.
    pub skc_v6_rcv_saddr: u32,
    /// 1 when the socket offsets are valid.
    pub sock_valid: u32,
    /// 1 when the offsets are valid.
    pub valid: u32,
    /// Padding.
    pub _pad: u32,
}

impl FileOffsets {
    /// All zero: nothing known.
    pub const ZERO: Self = Self {
        task_files: 0,
        files_fdt: 0,
        fdt_fd: 0,
        fdt_max_fds: 0,
        file_inode: 0,
        inode_ino: 0,
        inode_mode: 0,
        file_private_data: 0,
        socket_sk: 0,
        skc_family: 0,
        skc_num: 0,
        skc_dport: 0,
        skc_daddr: 0,
        skc_rcv_saddr: 0,
        skc_v6_daddr: 0,
        skc_v6_rcv_saddr: 0,
        sock_valid: 0,
        valid: 0,
        _pad: 0,
    };
}

impl Flow {
    /// No connection.
    pub const ZERO: Self = Self {
        lport: 0,
        rport: 0,
        addr_xor: 0,
    };
}

/// Size of [`DataHeader`] on the wire.
pub const DATA_HEADER_LEN: usize = core::mem::size_of::<DataHeader>();

/// A process lifecycle or fd record ([`RecordKind::Exec`], `Exit`, `Close`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcRecord {
    /// [`RecordKind`] as `u32`.
    pub kind: u32,
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Closed fd for `Close`, otherwise 0.
    pub fd: u32,
    /// `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// `task_struct.comm` after the event.
    pub comm: [u8; COMM_LEN],
}

/// [`StreamInfo::state`]: the fd carries MCP (or looked like it); capture it all.
pub const STREAM_TRACKED: u32 = 1;
/// [`StreamInfo::state`]: not MCP, decided by userspace after it saw the
/// stream's bytes; skip it (its close is still reported).
pub const STREAM_IGNORED: u32 = 2;
/// [`StreamInfo::state`]: not MCP, decided by the kernel at the fd's first
/// syscall (not a pipe or socket, or binary bytes); userspace never saw the
/// fd, so its close is not reported either.
pub const STREAM_RULED_OUT: u32 = 3;
/// [`StreamInfo::state`]: a TCP socket whose first bytes were binary — TLS
/// ciphertext, or another binary protocol. Never captured; kept so that a
/// TLS thread's syscalls on it name the connection of its plaintext from
/// the file identity read once, and other threads' pass by at one lookup.
pub const STREAM_CIPHERTEXT: u32 = 4;

/// Arguments of an `SSL_read`/`SSL_write` call, saved at uprobe entry in
/// the calling thread's [`TlsThread`] and consumed at its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SslArgs {
    /// The `SSL *` (one per connection).
    pub ssl: u64,
    /// Plaintext buffer.
    pub buf: u64,
    /// `_ex` variants: where the byte count is written; 0 otherwise (the
    /// return value is the count).
    pub len_ptr: u64,
    /// [`Syscall::SslRead`] or [`Syscall::SslWrite`].
    pub syscall: u32,
    /// Padding.
    pub _pad: u32,
}

/// Per-thread TLS state: which connection this thread's plaintext belongs
/// to. OpenSSL in Python and Node runs over memory BIOs (no `SSL_set_fd`):
/// the first `SSL_read` after a TCP read decrypts that socket's data, and
/// the next TCP write after an `SSL_write` carries what was encrypted. Each
/// such observation ties the `SSL *` to its socket ([`SslConn`]), which
/// then holds for every later call on that `SSL *` (a read served from
/// already-buffered records follows no TCP read).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsThread {
    /// The TCP socket this thread last read from (`u32::MAX`: none yet).
    pub read_fd: u32,
    /// 1 while no `SSL_read` has followed that TCP read.
    pub read_fresh: u32,
    /// Inode of `read_fd`.
    pub read_ino: u64,
    /// Connection of `read_fd`.
    pub read_flow: Flow,
    /// The `SSL *` whose plaintext was written while its socket was unknown
    /// (0: none pending).
    pub pending_ssl: u64,
    /// The call in progress on this thread (`ssl` 0: none). Kept here, not
    /// in a map of its own: a hash-map insert and delete per call cost
    /// more than the rest of the probe.
    pub call: SslArgs,
}

/// The socket of one `SSL *`, as learned by [`TlsThread`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SslConn {
    /// The socket.
    pub fd: u32,
    /// Padding.
    pub _pad: u32,
    /// Its inode.
    pub ino: u64,
    /// Its connection.
    pub flow: Flow,
}

/// Key of the `SSL *` → socket map: pointers are per process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslKey {
    /// The `SSL *`.
    pub ssl: u64,
    /// Its process.
    pub tgid: u32,
    /// Padding.
    pub _pad: u32,
}

/// fd of TLS plaintext whose socket is not known yet (see [`RecordKind::TlsBind`]).
pub const FD_UNBOUND: u32 = u32::MAX;

/// Key of the `STREAMS` map.
pub const fn stream_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// Indexes of the per-CPU `COUNTERS` array. Every loss in the kernel has one.
pub mod counter {
    /// Records not written because the ring buffer was full.
    pub const RINGBUF_FULL_RECORDS: u32 = 0;
    /// Bytes not written because the ring buffer was full.
    pub const RINGBUF_FULL_BYTES: u32 = 1;
    /// Syscalls whose data exceeded the capture cap.
    pub const TRUNCATED_SYSCALLS: u32 = 2;
    /// Bytes beyond the capture cap (not captured).
    pub const TRUNCATED_BYTES: u32 = 3;
    /// `bpf_probe_read_user` failures (bytes could not be copied).
    pub const READ_FAULTS: u32 = 4;
    /// TLS library calls lost between call and return: the calling
    /// thread's state (which holds the call's arguments) could not be
    /// stored, or was evicted before the return.
    pub const TLS_CALLS_LOST: u32 = 5;
    /// Syscalls whose data was captured.
    pub const CAPTURED_SYSCALLS: u32 = 6;
    /// Bytes captured.
    pub const CAPTURED_BYTES: u32 = 7;
    /// Gauge, not a counter: bytes waiting in the ring buffer when this CPU
    /// last wrote to it (userspace takes the maximum over CPUs).
    pub const RINGBUF_PENDING_BYTES: u32 = 8;
    /// Number of counters.
    pub const COUNT: u32 = 9;
    /// Names, indexed like the constants (used for metrics and logs).
    pub const NAMES: [&str; COUNT as usize] = [
        "ringbuf_full_records",
        "ringbuf_full_bytes",
        "truncated_syscalls",
        "truncated_bytes",
        "read_faults",
        "tls_calls_lost",
        "captured_syscalls",
        "captured_bytes",
        "ringbuf_pending_bytes",
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays without padding.
    unsafe impl aya::Pod for super::StreamInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FileOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Flow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SslArgs {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TlsThread {}
}

//! Stage 1 — capture: load the kernel programs, read the ring buffer, and
//! decode its records into [`RawEvent`]s. Nothing here knows about MCP.

pub mod btf;
mod decode;
#[cfg(target_os = "linux")]
pub mod loader;
pub mod record;
#[cfg(target_os = "linux")]
pub mod tls;

pub use decode::{decode, DecodeError};

/// A decoded ring-buffer record. `Data` borrows the ring-buffer bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent<'a> {
    /// A chunk of bytes one syscall moved.
    Data(DataChunk<'a>),
    /// A process lifecycle or fd event.
    Proc(ProcEvent),
    /// TLS plaintext written by thread `tid` went out through this socket.
    TlsBind(TlsBind),
}

/// [`RawEvent::TlsBind`]: the socket of a thread's unbound TLS writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsBind {
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// The socket.
    pub fd: u32,
    /// Its inode.
    pub ino: u64,
    /// Its connection.
    pub flow: mcpscope_common::Flow,
    /// Kernel CLOCK_MONOTONIC, ns.
    pub ts_ns: u64,
}

/// Bytes moved by one syscall (or one chunk of a large one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataChunk<'a> {
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// File descriptor.
    pub fd: u32,
    /// The syscall.
    pub syscall: mcpscope_common::Syscall,
    /// True when the process wrote the bytes.
    pub egress: bool,
    /// Kernel CLOCK_MONOTONIC at syscall exit, ns.
    pub ts_ns: u64,
    /// Bytes the syscall really moved.
    pub total_len: u64,
    /// Where `data` starts within the syscall's bytes.
    pub offset: u32,
    /// This chunk is the truncation marker: bytes from `offset` to
    /// `total_len` were not captured.
    pub truncated: bool,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// Task command name.
    pub comm: Comm,
    /// Inode of the file behind the fd (0 = unknown).
    pub ino: u64,
    /// `mcpscope_common::FILE_*` kind of that file.
    pub file_kind: u32,
    /// TLS plaintext from a TLS-library uprobe, not a syscall's bytes.
    pub tls: bool,
    /// The TCP connection (zero for other files).
    pub flow: mcpscope_common::Flow,
    /// The bytes.
    pub data: &'a [u8],
}

/// A process lifecycle or fd event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEvent {
    /// What happened.
    pub kind: ProcKind,
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// The closed fd (`Close` only).
    pub fd: u32,
    /// Kernel CLOCK_MONOTONIC, ns.
    pub ts_ns: u64,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// Task command name.
    pub comm: Comm,
}

/// The kernel's view of the task behind a record: what an event can say
/// about a process even after it exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Task {
    /// Task command name.
    pub comm: Comm,
    /// Thread id.
    pub tid: u32,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// The bytes were TLS plaintext.
    pub tls: bool,
}

impl DataChunk<'_> {
    /// The task that made the syscall.
    pub fn task(&self) -> Task {
        Task {
            comm: self.comm,
            tid: self.tid,
            cgroup_id: self.cgroup_id,
            tls: self.tls,
        }
    }
}

impl ProcEvent {
    /// The task the event is about.
    pub fn task(&self) -> Task {
        Task {
            comm: self.comm,
            tid: self.tid,
            cgroup_id: self.cgroup_id,
            tls: false,
        }
    }
}

/// Kind of [`ProcEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcKind {
    /// execve.
    Exec,
    /// The whole process exited.
    Exit,
    /// A tracked fd was closed.
    Close,
}

/// `task_struct.comm`: up to 16 bytes, kept inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Comm(pub [u8; mcpscope_common::COMM_LEN]);

impl Comm {
    /// The name up to the first NUL, lossily decoded.
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = memchr::memchr(0, &self.0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end])
    }

    /// Builds a comm from a string (tests, replay).
    pub fn from_str_lossy(s: &str) -> Self {
        let mut c = [0u8; mcpscope_common::COMM_LEN];
        let n = s.len().min(c.len() - 1);
        c[..n].copy_from_slice(&s.as_bytes()[..n]);
        Comm(c)
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

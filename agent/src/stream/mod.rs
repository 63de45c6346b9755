//! Stage 2 — stream: chunks → whole syscalls → per-(pid, fd, direction)
//! byte streams → framed messages, and the join of a pipe's two ends.

pub mod assemble;
pub mod channel;
pub mod fdinfo;
pub mod framer;
pub mod http;
pub mod peer;
pub mod sse;

/// How userspace steers the kernel's per-fd capture decision.
pub trait StreamControl {
    /// Stop capturing this fd (not MCP).
    fn ignore(&mut self, tgid: u32, fd: u32);
    /// Stop capturing TLS plaintext of this fd (not MCP).
    fn ignore_tls(&mut self, _tgid: u32, _fd: u32) {}
    /// Drop any decision for this fd (it was closed).
    fn forget(&mut self, tgid: u32, fd: u32);
}

/// A [`StreamControl`] that does nothing (replay, tests).
#[derive(Debug, Default)]
pub struct NoControl;

impl StreamControl for NoControl {
    fn ignore(&mut self, _: u32, _: u32) {}
    fn forget(&mut self, _: u32, _: u32) {}
}

/// Identifies one direction of one fd of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Process id.
    pub tgid: u32,
    /// File descriptor.
    pub fd: u32,
    /// True for bytes the process wrote.
    pub egress: bool,
}

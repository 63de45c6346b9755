//! What an fd is, resolved from /proc once per stream: a pipe (with its
//! inode, shared by both ends), a socket (unix or tcp), or something else.
//!
//! Why userspace and not the kernel: Rust eBPF has no CO-RE, so reading
//! `task->files->fdt->fd[fd]->f_inode` needs five BTF-derived offsets and
//! five dependent probe reads per first sighting; a readlink of
//! /proc/<pid>/fd/<fd> gives the same answer once per stream, off the
//! kernel's hot path. The cost: a process that exits within microseconds of
//! its first message cannot be resolved; its stream then keeps kind
//! `unknown` and both ends are reported separately (see the README).

use std::{collections::HashSet, fs};

/// Kind of an fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FdKind {
    /// An anonymous or named pipe; the inode is shared by both ends.
    Pipe(u64),
    /// A unix-domain socket (inode of this end).
    Unix(u64),
    /// A TCP socket (inode of this end).
    Tcp(u64),
    /// Another socket type.
    OtherSocket(u64),
    /// A regular file, tty, device…: never MCP transport.
    NotIpc,
    /// Could not be resolved (process or fd already gone).
    Unknown,
}

impl FdKind {
    /// The `net` field of events.
    pub fn net(self) -> &'static str {
        match self {
            FdKind::Pipe(_) => "pipe",
            FdKind::Unix(_) => "unix",
            FdKind::Tcp(_) => "tcp",
            FdKind::OtherSocket(_) => "socket",
            FdKind::NotIpc | FdKind::Unknown => "unknown",
        }
    }
}

/// The kind from what the kernel read of the fd (`mcpscope_common::FILE_*`
/// and inode), falling back to /proc when the kernel could not tell.
pub fn from_kernel(tgid: u32, fd: u32, file_kind: u32, ino: u64) -> FdKind {
    match file_kind {
        mcpscope_common::FILE_PIPE => FdKind::Pipe(ino),
        mcpscope_common::FILE_SOCKET => socket_kind(tgid, ino),
        mcpscope_common::FILE_OTHER => FdKind::NotIpc,
        _ => resolve(tgid, fd),
    }
}

/// Resolves `fd` of process `tgid` through /proc.
pub fn resolve(tgid: u32, fd: u32) -> FdKind {
    let Ok(link) = fs::read_link(format!("/proc/{tgid}/fd/{fd}")) else {
        return FdKind::Unknown;
    };
    let link = link.to_string_lossy();
    if let Some(ino) = bracketed(&link, "pipe:[") {
        return FdKind::Pipe(ino);
    }
    if let Some(ino) = bracketed(&link, "socket:[") {
        return socket_kind(tgid, ino);
    }
    if link.starts_with('/') {
        // A FIFO opened by path is a pipe too.
        if let Ok(meta) = fs::metadata(&*link) {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            if meta.file_type().is_fifo() {
                return FdKind::Pipe(meta.ino());
            }
        }
    }
    FdKind::NotIpc
}

fn bracketed(link: &str, prefix: &str) -> Option<u64> {
    link.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
}

/// Finds the socket's family in the process's network namespace tables
/// (or this agent's, when the process is already gone).
fn socket_kind(tgid: u32, ino: u64) -> FdKind {
    let tgid = if std::path::Path::new(&format!("/proc/{tgid}/net")).exists() {
        tgid.to_string()
    } else {
        "self".into()
    };
    let needle = ino.to_string();
    let has = |table: &str, col: usize| {
        fs::read_to_string(format!("/proc/{tgid}/net/{table}"))
            .map(|t| {
                t.lines()
                    .skip(1)
                    .any(|l| l.split_whitespace().nth(col) == Some(needle.as_str()))
            })
            .unwrap_or(false)
    };
    if has("unix", 6) {
        FdKind::Unix(ino)
    } else if has("tcp", 9) || has("tcp6", 9) {
        FdKind::Tcp(ino)
    } else {
        FdKind::OtherSocket(ino)
    }
}

/// Access mode of an fd from /proc/<pid>/fdinfo: 0 read, 1 write, 2 both.
fn access_mode(pid: u32, fd: &str) -> Option<u32> {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
    u32::from_str_radix(flags.trim(), 8).ok().map(|f| f & 3)
}

/// Where the other end of a stream is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OtherEnd {
    /// The read end of this pipe.
    PipeReader(u64),
    /// This socket (the peer of ours).
    Socket(u64),
}

/// Processes holding `end`, searching the likely peers first (the writer's
/// parent and children: stdio servers are spawned by their client) and the
/// whole of /proc only if they do not hold it.
pub fn holders(end: OtherEnd, writer: u32) -> Vec<u32> {
    let (target, read_end) = match end {
        OtherEnd::PipeReader(ino) => (format!("pipe:[{ino}]"), true),
        OtherEnd::Socket(ino) => (format!("socket:[{ino}]"), false),
    };
    let mut seen = HashSet::new();
    let mut found = scan(&target, read_end, &related(writer), writer, &mut seen);
    if found.is_empty() {
        found = scan(&target, read_end, &all_pids(), writer, &mut seen);
    }
    found
}

/// Processes holding the read end of pipe `ino` (see [`holders`]).
pub fn pipe_readers(ino: u64, writer: u32) -> Vec<u32> {
    holders(OtherEnd::PipeReader(ino), writer)
}

fn scan(
    target: &str,
    read_end: bool,
    pids: &[u32],
    writer: u32,
    seen: &mut HashSet<u32>,
) -> Vec<u32> {
    let mut out = Vec::new();
    for &pid in pids {
        if pid == writer || !seen.insert(pid) {
            continue;
        }
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in dir.flatten() {
            let Ok(link) = fs::read_link(entry.path()) else {
                continue;
            };
            if link.as_os_str() == target {
                let fd = entry.file_name();
                if !read_end || access_mode(pid, &fd.to_string_lossy()) != Some(1) {
                    out.push(pid);
                    break;
                }
            }
        }
    }
    out
}

/// Parent and descendants (three generations) of `pid`: a wrapper that
/// forks (`npx`, `sh -c`) puts the real server below its child.
fn related(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    if let Some(ppid) = crate::identity::process::parent_pid(pid) {
        v.push(ppid);
    }
    let mut generation = vec![pid];
    for _ in 0..3 {
        let next: Vec<u32> = generation.iter().flat_map(|p| children(*p)).collect();
        v.extend(&next);
        generation = next;
    }
    v
}

/// Children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(children) = fs::read_to_string(t.path().join("children")) {
                v.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    v
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn resolves_pipes_files_and_readers() {
        let (r, w) = std::io::pipe().unwrap();
        let me = std::process::id();
        let FdKind::Pipe(ino) = resolve(me, w.as_raw_fd() as u32) else {
            panic!("not a pipe")
        };
        assert_eq!(resolve(me, r.as_raw_fd() as u32), FdKind::Pipe(ino));
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(resolve(me, f.as_raw_fd() as u32), FdKind::NotIpc);
        // A child holding the read end is found as the reader.
        let child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(r)
            .spawn()
            .unwrap();
        let readers = pipe_readers(ino, me);
        let pid = child.id();
        let mut child = child;
        child.kill().ok();
        child.wait().ok();
        assert_eq!(readers, vec![pid]);
    }
}

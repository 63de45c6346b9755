//! What an fd is, resolved from /proc once per stream: a pipe (with its
//! inode, shared by both ends), a socket (unix or tcp), or something else.
//!
//! Why userspace and not the kernel: Rust eBPF has no CO-RE, so reading
//! `task->files->fdt->fd[fd]->f_inode` needs five BTF-derived offsets and
//! five dependent probe reads per first sighting; a readlink of
//! `/proc/<pid>/fd/<fd>` gives the same answer once per stream, off the
//! kernel's hot path. The cost: a process that exits within microseconds of
//! its first message cannot be resolved; its stream then keeps kind
//! `unknown` and both ends are reported separately (see the README).

use std::{
    collections::{HashMap, HashSet},
    fs,
    time::{Duration, Instant},
};

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

/// How long a process's pipes and sockets, and its children, as read for
/// [`holders`], are used again before they are read anew.
const TABLE_TTL: Duration = Duration::from_millis(500);

/// Processes whose tables [`ProcTables`] keeps at most (past it, all go).
const MAX_TABLES: usize = 16_384;

/// Processes' fd tables (only their pipes and sockets) and children, read
/// from /proc for [`holders`] and kept for `TABLE_TTL` (500 ms). A burst of new
/// streams asks about the same processes again and again: a client that
/// spawned 1,000 stdio servers holds 2,000 pipe ends, and each server's
/// first message read all of them (and the client's 1,000 children's
/// fds for each of its own): O(n²) readlinks, a minute of one core
/// during which the agent's metrics went unanswered. A kept table can
/// miss a pipe opened since it was read: a search that finds no holder
/// reads its tables again before it gives up, and a holder found in a
/// kept table is checked with one readlink.
#[derive(Default)]
pub struct ProcTables {
    /// pid → when read, and its (end, fd) pairs.
    fds: HashMap<u32, (Instant, Vec<(OtherEndKey, u32)>)>,
    /// pid → when read, and its children (every thread's).
    children: HashMap<u32, (Instant, Vec<u32>)>,
}

/// A pipe or socket an fd refers to: (is a pipe, inode).
type OtherEndKey = (bool, u64);

impl ProcTables {
    /// `pid`'s pipes and sockets: kept, unless older than [`TABLE_TTL`] or
    /// `fresh`; `None` if the process is gone.
    fn fds(&mut self, pid: u32, fresh: bool) -> Option<&[(OtherEndKey, u32)]> {
        let stale = self
            .fds
            .get(&pid)
            .is_none_or(|(at, _)| fresh || at.elapsed() > TABLE_TTL);
        if stale {
            let table = read_fd_table(pid)?;
            self.bound();
            self.fds.insert(pid, (Instant::now(), table));
        }
        self.fds.get(&pid).map(|(_, t)| t.as_slice())
    }

    /// `pid`'s children, as [`ProcTables::fds`] keeps them.
    fn children(&mut self, pid: u32, fresh: bool) -> Vec<u32> {
        match self.children.get(&pid) {
            Some((at, c)) if !fresh && at.elapsed() <= TABLE_TTL => c.clone(),
            _ => {
                let c = children(pid);
                self.bound();
                self.children.insert(pid, (Instant::now(), c.clone()));
                c
            }
        }
    }

    fn bound(&mut self) {
        if self.fds.len() >= MAX_TABLES || self.children.len() >= MAX_TABLES {
            self.fds.clear();
            self.children.clear();
        }
    }
}

/// The pipes and sockets among `pid`'s fds, read from /proc.
fn read_fd_table(pid: u32) -> Option<Vec<(OtherEndKey, u32)>> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        let (Some(key), Some(fd)) = (
            end_key(&link.to_string_lossy()),
            entry.file_name().to_str().and_then(|f| f.parse().ok()),
        ) else {
            continue;
        };
        out.push((key, fd));
    }
    Some(out)
}

/// The pipe or socket of an fd's link text (`pipe:[12]`, `socket:[34]`).
fn end_key(link: &str) -> Option<OtherEndKey> {
    match bracketed(link, "pipe:[") {
        Some(ino) => Some((true, ino)),
        None => Some((false, bracketed(link, "socket:[")?)),
    }
}

/// Processes holding `end`, searching the likely peers first (the writer's
/// parent and children: stdio servers are spawned by their client) and the
/// whole of /proc only if they do not hold it; each in the tables kept in
/// `tables` first, then read anew (see [`ProcTables`]).
pub fn holders(end: OtherEnd, writer: u32, tables: &mut ProcTables) -> Vec<u32> {
    let (target, read_end) = match end {
        OtherEnd::PipeReader(ino) => ((true, ino), true),
        OtherEnd::Socket(ino) => ((false, ino), false),
    };
    let none = HashSet::new();
    let mut related_pids = Vec::new();
    for fresh in [false, true] {
        related_pids = related(writer, tables, fresh);
        let found = scan(
            target,
            read_end,
            &related_pids,
            writer,
            &none,
            tables,
            fresh,
        );
        if !found.is_empty() {
            return found;
        }
    }
    let all = all_pids();
    let related_pids: HashSet<u32> = related_pids.into_iter().collect();
    for fresh in [false, true] {
        let found = scan(target, read_end, &all, writer, &related_pids, tables, fresh);
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

/// The processes among `pids` (but `writer` and those in `skip`) that hold
/// `target` (its read end, where `read_end`).
fn scan(
    target: OtherEndKey,
    read_end: bool,
    pids: &[u32],
    writer: u32,
    skip: &HashSet<u32>,
    tables: &mut ProcTables,
    fresh: bool,
) -> Vec<u32> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for &pid in pids {
        if pid == writer || skip.contains(&pid) || !seen.insert(pid) {
            continue;
        }
        let Some(table) = tables.fds(pid, fresh) else {
            continue;
        };
        // Checked now: the table may be up to TABLE_TTL old.
        let holds = |&(key, fd): &(OtherEndKey, u32)| {
            let now = || fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok();
            key == target
                && now().and_then(|l| end_key(&l.to_string_lossy())) == Some(target)
                && (!read_end || access_mode(pid, &fd.to_string()) != Some(1))
        };
        if table.iter().any(holds) {
            out.push(pid);
        }
    }
    out
}

/// Parent and descendants (three generations) of `pid`: a wrapper that
/// forks (`npx`, `sh -c`) puts the real server below its child.
fn related(pid: u32, tables: &mut ProcTables, fresh: bool) -> Vec<u32> {
    let mut v = Vec::new();
    if let Some(ppid) = crate::identity::process::parent_pid(pid) {
        v.push(ppid);
    }
    let mut generation = vec![pid];
    for _ in 0..3 {
        let next: Vec<u32> = generation
            .iter()
            .flat_map(|p| tables.children(*p, fresh))
            .collect();
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
        let readers = holders(OtherEnd::PipeReader(ino), me, &mut ProcTables::default());
        let pid = child.id();
        let mut child = child;
        child.kill().ok();
        child.wait().ok();
        assert_eq!(readers, vec![pid]);
    }

    #[test]
    fn kept_tables_still_find_a_reader_spawned_after_they_were_read() {
        let me = std::process::id();
        let mut tables = ProcTables::default();
        let spawn_reader = || {
            let (r, w) = std::io::pipe().unwrap();
            let FdKind::Pipe(ino) = resolve(me, w.as_raw_fd() as u32) else {
                panic!("not a pipe")
            };
            let child = std::process::Command::new("sleep")
                .arg("30")
                .stdin(r)
                .spawn()
                .unwrap();
            (ino, child, w)
        };
        let (first, mut a, _wa) = spawn_reader();
        assert_eq!(
            holders(OtherEnd::PipeReader(first), me, &mut tables),
            vec![a.id()]
        );
        assert!(
            tables.fds.contains_key(&a.id()) && tables.children.contains_key(&me),
            "the tables read are kept"
        );
        // Within TABLE_TTL: this process's children and the first reader's
        // fds are kept, and neither names the second pipe's reader yet.
        let (second, mut b, _wb) = spawn_reader();
        let found = holders(OtherEnd::PipeReader(second), me, &mut tables);
        let again = holders(OtherEnd::PipeReader(first), me, &mut tables);
        for c in [&mut a, &mut b] {
            c.kill().ok();
            c.wait().ok();
        }
        assert_eq!(found, vec![b.id()]);
        assert_eq!(again, vec![a.id()]);
        // A reader that has gone is not named from a kept table.
        assert!(holders(OtherEnd::PipeReader(first), me, &mut tables).is_empty());
    }
}

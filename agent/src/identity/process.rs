//! The process at one end of a message: read from /proc once per process
//! (per exec) and cached. A process that exited before lookup keeps what
//! the kernel event carried (pid, comm, cgroup id), and its container when
//! another process of the same cgroup was seen.

use std::{
    fs,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::collections::FastMap;

use super::{
    container::{parse_proc_cgroup, ContainerInfo},
    secrets,
};

/// Most ancestors listed per process (nearest first).
pub const MAX_ANCESTORS: usize = 8;
/// Longest command line kept, in bytes (after redaction).
pub const MAX_CMDLINE: usize = 1024;

/// A process as seen in /proc (or, after it exited, in the kernel event).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ProcessInfo {
    /// Process id (the thread group id).
    pub pid: u32,
    /// Parent process id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// Command name (16 bytes at most, from the kernel).
    pub comm: String,
    /// Executable path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Arguments joined by spaces, secrets redacted, at most 1 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Real uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// User name of `uid`, from the process's own `/etc/passwd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Process start, RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// Stable id of this execution: unique across pid reuse and reboots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    /// `exec_id` of the parent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_exec_id: Option<String>,
    /// Parent, grandparent, … (nearest first, at most 8): which agent
    /// process launched an MCP server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Ancestor>,
    /// cgroup v2 id from the kernel event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Container and pod UID from the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Arc<ContainerInfo>>,
    /// NAMES of credential-looking environment variables (never values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_env: Vec<String>,
    /// Start time in clock ticks since boot (with pid, unique across reuse).
    #[serde(skip, default)]
    pub start_ticks: u64,
    /// These fields as JSON object members, rendered at the first event
    /// that carries them (every event from or to the process does).
    #[serde(skip)]
    pub rendered: Rendered,
}

/// A value's JSON rendering, made once. Not part of the value: it compares
/// equal always, and a clone (which may then be changed) starts without it.
#[derive(Default)]
pub struct Rendered(std::sync::OnceLock<Box<[u8]>>);

impl Rendered {
    /// The rendering, made by `render` the first time.
    pub fn get_or(&self, render: impl FnOnce() -> Vec<u8>) -> &[u8] {
        self.0.get_or_init(|| render().into_boxed_slice())
    }
}

impl Clone for Rendered {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Rendered {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Rendered {}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rendered")
    }
}

/// One ancestor of a process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ancestor {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Executable path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Its `exec_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
}

/// Facts about this boot, read once.
struct Host {
    boot_id: String,
    /// Boot time, seconds since the epoch (`btime` in /proc/stat).
    btime: u64,
    clk_tck: u64,
}

fn host() -> &'static Host {
    static H: OnceLock<Host> = OnceLock::new();
    H.get_or_init(|| {
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let btime = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Host {
            boot_id,
            btime,
            clk_tck: if tck > 0 { tck as u64 } else { 100 },
        }
    })
}

/// `exec_id`: 16 hex digits of SHA-256 over boot id, pid, start time and
/// executable. A new pid, a reboot, or an execve of another binary gives a
/// new id; the same execution always gives the same one.
pub fn exec_id(pid: u32, start_ticks: u64, exe: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(host().boot_id.as_bytes());
    h.update(format!(":{pid}:{start_ticks}:").as_bytes());
    h.update(exe.unwrap_or("").as_bytes());
    let d = h.finalize();
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// comm, ppid and start ticks from `/proc/<pid>/stat`.
fn read_stat(pid: u32) -> Option<(String, u32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: split at the last ')'.
    let close = stat.rfind(')')?;
    let comm = stat[stat.find('(')? + 1..close].to_owned();
    let mut rest = stat.get(close + 2..)?.split(' ');
    let ppid = rest.nth(1)?.parse().ok()?;
    let start_ticks = rest.nth(17)?.parse().ok()?;
    Some((comm, ppid, start_ticks))
}

/// The parent pid, from `/proc/<pid>/stat` alone (cheap).
pub fn parent_pid(pid: u32) -> Option<u32> {
    read_stat(pid).map(|(_, ppid, _)| ppid)
}

fn read_exe(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn read_cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let args = text.trim_end_matches('\0').split('\0');
    let mut line = secrets::redact_cmdline(args);
    if line.len() > MAX_CMDLINE {
        let mut end = MAX_CMDLINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    (!line.is_empty()).then_some(line)
}

fn read_uid(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The user name of `uid` in the process's own root (a container's
/// `/etc/passwd`, not the agent's).
fn user_name(pid: u32, uid: u32) -> Option<String> {
    let passwd = fs::read_to_string(format!("/proc/{pid}/root/etc/passwd")).ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

fn start_time(start_ticks: u64) -> Option<String> {
    let h = host();
    if h.btime == 0 {
        return None;
    }
    let ms = start_ticks * 1000 / h.clk_tck;
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(h.btime) + Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(t).to_string())
}

fn ancestors(mut ppid: u32) -> Vec<Ancestor> {
    let mut out = Vec::new();
    while ppid != 0 && out.len() < MAX_ANCESTORS {
        let Some((comm, next, ticks)) = read_stat(ppid) else {
            break;
        };
        let exe = read_exe(ppid);
        out.push(Ancestor {
            pid: ppid,
            exec_id: Some(exec_id(ppid, ticks, exe.as_deref())),
            comm,
            exe,
        });
        ppid = next;
    }
    out
}

impl ProcessInfo {
    /// Reads `/proc/<pid>`; `None` when the process is gone.
    pub fn read(pid: u32) -> Option<Self> {
        let (comm, ppid, start_ticks) = read_stat(pid)?;
        let exe = read_exe(pid);
        let uid = read_uid(pid);
        let ancestors = ancestors(ppid);
        let container = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|t| parse_proc_cgroup(&t))
            .map(Arc::new);
        Some(Self {
            pid,
            ppid: Some(ppid),
            comm,
            cmdline: read_cmdline(pid),
            user: uid.and_then(|u| user_name(pid, u)),
            uid,
            start_time: start_time(start_ticks),
            exec_id: Some(exec_id(pid, start_ticks, exe.as_deref())),
            parent_exec_id: ancestors.first().and_then(|a| a.exec_id.clone()),
            ancestors,
            exe,
            cgroup_id: None,
            container,
            credential_env: secrets::credential_env_names(pid),
            start_ticks,
            rendered: Rendered::default(),
        })
    }

    /// What the kernel event alone says about a process that is gone.
    pub fn from_kernel(pid: u32, comm: &str, cgroup_id: u64) -> Self {
        Self {
            pid,
            comm: comm.to_owned(),
            cgroup_id: (cgroup_id != 0).then_some(cgroup_id),
            ..Default::default()
        }
    }
}

/// Bounded cache of [`ProcessInfo`] keyed by pid (entries are invalidated
/// at exec and exit, so an entry is one execution), plus containers keyed
/// by cgroup v2 id for processes that exit before they are looked up.
pub struct ProcessCache {
    map: FastMap<u32, Arc<ProcessInfo>>,
    by_cgroup: FastMap<u64, Arc<ContainerInfo>>,
    cap: usize,
    /// Entries evicted because the cache was full.
    pub evictions: u64,
    /// Lookups of processes already gone (kernel data used instead).
    pub gone: u64,
}

impl ProcessCache {
    /// A cache of at most `cap` processes (and `cap` cgroups).
    pub fn new(cap: usize) -> Self {
        Self {
            map: FastMap::default(),
            by_cgroup: FastMap::default(),
            cap: cap.max(16),
            evictions: 0,
            gone: 0,
        }
    }

    /// Entries cached.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The process, from cache or `load` (/proc, or a replay's facts);
    /// falls back to the kernel's comm and cgroup id (0 = unknown).
    pub fn get(
        &mut self,
        pid: u32,
        kernel_comm: &str,
        cgroup_id: u64,
        load: impl FnOnce(u32) -> Option<ProcessInfo>,
    ) -> Arc<ProcessInfo> {
        if let Some(p) = self.map.get_mut(&pid) {
            if p.cgroup_id.is_none() && cgroup_id != 0 {
                // First seen as the peer (no kernel task at hand): now the
                // kernel names its cgroup. Once per process.
                let info = Arc::make_mut(p);
                info.cgroup_id = Some(cgroup_id);
                info.rendered = Rendered::default(); // what it rendered has changed
            }
            return p.clone();
        }
        let info = match load(pid) {
            Some(mut i) => {
                i.cgroup_id = (cgroup_id != 0).then_some(cgroup_id);
                if let (Some(c), true) = (&i.container, cgroup_id != 0) {
                    if c.from_v2 {
                        self.remember_cgroup(cgroup_id, c.clone());
                    }
                }
                i
            }
            None => {
                self.gone += 1;
                let mut i = ProcessInfo::from_kernel(pid, kernel_comm, cgroup_id);
                i.container = self.by_cgroup.get(&cgroup_id).cloned();
                i
            }
        };
        self.insert(info)
    }

    fn remember_cgroup(&mut self, cgroup_id: u64, c: Arc<ContainerInfo>) {
        if self.by_cgroup.len() >= self.cap && !self.by_cgroup.contains_key(&cgroup_id) {
            if let Some(k) = self.by_cgroup.keys().next().copied() {
                self.by_cgroup.remove(&k);
                self.evictions += 1;
            }
        }
        self.by_cgroup.insert(cgroup_id, c);
    }

    /// Inserts a known process (tests, replay, or a fresh read).
    pub fn insert(&mut self, info: ProcessInfo) -> Arc<ProcessInfo> {
        if self.map.len() >= self.cap {
            // Evict an arbitrary entry: a re-read is cheap, a bound is not optional.
            if let Some(k) = self.map.keys().next().copied() {
                self.map.remove(&k);
                self.evictions += 1;
            }
        }
        let info = Arc::new(info);
        self.map.insert(info.pid, info.clone());
        info
    }

    /// The cached entry, without touching /proc.
    pub fn peek(&self, pid: u32) -> Option<&Arc<ProcessInfo>> {
        self.map.get(&pid)
    }

    /// Forgets a process (exec changed it, or it exited).
    pub fn invalidate(&mut self, pid: u32) {
        self.map.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_itself_with_stable_exec_id() {
        let me = std::process::id();
        let a = ProcessInfo::read(me).unwrap();
        let b = ProcessInfo::read(me).unwrap();
        assert_eq!(a.exec_id, b.exec_id);
        assert_eq!(a.exec_id.as_ref().unwrap().len(), 16);
        assert!(a.start_time.as_deref().unwrap().ends_with('Z'));
        assert_eq!(a.ancestors.first().map(|p| p.pid), a.ppid);
        assert_eq!(a.parent_exec_id, a.ancestors[0].exec_id);
        assert_eq!(
            a.user.as_deref(),
            Some("root")
                .filter(|_| a.uid == Some(0))
                .or(a.user.as_deref())
        );
    }

    #[test]
    fn exec_id_differs_across_pid_reuse_and_exec() {
        let x = exec_id(100, 5000, Some("/usr/bin/python3"));
        assert_ne!(x, exec_id(100, 5001, Some("/usr/bin/python3")), "pid reuse");
        assert_ne!(x, exec_id(100, 5000, Some("/usr/bin/node")), "execve");
        assert_eq!(x, exec_id(100, 5000, Some("/usr/bin/python3")));
    }

    #[test]
    fn a_cgroup_learned_late_is_in_the_next_rendering() {
        let mut cache = ProcessCache::new(16);
        for held_elsewhere in [false, true] {
            let pid = 10 + held_elsewhere as u32;
            let load = |_| {
                Some(ProcessInfo {
                    pid,
                    ..Default::default()
                })
            };
            let first = cache.get(pid, "srv", 0, load);
            assert_eq!(first.rendered.get_or(|| b"old".to_vec()), b"old");
            // Changed in place when the cache holds the only reference,
            // copied when an event still holds the first.
            let kept = held_elsewhere.then_some(first);
            let now = cache.get(pid, "srv", 77, |_| None);
            assert_eq!(now.cgroup_id, Some(77));
            assert_eq!(now.rendered.get_or(|| b"new".to_vec()), b"new");
            drop(kept);
        }
    }

    #[test]
    fn gone_process_keeps_kernel_facts_and_cgroup_container() {
        let mut cache = ProcessCache::new(16);
        let c = Arc::new(ContainerInfo {
            id: Some("ab".repeat(32)),
            from_v2: true,
            ..Default::default()
        });
        cache.get(10, "srv", 77, |_| {
            Some(ProcessInfo {
                pid: 10,
                container: Some(c.clone()),
                ..Default::default()
            })
        });
        let gone = cache.get(11, "srv2", 77, |_| None);
        assert_eq!(gone.comm, "srv2");
        assert_eq!(gone.cgroup_id, Some(77));
        assert_eq!(gone.container.as_ref().unwrap().id, c.id);
        assert_eq!(cache.gone, 1);
    }
}

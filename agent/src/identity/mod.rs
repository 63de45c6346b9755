//! Stage 4 — identity: who is at each end of a message. Foundation level:
//! the process (pid, ppid, comm, exe, uid, start time), read from /proc once
//! per process and cached. Lookups never block on anything but procfs, and
//! a process that exited before lookup keeps what the kernel event carried.

use std::{collections::HashMap, fs, sync::Arc};

use serde::Serialize;

/// A process as seen in /proc (or, after it exited, in the kernel event).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// Command name (16 bytes at most, from the kernel).
    pub comm: String,
    /// Executable path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Real uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Start time in clock ticks since boot (with pid, unique across reuse).
    #[serde(skip, default)]
    pub start_ticks: u64,
}

impl ProcessInfo {
    /// Reads /proc/<pid>; `None` when the process is gone.
    pub fn read(pid: u32) -> Option<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // comm may contain spaces and parentheses: split at the last ')'.
        let close = stat.rfind(')')?;
        let comm = stat[stat.find('(')? + 1..close].to_owned();
        let mut rest = stat[close + 2..].split(' ');
        let ppid = rest.nth(1).and_then(|v| v.parse().ok());
        let start_ticks = rest.nth(17).and_then(|v| v.parse().ok()).unwrap_or(0);
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let uid = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            });
        Some(Self {
            pid,
            ppid,
            comm,
            exe,
            uid,
            start_ticks,
        })
    }
}

/// Bounded cache of [`ProcessInfo`] keyed by pid.
pub struct ProcessCache {
    map: HashMap<u32, Arc<ProcessInfo>>,
    cap: usize,
    /// Entries evicted because the cache was full.
    pub evictions: u64,
    /// Lookups of processes already gone (kernel data used instead).
    pub gone: u64,
}

impl ProcessCache {
    /// A cache of at most `cap` processes.
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
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
    /// falls back to the kernel's comm.
    pub fn get(
        &mut self,
        pid: u32,
        kernel_comm: &str,
        load: impl FnOnce(u32) -> Option<ProcessInfo>,
    ) -> Arc<ProcessInfo> {
        if let Some(p) = self.map.get(&pid) {
            return p.clone();
        }
        let info = match load(pid) {
            Some(i) => i,
            None => {
                self.gone += 1;
                ProcessInfo {
                    pid,
                    ppid: None,
                    comm: kernel_comm.to_owned(),
                    exe: None,
                    uid: None,
                    start_ticks: 0,
                }
            }
        };
        self.insert(info)
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

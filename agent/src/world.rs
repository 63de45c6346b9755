//! Everything the pipeline learns from outside the ring buffer — fd kinds,
//! socket peers, who holds a pipe's read end, process details — goes through
//! [`World`]. Live, it reads /proc (and, when recording, writes each answer
//! into the capture file as a fact); in replay, the recorded facts answer,
//! so a replay reproduces the live run's events exactly.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::{
    capture::record::Recorder,
    identity::{PodDirectory, PodInfo, ProcessInfo},
    stream::{
        fdinfo::{self, FdKind, OtherEnd},
        peer,
    },
};

/// Process facts, including what events do not show (start time).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessFact {
    /// The process as events show it.
    pub info: ProcessInfo,
    /// Start time in clock ticks.
    pub start_ticks: u64,
}

/// The pipeline's view of the host.
pub trait World: Send {
    /// What `fd` of `tgid` is, given what the kernel saw.
    fn fd_kind(&mut self, tgid: u32, fd: u32, file_kind: u32, ino: u64) -> FdKind;
    /// Peer inode of unix socket `ino`.
    fn unix_peer(&mut self, ino: u64) -> Option<u64>;
    /// Peer inode of TCP socket `ino` (in `tgid`'s namespace).
    fn tcp_peer(&mut self, tgid: u32, ino: u64) -> Option<u64>;
    /// A process holding `end`, other than `writer`.
    fn holder(&mut self, end: OtherEnd, writer: u32) -> Option<u32>;
    /// Details of process `pid`, if it still exists.
    fn process(&mut self, pid: u32) -> Option<ProcessInfo>;
    /// The Kubernetes pod with this UID on this node, if known.
    fn pod(&mut self, uid: &str) -> Option<PodInfo>;
}

/// The live host, optionally recording every answer.
#[derive(Default)]
pub struct LiveWorld {
    recorder: Option<Arc<Mutex<Recorder>>>,
    pods: Option<Arc<PodDirectory>>,
    /// Processes' pipes, sockets and children, kept briefly for `holder`.
    tables: fdinfo::ProcTables,
}

impl LiveWorld {
    /// A live world that writes its answers into `recorder`.
    pub fn recording(recorder: Arc<Mutex<Recorder>>) -> Self {
        Self {
            recorder: Some(recorder),
            ..Self::default()
        }
    }

    /// Answers pod questions from `pods` (the Kubernetes pod watch).
    pub fn with_pods(mut self, pods: Arc<PodDirectory>) -> Self {
        self.pods = Some(pods);
        self
    }

    fn fact<T: Serialize>(&self, key: String, value: &T) {
        if let Some(r) = &self.recorder {
            if let Ok(mut r) = r.lock() {
                r.fact(&key, value);
            }
        }
    }
}

impl World for LiveWorld {
    fn fd_kind(&mut self, tgid: u32, fd: u32, file_kind: u32, ino: u64) -> FdKind {
        let v = fdinfo::from_kernel(tgid, fd, file_kind, ino);
        self.fact(format!("fd:{tgid}:{fd}:{file_kind}:{ino}"), &v);
        v
    }

    fn unix_peer(&mut self, ino: u64) -> Option<u64> {
        let v = peer::unix_peer(ino);
        self.fact(format!("unix:{ino}"), &v);
        v
    }

    fn tcp_peer(&mut self, tgid: u32, ino: u64) -> Option<u64> {
        let v = peer::tcp_peer(tgid, ino);
        self.fact(format!("tcp:{tgid}:{ino}"), &v);
        v
    }

    fn holder(&mut self, end: OtherEnd, writer: u32) -> Option<u32> {
        // Several holders (a wrapper that forked instead of exec'ing, such
        // as `npx` or `sh -c`, keeps the pipe open too): nobody is named
        // now, and the message waits for the reading end's own copy, which
        // names the process that really read it.
        let v = match fdinfo::holders(end, writer, &mut self.tables).as_slice() {
            [one] => Some(*one),
            _ => None,
        };
        self.fact(format!("holder:{end:?}:{writer}"), &v);
        v
    }

    fn process(&mut self, pid: u32) -> Option<ProcessInfo> {
        let v = ProcessInfo::read(pid);
        let fact = v.clone().map(|info| ProcessFact {
            start_ticks: info.start_ticks,
            info,
        });
        self.fact(format!("proc:{pid}"), &fact);
        v
    }

    fn pod(&mut self, uid: &str) -> Option<PodInfo> {
        let v = self.pods.as_ref()?.get(uid).map(|p| (*p).clone());
        self.fact(format!("pod:{uid}"), &v);
        v
    }
}

/// Recorded answers, in the order they were given for each question.
#[derive(Default)]
pub struct ReplayWorld {
    facts: HashMap<String, VecDeque<serde_json::Value>>,
    /// Questions with no recorded answer (counted; answered "unknown").
    pub missing: u64,
}

impl ReplayWorld {
    /// Adds a recorded fact.
    pub fn add(&mut self, key: String, value: serde_json::Value) {
        self.facts.entry(key).or_default().push_back(value);
    }

    fn take<T: for<'de> Deserialize<'de>>(&mut self, key: &str) -> Option<T> {
        let q = self.facts.get_mut(key);
        let v = match q {
            // The last answer stays for repeated questions.
            Some(q) if q.len() > 1 => q.pop_front(),
            Some(q) => q.front().cloned(),
            None => None,
        };
        match v {
            Some(v) => serde_json::from_value(v).ok(),
            None => {
                self.missing += 1;
                None
            }
        }
    }
}

impl World for ReplayWorld {
    fn fd_kind(&mut self, tgid: u32, fd: u32, file_kind: u32, ino: u64) -> FdKind {
        // Without a recorded answer, what the kernel record itself says.
        self.take(&format!("fd:{tgid}:{fd}:{file_kind}:{ino}"))
            .unwrap_or(match file_kind {
                mcpscope_common::FILE_PIPE => FdKind::Pipe(ino),
                mcpscope_common::FILE_SOCKET => FdKind::OtherSocket(ino),
                mcpscope_common::FILE_OTHER => FdKind::NotIpc,
                _ => FdKind::Unknown,
            })
    }
    fn unix_peer(&mut self, ino: u64) -> Option<u64> {
        self.take::<Option<u64>>(&format!("unix:{ino}")).flatten()
    }
    fn tcp_peer(&mut self, tgid: u32, ino: u64) -> Option<u64> {
        self.take::<Option<u64>>(&format!("tcp:{tgid}:{ino}"))
            .flatten()
    }
    fn holder(&mut self, end: OtherEnd, writer: u32) -> Option<u32> {
        self.take::<Option<u32>>(&format!("holder:{end:?}:{writer}"))
            .flatten()
    }
    fn process(&mut self, pid: u32) -> Option<ProcessInfo> {
        self.take::<Option<ProcessFact>>(&format!("proc:{pid}"))
            .flatten()
            .map(|f| ProcessInfo {
                start_ticks: f.start_ticks,
                ..f.info
            })
    }
    fn pod(&mut self, uid: &str) -> Option<PodInfo> {
        self.take::<Option<PodInfo>>(&format!("pod:{uid}"))
            .flatten()
    }
}

//! Per-segment index sidecar, written when a segment is closed: what a
//! query needs to skip a segment (time range, sessions, tools, pids) and
//! the session summaries `mcpscope sessions` answers from. Derived data, not
//! part of the chain: `verify` checks the segments themselves.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Summary of one session within one segment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionSummary {
    /// First message time (RFC 3339).
    pub start: String,
    /// Last message time.
    pub end: String,
    /// Messages.
    pub messages: u64,
    /// tools/call requests.
    pub calls: u64,
    /// Errors (JSON-RPC errors and tool errors).
    pub errors: u64,
    /// Flags raised.
    pub flags: u64,
    /// clientInfo name.
    #[serde(default)]
    pub client: Option<String>,
    /// serverInfo name.
    #[serde(default)]
    pub server: Option<String>,
    /// Process ids involved.
    pub pids: BTreeSet<u32>,
    /// Executables involved.
    pub exes: BTreeSet<String>,
    /// Kubernetes namespaces of the ends (`from.k8s.namespace`, `to.k8s.namespace`).
    #[serde(default)]
    pub namespaces: BTreeSet<String>,
    /// Kubernetes pods of the ends (`from.k8s.pod`, `to.k8s.pod`).
    #[serde(default)]
    pub pods: BTreeSet<String>,
}

impl SessionSummary {
    /// Folds another segment's summary of the same session in.
    pub fn merge(&mut self, o: &SessionSummary) {
        if self.start.is_empty() || (!o.start.is_empty() && o.start < self.start) {
            self.start = o.start.clone();
        }
        if o.end > self.end {
            self.end = o.end.clone();
        }
        self.messages += o.messages;
        self.calls += o.calls;
        self.errors += o.errors;
        self.flags += o.flags;
        if o.client.is_some() {
            self.client = o.client.clone();
        }
        if o.server.is_some() {
            self.server = o.server.clone();
        }
        self.pids.extend(&o.pids);
        self.exes.extend(o.exes.iter().cloned());
        self.namespaces.extend(o.namespaces.iter().cloned());
        self.pods.extend(o.pods.iter().cloned());
    }
}

/// Index of one segment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SegmentIndex {
    /// Segment number.
    pub segment: u64,
    /// First and last record sequence numbers.
    pub first_seq: u64,
    /// Last record sequence number.
    pub last_seq: u64,
    /// Hash of the last record (retention links through it).
    pub last_hash: String,
    /// Records.
    pub records: u64,
    /// Earliest and latest record times (RFC 3339).
    pub min_ts: String,
    /// Latest record time.
    pub max_ts: String,
    /// Sessions with messages in this segment.
    pub sessions: BTreeMap<String, SessionSummary>,
    /// Tool names called.
    pub tools: BTreeSet<String>,
    /// Records by kind.
    pub kinds: BTreeMap<String, u64>,
    /// Lines that are not records it could read, when the index was built
    /// by scanning the segment (see `query::for_each_matching`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unreadable: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SegmentIndex {
    /// Adds one record's facts.
    pub fn note(&mut self, seq: u64, ts: &str, kind: &str) {
        if self.records == 0 {
            self.first_seq = seq;
            self.min_ts = ts.to_owned();
        }
        self.last_seq = seq;
        if ts > self.max_ts.as_str() {
            self.max_ts = ts.to_owned();
        }
        if ts < self.min_ts.as_str() {
            self.min_ts = ts.to_owned();
        }
        self.records += 1;
        *self.kinds.entry(kind.to_owned()).or_default() += 1;
    }

    /// Adds a message event's facts.
    pub fn note_message(&mut self, ev: &serde_json::Value) {
        let Some(session) = ev["session"].as_str() else {
            return;
        };
        let ts = ev["ts"].as_str().unwrap_or_default();
        let s = self.sessions.entry(session.to_owned()).or_default();
        if s.start.is_empty() || ts < s.start.as_str() {
            s.start = ts.to_owned();
        }
        if ts > s.end.as_str() {
            s.end = ts.to_owned();
        }
        s.messages += 1;
        if ev["kind"] == "request" && ev["method"] == "tools/call" {
            s.calls += 1;
        }
        if ev["is_error"] == true && ev["kind"] != "request" {
            s.errors += 1;
        }
        if let Some(c) = ev["client"]["name"].as_str() {
            s.client = Some(c.to_owned());
        }
        if let Some(c) = ev["server"]["name"].as_str() {
            s.server = Some(c.to_owned());
        }
        for end in ["from", "to"] {
            if let Some(p) = ev[end]["pid"].as_u64() {
                s.pids.insert(p as u32);
            }
            if let Some(e) = ev[end]["exe"].as_str() {
                s.exes.insert(e.to_owned());
            }
            if let Some(n) = ev[end]["k8s"]["namespace"].as_str() {
                s.namespaces.insert(n.to_owned());
            }
            if let Some(p) = ev[end]["k8s"]["pod"].as_str() {
                s.pods.insert(p.to_owned());
            }
        }
        if let Some(t) = ev["tool"].as_str() {
            self.tools.insert(t.to_owned());
        }
    }

    /// Adds a flag's facts.
    pub fn note_flag(&mut self, flag: &serde_json::Value) {
        if let Some(session) = flag["session"].as_str() {
            self.sessions.entry(session.to_owned()).or_default().flags += 1;
        }
    }
}

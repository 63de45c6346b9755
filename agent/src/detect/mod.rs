//! Stage 5 — detect: loops, duplicate calls and anomalies, decided in real
//! time and deterministically (kernel timestamps only), each with the
//! evidence that proves it.

pub mod config;
pub mod facts;
mod literals;
pub mod policy;
mod state;

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::Arc,
};

use serde::Serialize;
use serde_json::{json, Value};

pub use config::DetectConfig;
use facts::{MessageFacts, ToolDef};
use policy::Policy;
use state::{Id, Lru, Map, Name, Names};

use crate::{
    identity::ProcessInfo,
    protocol::{Kind, PeerInfo, RpcId},
    sink::{Endpoint, McpEvent},
};

/// How bad a flag is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Likely a problem.
    Medium,
    /// Act on it.
    High,
}

impl Severity {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// A message that proves a flag.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evidence {
    /// Event sequence number.
    pub seq: u64,
    /// JSON-RPC id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<RpcId>,
    /// Kernel timestamp, ns (the pipeline renders it).
    #[serde(skip)]
    pub ts_ns: u64,
}

/// A raised flag.
#[derive(Debug, Clone)]
pub struct Flag {
    /// Flag name.
    pub flag: &'static str,
    /// Severity.
    pub severity: Severity,
    /// One human sentence.
    pub message: String,
    /// Caller identity.
    pub caller: String,
    /// Server identity.
    pub server: String,
    /// Tool, when one is involved.
    pub tool: Option<String>,
    /// The messages that prove it.
    pub evidence: Vec<Evidence>,
    /// Flag-specific facts.
    pub details: Value,
}

/// Counters of the detectors.
#[derive(Debug, Default, Clone, Copy)]
pub struct DetectStats {
    /// State entries evicted by `limits.max_keys`.
    pub evicted: u64,
    /// Flags raised.
    pub flags: u64,
}

/// A tools/call's key: caller, server, tool, canonical arguments hash.
type CallKey = (Id, Id, Id, u64);

/// Calls (or failures) kept per duplicate or retry-storm episode, at least:
/// every flag fires by `min + 3`, so older entries past this many are only
/// memory (a client repeating one call 100,000 times a minute would
/// otherwise keep 100,000 of them).
const EPISODE_KEEP: usize = 32;

#[derive(Default)]
struct DupState {
    /// The episode's most recent calls within the window, oldest first.
    calls: VecDeque<Evidence>,
    last_error: Option<bool>,
    fired: Option<Severity>,
}

/// What is known about one call (caller, server, tool, arguments).
#[derive(Default)]
struct CallState {
    dup: DupState,
    storm: StormState,
}

/// What is known about one caller and one server.
#[derive(Default)]
struct PairState {
    rate: RateState,
    errors: ErrState,
    /// The caller has used the server (first_seen's `new_server`).
    used: bool,
}

#[derive(Default)]
struct StormState {
    failures: VecDeque<Evidence>,
    fired: bool,
}

#[derive(Default)]
struct LoopState {
    /// (tool, arguments hash, result hash) and the response, newest last:
    /// the window is the last `max_period × min_repeats` (see
    /// [`LoopState::last`]). A vector trimmed to the window when twice
    /// as long (one move per response, amortised), so that the window is
    /// one slice: a deque's indexing (a wrap check per access) was most of
    /// the cycle search's cost.
    sigs: Vec<((Id, u64, u64), Evidence)>,
    /// The names of the tools in `sigs` (a few), for a flag's cycle: kept
    /// once per tool, not cloned per response.
    tools: Vec<Name>,
    /// Flagged, with the period of a cycle the window repeats `k` times
    /// (until none does).
    fired: Option<usize>,
}

impl LoopState {
    /// Adds a response's signature; the window of the last `w`, newest
    /// last.
    fn push(
        &mut self,
        sig: (Id, u64, u64),
        me: Evidence,
        w: usize,
    ) -> &[((Id, u64, u64), Evidence)] {
        let w = w.max(1);
        if self.sigs.len() >= 2 * w {
            self.sigs.drain(..self.sigs.len() - (w - 1));
        }
        self.sigs.push((sig, me));
        Self::last(&self.sigs, w)
    }

    /// The window: the last `w` (at least one) of `sigs`.
    fn last(sigs: &[((Id, u64, u64), Evidence)], w: usize) -> &[((Id, u64, u64), Evidence)] {
        &sigs[sigs.len().saturating_sub(w.max(1))..]
    }
}

#[derive(Default)]
struct RateState {
    bucket: u64,
    count: u32,
    evidence: Vec<Evidence>,
    mean: f64,
    var: f64,
    buckets_seen: u32,
    /// A spike is one episode: fired, and not yet back to normal.
    in_spike: bool,
    /// A bucket's count above this is a spike: the baseline's mean plus
    /// its deviations (at least one), kept as the baseline changes (once
    /// a bucket), not worked out per request.
    threshold: f64,
}

/// Slots per error-burst window: outcomes are counted per slot, so the
/// state is ERROR_SLOTS + 1 counters whatever the call rate (a deque of
/// every outcome held 2.4 million entries at 40,000 calls a second), and
/// the window's edge is exact to 1/ERROR_SLOTS of it.
const ERROR_SLOTS: u64 = 30;

/// Calls and failures in one slot of the error-burst window.
struct OutcomeSlot {
    slot: u64,
    calls: usize,
    errors: usize,
}

#[derive(Default)]
struct ErrState {
    /// Per-slot counts of the calls in the window, oldest first.
    outcomes: VecDeque<OutcomeSlot>,
    /// Calls and failures over `outcomes` (kept, not summed per message).
    calls: usize,
    errors: usize,
    /// Evidence of the most recent failures in the window (bounded).
    failures: VecDeque<(u64, Evidence)>,
    fired: bool,
}

/// Failures kept as an error burst's evidence.
const MAX_ERROR_EVIDENCE: usize = 64;

#[derive(Default)]
struct SizeState {
    mean: f64,
    samples: u32,
}

/// What the pipeline's pairing kept of the request a response answers.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    /// The request's event sequence number.
    pub seq: u64,
    /// The request's kernel timestamp, ns.
    pub ts_ns: u64,
    /// The canonical hash of its arguments (tools/call).
    pub args_hash: Option<u64>,
}

/// The detectors' state of one session, kept by the pipeline with the
/// session itself: a message finds it without a lookup, and it goes when
/// the session does.
#[derive(Default)]
pub struct SessionState {
    /// The session's caller and server names, as last made.
    ends: Option<Ends>,
    /// The tool last named in the session.
    tool: Option<Name>,
    loops: LoopState,
    /// Where the session's last keys are in the detectors' maps.
    slots: Slots,
}

/// Slot numbers of a session's last keys in the detectors' maps (see
/// [`Lru::get_kept`]): a session's caller and server, and mostly its tool,
/// stay the same from message to message.
#[derive(Default)]
struct Slots {
    /// In `pairs`: (caller, server).
    pair: Option<u32>,
    /// In `seen`: (caller, server, tool).
    seen: Option<u32>,
    /// In `sizes`: (server, tool).
    size: Option<u32>,
    /// In `calls`: the last tools/call's key (its response finds it here).
    call: Option<u32>,
}

/// A session's caller and server names and what they were made of: the
/// same processes (the same `Arc`s, held so that the pointers cannot be
/// reused) and the same MCP client and server names make the same names.
struct Ends {
    client: Option<Arc<ProcessInfo>>,
    server: Option<Arc<ProcessInfo>>,
    client_info: Option<Box<str>>,
    server_info: Option<Box<str>>,
    names: (Name, Name),
}

impl Ends {
    fn made_of(
        &self,
        client: &Option<Endpoint>,
        server: &Option<Endpoint>,
        client_info: &Option<PeerInfo>,
        server_info: &Option<PeerInfo>,
    ) -> bool {
        fn same(kept: &Option<Arc<ProcessInfo>>, end: &Option<Endpoint>) -> bool {
            match (kept, end) {
                (Some(k), Some(e)) => Arc::ptr_eq(k, &e.process),
                (None, None) => true,
                _ => false,
            }
        }
        fn name(p: &Option<PeerInfo>) -> Option<&str> {
            p.as_ref().map(|p| p.name.as_str())
        }
        same(&self.client, client)
            && same(&self.server, server)
            && self.client_info.as_deref() == name(client_info)
            && self.server_info.as_deref() == name(server_info)
    }
}

/// A tools/call that got its response: its key, names and request.
struct Call<'a> {
    key: CallKey,
    names: (&'a Name, &'a Name, &'a Name),
    asked: Evidence,
}

/// All detectors.
pub struct Detectors {
    cfg: DetectConfig,
    policy: Option<Policy>,
    state_dir: Option<PathBuf>,
    names: Names,
    calls: Lru<CallKey, CallState>,
    /// By (caller, server).
    pairs: Lru<(Id, Id), PairState>,
    /// By (server, tool).
    sizes: Lru<(Id, Id), SizeState>,
    /// (caller, server, tool) already used (servers: `PairState::used`).
    seen: Lru<(Id, Id, Id), ()>,
    /// (server, tool) of calls to unlisted tools already flagged.
    unlisted_fired: Lru<(Id, Id), ()>,
    /// When each caller was first seen: its learning period starts there
    /// (so other MCP traffic on the host does not end it early).
    first_ts: Lru<Id, u64>,
    baselines: HashMap<String, Vec<ToolDef>>,
    /// `baselines` by ids: server → tool → write-class.
    listed: Map<Id, Map<Id, bool>>,
    /// The facts the enabled detectors use.
    needs: facts::Needs,
    /// Counters.
    pub stats: DetectStats,
}

const S: u64 = 1_000_000_000;

/// Runs `make` out of line, on a path the compiler lays out as unlikely:
/// a flag's text and details are built once per episode, and inlined they
/// made the per-message code several times its size (the detectors'
/// functions were 50 KB, most of it formatting).
#[cold]
#[inline(never)]
fn cold<T>(make: impl FnOnce() -> T) -> T {
    make()
}

impl Detectors {
    /// Detectors with `cfg`, an optional policy, and a directory where
    /// tool-definition baselines persist across restarts.
    pub fn new(cfg: DetectConfig, policy: Option<Policy>, state_dir: Option<PathBuf>) -> Self {
        let cap = cfg.limits.max_keys;
        let baselines = state_dir
            .as_ref()
            .and_then(|d| std::fs::read(d.join("tool_baselines.json")).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut d = Self {
            names: Names::new(4 * cap),
            calls: Lru::new(cap),
            pairs: Lru::new(cap),
            sizes: Lru::new(cap),
            seen: Lru::new(cap),
            unlisted_fired: Lru::new(cap),
            first_ts: Lru::new(cap),
            baselines: HashMap::new(),
            listed: Map::default(),
            needs: facts::Needs::of(&cfg, policy.is_some()),
            stats: DetectStats::default(),
            cfg,
            policy,
            state_dir,
        };
        d.set_baselines(baselines);
        d
    }

    fn set_baselines(&mut self, b: HashMap<String, Vec<ToolDef>>) {
        self.listed.clear();
        for (server, tools) in &b {
            self.list(server, tools);
        }
        self.baselines = b;
    }

    /// Indexes `server`'s tools by id (see `listed`).
    fn list(&mut self, server: &str, tools: &[ToolDef]) {
        let by_id = tools
            .iter()
            .map(|t| (self.names.id_of(&t.name), t.write))
            .collect();
        self.listed.insert(self.names.id_of(server), by_id);
    }

    /// A message's caller, server and tool names: those the session last
    /// made (kept in `ends` and `tool`, its [`SessionState`]'s), unless
    /// what they are made of changed. Borrowed: a message costs no
    /// reference count.
    fn names_of<'s>(
        &mut self,
        ends: &'s mut Option<Ends>,
        tool: &'s mut Option<Name>,
        ev: &McpEvent,
    ) -> (&'s Name, &'s Name, &'s Name) {
        let (client, server) = match ev.kind {
            Kind::Request | Kind::Notification => (&ev.from, &ev.to),
            _ => (&ev.to, &ev.from),
        };
        if !ends
            .as_ref()
            .is_some_and(|e| e.made_of(client, server, &ev.client, &ev.server))
        {
            let info = |p: &Option<PeerInfo>| p.as_ref().map(|p| p.name.as_str().into());
            *ends = Some(Ends {
                client: client.as_ref().map(|e| e.process.clone()),
                server: server.as_ref().map(|e| e.process.clone()),
                client_info: info(&ev.client),
                server_info: info(&ev.server),
                names: (
                    self.endpoint_name(client, &ev.client),
                    self.endpoint_name(server, &ev.server),
                ),
            });
        }
        let named = ev.tool.as_deref().unwrap_or("");
        if tool.as_ref().is_none_or(|t| *t.text != *named) {
            *tool = Some(self.names.tool(named));
        }
        let (ends, tool): (&'s Option<Ends>, &'s Option<Name>) = (ends, tool);
        let ends = ends.as_ref().expect("made above");
        (
            &ends.names.0,
            &ends.names.1,
            tool.as_ref().expect("made above"),
        )
    }

    /// The name of an endpoint, with its MCP client or server info.
    fn endpoint_name(&mut self, end: &Option<Endpoint>, info: &Option<PeerInfo>) -> Name {
        let exe = end
            .as_ref()
            .map_or("?", |e| e.process.exe.as_deref().unwrap_or(&e.process.comm));
        self.names
            .endpoint(info.as_ref().map(|i| i.name.as_str()), exe)
    }

    /// The facts of a message the enabled detectors use (the pipeline
    /// computes only those).
    pub fn needs(&self) -> facts::Needs {
        self.needs
    }

    /// Tool-definition baselines (server → tools), as persisted.
    pub fn baselines(&self) -> &HashMap<String, Vec<ToolDef>> {
        &self.baselines
    }

    /// Replaces the baselines (replay starts from the live run's).
    pub fn with_baselines(mut self, b: HashMap<String, Vec<ToolDef>>) -> Self {
        self.set_baselines(b);
        self
    }

    /// Looks at one reported message of a session whose detector state is
    /// `s`; a response comes with what the pairing kept of its request.
    /// Appends the flags it raises to `out` (the caller's buffer, reused:
    /// most messages raise none).
    pub fn observe(
        &mut self,
        s: &mut SessionState,
        ev: &McpEvent,
        ts_ns: u64,
        facts: &MessageFacts,
        asked: Option<&Asked>,
        out: &mut Vec<Flag>,
    ) {
        let before = out.len();

        let me = Evidence {
            seq: ev.seq,
            id: ev.id.clone(),
            ts_ns,
        };
        let answered_call = asked
            .filter(|_| matches!(ev.kind, Kind::Response | Kind::Error))
            .filter(|_| ev.method.as_deref() == Some("tools/call"));
        let listed = facts
            .tools()
            .filter(|_| matches!(ev.kind, Kind::Response | Kind::Error));
        let flagged = (self.cfg.secret_in_payload.enabled && !facts.secrets().is_empty())
            || (self.cfg.injection_marker.enabled
                && !facts.markers().is_empty()
                && ev.kind != Kind::Request);
        if ev.kind != Kind::Request && answered_call.is_none() && listed.is_none() && !flagged {
            return; // nothing here for a detector (a notification, a plain response)
        }
        let SessionState {
            ends,
            tool,
            loops,
            slots,
        } = s;
        let (caller, server, tool) = self.names_of(ends, tool, ev);
        if ev.kind == Kind::Request {
            self.on_request((caller, server, tool), ev, &me, slots, out);
            if ev.method.as_deref() == Some("tools/call") {
                let key = (caller.id, server.id, tool.id, facts.args_hash.unwrap_or(0));
                let names = (caller, server, tool);
                self.call_checks(key, names, me.clone(), ev, &mut slots.call, out);
            }
            if self.cfg.header_mismatch.enabled {
                header_mismatch(ev, caller, server, &me, out);
            }
        }
        if let Some(asked) = answered_call {
            let call = Call {
                key: (caller.id, server.id, tool.id, asked.args_hash.unwrap_or(0)),
                names: (caller, server, tool),
                asked: Evidence {
                    seq: asked.seq,
                    id: ev.id.clone(),
                    ts_ns: asked.ts_ns,
                },
            };
            self.on_result(call, ev, (loops, slots), me.clone(), facts, out);
        }
        if let Some(tools) = listed {
            self.drift(server, tools, me.clone(), out);
        }
        if flagged {
            self.payload_flags(ev, (caller, server, tool), &me, facts, out);
        }
        self.stats.flags += (out.len() - before) as u64;
    }

    /// secret_in_payload and injection_marker, for a message whose facts
    /// hold what they look for (rare: out of the per-message path).
    #[cold]
    #[inline(never)]
    fn payload_flags(
        &mut self,
        ev: &McpEvent,
        (caller, server, tool): (&Name, &Name, &Name),
        me: &Evidence,
        facts: &MessageFacts,
        out: &mut Vec<Flag>,
    ) {
        if self.cfg.secret_in_payload.enabled && !facts.secrets().is_empty() {
            let kinds: Vec<&str> = facts.secrets().iter().map(|s| s.kind).collect();
            let place = if ev.kind == Kind::Request {
                "arguments"
            } else {
                "result"
            };
            out.push(cold(|| Flag {
                flag: "secret_in_payload",
                severity: Severity::High,
                message: format!(
                    "credential-shaped data ({}) in the {place} of {} {}",
                    kinds.join(", "),
                    ev.method.as_deref().unwrap_or("a message"),
                    tool
                )
                .trim()
                .to_owned(),
                caller: caller.to_string(),
                server: server.to_string(),
                tool: ev.tool.as_deref().map(String::from),
                evidence: vec![me.clone()],
                details: json!({ "found": facts.secrets(), "in": place }),
            }));
        }
        if self.cfg.injection_marker.enabled
            && !facts.markers().is_empty()
            && ev.kind != Kind::Request
        {
            let what = if facts.tools().is_some() {
                "tool descriptions"
            } else {
                "a tool result"
            };
            out.push(cold(|| Flag {
                flag: "injection_marker",
                severity: Severity::High,
                message: format!(
                    "prompt-injection marker(s) {} in {what} from {server}",
                    facts
                        .markers()
                        .iter()
                        .map(|m| format!("{:?}", m.marker))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                caller: caller.to_string(),
                server: server.to_string(),
                tool: ev.tool.as_deref().map(String::from),
                evidence: vec![me.clone()],
                details: json!({ "found": facts.markers(), "heuristic": true }),
            }));
        }
    }

    /// A tools/call request's checks.
    fn call_checks(
        &mut self,
        key: CallKey,
        (caller, server, tool): (&Name, &Name, &Name),
        me: Evidence,
        ev: &McpEvent,
        call_slot: &mut Option<u32>,
        out: &mut Vec<Flag>,
    ) {
        let ts = me.ts_ns;
        let listed = self.listed.get(&server.id);
        let listed_write = listed.and_then(|t| t.get(&tool.id)).copied();
        let unlisted = listed.is_some() && listed_write.is_none();
        if let Some(p) = &self.policy {
            if self.cfg.policy_violation.enabled {
                let write = listed_write.unwrap_or_else(|| facts::write_by_name(tool));
                if let Some(why) = p.check(ev, &server_name(ev), tool, write) {
                    out.push(cold(|| Flag {
                        flag: "policy_violation",
                        severity: Severity::High,
                        message: format!(
                            "{caller} called {tool} on {server}: {why} (audit only, not blocked)"
                        ),
                        caller: caller.to_string(),
                        server: server.to_string(),
                        tool: Some(tool.to_string()),
                        evidence: vec![me.clone()],
                        details: json!({ "reason": why, "write_class": write }),
                    }));
                }
            }
        }
        if unlisted
            && self.cfg.first_seen.enabled
            && self
                .unlisted_fired
                .insert_new((server.id, tool.id), (), &mut self.stats.evicted)
        {
            out.push(cold(|| Flag {
                flag: "first_seen",
                severity: Severity::Medium,
                message: format!(
                    "{caller} called {tool}, which {server} did not list in its last tools/list"
                ),
                caller: caller.to_string(),
                server: server.to_string(),
                tool: Some(tool.to_string()),
                evidence: vec![me.clone()],
                details: json!({ "reason": "tool_not_listed" }),
            }));
        }
        if !self.cfg.duplicate_call.enabled {
            return;
        }
        let window = self.cfg.duplicate_call.window_s * S;
        let min = self.cfg.duplicate_call.min_count as usize;
        let (call, _) =
            self.calls
                .get_kept(call_slot, key, CallState::default, &mut self.stats.evicted);
        let d = &mut call.dup;
        while d.calls.front().is_some_and(|e| e.ts_ns + window < ts) {
            d.calls.pop_front();
        }
        if d.calls.is_empty() {
            d.fired = None; // a new episode
        }
        d.calls.push_back(me);
        if d.calls.len() > EPISODE_KEEP.max(min + 3) {
            d.calls.pop_front();
        }
        let n = d.calls.len();
        if n < min {
            return;
        }
        let sev = if n >= min + 3 {
            Severity::High
        } else if n > min {
            Severity::Medium
        } else {
            Severity::Low
        };
        if d.fired.is_some_and(|f| f >= sev) {
            return;
        }
        d.fired = Some(sev);
        let reason = match d.last_error {
            Some(true) => "retry after an error",
            Some(false) => "repeat after a success",
            None => "repeat before the first answered",
        };
        out.push(cold(|| Flag {
            flag: "duplicate_call",
            severity: sev,
            message: format!("{caller} called {tool} on {server} {n} times with identical arguments within {} s ({reason})", window / S),
            caller: caller.to_string(),
            server: server.to_string(),
            tool: Some(tool.to_string()),
            evidence: d.calls.iter().cloned().collect(),
            details: json!({ "count": n, "reason": reason.replace(' ', "_") }),
        }));
    }

    /// A tools/call's response: the checks of its outcome.
    fn on_result(
        &mut self,
        p: Call<'_>,
        ev: &McpEvent,
        (l, slots): (&mut LoopState, &mut Slots),
        me: Evidence,
        facts: &MessageFacts,
        out: &mut Vec<Flag>,
    ) {
        let (caller, server, tool) = p.names;
        let args = p.key.3;
        let ts = me.ts_ns;
        let failed = ev.is_error;
        // One lookup of the call's state: made if retry_storm keeps it.
        let storm = self.cfg.retry_storm.enabled;
        // Its request's slot, kept in the session: no second probe.
        let mut call = if storm {
            let made = CallState::default;
            Some(
                self.calls
                    .get_kept(&mut slots.call, p.key, made, &mut self.stats.evicted)
                    .0,
            )
        } else {
            self.calls.get_mut_kept(&mut slots.call, &p.key)
        };
        if let Some(c) = &mut call {
            c.dup.last_error = Some(failed);
        }
        // retry_storm: the same failing call, again and again.
        if let Some(c) = call.filter(|_| storm) {
            let window = self.cfg.retry_storm.window_s * S;
            let min = self.cfg.retry_storm.min_failures as usize;
            let st = &mut c.storm;
            if failed {
                while st.failures.front().is_some_and(|e| e.ts_ns + window < ts) {
                    st.failures.pop_front();
                }
                st.failures.push_back(me.clone());
                if st.failures.len() > EPISODE_KEEP.max(min) {
                    st.failures.pop_front();
                }
                if st.failures.len() >= min && !st.fired {
                    st.fired = true;
                    out.push(cold(|| Flag {
                        flag: "retry_storm",
                        severity: Severity::High,
                        message: format!(
                            "{caller} retried the failing call {tool} on {server} {} times",
                            st.failures.len()
                        ),
                        caller: caller.to_string(),
                        server: server.to_string(),
                        tool: Some(tool.to_string()),
                        evidence: st.failures.iter().cloned().collect(),
                        details: json!({ "failures": st.failures.len() }),
                    }));
                }
            } else {
                *st = StormState::default();
            }
        }
        // loop: a repeating cycle of identical calls with identical results.
        if self.cfg.loop_.enabled {
            let (maxp, k) = (self.cfg.loop_.max_period, self.cfg.loop_.min_repeats);
            let sig = (tool.id, args, facts.result_hash.unwrap_or(0));
            let fired = l.fired;
            let window = l.push(sig, me.clone(), maxp * k);
            let n = window.len();
            // A flagged cycle that goes on (the newest signature equals the
            // one a period back) still repeats `k` times, turned by one:
            // no search. Only whether some cycle repeats matters then.
            let found = match fired {
                Some(per) if n > per && window[n - 1].0 == window[n - 1 - per].0 => Some(per),
                _ => repeating_period(window, maxp, k),
            };
            if !l.tools.iter().any(|t| t.id == tool.id) {
                if l.tools.len() >= maxp * k {
                    // Only tools still in the window keep their name.
                    let window = LoopState::last(&l.sigs, maxp * k);
                    l.tools
                        .retain(|t| window.iter().any(|((id, ..), _)| *id == t.id));
                }
                l.tools.push(tool.clone());
            }
            match found {
                Some(per) if fired.is_none() => {
                    l.fired = Some(per);
                    let name_of = |id: Id| {
                        l.tools
                            .iter()
                            .find(|t| t.id == id)
                            .map_or_else(String::new, |t| t.to_string())
                    };
                    let window = LoopState::last(&l.sigs, maxp * k);
                    let n = window.len();
                    let cycle: Vec<String> = (0..per)
                        .rev()
                        .map(|i| name_of(window[n - 1 - i].0 .0))
                        .collect();
                    out.push(cold(|| Flag {
                        flag: "loop",
                        severity: if per == 1 { Severity::Medium } else { Severity::High },
                        message: format!("{caller} repeats the cycle [{}] on {server} {k} times with the same arguments and results (no progress)", cycle.join(" → ")),
                        caller: caller.to_string(),
                        server: server.to_string(),
                        tool: Some(tool.to_string()),
                        evidence: window[n - per * k..].iter().map(|(_, e)| e.clone()).collect(),
                        details: json!({ "period": per, "repeats": k, "cycle": cycle }),
                    }));
                }
                Some(per) => l.fired = Some(per),
                None => l.fired = None,
            }
        }
        // error_burst: too many errors between one caller and one server.
        if self.cfg.error_burst.enabled {
            let c = &self.cfg.error_burst;
            let (window, min, ratio) = (c.window_s * S, c.min_calls as usize, c.ratio);
            // Amortised O(1) per message: counts kept as calls enter and leave.
            let e = &mut self
                .pairs
                .get_kept(
                    &mut slots.pair,
                    (caller.id, server.id),
                    PairState::default,
                    &mut self.stats.evicted,
                )
                .0
                .errors;
            let slot_ns = (window / ERROR_SLOTS).max(1);
            let slot = time_slot(ts, e.outcomes.back().map(|o| o.slot), slot_ns);
            let error = usize::from(failed);
            match e.outcomes.back_mut().filter(|o| o.slot == slot) {
                Some(o) => {
                    o.calls += 1;
                    o.errors += error;
                }
                None => e.outcomes.push_back(OutcomeSlot {
                    slot,
                    calls: 1,
                    errors: error,
                }),
            }
            e.calls += 1;
            e.errors += error;
            if failed {
                if e.failures.len() == MAX_ERROR_EVIDENCE {
                    e.failures.pop_front();
                }
                e.failures.push_back((ts, me.clone()));
            }
            // A slot leaves once its newest possible call is out of the window.
            while let Some(o) = e
                .outcomes
                .front()
                .filter(|o| (o.slot + 1) * slot_ns + window <= ts)
            {
                e.calls -= o.calls;
                e.errors -= o.errors;
                e.outcomes.pop_front();
            }
            while e.failures.front().is_some_and(|(t, _)| t + window < ts) {
                e.failures.pop_front();
            }
            let errs = e.errors;
            let r = errs as f64 / e.calls as f64;
            if e.calls >= min && r >= ratio && !e.fired {
                e.fired = true;
                out.push(cold(|| Flag {
                    flag: "error_burst",
                    severity: Severity::Medium,
                    message: format!(
                        "{errs} of the last {} calls from {caller} to {server} failed ({:.0}%)",
                        e.calls,
                        r * 100.0
                    ),
                    caller: caller.to_string(),
                    server: server.to_string(),
                    tool: None,
                    evidence: e.failures.iter().map(|(_, ev)| ev.clone()).collect(),
                    details: json!({ "errors": errs, "calls": e.calls, "ratio": r }),
                }));
            } else if r < ratio / 2.0 {
                e.fired = false;
            }
        }
        // large_response: far above the tool's own size, or an absolute limit.
        if self.cfg.large_response.enabled && !failed {
            let c = &self.cfg.large_response;
            let (s, _) = self.sizes.get_kept(
                &mut slots.size,
                (server.id, tool.id),
                SizeState::default,
                &mut self.stats.evicted,
            );
            let b = ev.bytes as f64;
            let why = if ev.bytes > c.absolute_bytes {
                Some(format!("above the {} byte limit", c.absolute_bytes))
            } else if s.samples >= c.min_samples && b > c.factor * s.mean {
                Some(format!(
                    "{:.0}× the tool's mean of {:.0} bytes",
                    b / s.mean.max(1.0),
                    s.mean
                ))
            } else {
                None
            };
            if let Some(why) = why {
                out.push(cold(|| Flag {
                    flag: "large_response",
                    severity: Severity::Medium,
                    message: format!("{tool} on {server} returned {} bytes to {caller}, {why} (possible exfiltration)", ev.bytes),
                    caller: caller.to_string(),
                    server: server.to_string(),
                    tool: Some(tool.to_string()),
                    evidence: vec![p.asked, me.clone()],
                    details: json!({ "bytes": ev.bytes, "baseline_mean": s.mean, "samples": s.samples }),
                }));
            } else {
                s.samples += 1;
                s.mean += (b - s.mean) / s.samples as f64;
            }
        }
    }

    /// Any request: rate_spike and first_seen, on one lookup of the
    /// (caller, server) state.
    fn on_request(
        &mut self,
        (caller, server, tool): (&Name, &Name, &Name),
        ev: &McpEvent,
        me: &Evidence,
        slots: &mut Slots,
        out: &mut Vec<Flag>,
    ) {
        let (rate_on, seen_on) = (self.cfg.rate_spike.enabled, self.cfg.first_seen.enabled);
        if !rate_on && !seen_on {
            return;
        }
        let (pair, _) = self.pairs.get_kept(
            &mut slots.pair,
            (caller.id, server.id),
            PairState::default,
            &mut self.stats.evicted,
        );
        if rate_on {
            rate(
                &self.cfg.rate_spike,
                &mut pair.rate,
                caller,
                server,
                me,
                out,
            );
        }
        if !seen_on {
            return;
        }
        let new_server = !std::mem::replace(&mut pair.used, true);
        let new_tool = ev.method.as_deref() == Some("tools/call")
            && self
                .seen
                .get_kept(
                    &mut slots.seen,
                    (caller.id, server.id, tool.id),
                    || (),
                    &mut self.stats.evicted,
                )
                .1;
        if !new_server && !new_tool {
            return;
        }
        // A caller's first request is a new server for it: its learning
        // period starts there, so only something new needs the lookup.
        let ts = me.ts_ns;
        let since = *self
            .first_ts
            .get_or(caller.id, || ts, &mut self.stats.evicted);
        let learned = ts.saturating_sub(since) as f64 / 1e9 >= self.cfg.first_seen.learning_s;
        if !learned {
            return;
        }
        let mut fire = |what: String, reason: &str| {
            out.push(cold(|| Flag {
                flag: "first_seen",
                severity: Severity::Low,
                message: format!(
                    "{caller} used {what} for the first time after the learning period"
                ),
                caller: caller.to_string(),
                server: server.to_string(),
                tool: (!tool.is_empty()).then(|| tool.to_string()),
                evidence: vec![me.clone()],
                details: json!({ "reason": reason }),
            }))
        };
        if new_server {
            fire(format!("server {server}"), "new_server");
        }
        if new_tool {
            fire(format!("tool {tool} on {server}"), "new_tool");
        }
    }

    #[cold]
    #[inline(never)]
    fn drift(&mut self, server: &str, tools: &[ToolDef], me: Evidence, out: &mut Vec<Flag>) {
        let Some(old) = self.baselines.get(server) else {
            self.list(server, tools);
            self.baselines.insert(server.to_owned(), tools.to_vec());
            self.save_baselines();
            return;
        };
        if old == tools || !self.cfg.tool_definition_drift.enabled {
            return;
        }
        let added: Vec<&str> = tools
            .iter()
            .filter(|t| !old.iter().any(|o| o.name == t.name))
            .map(|t| t.name.as_str())
            .collect();
        let removed: Vec<&str> = old
            .iter()
            .filter(|o| !tools.iter().any(|t| t.name == o.name))
            .map(|o| o.name.as_str())
            .collect();
        let changed: Vec<Value> = tools
            .iter()
            .filter_map(|t| {
                let o = old.iter().find(|o| o.name == t.name)?;
                (o != t).then(|| json!({ "tool": t.name, "description_changed": o.description != t.description, "schema_changed": o.schema != t.schema, "became_write_class": !o.write && t.write }))
            })
            .collect();
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!("added {}", added.join(", ")));
        }
        if !removed.is_empty() {
            parts.push(format!("removed {}", removed.join(", ")));
        }
        if !changed.is_empty() {
            parts.push(format!(
                "changed {}",
                changed
                    .iter()
                    .map(|c| c["tool"].as_str().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push(cold(|| Flag {
            flag: "tool_definition_drift",
            severity: if changed.is_empty() {
                Severity::Medium
            } else {
                Severity::High
            },
            message: format!(
                "{server}'s tools changed since it was last seen: {}",
                parts.join("; ")
            ),
            caller: String::new(),
            server: server.to_owned(),
            tool: None,
            evidence: vec![me],
            details: json!({ "added": added, "removed": removed, "changed": changed }),
        }));
        self.list(server, tools);
        self.baselines.insert(server.to_owned(), tools.to_vec());
        self.save_baselines();
    }

    fn save_baselines(&self) {
        let Some(dir) = &self.state_dir else { return };
        let _ = std::fs::create_dir_all(dir);
        let tmp = dir.join("tool_baselines.json.tmp");
        if serde_json::to_vec(&self.baselines)
            .ok()
            .and_then(|b| std::fs::write(&tmp, b).ok())
            .is_some()
        {
            let _ = std::fs::rename(tmp, dir.join("tool_baselines.json"));
        }
    }
}

/// The slot (`slot_ns` long) that a call at `ts` counts in, given the
/// newest slot so far: that one unless `ts` is past its end (a range
/// check: the division only when a slot starts), and never an earlier
/// one: a timestamp before it (another CPU's clock, read a little earlier)
/// is a late arrival in it. rate_spike's buckets and error_burst's slots.
fn time_slot(ts: u64, newest: Option<u64>, slot_ns: u64) -> u64 {
    match newest {
        Some(n) if ts < (n + 1).saturating_mul(slot_ns) => n,
        _ => (ts / slot_ns).max(newest.unwrap_or(0)),
    }
}

/// rate_spike: one more request from a caller to a server, whose rate
/// state is `r`.
fn rate(
    c: &config::RateSpike,
    r: &mut RateState,
    caller: &Name,
    server: &Name,
    me: &Evidence,
    out: &mut Vec<Flag>,
) {
    let ts = me.ts_ns;
    let bucket_ns = ((c.bucket_s * 1e9) as u64).max(1);
    let started = r.buckets_seen > 0 || r.count > 0;
    let b = time_slot(ts, started.then_some(r.bucket), bucket_ns);
    let threshold = |r: &RateState| r.mean + c.deviations * r.var.sqrt().max(1.0);
    if !started {
        r.bucket = b; // a new pair: its first bucket
        r.threshold = threshold(r);
    }
    if b != r.bucket {
        // Close the finished bucket (and the empty ones after it) into the baseline.
        let fold = |x: f64, r: &mut RateState| {
            if r.buckets_seen == 0 {
                r.mean = x;
            } else {
                let d = x - r.mean;
                r.mean += c.alpha * d;
                r.var = (1.0 - c.alpha) * (r.var + c.alpha * d * d);
            }
            r.buckets_seen += 1;
        };
        let count = r.count as f64;
        // Back to normal re-arms the detector (checked against the
        // baseline before this bucket joins it).
        if count <= r.threshold || r.count < c.min_calls {
            r.in_spike = false;
        }
        fold(count, r);
        for _ in 0..(b - r.bucket - 1).min(u64::from(c.warmup_buckets) + 16) {
            fold(0.0, r);
        }
        r.threshold = threshold(r);
        r.bucket = b;
        r.count = 0;
        r.evidence.clear();
    }
    r.count += 1;
    if r.evidence.len() < 32 {
        r.evidence.push(me.clone());
    }
    if r.buckets_seen >= c.warmup_buckets
        && r.count >= c.min_calls
        && f64::from(r.count) > r.threshold
        && !r.in_spike
    {
        r.in_spike = true;
        out.push(cold(|| Flag {
            flag: "rate_spike",
            severity: Severity::Medium,
            message: format!("{caller} sent {} requests to {server} in {} s, against a baseline of {:.1}", r.count, c.bucket_s, r.mean),
            caller: caller.to_string(),
            server: server.to_string(),
            tool: None,
            evidence: r.evidence.clone(),
            details: json!({ "count": r.count, "baseline_mean": r.mean, "baseline_stddev": r.var.sqrt(), "bucket_s": c.bucket_s }),
        }));
    }
}

/// The period (≤ `maxp`) of a cycle of signatures that ends with the
/// newest of `sigs` and repeats `k` times, if there is one.
fn repeating_period<S: PartialEq, T>(sigs: &[(S, T)], maxp: usize, k: usize) -> Option<usize> {
    let n = sigs.len();
    let newest = &sigs.last()?.0;
    let at = |back: usize| &sigs[n - 1 - back].0;
    // A cycle of any period repeats the newest signature within the last
    // `maxp` before it: one pass over those rules out every period at
    // once (the common case: calls vary).
    if !(1..=maxp.min(n - 1)).any(|back| at(back) == newest) {
        return None;
    }
    // Period `per`, repeated `k` times: the last per·k signatures each
    // equal the one `per` later (most periods fail at once).
    (1..=maxp).find(|&per| {
        per * k <= n
            && (per..per * k).all(|i| at(i) == at(i - per))
            // A period-p cycle is not really a shorter one.
            && (1..per).all(|q| per % q != 0 || (0..per).any(|i| at(i) != at(i % q)))
    })
}

fn server_name(ev: &McpEvent) -> String {
    ev.server
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;

/// `header_mismatch`: a request's 2026-07-28 `Mcp-Method`/`Mcp-Name` headers
/// name another method or target than its body. A gateway or WAF that
/// routes and authorizes on headers then acts on something else than the
/// server executes; the spec makes servers reject it (-32020), so a
/// mismatch seen on the wire is a broken or a deliberately confusing client.
fn header_mismatch(
    ev: &McpEvent,
    caller: &Name,
    server: &Name,
    me: &Evidence,
    out: &mut Vec<Flag>,
) {
    let Some(h) = ev.http.as_ref().filter(|_| ev.kind == Kind::Request) else {
        return;
    };
    let h = &h.head;
    let body_method = ev.method.as_deref();
    let body_name = match body_method {
        Some("tools/call") => ev.tool.as_deref(),
        Some("prompts/get") => ev.prompt.as_deref(),
        Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => {
            ev.resource.as_deref()
        }
        _ => None,
    };
    let method_differs = h
        .mcp_method
        .as_deref()
        .is_some_and(|m| Some(m) != body_method);
    let name_differs = match (h.mcp_name.as_deref(), body_name) {
        (Some(hn), Some(bn)) => hn != bn,
        _ => false,
    };
    if !method_differs && !name_differs {
        return;
    }
    let mut what = Vec::new();
    if method_differs {
        what.push(format!(
            "Mcp-Method {:?} but the body calls {:?}",
            h.mcp_method.as_deref().unwrap_or(""),
            body_method.unwrap_or("")
        ));
    }
    if name_differs {
        what.push(format!(
            "Mcp-Name {:?} but the body names {:?}",
            h.mcp_name.as_deref().unwrap_or(""),
            body_name.unwrap_or("")
        ));
    }
    out.push(cold(|| Flag {
        flag: "header_mismatch",
        severity: Severity::High,
        message: format!(
            "{caller} sent {server} a request whose {}",
            what.join(", and ")
        ),
        caller: caller.to_string(),
        server: server.to_string(),
        tool: ev.tool.as_deref().map(String::from),
        evidence: vec![me.clone()],
        details: json!({
            "header_method": h.mcp_method, "body_method": body_method,
            "header_name": h.mcp_name, "body_name": body_name,
        }),
    }));
}

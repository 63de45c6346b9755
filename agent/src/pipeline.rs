//! The userspace pipeline, stage after stage:
//! capture records → [`Assembler`] (whole syscalls) → per-stream
//! [`LineFramer`] → JSON-RPC/MCP parse → pipe-end join ([`Channels`]) →
//! identity, session and pairing → [`McpEvent`] → sinks.
//!
//! Single-threaded and driven only by the records and kernel timestamps it
//! is given, so a replay of recorded records produces the same events as the
//! live run.

use crate::collections::{process_hash, stable_hash, FastMap, Lru};

use std::sync::Arc;

mod http;
mod tls;
pub use http::HttpTotals;
use http::{Conn, Framing};

type HttpCtx = crate::sink::HttpInfo;

use crate::detect::{facts::MessageFacts, Detectors, Flag};
use crate::metrics::Metrics;
use crate::world::{LiveWorld, World};
use crate::{
    capture::{DataChunk, ProcEvent, ProcKind, RawEvent, Task},
    identity::{PodCache, PodInfo, ProcessCache},
    protocol::{
        mcp, pairing::Pairer, parse_batch, salvage, Kind, Message, ParseError, PeerInfo, RpcId,
    },
    sink::{Endpoint, McpEvent, Sink},
    stream::{
        assemble::{Assembler, Whole},
        channel::{Channels, Confirm, Emit, Offer},
        fdinfo::{FdKind, OtherEnd},
        framer::{Frame, LineFramer},
        http::{starts_http, HttpFramer},
        StreamControl, StreamKey,
    },
};

/// Tunables of the pipeline. Kept in a capture (`run --record`) for its
/// replay: a field it lacks (one added since it was recorded) takes its
/// default.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PipelineConfig {
    /// Longest message kept whole; longer ones are cut and salvaged.
    pub max_message_bytes: usize,
    /// How long a pipe reader's copy waits for its writer's copy.
    pub pair_window_ms: u64,
    /// Pending requests per session before the oldest is evicted.
    pub max_pending_per_session: usize,
    /// Sessions held at once; past it the least recently active eighth
    /// ends early (`session_end` with `reason: "evicted"`, counted).
    pub max_sessions: usize,
    /// Put the raw message into events.
    pub capture_payloads: bool,
    /// Cap of `payload`, bytes.
    pub payload_max_bytes: usize,
    /// Unparseable lines on a stream (with no valid one) before it is ignored.
    pub not_mcp_strikes: u32,
    /// Processes kept in the identity cache.
    pub process_cache: usize,
    /// Resolve fds through /proc (off for synthetic replays in tests).
    pub resolve_fds: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 8 << 20,
            pair_window_ms: 50,
            max_pending_per_session: 4096,
            max_sessions: 16384,
            capture_payloads: false,
            payload_max_bytes: 64 << 10,
            not_mcp_strikes: 3,
            process_cache: 16384,
            resolve_fds: true,
        }
    }
}

/// Counters of everything the pipeline dropped, cut or could not parse.
#[derive(Debug, Default, Clone)]
pub struct PipelineStats {
    /// Ring-buffer records received.
    pub records: u64,
    /// Records that could not be decoded.
    pub decode_errors: u64,
    /// Messages emitted.
    pub messages: u64,
    /// Lines that were not JSON.
    pub parse_invalid_json: u64,
    /// JSON lines that were not JSON-RPC.
    pub parse_not_jsonrpc: u64,
    /// Empty batch arrays.
    pub parse_empty_batch: u64,
    /// Messages with lost bytes (emitted, salvaged).
    pub truncated_messages: u64,
    /// Truncated lines with nothing salvageable.
    pub truncated_dropped: u64,
    /// Bytes the kernel could not deliver (cap, faults, lost records).
    pub gap_bytes: u64,
    /// Streams switched off: not a pipe or socket.
    pub streams_ignored_not_ipc: u64,
    /// Streams switched off: repeated non-JSON-RPC data.
    pub streams_ignored_not_mcp: u64,
    /// Streams ended because their fd showed up on another file before its
    /// close record came (the record was lost or never made).
    pub streams_close_missed: u64,
    /// Data for streams already switched off (in flight when switched).
    pub ignored_bytes: u64,
    /// Sink write errors: events and records a sink refused or failed to
    /// take, events it lost from its buffer (its reader gone), failed
    /// flushes and closes.
    pub sink_errors: u64,
    /// fsyncs of a sink (the audit trail) that failed.
    pub sink_sync_failures: u64,
    /// Sessions ended early by `max_sessions` (their state went).
    pub sessions_evicted: u64,
    /// Bytes of MCP messages by direction: [egress captures, ingress captures].
    pub message_bytes: u64,
}

struct Stream {
    kind: FdKind,
    /// Inode of the file behind the fd (0 when the kernel could not tell).
    ino: u64,
    join: Join,
    /// The last task seen on it: what flushes without a kernel record at
    /// hand (stale partial syscalls, agent shutdown) attribute to.
    task: Task,
    framer: Framing,
    good: u64,
    bad: u32,
    ignored: bool,
}

/// How a stream's messages are joined with the other end's copies.
#[derive(Debug, Clone, Copy, Default)]
struct Join {
    /// Join key shared by both ends' copies of one direction: the pipe
    /// inode, or the writing socket's inode (tagged by family).
    channel: Option<u64>,
    /// Where the other end's process is found.
    other_end: Option<OtherEnd>,
}

impl Join {
    fn of(
        kind: FdKind,
        tgid: u32,
        egress: bool,
        flow: mcpscope_common::Flow,
        world: &mut dyn World,
    ) -> Self {
        const UNIX: u64 = 1 << 62;
        const TCP: u64 = 2 << 62;
        if let (FdKind::Tcp(_), true) = (kind, flow.lport != 0) {
            // The kernel read the connection: both ends name the direction
            // of flow the same way, so no /proc lookup can race a short
            // connection's close. The peer process is not looked up: its
            // own copy names it (a remote peer has none). A lookup reads
            // /proc/net/tcp, which walks the kernel's whole established
            // hash — milliseconds on a large host, per connection.
            let (from, to) = if egress {
                (flow.lport, flow.rport)
            } else {
                (flow.rport, flow.lport)
            };
            return Join {
                channel: Some((stable_hash(&(from, to, flow.addr_xor)) >> 2) | TCP),
                other_end: None,
            };
        }
        let socket = |ino: u64, peer: Option<u64>, tag: u64| Join {
            channel: if egress {
                Some(ino | tag)
            } else {
                peer.map(|p| p | tag)
            },
            other_end: peer.map(OtherEnd::Socket),
        };
        match kind {
            FdKind::Pipe(ino) => Join {
                channel: Some(ino),
                other_end: Some(OtherEnd::PipeReader(ino)),
            },
            FdKind::Unix(ino) => socket(ino, world.unix_peer(ino), UNIX),
            FdKind::Tcp(ino) => socket(ino, world.tcp_peer(tgid, ino), TCP),
            _ => Join::default(),
        }
    }
}

/// A parsed message on its way to emission.
struct Captured {
    msg: Message,
    ts_ns: u64,
    bytes: u64,
    truncated: bool,
    key: StreamKey,
    kind: FdKind,
    join: Join,
    task: Task,
    batch_index: Option<u32>,
    payload: Option<String>,
    facts: Option<MessageFacts>,
    /// The HTTP message that carried it (HTTP and SSE transports).
    http: Option<Box<HttpCtx>>,
}

#[derive(Default)]
struct Session {
    /// Its name (shared by its events).
    name: Arc<str>,
    pids: [u32; 2],
    start_ns: u64,
    /// Kernel time of its latest message (the eviction order).
    last_ns: u64,
    net: &'static str,
    client_pid: Option<u32>,
    messages: u64,
    errors: u64,
    protocol_version: Option<Box<str>>,
    client: Option<PeerInfo>,
    server: Option<PeerInfo>,
    /// The detectors' state of the session.
    detect: crate::detect::SessionState,
}

/// Everything after framing (split from the stream table for borrowing).
struct Core {
    cfg: PipelineConfig,
    channels: Channels<Captured>,
    pairer: Pairer,
    sessions: FastMap<u64, Session>,
    procs: ProcessCache,
    pods: PodCache,
    sinks: Vec<Box<dyn Sink + Send>>,
    seq: u64,
    clock_offset_ns: i128,
    ts_format: Rfc3339Micros,
    stats: PipelineStats,
    metrics: Option<Arc<Metrics>>,
    detectors: Option<Detectors>,
    /// The flags a message raised, emitted after it (a buffer reused).
    flags: Vec<Flag>,
    world: Box<dyn World>,
    /// Requests (by event `seq`) awaiting their response, and when the
    /// receiving end read them, once seen: the responder-side duration
    /// starts there. Only requests: other messages' read times are used
    /// at once or through `awaiting_client`, never later.
    received: Lru<u64, Option<u64>>,
    /// Responses whose reader copy is awaited for the requester-side duration.
    awaiting_client: Lru<u64, (u64, OpLabels)>,
    /// Entries of `received` and `awaiting_client` evicted (counted as lost).
    duration_evicted: u64,
    /// Responses seen before their request (see [`Early`]), by session and
    /// id, and their keys oldest first (a key no longer held is skipped).
    early: FastMap<(u64, RpcId), Early>,
    early_order: std::collections::VecDeque<(u64, RpcId, u64)>,
    early_places: u64,
    /// HTTP connections by (pid, fd): requests awaiting their responses.
    conns: FastMap<(u32, u32), Conn>,
    /// HTTP framing counters of ended streams (live ones are summed at export).
    http_totals: http::HttpTotals,
}

/// Owned labels of the operation duration histograms.
struct OpLabels([String; 10]);

impl OpLabels {
    fn of(ev: &McpEvent) -> Self {
        let k8s = caller_pod(ev);
        let s = |v: Option<&str>| v.unwrap_or("").to_owned();
        let name = |p: &Option<PeerInfo>| s(p.as_ref().map(|p| p.name.as_str()));
        OpLabels([
            s(ev.method.as_deref()),
            s(ev.tool.as_deref()),
            s(ev.error_type.as_deref()),
            ev.net.to_owned(),
            s(ev.protocol_version.as_deref()),
            s(k8s.map(|p| p.namespace.as_str())),
            s(k8s.and_then(|p| p.workload.as_deref())),
            s(k8s.and_then(|p| p.service_account.as_deref())),
            name(&ev.client),
            name(&ev.server),
        ])
    }

    fn as_refs(&self) -> [&str; 10] {
        std::array::from_fn(|i| self.0[i].as_str())
    }
}

/// The pod of the MCP client end (the caller), which the `k8s_*` metric
/// labels describe: the sender of requests and notifications, the
/// receiver of responses; the other end when the caller has none.
fn caller_pod(ev: &McpEvent) -> Option<&PodInfo> {
    let (caller, other) = match ev.kind {
        Kind::Request | Kind::Notification => (&ev.from, &ev.to),
        Kind::Response | Kind::Error => (&ev.to, &ev.from),
    };
    caller
        .as_ref()
        .and_then(|e| e.k8s.as_deref())
        .or_else(|| other.as_ref().and_then(|e| e.k8s.as_deref()))
}

/// A response that came before its request, held until the request is
/// reported (then it pairs) or for [`EARLY_HOLD_NS`]. A writer's record is
/// made when its syscall returns, and the reader it woke may answer first:
/// on a busy CPU the reader preempts the writer inside `write(2)`, so the
/// response's record enters the ring buffer ahead of the request's (about
/// one round trip in 8,000 at 20,000 a second on two CPUs).
struct Early {
    held: (Captured, Option<u32>, Option<u64>),
    /// Its place in `early_order` (a key held again gets a new one).
    place: u64,
}

/// How long a response waits for its request (kernel time), at least:
/// twice the two-ends join's window (`pair_window_ms`) when that is longer,
/// since the request may wait that long in the join for its writer's copy.
const EARLY_HOLD_NS: u64 = 100_000_000;

/// Responses held at most: past it the oldest is reported unpaired.
const EARLY_MAX: usize = 1024;

/// The pipeline.
pub struct Pipeline<C: StreamControl> {
    control: C,
    assembler: Assembler,
    streams: FastMap<StreamKey, Stream>,
    core: Core,
    tls: tls::TlsHold,
}

impl<C: StreamControl> Pipeline<C> {
    /// A pipeline writing to `sinks`. `clock_offset_ns` converts kernel
    /// CLOCK_MONOTONIC to wall time ([`monotonic_to_realtime_offset`]).
    pub fn new(
        cfg: PipelineConfig,
        control: C,
        sinks: Vec<Box<dyn Sink + Send>>,
        clock_offset_ns: i128,
    ) -> Self {
        let core = Core {
            channels: Channels::new(cfg.pair_window_ms * 1_000_000, 4096),
            pairer: Pairer::new(cfg.max_pending_per_session),
            sessions: FastMap::default(),
            procs: ProcessCache::new(cfg.process_cache),
            pods: PodCache::new(cfg.process_cache),
            sinks,
            seq: 0,
            clock_offset_ns,
            ts_format: Rfc3339Micros::default(),
            stats: PipelineStats::default(),
            metrics: None,
            detectors: None,
            flags: Vec::new(),
            world: Box::new(LiveWorld::default()),
            received: Lru::new(65536),
            awaiting_client: Lru::new(65536),
            duration_evicted: 0,
            early: FastMap::default(),
            early_order: std::collections::VecDeque::new(),
            early_places: 0,
            conns: FastMap::default(),
            http_totals: http::HttpTotals::default(),
            cfg,
        };
        Self {
            control,
            assembler: Assembler::default(),
            streams: FastMap::default(),
            core,
            tls: tls::TlsHold::default(),
        }
    }

    /// Sends a record of `kind` (e.g. `loss`, `agent_start`) to the sinks,
    /// timestamped now.
    pub fn record(&mut self, kind: &str, data: &serde_json::Value) {
        let now = monotonic_now_ns();
        self.core.record(kind, now, data);
    }

    /// Runs `detectors` on every reported message; their flags go to the
    /// sinks and metrics.
    pub fn with_detectors(mut self, detectors: Detectors) -> Self {
        self.core.detectors = Some(detectors);
        self
    }

    /// Detector counters, when detectors run.
    pub fn detect_stats(&self) -> Option<crate::detect::DetectStats> {
        self.core.detectors.as_ref().map(|d| d.stats)
    }

    /// Learns about the host through `world` (a recording live world, or a
    /// replay's facts) instead of plain /proc.
    pub fn with_world(mut self, world: Box<dyn World>) -> Self {
        self.core.world = world;
        self
    }

    /// Reports messages, durations and sessions to `metrics` from now on.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.core.metrics = Some(metrics);
        self
    }

    /// Copies every counter and gauge of the pipeline into `m`.
    pub fn export_metrics(&self, m: &Metrics) {
        let s = &self.core.stats;
        let pair = self.core.pairer.stats;
        let ch = self.core.channels.stats;
        for (stage, reason, v) in [
            ("decode", "undecodable_record", s.decode_errors),
            ("framing", "truncated_unsalvageable", s.truncated_dropped),
            ("pairing", "pending_evicted", pair.evicted),
            ("pairing", "response_unmatched", pair.unmatched),
            ("pairing", "request_unanswered", pair.unanswered),
            ("join", "reader_copy_missing", ch.unconfirmed),
            ("stream", "close_record_missing", s.streams_close_missed),
            ("identity", "cache_evicted", self.core.procs.evictions),
            ("identity", "pod_cache_evicted", self.core.pods.evictions),
            ("sink", "write_error", s.sink_errors),
            ("session", "evicted", s.sessions_evicted),
            (
                "metrics",
                "duration_state_evicted",
                self.core.duration_evicted,
            ),
        ] {
            m.set_lost(stage, reason, v);
        }
        if let Some(d) = &self.core.detectors {
            m.set_lost("detect", "state_evicted", d.stats.evicted);
        }
        m.set_bytes_lost("userspace", "gap", s.gap_bytes);
        m.set_bytes_lost("userspace", "stream_ignored_in_flight", s.ignored_bytes);
        m.set_parse_errors("jsonrpc", "invalid_json", s.parse_invalid_json);
        m.set_parse_errors("jsonrpc", "not_jsonrpc", s.parse_not_jsonrpc);
        m.set_parse_errors("jsonrpc", "empty_batch", s.parse_empty_batch);
        let http = self.http_stats();
        let (h, e) = (http.http, http.sse);
        m.set_parse_errors("http", "bad_head", h.bad_heads);
        m.set_parse_errors("http", "bad_chunk_size", h.bad_chunks);
        m.set_parse_errors("http", "undecodable_body", h.decode_errors);
        m.set_lost("framing", "http_resync", h.resyncs);
        m.set_lost("framing", "http_body_oversized", h.oversized_bodies);
        m.set_lost("framing", "sse_event_oversized", e.truncated);
        m.set_lost("framing", "sse_event_cut", h.cut_sse_events);
        m.set_lost("pairing", "http_request_evicted", http.requests_evicted);
        m.set_bytes_lost("userspace", "http_resync", h.resync_bytes);
        let t = self.tls.stats;
        m.set_lost("tls", "write_held_evicted", t.evicted);
        m.set_lost("tls", "write_socket_unknown", t.unbound);
        m.set_total("mcpscope_http_messages_total", h.messages);
        m.set_total(
            "mcpscope_http_skipped_body_bytes_total",
            h.skipped_body_bytes,
        );
        m.set_total("mcpscope_sse_events_total", e.events);
        m.set_total("mcpscope_sse_empty_events_total", e.empty_events);
        m.set_total("mcpscope_http_status_errors_total", http.status_errors);
        m.set_total("mcpscope_ringbuf_records_total", s.records);
        m.set_total("mcpscope_audit_sync_failures_total", s.sink_sync_failures);
        m.set_total("mcpscope_truncated_messages_total", s.truncated_messages);
        m.set_total(
            "mcpscope_streams_ignored_total",
            s.streams_ignored_not_ipc + s.streams_ignored_not_mcp,
        );
        m.set_total("mcpscope_duplicate_copies_total", ch.deduplicated);
        m.set_total("mcpscope_one_sided_messages_total", ch.reader_only);
        m.set_total("mcpscope_requests_cancelled_total", pair.cancelled);
        let (streams, pending, procs, sessions) = self.gauges();
        m.set_gauge("mcpscope_streams_tracked", streams as i64);
        m.set_gauge("mcpscope_pending_requests", pending as i64);
        m.set_gauge("mcpscope_identity_cache_entries", procs as i64);
        m.set_gauge("mcpscope_partial_syscalls", self.assembler.len() as i64);
        m.sessions_active.set(sessions as i64);
    }

    /// HTTP and SSE framing counters, ended and live streams together.
    pub fn http_stats(&self) -> HttpTotals {
        let mut http = self.core.http_totals;
        for st in self.streams.values() {
            if let Framing::Http(f) = &st.framer {
                http.add(f);
            }
        }
        http
    }

    /// Counters.
    pub fn stats(&self) -> &PipelineStats {
        &self.core.stats
    }

    /// Pairing counters.
    pub fn pair_stats(&self) -> crate::protocol::pairing::PairStats {
        self.core.pairer.stats
    }

    /// Pipe-join counters.
    pub fn channel_stats(&self) -> crate::stream::channel::ChannelStats {
        self.core.channels.stats
    }

    /// Gauges: (streams, pending requests, cached processes, sessions).
    pub fn gauges(&self) -> (usize, usize, usize, usize) {
        (
            self.streams.len(),
            self.core.pairer.pending(),
            self.core.procs.len(),
            self.core.sessions.len(),
        )
    }

    /// Feeds one raw ring-buffer record.
    pub fn on_record(&mut self, bytes: &[u8]) {
        self.core.stats.records += 1;
        match crate::capture::decode(bytes) {
            Ok(ev) => self.on_event(&ev),
            Err(_) => self.core.stats.decode_errors += 1,
        }
    }

    /// Feeds one decoded event.
    pub fn on_event(&mut self, ev: &RawEvent<'_>) {
        match ev {
            RawEvent::Data(c) if c.tls && c.egress && c.fd == mcpscope_common::FD_UNBOUND => {
                self.tls.hold(c)
            }
            RawEvent::Data(c) => self.on_data(c),
            RawEvent::Proc(p) => self.on_proc(p),
            RawEvent::TlsBind(b) => {
                let mut tls = std::mem::take(&mut self.tls);
                tls.bind(b, &mut |c| self.on_data(c));
                self.tls = tls;
            }
        }
    }

    fn on_data(&mut self, c: &DataChunk<'_>) {
        let Self {
            control,
            assembler,
            streams,
            core,
            ..
        } = self;
        let task = c.task();
        assembler.push(c, &mut |w| on_whole(control, streams, core, w, task));
    }

    fn on_proc(&mut self, p: &ProcEvent) {
        match p.kind {
            ProcKind::Close => {
                for egress in [false, true] {
                    self.end_stream(
                        StreamKey {
                            tgid: p.tgid,
                            fd: p.fd,
                            egress,
                        },
                        p.task(),
                        p.ts_ns,
                    );
                }
            }
            ProcKind::Exec => {
                if self.core.participant(p.tgid) {
                    let data = serde_json::json!({ "pid": p.tgid, "comm": p.comm.as_str() });
                    self.core.record("process_exec", p.ts_ns, &data);
                }
                self.core.procs.invalidate(p.tgid)
            }
            ProcKind::Exit => {
                // Unbound TLS writes of the process go on before its streams end.
                let mut tls = std::mem::take(&mut self.tls);
                tls.forget_process(p.tgid, &mut |c| self.on_data(c));
                self.tls = tls;
                let keys: Vec<StreamKey> = self
                    .streams
                    .keys()
                    .filter(|k| k.tgid == p.tgid)
                    .copied()
                    .collect();
                for k in keys {
                    self.end_stream(k, p.task(), p.ts_ns);
                }
                let ended: Vec<u64> = self
                    .core
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.pids.contains(&p.tgid))
                    .map(|(k, _)| *k)
                    .collect();
                if self.core.participant(p.tgid) {
                    let data = serde_json::json!({ "pid": p.tgid, "comm": p.comm.as_str() });
                    self.core.record("process_exit", p.ts_ns, &data);
                }
                for k in ended {
                    self.core.end_session(k, p.ts_ns, "exit");
                }
                self.core.forget_process(p.tgid);
                self.core.procs.invalidate(p.tgid);
            }
        }
    }

    fn end_stream(&mut self, key: StreamKey, task: Task, ts_ns: u64) {
        end_stream(&mut self.streams, &mut self.core, key, task, ts_ns);
    }

    /// Advances time: emits held pipe-reader copies whose window passed and
    /// flushes syscalls whose remaining chunks were lost. `now_ns` is kernel
    /// CLOCK_MONOTONIC.
    pub fn tick(&mut self, now_ns: u64) {
        let mut tls = std::mem::take(&mut self.tls);
        tls.expire(now_ns, &mut |c| self.on_data(c));
        self.tls = tls;
        let Self {
            control,
            assembler,
            streams,
            core,
            ..
        } = self;
        assembler.flush_older(now_ns.saturating_sub(1_000_000_000), &mut |w| {
            on_whole(control, streams, core, w, Task::default())
        });
        core.expire(now_ns);
        core.flush();
    }

    /// TLS write-binding counters.
    pub fn tls_stats(&self) -> tls::TlsBindStats {
        self.tls.stats
    }

    /// Ends everything: flushes partial lines, held copies and sinks.
    pub fn finish(&mut self) {
        let mut tls = std::mem::take(&mut self.tls);
        tls.expire(u64::MAX, &mut |c| self.on_data(c));
        self.tls = tls;
        let keys: Vec<StreamKey> = self.streams.keys().copied().collect();
        for k in keys {
            self.end_stream(k, Task::default(), u64::MAX / 2);
        }
        self.core.expire(u64::MAX);
        for s in &mut self.core.sinks {
            let closed = s.close();
            tally_sink(&mut self.core.stats, s.as_mut(), closed);
        }
    }
}

/// Ends a stream: flushes what its framer holds and forgets its fd's
/// HTTP connection state.
fn end_stream(
    streams: &mut FastMap<StreamKey, Stream>,
    core: &mut Core,
    key: StreamKey,
    task: Task,
    ts_ns: u64,
) {
    let Some(mut s) = streams.remove(&key) else {
        return;
    };
    let meta = (s.kind, s.join);
    let task = if task.tid != 0 { task } else { s.task };
    match &mut s.framer {
        Framing::Line(fr) => fr.finish(&mut |f| {
            core.on_frame(key, meta, task, ts_ns, f, None);
        }),
        Framing::Http(fr) => {
            fr.finish(&mut |i| {
                core.on_http(key, meta, task, ts_ns, i);
            });
            core.http_ended(fr);
        }
    }
    core.conns.remove(&(key.tgid, key.fd));
}

/// The fd of `key` now names file `ino`, but its streams were opened on
/// another file: the close between was never reported (a lost record, or
/// a close the kernel side did not report). Ends the old file's streams,
/// both directions, as that close would have.
fn end_reused_fd(
    streams: &mut FastMap<StreamKey, Stream>,
    core: &mut Core,
    key: StreamKey,
    ino: u64,
    ts_ns: u64,
) {
    for egress in [false, true] {
        let k = StreamKey { egress, ..key };
        if streams.get(&k).is_some_and(|s| s.ino != 0 && s.ino != ino) {
            core.stats.streams_close_missed += 1;
            end_stream(streams, core, k, Task::default(), ts_ns);
        }
    }
}

/// A stream for the fd of `w`, first seen now.
fn new_stream<C: StreamControl>(
    control: &mut C,
    core: &mut Core,
    w: &Whole<'_>,
    task: Task,
) -> Stream {
    let kind = if w.flow.lport != 0 && w.file_kind == mcpscope_common::FILE_SOCKET {
        FdKind::Tcp(w.ino) // the kernel read a TCP/IP connection
    } else if core.cfg.resolve_fds {
        core.world.fd_kind(w.tgid, w.fd, w.file_kind, w.ino)
    } else {
        FdKind::Pipe(u64::from(w.fd))
    };
    let ignored = kind == FdKind::NotIpc;
    if ignored {
        core.stats.streams_ignored_not_ipc += 1;
        control.ignore(w.tgid, w.fd);
    }
    Stream {
        kind,
        ino: w.ino,
        join: if ignored {
            Join::default()
        } else {
            Join::of(kind, w.tgid, w.egress, w.flow, core.world.as_mut())
        },
        framer: if starts_http(w.segment.data) {
            Framing::Http(Box::new(HttpFramer::new(core.cfg.max_message_bytes)))
        } else {
            Framing::Line(LineFramer::new(core.cfg.max_message_bytes))
        },
        task,
        good: 0,
        bad: 0,
        ignored,
    }
}

fn on_whole<C: StreamControl>(
    control: &mut C,
    streams: &mut FastMap<StreamKey, Stream>,
    core: &mut Core,
    w: Whole<'_>,
    task: Task,
) {
    let key = StreamKey {
        tgid: w.tgid,
        fd: w.fd,
        egress: w.egress,
    };
    let mut stream = streams
        .entry(key)
        .or_insert_with(|| new_stream(control, core, &w, task));
    if w.ino != 0 && stream.ino != 0 && stream.ino != w.ino {
        // Checked on the entry in hand: no second lookup per syscall.
        end_reused_fd(streams, core, key, w.ino, w.ts_ns);
        stream = streams
            .entry(key)
            .or_insert_with(|| new_stream(control, core, &w, task));
    }
    if stream.ignored {
        core.stats.ignored_bytes += w.segment.data.len() as u64;
        return;
    }
    let task = if task.tid != 0 {
        stream.task = task;
        task
    } else {
        stream.task
    };
    let meta = (stream.kind, stream.join);
    let seg = &w.segment;
    core.stats.gap_bytes += seg.missing_inner + seg.missing_tail;
    let (mut good, mut bad) = (0u64, 0u32);
    // A stream first seen mid-message (the agent started late) may turn
    // out to be HTTP at its next syscall.
    if stream.good == 0 && matches!(stream.framer, Framing::Line(_)) && starts_http(seg.data) {
        stream.framer = Framing::Http(Box::new(HttpFramer::new(core.cfg.max_message_bytes)));
    }
    // A gap inside the syscall marks the message it falls in as broken.
    let at = seg.gap_at.min(seg.data.len());
    match &mut stream.framer {
        Framing::Line(fr) => {
            let mut on_frame = |f: Frame<'_>| {
                if core.on_frame(key, meta, task, w.ts_ns, f, None) {
                    good += 1;
                } else {
                    bad += 1;
                }
            };
            fr.push(&seg.data[..at], &mut on_frame);
            fr.gap(seg.missing_inner);
            fr.push(&seg.data[at..], &mut on_frame);
            fr.gap(seg.missing_tail);
        }
        Framing::Http(fr) => {
            let mut on_item = |i: crate::stream::http::HttpItem<'_>| match core
                .on_http(key, meta, task, w.ts_ns, i)
            {
                Some(true) => good += 1,
                Some(false) => bad += 1,
                None => {}
            };
            let resyncs = fr.stats.resyncs;
            fr.push(&seg.data[..at], &mut on_item);
            fr.gap(seg.missing_inner, &mut on_item);
            fr.push(&seg.data[at..], &mut on_item);
            fr.gap(seg.missing_tail, &mut on_item);
            if fr.stats.resyncs != resyncs {
                // Never the bytes: they may hold a credential header.
                log::debug!(
                    "HTTP framing lost on pid {} fd {} ({}, tls {}) at a {}-byte segment",
                    key.tgid,
                    key.fd,
                    if key.egress { "out" } else { "in" },
                    task.tls,
                    seg.data.len()
                );
            }
        }
    }
    stream.good += good;
    if good > 0 {
        stream.bad = 0;
    }
    stream.bad += bad;
    if stream.good == 0 && stream.bad >= core.cfg.not_mcp_strikes {
        stream.ignored = true;
        core.stats.streams_ignored_not_mcp += 1;
        if stream.task.tls {
            control.ignore_tls(key.tgid, key.fd);
        } else {
            control.ignore(key.tgid, key.fd);
        }
    }
}

/// Bytes of a message's head hashed for the pipe-end join.
const JOIN_HEAD: usize = 512;

/// Join key of a message: its true length and a hash of its head, which
/// both ends capture even when one of them lost the tail.
fn join_key(bytes: &[u8], len: u64, index: Option<u32>) -> u64 {
    process_hash(&(&bytes[..bytes.len().min(JOIN_HEAD)], len, index))
}

impl Core {
    /// Handles one framed line; false when it was not JSON-RPC.
    fn on_frame(
        &mut self,
        key: StreamKey,
        (kind, join): (FdKind, Join),
        task: Task,
        ts_ns: u64,
        f: Frame<'_>,
        http: Option<&HttpCtx>,
    ) -> bool {
        // The reading end's copy of a message already reported from its
        // writer is recognised from the raw bytes (length and head hash) and
        // dropped before any parsing: half of all lines on a pipe.
        // An HTTP request is parsed at both ends all the same: each end
        // keeps its ids to answer a body-less error status.
        let http_request = http.is_some_and(|h| h.head.method.is_some());
        if !key.egress
            && !f.truncated
            && !http_request
            && self.cfg.resolve_fds
            && f.bytes.first() != Some(&b'[')
        {
            if let Some(channel) = join.channel {
                if let Some(tag) =
                    self.channels
                        .confirm_read(channel, key.tgid, join_key(f.bytes, f.len, None))
                {
                    self.on_received(tag, ts_ns);
                    return true;
                }
            }
        }
        if f.truncated {
            return match salvage(f.bytes) {
                Some(msg) => {
                    self.stats.truncated_messages += 1;
                    self.route(
                        Captured {
                            msg,
                            ts_ns,
                            bytes: f.len,
                            truncated: true,
                            key,
                            kind,
                            join,
                            task,
                            batch_index: None,
                            payload: None,
                            facts: None,
                            http: http.map(|h| Box::new(h.clone())),
                        },
                        join_key(f.bytes, f.len, None),
                    );
                    true
                }
                None => {
                    self.stats.truncated_dropped += 1;
                    false
                }
            };
        }
        let batch = f.bytes.first() == Some(&b'[');
        let payload_cap = self
            .cfg
            .capture_payloads
            .then_some(self.cfg.payload_max_bytes);
        let mut index = 0u32;
        let mut ok = false;
        // Facts only for the writing end's copy: the reading end's copy is
        // almost always dropped as its duplicate (a message seen only by
        // its reader goes without payload-based detection). Their pass
        // over the bytes comes first, and tells the parser whether they
        // are all ASCII; arguments are hashed only there.
        let needs =
            (self.detectors.as_ref().map(Detectors::needs)).filter(|n| n.any() && key.egress);
        let prescan = needs
            .filter(|n| n.payload)
            .map(|_| crate::detect::facts::Prescan::of(f.bytes));
        let text = prescan
            .and_then(|p| p.ascii_text())
            .map_or_else(|| crate::protocol::utf8(f.bytes), Ok);
        let res = text.and_then(|text| {
            let hash_arguments = needs.is_some_and(|n| n.arguments);
            parse_batch(text, hash_arguments, &mut |r| {
                let bi = batch.then_some(index);
                index += 1;
                match r {
                    Ok((mut msg, raw)) => {
                        ok = true;
                        if let Some(h) = http {
                            self.note_request_id(key, h, &msg);
                            if msg.id.is_none() && msg.kind == Some(Kind::Error) {
                                // `id: null` in the HTTP answer to one request
                                // (a 404 for a gone session): that request's.
                                msg.id = h.answers.clone();
                            }
                        }
                        let facts = needs.map(|needs| {
                            let response = matches!(msg.kind, Some(Kind::Response | Kind::Error));
                            let method = msg.method.as_deref();
                            crate::detect::facts::extract(
                                needs, raw, prescan, method, response, None,
                            )
                        });
                        let payload =
                            payload_cap.map(|cap| crate::protocol::bounded_utf8(f.bytes, cap));
                        let c = Captured {
                            msg,
                            ts_ns,
                            bytes: f.len,
                            truncated: false,
                            key,
                            kind,
                            join,
                            task,
                            batch_index: bi,
                            payload,
                            facts,
                            http: http.map(|h| Box::new(h.clone())),
                        };
                        self.route(c, join_key(f.bytes, f.len, bi));
                    }
                    Err(e) => self.count_parse_error(e),
                }
            })
        });
        if let Err(e) = res {
            self.count_parse_error(e);
        }
        ok
    }

    /// Routes a message made by the agent (not parsed from bytes), joined
    /// with the other end's copy by `join_text`.
    #[allow(clippy::too_many_arguments)]
    fn route_made(
        &mut self,
        key: StreamKey,
        (kind, join): (FdKind, Join),
        task: Task,
        ts_ns: u64,
        msg: Message,
        http: HttpCtx,
        join_text: &[u8],
    ) {
        let c = Captured {
            msg,
            ts_ns,
            bytes: 0,
            truncated: false,
            key,
            kind,
            join,
            task,
            batch_index: None,
            payload: None,
            facts: None,
            http: Some(Box::new(http)),
        };
        self.route(c, join_key(join_text, join_text.len() as u64, None));
    }

    fn count_parse_error(&mut self, e: ParseError) {
        match e {
            ParseError::Json => self.stats.parse_invalid_json += 1,
            ParseError::NotJsonRpc => self.stats.parse_not_jsonrpc += 1,
            ParseError::EmptyBatch => self.stats.parse_empty_batch += 1,
        }
    }

    fn route(&mut self, c: Captured, key: u64) {
        let Some(channel) = c.join.channel.filter(|_| self.cfg.resolve_fds) else {
            return self.emit(c, None, None);
        };
        let other_end = c.join.other_end;
        let (tgid, egress) = (c.key.tgid, c.key.egress);
        // Emission is synchronous when it happens now, so the event's
        // sequence number is known in advance and tags the copy.
        let copy = Offer {
            tag: self.seq + 1,
            key,
            truncated: c.truncated,
            ts_ns: c.ts_ns,
            item: c,
        };
        let mut out: Option<Emit<Captured>> = None;
        let mut confirmed: Option<Confirm> = None;
        if egress {
            let world = &mut self.world;
            let resolve = || other_end.and_then(|end| world.holder(end, tgid));
            self.channels
                .on_write(channel, tgid, copy, resolve, &mut |e| out = Some(e));
        } else {
            self.channels
                .on_read(channel, tgid, copy, &mut |e| out = Some(e), &mut |x| {
                    confirmed = Some(x)
                });
        }
        if let Some((c, peer, other_ts)) = out {
            self.emit(c, peer, other_ts);
        }
        if let Some((tag, _reader, ts)) = confirmed {
            self.on_received(tag, ts);
        }
    }

    fn expire(&mut self, now_ns: u64) {
        let mut out = Vec::new();
        self.channels.expire(now_ns, &mut |e| out.push(e));
        for (c, peer, other_ts) in out {
            self.emit(c, peer, other_ts);
        }
        // Early responses whose request did not come: reported unpaired.
        let hold = EARLY_HOLD_NS.max(2 * self.cfg.pair_window_ms.saturating_mul(1_000_000));
        while let Some((session, id, place)) = self.early_order.front() {
            let held = self
                .early
                .get(&(*session, id.clone()))
                .filter(|e| e.place == *place);
            match held {
                Some(e) if e.held.0.ts_ns.saturating_add(hold) > now_ns => break,
                Some(_) => {
                    self.release_oldest_early();
                }
                None => {
                    self.early_order.pop_front(); // released already
                }
            }
        }
    }

    fn forget_process(&mut self, pid: u32) {
        self.conns.retain(|k, _| k.0 != pid);
        let mut out = Vec::new();
        self.channels.forget_process(pid, &mut |e| out.push(e));
        for (c, peer, other_ts) in out {
            self.emit(c, peer, other_ts);
        }
    }

    /// The receiving end read the message reported as event `seq` at `ts`.
    fn on_received(&mut self, seq: u64, ts: u64) {
        if let Some(read) = self.received.get_mut(&seq) {
            *read = Some(ts);
        } else if let Some((sent, labels)) = self.awaiting_client.remove(&seq) {
            if let Some(m) = &self.metrics {
                m.observe_client(labels.as_refs(), ts.saturating_sub(sent) as f64 / 1e9);
            }
        }
    }

    /// One end of a message: the process (with its container), the pod
    /// its container belongs to, and — for the capturing end — the fd and
    /// thread. `task` is what the kernel said (used when /proc cannot).
    fn endpoint(&mut self, pid: u32, fd: Option<u32>, task: Option<Task>, now_ns: u64) -> Endpoint {
        let world = &mut self.world;
        let process = match task {
            Some(t) => {
                let comm = t.comm.as_str();
                self.procs
                    .get(pid, &comm, t.cgroup_id, |p| world.process(p))
            }
            // The peer (no kernel task at hand): as last seen, if it was.
            None => match self.procs.peek(pid) {
                Some(p) => p.clone(),
                None => self.procs.get(pid, "", 0, |p| world.process(p)),
            },
        };
        let k8s = process
            .container
            .as_ref()
            .and_then(|c| c.pod_uid.as_deref())
            .and_then(|uid| self.pods.get(uid, now_ns, |u| world.pod(u)));
        Endpoint {
            process,
            fd,
            tid: task.map(|t| t.tid),
            k8s,
        }
    }

    /// Reports one message. `other_ts` is the other end's copy's timestamp
    /// when it was seen before this point. A response whose request is not
    /// pending yet is held for it (see [`Early`]).
    fn emit(&mut self, c: Captured, peer: Option<u32>, other_ts: Option<u64>) {
        self.emit_now(c, peer, other_ts, true)
    }

    /// Holds a response that came too early (see [`Early`]); a response
    /// already held for the same request goes on unpaired.
    fn hold_early(&mut self, session: u64, id: RpcId, held: (Captured, Option<u32>, Option<u64>)) {
        while self.early.len() >= EARLY_MAX && self.release_oldest_early() {}
        self.early_places += 1;
        let place = self.early_places;
        self.early_order.push_back((session, id.clone(), place));
        if let Some(old) = self.early.insert((session, id), Early { held, place }) {
            let (c, peer, other_ts) = old.held;
            self.emit_now(c, peer, other_ts, false);
        }
    }

    /// The held response to request `id` of `session`, reported now.
    fn release_early(&mut self, session: u64, id: &RpcId) {
        if let Some(e) = self.early.remove(&(session, id.clone())) {
            let (c, peer, other_ts) = e.held;
            self.emit_now(c, peer, other_ts, false);
        }
    }

    /// Reports the oldest held response, unpaired; false when none is held.
    fn release_oldest_early(&mut self) -> bool {
        while let Some((session, id, place)) = self.early_order.pop_front() {
            let key = (session, id);
            if self.early.get(&key).is_some_and(|e| e.place == place) {
                let (c, peer, other_ts) = self.early.remove(&key).expect("checked").held;
                self.emit_now(c, peer, other_ts, false);
                return true;
            }
        }
        false
    }

    /// [`Core::emit`]; `may_hold`: an early response may wait for its request.
    fn emit_now(&mut self, c: Captured, peer: Option<u32>, other_ts: Option<u64>, may_hold: bool) {
        let me = self.endpoint(c.key.tgid, Some(c.key.fd), Some(c.task), c.ts_ns);
        let other = peer.map(|p| self.endpoint(p, None, None, c.ts_ns));
        // Written at `sent`, read at `received` (when the reader was seen).
        let (sent, received) = if c.key.egress {
            (c.ts_ns, other_ts)
        } else {
            (other_ts.unwrap_or(c.ts_ns), Some(c.ts_ns))
        };
        let (from, to) = if c.key.egress {
            (Some(me), other)
        } else {
            (other, Some(me))
        };
        let from_pid = from.as_ref().map_or(0, |e| e.process.pid);
        let to_pid = to.as_ref().map_or(0, |e| e.process.pid);

        // Session: the unordered pair of processes (with start times, so pid
        // reuse starts a new one); one-sided: the stream itself.
        let session_key = match (&from, &to) {
            (Some(a), Some(b)) => {
                let mut ends = [
                    (a.process.pid, a.process.start_ticks),
                    (b.process.pid, b.process.start_ticks),
                ];
                ends.sort_unstable();
                stable_hash(&ends)
            }
            // One-sided HTTP: the MCP session binds its connections.
            _ => match c.http.as_ref().and_then(|h| h.session_key.as_deref()) {
                Some(sid) => one_sided_http_session(c.key.tgid, sid),
                None => stable_hash(&(c.key.tgid, c.key.fd, c.kind)),
            },
        };
        // A response pairs here, before anything is recorded of it: one
        // that finds no request may be early (see `hold_early`).
        let answered = match c.msg.kind {
            Some(Kind::Response | Kind::Error) => {
                match self.pairer.try_response(session_key, to_pid, &c.msg) {
                    Some(p) => Some(p),
                    None if may_hold && c.msg.id.is_some() => {
                        // The id is cloned only here: most responses find their request.
                        let id = c.msg.id.clone().expect("checked above");
                        return self.hold_early(session_key, id, (c, peer, other_ts));
                    }
                    None => {
                        self.pairer.unmatched();
                        None
                    }
                }
            }
            _ => None,
        };
        let net = c.kind.net();
        if !self.sessions.contains_key(&session_key) {
            let name = format!(
                "{}:{session_key:016x}",
                match (&c.http, net) {
                    (Some(_), _) => "http",
                    (None, "tcp") => "tcp",
                    _ => "stdio",
                }
            );
            let s = Session {
                name: name.into(),
                pids: [from_pid, to_pid],
                start_ns: sent,
                net,
                ..Session::default()
            };
            self.open_session(session_key, s, (&from, &to));
        }
        let session = self.sessions.get_mut(&session_key).expect("inserted above");
        session.messages += 1;
        session.last_ns = session.last_ns.max(sent);
        if m_is_error(&c.msg) {
            session.errors += 1;
        }
        let m = &c.msg;
        if let Some(ci) = &m.client_info {
            session.client = Some(ci.clone());
        }
        if let Some(si) = &m.server_info {
            session.server = Some(si.clone());
        }
        if m.kind == Some(Kind::Request)
            && (session.client_pid.is_none() || m.method.as_deref() == Some("initialize"))
        {
            session.client_pid = Some(from_pid);
        }
        if m.protocol_version.is_some()
            && (m.kind == Some(Kind::Response)
                || session.protocol_version.is_none()
                || m.method.as_deref() != Some("initialize"))
        {
            session.protocol_version = m.protocol_version.clone();
        }
        let direction = match session.client_pid {
            Some(p) if p == from_pid => "client_to_server",
            Some(p) if p == to_pid => "server_to_client",
            _ => "unknown",
        };
        let protocol_version = m
            .protocol_version
            .clone()
            .or_else(|| session.protocol_version.clone());
        let (client, server, session_name) = (
            session.client.clone(),
            session.server.clone(),
            session.name.clone(),
        );
        // One-sided HTTP: an answer that names a session its request did
        // not have (the initialize response) opens that session with what
        // the handshake told, so later requests carrying it keep the
        // client and server names.
        let named = c.http.as_ref().and_then(|h| {
            let sid = h.head.session_id.as_deref()?;
            (h.session_key.as_deref() != Some(sid)).then_some(sid)
        });
        if let (Some(sid), false) = (named, from_pid != 0 && to_pid != 0) {
            let key = one_sided_http_session(c.key.tgid, sid);
            if !self.sessions.contains_key(&key) {
                let s = Session {
                    name: format!("http:{key:016x}").into(),
                    pids: [from_pid, to_pid],
                    start_ns: sent,
                    net,
                    client_pid: Some(c.key.tgid),
                    protocol_version: protocol_version.clone(),
                    client: client.clone(),
                    server: server.clone(),
                    ..Session::default()
                };
                self.open_session(key, s, (&from, &to));
            }
        }

        self.seq += 1;
        let seq = self.seq;
        if c.msg.kind == Some(Kind::Request) && self.metrics.is_some() {
            self.received
                .insert_new(seq, received, &mut self.duration_evicted);
        }
        let error_type = match c.http.as_ref().filter(|h| h.from_status) {
            Some(h) => h.head.status.map(|s| s.to_string()),
            None => mcp::error_type(m).map(|e| e.into_owned()),
        };
        let logical_id = match m.kind {
            Some(Kind::Request) => {
                let args_hash = c.facts.as_ref().and_then(|f| f.args_hash);
                self.pairer
                    .request(session_key, from_pid, m, sent, seq, args_hash)
            }
            _ => None,
        };
        // The message's own fields move into the event (no copies).
        let m = c.msg;
        let cancelled = m.cancelled_id;
        let mut ev = McpEvent {
            ts: self.format_ts(sent),
            seq,
            kind: m.kind.unwrap_or(Kind::Notification),
            method: m.method,
            id: m.id,
            logical_id: None,
            tool: m.tool,
            resource: m.resource,
            prompt: m.prompt,
            is_error: m.is_error,
            error_code: m.error_code,
            error_type,
            error_message: m.error_message,
            result_type: m.result_type,
            latency_ms: None,
            request_seq: None,
            transport: c.http.as_ref().map_or("stdio", |h| h.transport()),
            net,
            tls: c.http.as_ref().is_some_and(|h| h.tls),
            from,
            to,
            session: session_name,
            protocol_version,
            client,
            server,
            bytes: c.bytes,
            truncated: c.truncated,
            batch_index: c.batch_index,
            http: c.http.map(|h| *h),
            payload: c.payload,
        };
        let mut asked = None;
        match ev.kind {
            Kind::Request => ev.logical_id = logical_id,
            Kind::Response | Kind::Error => {
                if let Some(p) = answered {
                    asked = Some(crate::detect::Asked {
                        seq: p.seq,
                        ts_ns: p.ts_ns,
                        args_hash: p.args_hash,
                    });
                    ev.latency_ms = Some(sent.saturating_sub(p.ts_ns) as f64 / 1e6);
                    ev.request_seq = Some(p.seq);
                    ev.method = p.method;
                    ev.tool = ev.tool.take().or(p.tool);
                    ev.resource = p.resource;
                    ev.prompt = p.prompt;
                    ev.logical_id = p.logical_id;
                    if let Some(m) = self.metrics.clone() {
                        let labels = OpLabels::of(&ev);
                        let request_read =
                            self.received.remove(&p.seq).flatten().unwrap_or(p.ts_ns);
                        m.observe_server(
                            labels.as_refs(),
                            sent.saturating_sub(request_read) as f64 / 1e9,
                        );
                        match received {
                            Some(r) => m.observe_client(
                                labels.as_refs(),
                                r.saturating_sub(p.ts_ns) as f64 / 1e9,
                            ),
                            None => {
                                self.awaiting_client.insert_new(
                                    seq,
                                    (p.ts_ns, labels),
                                    &mut self.duration_evicted,
                                );
                            }
                        }
                    }
                }
            }
            Kind::Notification => {
                if let Some(id) = &cancelled {
                    self.pairer.cancel(session_key, id);
                }
            }
        }
        if let Some(metrics) = &self.metrics {
            let kind = match ev.kind {
                Kind::Request => "request",
                Kind::Response => "response",
                Kind::Notification => "notification",
                Kind::Error => "error",
            };
            let name = |p: &Option<PeerInfo>| p.as_ref().map_or("", |p| p.name.as_str()).to_owned();
            let (cn, sn) = (name(&ev.client), name(&ev.server));
            let k8s = caller_pod(&ev);
            metrics.message(
                [
                    ev.method.as_deref().unwrap_or(""),
                    kind,
                    net,
                    k8s.map_or("", |p| p.namespace.as_str()),
                    k8s.and_then(|p| p.workload.as_deref()).unwrap_or(""),
                    k8s.and_then(|p| p.service_account.as_deref()).unwrap_or(""),
                    &cn,
                    &sn,
                ],
                direction,
                ev.bytes,
            );
        }
        self.stats.messages += 1;
        self.stats.message_bytes += c.bytes;
        for s in &mut self.sinks {
            if s.emit(&ev).is_err() {
                self.stats.sink_errors += 1;
            }
        }
        if let (Some(d), Some(s)) = (&mut self.detectors, self.sessions.get_mut(&session_key)) {
            let none = MessageFacts::default();
            let facts = c.facts.as_ref().unwrap_or(&none);
            d.observe(
                &mut s.detect,
                &ev,
                sent,
                facts,
                asked.as_ref(),
                &mut self.flags,
            );
        }
        if !self.flags.is_empty() {
            let mut flags = std::mem::take(&mut self.flags);
            for f in flags.drain(..) {
                self.emit_flag(f, &ev, sent);
            }
            self.flags = flags; // its capacity, for the next
        }
        if ev.kind == Kind::Request && !self.early.is_empty() {
            if let Some(id) = &ev.id {
                self.release_early(session_key, id);
            }
        }
    }

    /// Reports a flag: a `kind: "flag"` event to every sink, counted.
    fn emit_flag(&mut self, f: Flag, ev: &McpEvent, ts_ns: u64) {
        self.seq += 1;
        let evidence: Vec<serde_json::Value> = f
            .evidence
            .iter()
            .map(|e| serde_json::json!({ "seq": e.seq, "id": e.id, "ts": self.format_ts(e.ts_ns) }))
            .collect();
        let v = serde_json::json!({
            "ts": self.format_ts(ts_ns),
            "seq": self.seq,
            "kind": "flag",
            "flag": f.flag,
            "severity": f.severity,
            "message": f.message,
            "session": ev.session,
            "caller": f.caller,
            "server": f.server,
            "tool": f.tool,
            "from": ev.from,
            "to": ev.to,
            "client": ev.client,
            "mcp_server": ev.server,
            "evidence": evidence,
            "details": f.details,
        });
        if let Some(m) = &self.metrics {
            m.flag(f.flag, f.severity.as_str());
        }
        for s in &mut self.sinks {
            if s.flag(&v).is_err() {
                self.stats.sink_errors += 1;
            }
        }
    }

    /// Ends session `key`: its `session_end` record (`reason`: `exit` or
    /// `evicted`), its duration metric, and its pending requests.
    fn end_session(&mut self, key: u64, ts_ns: u64, reason: &str) {
        if let Some(s) = self.sessions.remove(&key) {
            let name = |p: &Option<PeerInfo>| p.as_ref().map(|p| p.name.clone());
            let secs = ts_ns.saturating_sub(s.start_ns) as f64 / 1e9;
            let data = serde_json::json!({
                "session": s.name, "pids": s.pids, "messages": s.messages, "errors": s.errors,
                "client": name(&s.client), "server": name(&s.server),
                "duration_s": secs, "reason": reason,
            });
            self.record("session_end", ts_ns, &data);
            if let Some(m) = &self.metrics {
                fn label(p: &Option<PeerInfo>) -> &str {
                    p.as_ref().map_or("", |p| p.name.as_str())
                }
                m.session_ended([s.net, label(&s.client), label(&s.server)], secs);
            }
        }
        self.pairer.end_session(key);
    }

    /// Adds session `key`, within `max_sessions` (see
    /// [`Core::make_room_for_session`]), active since its `start_ns`, and
    /// records its `session_start`: `from` and `to` are the ends of the
    /// message that opened it. Every session is opened here, so every
    /// `session_end` has its start.
    fn open_session(
        &mut self,
        key: u64,
        mut s: Session,
        (from, to): (&Option<Endpoint>, &Option<Endpoint>),
    ) {
        s.last_ns = s.start_ns;
        self.make_room_for_session(s.start_ns);
        let start = serde_json::json!({ "session": s.name, "net": s.net, "from": from, "to": to });
        let ts = s.start_ns;
        self.sessions.insert(key, s);
        self.record("session_start", ts, &start);
    }

    /// Keeps the session map within `max_sessions` before one is added:
    /// when full, the least recently active eighth ends (`evicted`). In
    /// eighths, so that the scan for them is amortised over many new
    /// sessions, not paid for each one. A session ends at its process's
    /// exit otherwise, and a long-lived HTTP server can hold one per MCP
    /// session id for its whole life.
    fn make_room_for_session(&mut self, now_ns: u64) {
        let cap = self.cfg.max_sessions.max(1);
        if self.sessions.len() < cap {
            return;
        }
        let mut by_age: Vec<(u64, u64)> =
            self.sessions.iter().map(|(k, s)| (s.last_ns, *k)).collect();
        let n = (cap / 8).max(1).min(by_age.len());
        by_age.select_nth_unstable(n - 1);
        for &(_, key) in &by_age[..n] {
            self.end_session(key, now_ns, "evicted");
            self.stats.sessions_evicted += 1;
        }
    }

    /// True when `pid` is an end of a live session.
    fn participant(&self, pid: u32) -> bool {
        self.sessions.values().any(|s| s.pids.contains(&pid))
    }

    /// Sends a non-message record to the sinks (the audit trail keeps it).
    fn record(&mut self, kind: &str, ts_ns: u64, data: &serde_json::Value) {
        let ts = self.format_ts(ts_ns);
        for s in &mut self.sinks {
            if s.record(kind, &ts, data).is_err() {
                self.stats.sink_errors += 1;
            }
        }
    }

    fn format_ts(&mut self, mono_ns: u64) -> String {
        let real = (mono_ns as i128 + self.clock_offset_ns).clamp(0, u64::MAX as i128);
        self.ts_format.format(real as u64)
    }

    fn flush(&mut self) {
        for s in &mut self.sinks {
            let flushed = s.flush();
            tally_sink(&mut self.stats, s.as_mut(), flushed);
        }
    }
}

/// Counts what a sink's flush or close (`done`) and what it lost or could
/// not fsync since it was last asked.
fn tally_sink(stats: &mut PipelineStats, s: &mut dyn Sink, done: std::io::Result<()>) {
    stats.sink_errors += u64::from(done.is_err()) + s.take_lost();
    stats.sink_sync_failures += s.take_sync_failures();
}

/// RFC 3339 UTC timestamps with microseconds, as events carry them. The
/// date and time of day change once a second, so they are formatted once a
/// second; each event formats only its microseconds.
#[derive(Default)]
struct Rfc3339Micros {
    /// The Unix second `prefix` shows.
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS` of `second` (empty before the first event).
    prefix: String,
}

impl Rfc3339Micros {
    fn format(&mut self, unix_ns: u64) -> String {
        let (secs, micros) = (unix_ns / 1_000_000_000, unix_ns % 1_000_000_000 / 1000);
        let Self { second, prefix } = self;
        if *second != secs || prefix.is_empty() {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            *prefix = humantime::format_rfc3339_seconds(t).to_string();
            prefix.pop(); // the `Z`
            *second = secs;
        }
        // Six digits by hand: `format!` costs ten times as much here.
        let mut tail = *b".000000Z";
        let mut m = micros;
        for d in tail[1..7].iter_mut().rev() {
            *d = b'0' + (m % 10) as u8;
            m /= 10;
        }
        let mut out = String::with_capacity(prefix.len() + tail.len());
        out.push_str(prefix);
        out.push_str(std::str::from_utf8(&tail).expect("ASCII digits"));
        out
    }
}

/// Nanoseconds to add to kernel CLOCK_MONOTONIC to get Unix time.
pub fn monotonic_to_realtime_offset() -> i128 {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid clock id and out-pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    let mono = now(libc::CLOCK_MONOTONIC);
    now(libc::CLOCK_REALTIME) - mono
}

/// Kernel CLOCK_MONOTONIC now, ns (what `bpf_ktime_get_ns` returns).
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The key of a one-sided HTTP session: the capturing process and the MCP
/// session id's fingerprint.
fn one_sided_http_session(tgid: u32, sid: &str) -> u64 {
    stable_hash(&(tgid, sid))
}

fn m_is_error(m: &Message) -> bool {
    m.is_error && m.kind != Some(Kind::Request)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_config_recorded_before_a_field_existed_takes_its_default() {
        // A capture's config from before `max_sessions` was added.
        let old = serde_json::json!({
            "max_message_bytes": 1024, "pair_window_ms": 50, "max_pending_per_session": 4096,
            "capture_payloads": false, "payload_max_bytes": 65536, "not_mcp_strikes": 3,
            "process_cache": 16384, "resolve_fds": true,
        });
        let cfg: super::PipelineConfig = serde_json::from_value(old).expect("it reads");
        assert_eq!(cfg.max_message_bytes, 1024);
        assert_eq!(
            cfg.max_sessions,
            super::PipelineConfig::default().max_sessions
        );
    }

    #[test]
    fn timestamps_format_as_humantime_does() {
        let mut f = super::Rfc3339Micros::default();
        for ns in [
            0u64,
            999_999_999,
            1_000_000_000,
            1_795_000_000_123_456_789,
            1_795_000_000_999_999_999,
            1_795_000_001_000_000_001,
            1_795_000_000_000_000_000,
        ] {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
            assert_eq!(
                f.format(ns),
                humantime::format_rfc3339_micros(t).to_string()
            );
        }
    }
}

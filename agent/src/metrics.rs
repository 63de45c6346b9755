//! Prometheus metrics. MCP metrics follow the OpenTelemetry MCP semantic
//! conventions in Prometheus form; agent health lives under `mcpscope_`.
//!
//! Never a session id, request id, argument or raw path as a label. Every
//! family caps its distinct label sets (`--max-label-sets`); past the cap an
//! observation gets the value `_overflow` in every label and is counted in
//! `mcpscope_label_sets_overflow_total{metric}`.

use std::{
    collections::HashSet,
    hash::{Hash, Hasher},
    sync::Mutex,
};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// OpenTelemetry MCP duration buckets, seconds.
pub const OTEL_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Labels of the operation duration histograms, in order.
pub const OPERATION_LABELS: [&str; 10] = [
    "mcp_method_name",
    "gen_ai_tool_name",
    "error_type",
    "network_transport",
    "mcp_protocol_version",
    "k8s_namespace_name",
    "k8s_workload_name",
    "k8s_service_account_name",
    "mcp_client_name",
    "mcp_server_name",
];

/// Labels of `mcp_messages_total`, in order.
pub const MESSAGE_LABELS: [&str; 8] = [
    "mcp_method_name",
    "kind",
    "network_transport",
    "k8s_namespace_name",
    "k8s_workload_name",
    "k8s_service_account_name",
    "mcp_client_name",
    "mcp_server_name",
];

const OVERFLOW: &str = "_overflow";

/// Agent volume counters: (name, help).
pub const COUNTERS: &[(&str, &str)] = &[
    (
        "mcpscope_ringbuf_records_total",
        "Ring-buffer records received from the kernel.",
    ),
    (
        "mcpscope_captured_syscalls_total",
        "Syscalls whose bytes the kernel captured.",
    ),
    (
        "mcpscope_captured_bytes_total",
        "Bytes the kernel captured.",
    ),
    (
        "mcpscope_truncated_messages_total",
        "Messages reported with lost bytes (fields salvaged).",
    ),
    (
        "mcpscope_streams_ignored_total",
        "Streams switched off (not a pipe or socket, or not JSON-RPC).",
    ),
    (
        "mcpscope_duplicate_copies_total",
        "Second copies of a message (the other end of a pipe or socket), dropped.",
    ),
    (
        "mcpscope_one_sided_messages_total",
        "Messages reported from the reading end alone.",
    ),
    (
        "mcpscope_requests_cancelled_total",
        "Requests cancelled by notifications/cancelled.",
    ),
    (
        "mcpscope_http_messages_total",
        "HTTP/1.1 requests and responses framed on captured streams.",
    ),
    (
        "mcpscope_http_skipped_body_bytes_total",
        "Body bytes of non-MCP HTTP messages, skipped unread.",
    ),
    (
        "mcpscope_sse_events_total",
        "SSE events with data (each one JSON-RPC message, or a legacy endpoint).",
    ),
    (
        "mcpscope_sse_empty_events_total",
        "SSE events without data (priming events, keep-alives).",
    ),
    (
        "mcpscope_http_status_errors_total",
        "JSON-RPC errors made from 4xx/5xx HTTP answers without a JSON-RPC body.",
    ),
    (
        "mcpscope_audit_sync_failures_total",
        "fsyncs of the audit trail that failed: the records written since the last good one may not be on disk (a sync_failed record in the trail names them).",
    ),
    (
        "mcpscope_kube_watch_events_total",
        "Pod watch events applied (Kubernetes enrichment).",
    ),
    (
        "mcpscope_kube_watch_errors_total",
        "Pod list/watch errors; the watch backs off and resumes.",
    ),
    (
        "mcpscope_kube_pods_other_node_total",
        "Pods received for another node and ignored.",
    ),
    (
        "mcpscope_kube_owner_lookup_failures_total",
        "ReplicaSet/Job owner lookups that failed (the pod keeps the nearer owner).",
    ),
];

/// Agent state gauges: (name, help).
pub const GAUGES: &[(&str, &str)] = &[
    (
        "mcpscope_streams_tracked",
        "Byte streams (process, fd, direction) being framed.",
    ),
    (
        "mcpscope_pending_requests",
        "Requests waiting for their response.",
    ),
    (
        "mcpscope_identity_cache_entries",
        "Processes in the identity cache.",
    ),
    (
        "mcpscope_partial_syscalls",
        "Syscalls whose chunks are still arriving.",
    ),
    (
        "mcpscope_ringbuf_pending_bytes",
        "Bytes waiting in the kernel ring buffer at the last write.",
    ),
    (
        "mcpscope_ringbuf_size_bytes",
        "Size of the kernel ring buffer.",
    ),
    ("mcpscope_probes_attached", "Kernel programs attached."),
    (
        "mcpscope_tls_files_attached",
        "OpenSSL files (libssl.so*, executables linking it statically) with TLS uprobes.",
    ),
    (
        "mcpscope_kube_pods",
        "Pods on this node known from the Kubernetes API.",
    ),
];

/// Caps the distinct label sets of one metric family.
struct LabelCap {
    name: &'static str,
    seen: Mutex<HashSet<u64>>,
    max: usize,
}

impl LabelCap {
    fn new(name: &'static str, max: usize) -> Self {
        Self {
            name,
            seen: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// True when `labels` may be used; false when they would exceed the cap.
    fn admit(&self, labels: &[&str]) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        labels.hash(&mut h);
        let key = h.finish();
        let mut seen = self.seen.lock().expect("label cap lock");
        if seen.contains(&key) {
            return true;
        }
        if seen.len() >= self.max {
            return false;
        }
        seen.insert(key);
        true
    }
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    client_duration: HistogramVec,
    server_duration: HistogramVec,
    messages: IntCounterVec,
    bytes: IntCounterVec,
    /// `mcp_sessions_active`.
    pub sessions_active: IntGauge,
    session_duration: HistogramVec,
    /// `mcpscope_events_lost_total{stage,reason}`.
    health: IntCounterVec,
    /// `mcpscope_bytes_lost_total{stage,reason}`.
    bytes_lost: IntCounterVec,
    /// `mcpscope_parse_errors_total{protocol,reason}`.
    parse_errors: IntCounterVec,
    /// Plain counters by name ([`COUNTERS`]).
    totals: std::collections::HashMap<&'static str, prometheus::IntCounter>,
    /// Gauges by name ([`GAUGES`]).
    gauges: std::collections::HashMap<&'static str, IntGauge>,
    overflow: IntCounterVec,
    flags: IntCounterVec,
    prog_runs: IntCounterVec,
    prog_run_seconds: prometheus::CounterVec,
    caps: [LabelCap; 4],
}

impl Metrics {
    /// Registers every family; `max_label_sets` caps each one.
    pub fn new(max_label_sets: usize) -> Self {
        let registry = Registry::new();
        let hist = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(OTEL_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let client_duration = hist(
            "mcp_client_operation_duration_seconds",
            "MCP request duration seen by the requester: response read minus request written (kernel timestamps).",
            &OPERATION_LABELS,
        );
        let server_duration = hist(
            "mcp_server_operation_duration_seconds",
            "MCP request duration seen by the responder: response written minus request read (kernel timestamps).",
            &OPERATION_LABELS,
        );
        let messages = counter(
            "mcp_messages_total",
            "MCP messages observed, each counted once.",
            &MESSAGE_LABELS,
        );
        let bytes = counter(
            "mcp_bytes_total",
            "Bytes of MCP messages, by direction.",
            &["direction", "network_transport"],
        );
        let sessions_active = IntGauge::new("mcp_sessions_active", "MCP sessions currently open.")
            .expect("valid gauge");
        registry
            .register(Box::new(sessions_active.clone()))
            .expect("unique metric");
        let session_duration = hist(
            "mcp_session_duration_seconds",
            "Duration of ended MCP sessions.",
            &["network_transport", "mcp_client_name", "mcp_server_name"],
        );
        let health = counter(
            "mcpscope_events_lost_total",
            "Everything the agent dropped, cut or could not parse, by where and why.",
            &["stage", "reason"],
        );
        let bytes_lost = counter(
            "mcpscope_bytes_lost_total",
            "Bytes the agent could not capture or had to cut, by where and why.",
            &["stage", "reason"],
        );
        let parse_errors = counter(
            "mcpscope_parse_errors_total",
            "Framed data that did not parse, by protocol and reason.",
            &["protocol", "reason"],
        );
        let totals = COUNTERS
            .iter()
            .map(|(name, help)| {
                let c = prometheus::IntCounter::new(*name, *help).expect("valid counter");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                (*name, c)
            })
            .collect();
        let gauges = GAUGES
            .iter()
            .map(|(name, help)| {
                let g = IntGauge::new(*name, *help).expect("valid gauge");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                (*name, g)
            })
            .collect();
        let flags = counter(
            "mcp_flags_total",
            "Flags raised (loops, duplicate calls, anomalies), by flag and severity.",
            &["flag", "severity"],
        );
        let prog_runs = counter(
            "mcpscope_bpf_program_runs_total",
            "Runs of each kernel program (counted only while kernel.bpf_stats_enabled=1).",
            &["program"],
        );
        let prog_run_seconds = prometheus::CounterVec::new(
            Opts::new(
                "mcpscope_bpf_program_run_seconds_total",
                "Time spent in each kernel program (counted only while kernel.bpf_stats_enabled=1).",
            ),
            &["program"],
        )
        .expect("valid counter");
        registry
            .register(Box::new(prog_run_seconds.clone()))
            .expect("unique metric");
        let overflow = counter(
            "mcpscope_label_sets_overflow_total",
            "Observations whose labels exceeded the label-set cap.",
            &["metric"],
        );
        let build = IntGaugeVec::new(
            Opts::new("mcpscope_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid gauge");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build)).expect("unique metric");
        let caps = [
            LabelCap::new("mcp_client_operation_duration_seconds", max_label_sets),
            LabelCap::new("mcp_server_operation_duration_seconds", max_label_sets),
            LabelCap::new("mcp_messages_total", max_label_sets),
            LabelCap::new("mcp_session_duration_seconds", max_label_sets),
        ];
        Self {
            registry,
            client_duration,
            server_duration,
            messages,
            bytes,
            sessions_active,
            session_duration,
            health,
            bytes_lost,
            parse_errors,
            totals,
            gauges,
            flags,
            prog_runs,
            prog_run_seconds,
            overflow,
            caps,
        }
    }

    fn capped<'a, const N: usize>(&self, cap: usize, labels: [&'a str; N]) -> [&'a str; N] {
        if self.caps[cap].admit(&labels) {
            labels
        } else {
            self.overflow
                .with_label_values(&[self.caps[cap].name])
                .inc();
            [OVERFLOW; N]
        }
    }

    /// A requester-side duration.
    pub fn observe_client(&self, labels: [&str; 10], seconds: f64) {
        self.client_duration
            .with_label_values(&self.capped(0, labels))
            .observe(seconds);
    }

    /// A responder-side duration.
    pub fn observe_server(&self, labels: [&str; 10], seconds: f64) {
        self.server_duration
            .with_label_values(&self.capped(1, labels))
            .observe(seconds);
    }

    /// One message and its bytes.
    pub fn message(&self, labels: [&str; 8], direction: &str, bytes: u64) {
        let transport = labels[2];
        self.messages
            .with_label_values(&self.capped(2, labels))
            .inc();
        self.bytes
            .with_label_values(&[direction, transport])
            .inc_by(bytes);
    }

    /// A raised flag.
    pub fn flag(&self, flag: &str, severity: &str) {
        self.flags.with_label_values(&[flag, severity]).inc();
    }

    /// An ended session.
    pub fn session_ended(&self, labels: [&str; 3], seconds: f64) {
        self.session_duration
            .with_label_values(&self.capped(3, labels))
            .observe(seconds);
    }

    /// Raises `mcpscope_events_lost_total{stage,reason}` to `total` (the
    /// source keeps the running total; counters only go up).
    pub fn set_lost(&self, stage: &str, reason: &str, total: u64) {
        raise(&self.health.with_label_values(&[stage, reason]), total);
    }

    /// Raises `mcpscope_bytes_lost_total{stage,reason}` to `total`.
    pub fn set_bytes_lost(&self, stage: &str, reason: &str, total: u64) {
        raise(&self.bytes_lost.with_label_values(&[stage, reason]), total);
    }

    /// Raises a kernel program's run count and run time to the kernel's
    /// totals (`bpf_prog_info.run_cnt`, `run_time_ns`).
    pub fn set_program_stats(&self, program: &str, runs: u64, run_ns: u64) {
        raise(&self.prog_runs.with_label_values(&[program]), runs);
        let c = self.prog_run_seconds.with_label_values(&[program]);
        let total = run_ns as f64 / 1e9;
        if total > c.get() {
            c.inc_by(total - c.get());
        }
    }

    /// Raises `mcpscope_parse_errors_total{protocol,reason}` to `total`.
    pub fn set_parse_errors(&self, protocol: &str, reason: &str, total: u64) {
        raise(
            &self.parse_errors.with_label_values(&[protocol, reason]),
            total,
        );
    }

    /// Raises the counter `name` (one of [`COUNTERS`]) to `total`.
    pub fn set_total(&self, name: &str, total: u64) {
        if let Some(c) = self.totals.get(name) {
            raise(c, total);
        }
    }

    /// Sets the gauge `name` (one of [`GAUGES`]).
    pub fn set_gauge(&self, name: &str, value: i64) {
        if let Some(g) = self.gauges.get(name) {
            g.set(value);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

fn raise(c: &prometheus::IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_are_capped_and_overflow_counted() {
        let m = Metrics::new(2);
        for tool in ["a", "b", "c", "d"] {
            m.message(
                ["tools/call", "request", "pipe", "", "", "", "cli", tool],
                "to_server",
                10,
            );
        }
        let text = m.render();
        assert!(text.contains(r#"mcp_server_name="_overflow""#), "{text}");
        assert!(
            text.contains(r#"mcpscope_label_sets_overflow_total{metric="mcp_messages_total"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn histograms_use_the_otel_buckets() {
        let m = Metrics::new(10);
        m.observe_server(
            [
                "tools/call",
                "echo",
                "",
                "pipe",
                "2025-11-25",
                "",
                "",
                "",
                "c",
                "s",
            ],
            0.015,
        );
        let text = m.render();
        assert!(
            text.contains(r#"le="0.02""#) && text.contains(r#"le="300""#),
            "{text}"
        );
        assert!(text.contains("mcpscope_build_info"));
    }
}

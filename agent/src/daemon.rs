//! `mcpscope run`: load the probes, pump the ring buffer through the
//! pipeline, serve `/readyz`, stop cleanly on SIGINT/SIGTERM.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    audit::{AuditConfig, AuditLog, AuditSink},
    capture::loader::{ProbeConfig, Probes},
    capture::record::Recorder,
    detect::{policy::Policy, DetectConfig, Detectors},
    identity::kube::{self, KubeSettings, PodDirectory},
    metrics::Metrics,
    pipeline::{monotonic_now_ns, monotonic_to_realtime_offset, Pipeline, PipelineConfig},
    serve::{self, Health},
    sink::{JsonlWriter, Sink, StdoutMode},
    world::LiveWorld,
};

/// Everything `mcpscope run` is told.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Kernel-side settings.
    pub probes: ProbeConfig,
    /// Pipeline settings.
    pub pipeline: PipelineConfig,
    /// JSONL output file.
    pub output: Option<PathBuf>,
    /// What goes to stdout.
    pub stdout: StdoutMode,
    /// Address of /readyz, /healthz and /metrics.
    pub metrics_addr: SocketAddr,
    /// Cap of distinct label sets per metric family.
    pub max_label_sets: usize,
    /// The audit trail, if kept.
    pub audit: Option<AuditConfig>,
    /// Capture file for `mcpscope replay`.
    pub record: Option<PathBuf>,
    /// Detectors: configuration, policy, state directory (`None` = off).
    pub detect: Option<(DetectConfig, Option<Policy>, Option<PathBuf>)>,
    /// Kubernetes pod enrichment (`None` = off).
    pub kube: Option<KubeSettings>,
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> Result<()> {
    let listener = serve::bind(opts.metrics_addr).await?;
    let health = Arc::new(Health::default());
    tokio::spawn(serve::serve(listener, health.clone()));

    let mut sinks: Vec<Box<dyn Sink + Send>> = Vec::new();
    if let Some(path) = &opts.output {
        sinks
            .push(Box::new(JsonlWriter::create(path).with_context(|| {
                format!("opening --output {}", path.display())
            })?));
    }
    match opts.stdout {
        StdoutMode::Json => sinks.push(Box::new(JsonlWriter::new(std::io::stdout(), false))),
        StdoutMode::Pretty => sinks.push(Box::new(JsonlWriter::new(std::io::stdout(), true))),
        StdoutMode::None => {}
    }

    if let Some(cfg) = &opts.audit {
        let log = AuditLog::open(cfg.clone())
            .with_context(|| format!("opening the audit trail in {}", cfg.dir.display()))?;
        sinks.push(Box::new(AuditSink::new(log)));
    }
    let (mut probes, ring, control) = Probes::load(&opts.probes)?;
    let tls_files = probes.attach_tls();
    // Loading parsed the kernel's BTF (megabytes, now freed): give the freed
    // heap back to the system instead of carrying it as resident memory.
    // SAFETY: malloc_trim only releases free memory of this process's heap.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    // SAFETY: the ring buffer owns its map fd, which stays open and
    // unchanged for as long as the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer with tokio: {e}"))?;
    let metrics = Arc::new(Metrics::new(opts.max_label_sets));
    let offset = monotonic_to_realtime_offset();
    let recorder = match &opts.record {
        Some(path) => Some(Arc::new(Mutex::new(
            Recorder::create(path, offset)
                .with_context(|| format!("creating --record {}", path.display()))?,
        ))),
        None => None,
    };
    let mut pipeline =
        Pipeline::new(opts.pipeline.clone(), control, sinks, offset).with_metrics(metrics.clone());
    if let Some((cfg, policy, state)) = &opts.detect {
        let d = Detectors::new(cfg.clone(), policy.clone(), state.clone());
        if let Some(r) = &recorder {
            let mut r = r.lock().expect("recorder");
            r.fact("detect_config", &cfg.raw);
            r.fact("detect_policy", &policy.as_ref().map(|p| p.raw.clone()));
            r.fact("detect_baselines", d.baselines());
        }
        pipeline = pipeline.with_detectors(d);
    }
    let pods = match &opts.kube {
        Some(k) => {
            let client = kube::client(k)
                .await
                .context("configuring the Kubernetes client")?;
            let dir = Arc::new(PodDirectory::default());
            tokio::spawn(kube::watch_pods(client, k.clone(), dir.clone()));
            say!(
                "mcpscope: kubernetes: watching pods on node {} ({})",
                k.node,
                k.api_url.as_deref().unwrap_or("in-cluster")
            );
            Some(dir)
        }
        None => None,
    };
    let mut world = match &recorder {
        Some(r) => {
            r.lock().expect("recorder").fact("config", &opts.pipeline);
            LiveWorld::recording(r.clone())
        }
        None => LiveWorld::default(),
    };
    if let Some(d) = &pods {
        world = world.with_pods(d.clone());
    }
    pipeline = pipeline.with_world(Box::new(world));
    let mut start = agent_config(&opts, probes.attached);
    start["tls_files"] = serde_json::json!(tls_files);
    pipeline.record("agent_start", &start);
    let mut losses = LossTracker::default();
    {
        let m = metrics.clone();
        *health.metrics.lock().expect("metrics lock") = Some(Box::new(move || m.render()));
    }
    metrics.set_gauge("mcpscope_probes_attached", probes.attached as i64);
    metrics.set_gauge(
        "mcpscope_tls_files_attached",
        probes.tls_files().len() as i64,
    );
    metrics.set_gauge(
        "mcpscope_ringbuf_size_bytes",
        i64::from(opts.probes.ringbuf_bytes),
    );
    let mut ticks: u64 = 0;

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    health.ready.store(true, Ordering::Release);
    say!(
        "mcpscope: ready: {} programs attached; /readyz on http://{}",
        probes.attached,
        opts.metrics_addr
    );

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    if let Some(r) = &recorder {
                        r.lock().expect("recorder").record(&item);
                    }
                    pipeline.on_record(&item);
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                // The kernel wakes us only once a batch is pending: records
                // below that wait at most one tick.
                let rb = ring.get_mut();
                while let Some(item) = rb.next() {
                    if let Some(r) = &recorder {
                        r.lock().expect("recorder").record(&item);
                    }
                    pipeline.on_record(&item);
                }
                let now = monotonic_now_ns();
                if let Some(r) = &recorder {
                    r.lock().expect("recorder").tick(now);
                }
                pipeline.tick(now);
                ticks += 1;
                if ticks.is_multiple_of(250) {
                    // New OpenSSL files (containers, runtimes) every 5 s.
                    for f in probes.attach_tls() {
                        pipeline.record("tls_attach", &serde_json::json!({ "file": f }));
                    }
                    metrics.set_gauge("mcpscope_probes_attached", probes.attached as i64);
                    metrics.set_gauge("mcpscope_tls_files_attached", probes.tls_files().len() as i64);
                }
                if ticks.is_multiple_of(50) {
                    export(&pipeline, &probes, &metrics);
                    if let Some(d) = &pods {
                        export_kube(d, &metrics);
                    }
                    losses.report(&mut pipeline, &probes);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    health.ready.store(false, Ordering::Release);
    // Drain what the kernel already queued, then flush everything.
    let rb = ring.get_mut();
    while let Some(item) = rb.next() {
        if let Some(r) = &recorder {
            r.lock().expect("recorder").record(&item);
        }
        pipeline.on_record(&item);
    }
    losses.report(&mut pipeline, &probes);
    let stop = serde_json::json!({ "messages": pipeline.stats().messages, "records": pipeline.stats().records });
    pipeline.record("agent_stop", &stop);
    pipeline.finish();
    if let Some(r) = &recorder {
        let mut r = r.lock().expect("recorder");
        r.tick(u64::MAX / 4);
        r.flush().context("flushing --record")?;
    }
    export(&pipeline, &probes, &metrics);
    let k = probes.counters();
    drop(probes); // detach before the summary: nothing more is captured
    log_summary(&pipeline, &k);
    Ok(())
}

/// The configuration, as the `agent_start` audit record states it.
fn agent_config(o: &RunOptions, attached: usize) -> serde_json::Value {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "programs_attached": attached,
        "capture_cap": o.probes.capture_cap,
        "ringbuf_bytes": o.probes.ringbuf_bytes,
        "tls_threads": o.probes.tls_threads,
        "max_message_bytes": o.pipeline.max_message_bytes,
        "pair_window_ms": o.pipeline.pair_window_ms,
        "max_pending_per_session": o.pipeline.max_pending_per_session,
        "max_sessions": o.pipeline.max_sessions,
        "capture_payloads": o.pipeline.capture_payloads,
        "metrics_addr": o.metrics_addr.to_string(),
        "output": o.output.as_ref().map(|p| p.display().to_string()),
        "audit_dir": o.audit.as_ref().map(|a| a.dir.display().to_string()),
        "audit_keyed": o.audit.as_ref().is_some_and(|a| a.hmac_key.is_some()),
        "record": o.record.as_ref().map(|p| p.display().to_string()),
        "kubernetes": o.kube.as_ref().map(|k| serde_json::json!({
            "api": k.api_url.as_deref().unwrap_or("in-cluster"), "node": k.node, "trust_domain": k.trust_domain,
        })),
        "detect": o.detect.as_ref().map(|(c, p, s)| serde_json::json!({
            "config": c.raw, "policy": p.as_ref().map(|p| p.raw.clone()), "state_dir": s.as_ref().map(|s| s.display().to_string()),
        })),
    })
}

/// Puts every increase of a loss counter on the record: a gap in capture is
/// itself audited.
#[derive(Default)]
struct LossTracker {
    last: std::collections::BTreeMap<String, u64>,
}

impl LossTracker {
    fn report<C: crate::stream::StreamControl>(&mut self, p: &mut Pipeline<C>, probes: &Probes) {
        use mcpscope_common::counter as k;
        let c = probes.counters();
        let s = p.stats().clone();
        let pair = p.pair_stats();
        let now: [(&str, u64); 12] = [
            (
                "kernel.ringbuf_full_records",
                c[k::RINGBUF_FULL_RECORDS as usize],
            ),
            (
                "kernel.ringbuf_full_bytes",
                c[k::RINGBUF_FULL_BYTES as usize],
            ),
            (
                "kernel.truncated_syscalls",
                c[k::TRUNCATED_SYSCALLS as usize],
            ),
            ("kernel.truncated_bytes", c[k::TRUNCATED_BYTES as usize]),
            ("kernel.read_faults", c[k::READ_FAULTS as usize]),
            ("kernel.tls_calls_lost", c[k::TLS_CALLS_LOST as usize]),
            ("userspace.decode_errors", s.decode_errors),
            ("userspace.gap_bytes", s.gap_bytes),
            ("userspace.truncated_unsalvageable", s.truncated_dropped),
            ("userspace.invalid_json", s.parse_invalid_json),
            ("pairing.pending_evicted", pair.evicted),
            ("userspace.sink_errors", s.sink_errors),
        ];
        let mut delta = serde_json::Map::new();
        for (name, v) in now {
            let before = self.last.insert(name.to_owned(), v).unwrap_or(0);
            if v > before {
                delta.insert(name.to_owned(), (v - before).into());
            }
        }
        if !delta.is_empty() {
            p.record("loss", &serde_json::Value::Object(delta));
        }
    }
}

/// Copies kernel and pipeline counters into the metrics (once a second).
fn export<C: crate::stream::StreamControl>(p: &Pipeline<C>, probes: &Probes, m: &Metrics) {
    use mcpscope_common::counter as k;
    let c = probes.counters();
    let at = |i: u32| c[i as usize];
    m.set_lost("kernel", "ringbuf_full", at(k::RINGBUF_FULL_RECORDS));
    m.set_lost("kernel", "read_fault", at(k::READ_FAULTS));
    m.set_lost("kernel", "tls_calls_lost", at(k::TLS_CALLS_LOST));
    m.set_lost("kernel", "capture_cap", at(k::TRUNCATED_SYSCALLS));
    m.set_bytes_lost("kernel", "ringbuf_full", at(k::RINGBUF_FULL_BYTES));
    m.set_bytes_lost("kernel", "capture_cap", at(k::TRUNCATED_BYTES));
    m.set_total("mcpscope_captured_syscalls_total", at(k::CAPTURED_SYSCALLS));
    m.set_total("mcpscope_captured_bytes_total", at(k::CAPTURED_BYTES));
    for (program, runs, ns) in probes.program_stats() {
        m.set_program_stats(&program, runs, ns);
    }
    m.set_gauge(
        "mcpscope_ringbuf_pending_bytes",
        at(k::RINGBUF_PENDING_BYTES) as i64,
    );
    p.export_metrics(m);
}

fn export_kube(d: &PodDirectory, m: &Metrics) {
    let s = &d.stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    m.set_total("mcpscope_kube_watch_events_total", get(&s.events));
    m.set_total("mcpscope_kube_watch_errors_total", get(&s.errors));
    m.set_total("mcpscope_kube_pods_other_node_total", get(&s.other_node));
    m.set_total(
        "mcpscope_kube_owner_lookup_failures_total",
        get(&s.owner_lookup_failures),
    );
    m.set_gauge("mcpscope_kube_pods", d.len() as i64);
}

fn log_summary<C: crate::stream::StreamControl>(p: &Pipeline<C>, kernel: &[u64]) {
    let s = p.stats();
    let pair = p.pair_stats();
    let ch = p.channel_stats();
    let names = mcpscope_common::counter::NAMES;
    let k: Vec<String> = names
        .iter()
        .zip(kernel)
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    let http = p.http_stats();
    let (h, e) = (http.http, http.sse);
    say!(
        "mcpscope: stopped: messages={} records={} decode_errors={} invalid_json={} not_jsonrpc={} truncated={} gap_bytes={} unmatched_responses={} evicted_requests={} deduplicated={} reader_only={} close_missed={} http_messages={} http_bad_heads={} http_bad_chunks={} http_resyncs={} http_resync_bytes={} http_decode_errors={} http_oversized_bodies={} http_skipped_body_bytes={} http_status_errors={} sse_events={} sse_empty_events={} sse_cut_events={} kernel: {}",
        s.messages, s.records, s.decode_errors, s.parse_invalid_json, s.parse_not_jsonrpc, s.truncated_messages, s.gap_bytes, pair.unmatched, pair.evicted, ch.deduplicated, ch.reader_only, s.streams_close_missed,
        h.messages, h.bad_heads, h.bad_chunks, h.resyncs, h.resync_bytes, h.decode_errors, h.oversized_bodies, h.skipped_body_bytes, http.status_errors, e.events, e.empty_events, h.cut_sse_events,
        k.join(" ")
    );
}

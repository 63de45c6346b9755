//! `mcpscope run`: load the probes, pump the ring buffer through the
//! pipeline, serve `/readyz`, stop cleanly on SIGINT/SIGTERM.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    capture::loader::{ProbeConfig, Probes},
    metrics::Metrics,
    pipeline::{monotonic_now_ns, monotonic_to_realtime_offset, Pipeline, PipelineConfig},
    serve::{self, Health},
    sink::{JsonlWriter, Sink, StdoutMode},
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

    let (probes, ring, control) = Probes::load(&opts.probes)?;
    // SAFETY: the ring buffer owns its map fd, which stays open and
    // unchanged for as long as the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer with tokio: {e}"))?;
    let metrics = Arc::new(Metrics::new(opts.max_label_sets));
    let offset = monotonic_to_realtime_offset();
    let mut pipeline =
        Pipeline::new(opts.pipeline.clone(), control, sinks, offset).with_metrics(metrics.clone());
    {
        let m = metrics.clone();
        *health.metrics.lock().expect("metrics lock") = Some(Box::new(move || m.render()));
    }
    metrics.set_gauge("mcpscope_probes_attached", probes.attached as i64);
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
    eprintln!(
        "mcpscope: ready: {} programs attached; /readyz on http://{}",
        probes.attached, opts.metrics_addr
    );

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    pipeline.on_record(&item);
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                pipeline.tick(monotonic_now_ns());
                ticks += 1;
                if ticks.is_multiple_of(50) {
                    export(&pipeline, &probes, &metrics);
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
        pipeline.on_record(&item);
    }
    pipeline.finish();
    export(&pipeline, &probes, &metrics);
    let k = probes.counters();
    drop(probes); // detach before the summary: nothing more is captured
    log_summary(&pipeline, &k);
    Ok(())
}

/// Copies kernel and pipeline counters into the metrics (once a second).
fn export<C: crate::stream::StreamControl>(p: &Pipeline<C>, probes: &Probes, m: &Metrics) {
    use mcpscope_common::counter as k;
    let c = probes.counters();
    let at = |i: u32| c[i as usize];
    m.set_lost("kernel", "ringbuf_full", at(k::RINGBUF_FULL_RECORDS));
    m.set_lost("kernel", "read_fault", at(k::READ_FAULTS));
    m.set_lost("kernel", "args_map_full", at(k::ARGS_MAP_FULL));
    m.set_lost("kernel", "capture_cap", at(k::TRUNCATED_SYSCALLS));
    m.set_bytes_lost("kernel", "ringbuf_full", at(k::RINGBUF_FULL_BYTES));
    m.set_bytes_lost("kernel", "capture_cap", at(k::TRUNCATED_BYTES));
    m.set_total("mcpscope_captured_syscalls_total", at(k::CAPTURED_SYSCALLS));
    m.set_total("mcpscope_captured_bytes_total", at(k::CAPTURED_BYTES));
    m.set_gauge(
        "mcpscope_ringbuf_pending_bytes",
        at(k::RINGBUF_PENDING_BYTES) as i64,
    );
    p.export_metrics(m);
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
    eprintln!(
        "mcpscope: stopped: messages={} records={} decode_errors={} invalid_json={} not_jsonrpc={} truncated={} gap_bytes={} unmatched_responses={} evicted_requests={} deduplicated={} reader_only={} kernel: {}",
        s.messages, s.records, s.decode_errors, s.parse_invalid_json, s.parse_not_jsonrpc, s.truncated_messages, s.gap_bytes, pair.unmatched, pair.evicted, ch.deduplicated, ch.reader_only, k.join(" ")
    );
}

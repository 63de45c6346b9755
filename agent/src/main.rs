//! The `mcpscope` command line.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use mcpscope::{
    audit::{
        query::{self, parse_time, Filter},
        verify::Verdict,
        AuditConfig,
    },
    capture::loader::ProbeConfig,
    daemon::{self, RunOptions},
    detect::{policy::Policy, DetectConfig, Detectors},
    identity::kube::KubeSettings,
    investigate::{self, Format},
    pipeline::PipelineConfig,
    sink::StdoutMode,
};

/// See every MCP exchange on this host, from the kernel up.
#[derive(Parser)]
#[command(name = "mcpscope", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the probes and report MCP messages until SIGINT/SIGTERM (root).
    Run(RunArgs),
    /// Verify an audit trail: prints OK, or the first broken record and what broke.
    Verify {
        /// The audit directory.
        dir: PathBuf,
        /// HMAC key file of a keyed chain.
        #[arg(long)]
        hmac_key: Option<PathBuf>,
    },
    /// One row per session in an audit trail.
    Sessions {
        #[command(flatten)]
        q: QueryArgs,
        /// Only sessions with flags.
        #[arg(long)]
        flagged: bool,
    },
    /// The ordered exchange of a session (or of every session of a pid).
    Timeline {
        /// Session key (see `mcpscope sessions`).
        session: Option<String>,
        #[command(flatten)]
        q: QueryArgs,
        /// Show captured payloads (recorded with --capture-payloads).
        #[arg(long)]
        payloads: bool,
    },
    /// Completed tool calls.
    Calls {
        #[command(flatten)]
        q: QueryArgs,
        /// Tool name.
        #[arg(long)]
        tool: Option<String>,
        /// `ok` or `error`.
        #[arg(long)]
        status: Option<String>,
    },
    /// Flags raised (loops, duplicates, anomalies).
    Flags {
        #[command(flatten)]
        q: QueryArgs,
        /// Flag name.
        #[arg(long)]
        kind: Option<String>,
        /// Severity.
        #[arg(long)]
        severity: Option<String>,
    },
    /// Feed a capture (`run --record`) through the pipeline offline.
    Replay {
        /// The capture file.
        file: PathBuf,
        /// Events on stdout.
        #[arg(long, value_enum, default_value = "json")]
        stdout: StdoutMode,
        /// Also write JSONL events to this file.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Do not run the detectors (even if the live run did).
        #[arg(long)]
        no_detect: bool,
        /// Benchmark: replay the capture PAIRS times with the detectors and
        /// PAIRS times without, alternating, in this one process, and print
        /// the time the detectors add per message (the median of the
        /// pairs' ratios). Interleaved in one process, the two sides share
        /// the machine's slow and fast phases.
        #[arg(long, value_name = "PAIRS", conflicts_with = "no_detect")]
        compare_detectors: Option<u32>,
    },
}

/// Where and what to query.
#[derive(clap::Args)]
struct QueryArgs {
    /// The audit directory.
    #[arg(
        long,
        default_value = "/var/lib/mcpscope/audit",
        env = "MCPSCOPE_AUDIT_DIR"
    )]
    dir: PathBuf,
    /// From this time: RFC 3339 or relative (`-1h`, `30m`).
    #[arg(long, allow_hyphen_values = true)]
    since: Option<String>,
    /// Until this time.
    #[arg(long, allow_hyphen_values = true)]
    until: Option<String>,
    /// clientInfo name.
    #[arg(long)]
    client: Option<String>,
    /// serverInfo name.
    #[arg(long)]
    server: Option<String>,
    /// Executable path (substring).
    #[arg(long)]
    exe: Option<String>,
    /// Process id (`--identity` matches it too).
    #[arg(long, alias = "identity")]
    pid: Option<u32>,
    /// Kubernetes namespace of either end.
    #[arg(long)]
    namespace: Option<String>,
    /// Kubernetes pod of either end.
    #[arg(long)]
    pod: Option<String>,
    /// Table or JSON.
    #[arg(long, value_enum, default_value = "table")]
    output: Format,
}

impl QueryArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        let t = |v: &Option<String>| {
            v.as_deref()
                .map(parse_time)
                .transpose()
                .map_err(|e| anyhow::anyhow!(e))
        };
        Ok(Filter {
            since: t(&self.since)?,
            until: t(&self.until)?,
            client: self.client.clone(),
            server: self.server.clone(),
            exe: self.exe.clone(),
            pid: self.pid,
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            flagged: false,
        })
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Append JSONL events to this file (created 0600).
    #[arg(long, short = 'o', env = "MCPSCOPE_OUTPUT")]
    output: Option<PathBuf>,
    /// Events on stdout: JSONL, a readable live view, or nothing.
    #[arg(long, value_enum, default_value = "json", env = "MCPSCOPE_STDOUT")]
    stdout: StdoutMode,
    /// Address serving /readyz, /healthz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9464", env = "MCPSCOPE_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Put each raw message into its event (`payload`), capped.
    #[arg(long, env = "MCPSCOPE_CAPTURE_PAYLOADS")]
    capture_payloads: bool,
    /// Cap of `payload` in bytes.
    #[arg(long, default_value_t = 65536, env = "MCPSCOPE_PAYLOAD_MAX_BYTES")]
    payload_max_bytes: usize,
    /// Bytes captured per syscall; beyond it a truncation marker records the gap (max 2 MiB).
    #[arg(long, default_value_t = mcpscope_common::DEFAULT_CAPTURE_CAP, env = "MCPSCOPE_CAPTURE_CAP")]
    capture_cap: u32,
    /// Kernel ring buffer size in bytes (a power of two).
    #[arg(long, default_value_t = 16 << 20, env = "MCPSCOPE_RINGBUF_SIZE")]
    ringbuf_size: u32,
    /// Threads whose TLS call state the kernel keeps at once (an LRU); a
    /// thread evicted inside an SSL call loses it (counted: tls_calls_lost).
    #[arg(long, default_value_t = mcpscope_common::DEFAULT_TLS_THREADS, env = "MCPSCOPE_TLS_THREADS")]
    tls_threads: u32,
    /// Longest message kept whole, bytes; longer ones are cut and salvaged.
    #[arg(long, default_value_t = 8 << 20, env = "MCPSCOPE_MAX_MESSAGE_BYTES")]
    max_message_bytes: usize,
    /// How long a pipe reader's copy waits for the writer's copy, ms.
    #[arg(long, default_value_t = 50, env = "MCPSCOPE_PAIR_WINDOW_MS")]
    pair_window_ms: u64,
    /// Pending requests per session before the oldest is evicted (counted).
    #[arg(long, default_value_t = 4096, env = "MCPSCOPE_MAX_PENDING_PER_SESSION")]
    max_pending_per_session: usize,
    /// Sessions held at once; past it the least recently active eighth ends
    /// early (`session_end` with `reason: "evicted"`, counted).
    #[arg(long, default_value_t = 16384, env = "MCPSCOPE_MAX_SESSIONS")]
    max_sessions: usize,
    /// Keep a tamper-evident audit trail in this directory (0700, files 0600).
    #[arg(long, env = "MCPSCOPE_AUDIT_DIR")]
    audit_dir: Option<PathBuf>,
    /// Rotate audit segments at this size, bytes.
    #[arg(long, default_value_t = 64 << 20, env = "MCPSCOPE_AUDIT_SEGMENT_BYTES")]
    audit_segment_bytes: u64,
    /// Rotate audit segments at this age (e.g. `1h`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, env = "MCPSCOPE_AUDIT_SEGMENT_AGE")]
    audit_segment_age: std::time::Duration,
    /// Keep at most this many audit segments (0 = no limit).
    #[arg(long, default_value_t = 0, env = "MCPSCOPE_AUDIT_KEEP_SEGMENTS")]
    audit_keep_segments: usize,
    /// Delete audit segments older than this (e.g. `30d`; `0s` = no limit).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, env = "MCPSCOPE_AUDIT_KEEP_AGE")]
    audit_keep_age: std::time::Duration,
    /// Keep at most this many bytes of audit segments (0 = no limit).
    #[arg(long, default_value_t = 1 << 30, env = "MCPSCOPE_AUDIT_KEEP_BYTES")]
    audit_keep_bytes: u64,
    /// fsync the audit trail after this many records (0 = not by count).
    #[arg(long, default_value_t = 1000, env = "MCPSCOPE_AUDIT_FSYNC_EVERY")]
    audit_fsync_every: u64,
    /// fsync the audit trail at least this often, ms (0 = not by time).
    #[arg(long, default_value_t = 1000, env = "MCPSCOPE_AUDIT_FSYNC_MS")]
    audit_fsync_ms: u64,
    /// Key the chain with HMAC-SHA256 using this key file.
    #[arg(long, env = "MCPSCOPE_AUDIT_HMAC_KEY")]
    audit_hmac_key: Option<PathBuf>,
    /// Write the raw kernel records (and what was learned from /proc) here, for `mcpscope replay`.
    #[arg(long, env = "MCPSCOPE_RECORD")]
    record: Option<PathBuf>,
    /// Detector thresholds (TOML; defaults in the README).
    #[arg(long, env = "MCPSCOPE_DETECT_CONFIG")]
    detect_config: Option<PathBuf>,
    /// Policy for `policy_violation` (TOML).
    #[arg(long, env = "MCPSCOPE_POLICY")]
    policy: Option<PathBuf>,
    /// Where detector baselines persist across restarts.
    #[arg(
        long,
        default_value = "/var/lib/mcpscope/state",
        env = "MCPSCOPE_STATE_DIR"
    )]
    state_dir: PathBuf,
    /// Do not run the detectors.
    #[arg(long, env = "MCPSCOPE_NO_DETECT")]
    no_detect: bool,
    /// Distinct label sets per metric family before `_overflow` (counted).
    #[arg(long, default_value_t = 2000, env = "MCPSCOPE_MAX_LABEL_SETS")]
    max_label_sets: usize,
    /// Kubernetes pod enrichment: `auto` (on inside a cluster, or with
    /// --kube-api), `on`, `off`.
    #[arg(long, value_enum, default_value = "auto", env = "MCPSCOPE_KUBERNETES")]
    kubernetes: KubeMode,
    /// Kubernetes API server URL (default: the in-cluster configuration).
    #[arg(long, env = "MCPSCOPE_KUBE_API")]
    kube_api: Option<String>,
    /// This node's name: only its pods are watched (default: the host name).
    #[arg(long, env = "MCPSCOPE_NODE_NAME")]
    node_name: Option<String>,
    /// Trust domain of the SPIFFE ids on events.
    #[arg(long, default_value = "cluster.local", env = "MCPSCOPE_TRUST_DOMAIN")]
    trust_domain: String,
}

/// When the Kubernetes pod watch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KubeMode {
    /// Inside a cluster (service account mounted) or with --kube-api.
    Auto,
    /// Always; failing to configure the client is an error.
    On,
    /// Never.
    Off,
}

impl RunArgs {
    /// The pod watch's settings, or `None` when it does not run.
    fn kube(&self) -> Option<KubeSettings> {
        let wanted = match self.kubernetes {
            KubeMode::Off => false,
            KubeMode::On => true,
            KubeMode::Auto => self.kube_api.is_some() || mcpscope::identity::kube::in_cluster(),
        };
        wanted.then(|| KubeSettings {
            api_url: self.kube_api.clone(),
            node: self.node_name.clone().unwrap_or_else(host_name),
            trust_domain: self.trust_domain.clone(),
        })
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a),
        Command::Verify { dir, hmac_key } => return verify(&dir, hmac_key.as_deref()),
        Command::Sessions { q, flagged } => q.filter().and_then(|mut f| {
            f.flagged = flagged;
            let rows = query::sessions(&q.dir, &f)?;
            answer_of(&rows, &q.dir, |r| investigate::sessions(r, q.output))
        }),
        Command::Timeline {
            session,
            q,
            payloads,
        } => (|| {
            anyhow::ensure!(
                session.is_some() || q.pid.is_some() || q.pod.is_some(),
                "name a SESSION, --pid or --pod"
            );
            let recs = query::timeline_of(&q.dir, session.as_deref(), q.pid, q.pod.as_deref())?;
            answer_of(&recs, &q.dir, |r| {
                investigate::timeline(r, payloads, q.output)
            })
        })(),
        Command::Calls { q, tool, status } => q.filter().and_then(|common| {
            let recs = query::calls(
                &q.dir,
                &query::CallFilter {
                    common,
                    tool,
                    status,
                },
            )?;
            answer_of(&recs, &q.dir, |r| investigate::calls(r, q.output))
        }),
        Command::Flags { q, kind, severity } => q.filter().and_then(|f| {
            let recs = query::flags(&q.dir, kind.as_deref(), severity.as_deref(), &f)?;
            answer_of(&recs, &q.dir, |r| investigate::flags(r, q.output))
        }),
        Command::Replay {
            file,
            stdout,
            output,
            no_detect,
            compare_detectors,
        } => replay(&file, stdout, output, !no_detect, compare_detectors),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            mcpscope::say!("mcpscope: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    if !a.ringbuf_size.is_power_of_two() || a.ringbuf_size < 4096 {
        anyhow::bail!(
            "--ringbuf-size must be a power of two of at least 4096, got {}",
            a.ringbuf_size
        );
    }
    if a.tls_threads < 16 {
        anyhow::bail!("--tls-threads must be at least 16, got {}", a.tls_threads);
    }
    if u64::from(a.capture_cap) > mcpscope_common::MAX_CAPTURE_CAP {
        anyhow::bail!(
            "--capture-cap is at most {} bytes, got {}",
            mcpscope_common::MAX_CAPTURE_CAP,
            a.capture_cap
        );
    }
    let kube = a.kube();
    let opts = RunOptions {
        kube,
        probes: ProbeConfig {
            capture_cap: a.capture_cap,
            ringbuf_bytes: a.ringbuf_size,
            tls_threads: a.tls_threads,
        },
        pipeline: PipelineConfig {
            max_message_bytes: a.max_message_bytes,
            pair_window_ms: a.pair_window_ms,
            max_pending_per_session: a.max_pending_per_session,
            max_sessions: a.max_sessions,
            capture_payloads: a.capture_payloads,
            payload_max_bytes: a.payload_max_bytes,
            ..PipelineConfig::default()
        },
        output: a.output,
        stdout: a.stdout,
        metrics_addr: a.metrics_addr,
        max_label_sets: a.max_label_sets,
        audit: match a.audit_dir {
            Some(dir) => Some(AuditConfig {
                max_segment_bytes: a.audit_segment_bytes,
                max_segment_age: a.audit_segment_age,
                keep_segments: a.audit_keep_segments,
                keep_age: a.audit_keep_age,
                keep_bytes: a.audit_keep_bytes,
                fsync_every: a.audit_fsync_every,
                fsync_interval: std::time::Duration::from_millis(a.audit_fsync_ms),
                hmac_key: a.audit_hmac_key.as_deref().map(read_key).transpose()?,
                ..AuditConfig::new(dir)
            }),
            None => None,
        },
        record: a.record,
        detect: if a.no_detect {
            None
        } else {
            let cfg = match &a.detect_config {
                Some(p) => {
                    let text = std::fs::read_to_string(p).map_err(|e| {
                        anyhow::anyhow!("reading --detect-config {}: {e}", p.display())
                    })?;
                    DetectConfig::from_toml(&text)
                        .map_err(|e| anyhow::anyhow!("--detect-config {}: {e}", p.display()))?
                }
                None => DetectConfig::default(),
            };
            let policy = match &a.policy {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .map_err(|e| anyhow::anyhow!("reading --policy {}: {e}", p.display()))?;
                    Some(
                        Policy::from_toml(&text)
                            .map_err(|e| anyhow::anyhow!("--policy {}: {e}", p.display()))?,
                    )
                }
                None => None,
            };
            Some((cfg, policy, Some(a.state_dir)))
        },
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(daemon::run(opts))
}

/// Prints a query's answer, `render`ed, and says on stderr how many
/// lines of the trail in `dir` it could not read: an answer that may lack
/// records says so.
fn answer_of<T>(
    a: &query::Answer<T>,
    dir: &std::path::Path,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    answer(&render(&a.rows))?;
    if a.unreadable > 0 {
        mcpscope::say!(
            "mcpscope: {} line(s) of the audit trail in {} could not be read (zero-filled by a disk that lost them, or edited): the answer may lack records; `mcpscope verify {}` says what happened",
            a.unreadable,
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Writes a command's answer to stdout. A reader that went away (`| head`)
/// ends the answer there, as with ripgrep: not an error, and no panic
/// (`print!` panics on a closed pipe, exit 101).
fn answer(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|e| anyhow::anyhow!("writing the answer to stdout: {e}")),
    }
}

fn read_key(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let key = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("reading the HMAC key {}: {e}", path.display()))?;
    anyhow::ensure!(
        key.len() >= 16,
        "the HMAC key {} is shorter than 16 bytes",
        path.display()
    );
    Ok(key)
}

/// Exit 0 OK, 1 broken, 2 torn by a crash (not yet resumed), 3 usage error,
/// 4 records lost by the disk, as the trail had named them in doubt.
fn verify(dir: &std::path::Path, key: Option<&std::path::Path>) -> ExitCode {
    let key = match key.map(read_key).transpose() {
        Ok(k) => k,
        Err(e) => {
            mcpscope::say!("mcpscope: error: {e:#}");
            return ExitCode::from(3);
        }
    };
    match mcpscope::audit::verify::verify(dir, key.as_deref()) {
        Ok(v) => {
            // The verdict is in the exit code too: a reader gone
            // away does not change it.
            let _ = answer(&format!("{v}\n"));
            match v {
                Verdict::Ok { .. } => ExitCode::SUCCESS,
                Verdict::Broken { .. } => ExitCode::from(1),
                Verdict::Torn { .. } => ExitCode::from(2),
                Verdict::Lost { .. } => ExitCode::from(4),
            }
        }
        Err(e) => {
            mcpscope::say!("mcpscope: error: reading {}: {e}", dir.display());
            ExitCode::from(3)
        }
    }
}

fn replay(
    file: &std::path::Path,
    stdout: StdoutMode,
    output: Option<PathBuf>,
    detect: bool,
    compare_detectors: Option<u32>,
) -> anyhow::Result<()> {
    use mcpscope::{
        capture::record::{self, Frame},
        pipeline::Pipeline,
        sink::{JsonlWriter, Sink},
        stream::NoControl,
        world::ReplayWorld,
    };
    let (offset, frames) =
        record::read(file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let mut cfg = PipelineConfig::default();
    let (mut dcfg, mut dpolicy, mut dbase) = (None, None, None);
    // What the live run learned from /proc, for each replay's world.
    let mut facts = Vec::new();
    for f in &frames {
        if let Frame::Fact(k, v) = f {
            if k == "config" {
                cfg = serde_json::from_value(v.clone())?;
            } else if k == "detect_config" {
                dcfg = Some(DetectConfig::from_toml(v.as_str().unwrap_or_default())?);
            } else if k == "detect_policy" {
                dpolicy = v
                    .as_str()
                    .map(Policy::from_toml)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!(e))?;
            } else if k == "detect_baselines" {
                dbase = Some(serde_json::from_value(v.clone())?);
            } else {
                facts.push((k, v));
            }
        }
    }
    // One replay: a pipeline made as the live run's, fed every frame.
    let once = |detect: bool| -> anyhow::Result<(f64, mcpscope::pipeline::PipelineStats)> {
        let mut world = ReplayWorld::default();
        for &(k, v) in &facts {
            world.add(k.clone(), v.clone());
        }
        let mut sinks: Vec<Box<dyn Sink + Send>> = Vec::new();
        if let Some(p) = &output {
            sinks.push(Box::new(JsonlWriter::create(p)?));
        }
        match stdout {
            StdoutMode::Json => sinks.push(Box::new(JsonlWriter::new(std::io::stdout(), false))),
            StdoutMode::Pretty => sinks.push(Box::new(JsonlWriter::new(std::io::stdout(), true))),
            StdoutMode::None => {}
        }
        let mut p =
            Pipeline::new(cfg.clone(), NoControl, sinks, offset).with_world(Box::new(world));
        if let Some(dc) = dcfg.clone().filter(|_| detect) {
            // The live run's detectors, from its starting baselines; nothing persisted.
            p = p.with_detectors(
                Detectors::new(dc, dpolicy.clone(), None)
                    .with_baselines(dbase.clone().unwrap_or_default()),
            );
        }
        let t0 = std::time::Instant::now();
        feed(&mut p, &frames);
        // The pipeline's own speed on one core (the capture file already in memory).
        Ok((t0.elapsed().as_secs_f64(), p.stats().clone()))
    };
    if let Some(pairs) = compare_detectors {
        anyhow::ensure!(
            dcfg.is_some(),
            "the capture was recorded without the detectors"
        );
        let mut ratios = Vec::new();
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let mut messages = 0.0;
        for i in 0..pairs.max(1) {
            // Which side goes first swaps every pair.
            let ((w, _), (wo, plain)) = if i % 2 == 0 {
                let w = once(true)?;
                (w, once(false)?)
            } else {
                let wo = once(false)?;
                (once(true)?, wo)
            };
            ratios.push(w / wo);
            with.push(w);
            without.push(wo);
            messages = plain.messages as f64;
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (r, lo, hi) = (median(&mut ratios), ratios[0], ratios[ratios.len() - 1]);
        mcpscope::say!(
            "mcpscope: compared pairs={} messages={messages} added_pct={:.1} min_pct={:.1} max_pct={:.1} with_us={:.3} without_us={:.3}",
            ratios.len(),
            (r - 1.0) * 100.0,
            (lo - 1.0) * 100.0,
            (hi - 1.0) * 100.0,
            median(&mut with) / messages * 1e6,
            median(&mut without) / messages * 1e6,
        );
        return Ok(());
    }
    let (secs, s) = once(detect)?;
    mcpscope::say!(
        "mcpscope: replayed messages={} message_bytes={} records={} seconds={secs:.3} messages_per_s={:.0} mb_per_s={:.1}",
        s.messages,
        s.message_bytes,
        s.records,
        s.messages as f64 / secs,
        s.message_bytes as f64 / secs / 1e6
    );
    Ok(())
}

/// Feeds every frame of a capture to `p`, then finishes it. Never
/// inlined: `cargo xtask bench` counts the instructions in it alone
/// (callgrind's `--toggle-collect=mcpscope::feed`).
#[inline(never)]
fn feed(
    p: &mut mcpscope::pipeline::Pipeline<mcpscope::stream::NoControl>,
    frames: &[mcpscope::capture::record::Frame],
) {
    use mcpscope::capture::record::Frame;
    for f in frames {
        match f {
            Frame::Record(bytes) => p.on_record(bytes),
            Frame::Tick(now) => p.tick(*now),
            Frame::Fact(..) => {}
        }
    }
    p.finish();
}

//! The `mcpscope` command line.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use mcpscope::{
    capture::loader::ProbeConfig,
    daemon::{self, RunOptions},
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
    /// Longest message kept whole, bytes; longer ones are cut and salvaged.
    #[arg(long, default_value_t = 8 << 20, env = "MCPSCOPE_MAX_MESSAGE_BYTES")]
    max_message_bytes: usize,
    /// How long a pipe reader's copy waits for the writer's copy, ms.
    #[arg(long, default_value_t = 50, env = "MCPSCOPE_PAIR_WINDOW_MS")]
    pair_window_ms: u64,
    /// Pending requests per session before the oldest is evicted (counted).
    #[arg(long, default_value_t = 4096, env = "MCPSCOPE_MAX_PENDING_PER_SESSION")]
    max_pending_per_session: usize,
    /// Distinct label sets per metric family before `_overflow` (counted).
    #[arg(long, default_value_t = 2000, env = "MCPSCOPE_MAX_LABEL_SETS")]
    max_label_sets: usize,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcpscope: error: {e:#}");
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
    if u64::from(a.capture_cap) > mcpscope_common::MAX_CAPTURE_CAP {
        anyhow::bail!(
            "--capture-cap is at most {} bytes, got {}",
            mcpscope_common::MAX_CAPTURE_CAP,
            a.capture_cap
        );
    }
    let opts = RunOptions {
        probes: ProbeConfig {
            capture_cap: a.capture_cap,
            ringbuf_bytes: a.ringbuf_size,
        },
        pipeline: PipelineConfig {
            max_message_bytes: a.max_message_bytes,
            pair_window_ms: a.pair_window_ms,
            max_pending_per_session: a.max_pending_per_session,
            capture_payloads: a.capture_payloads,
            payload_max_bytes: a.payload_max_bytes,
            ..PipelineConfig::default()
        },
        output: a.output,
        stdout: a.stdout,
        metrics_addr: a.metrics_addr,
        max_label_sets: a.max_label_sets,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(daemon::run(opts))
}

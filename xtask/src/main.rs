//! `cargo xtask`: everything mcpscope needs, from a fresh machine, in two
//! commands (`run`, `test`). Each step says what it does and is idempotent.

mod bench;
mod build;
mod image;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Set-up, build, run and test mcpscope")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the eBPF build needs (rust-src, bpf-linker).
    Setup,
    /// Build the kernel programs and `target/release/mcpscope` (object embedded).
    Build,
    /// Build, then run `mcpscope run --stdout pretty` on this host (root).
    Run {
        /// Extra arguments for `mcpscope run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the static binary and the container image with podman.
    Image,
    /// Criterion micro-benchmarks, then the agent measured with real
    /// workloads (root); writes BENCHMARKS.md.
    Bench {
        /// `criterion` or `agent` for one half; `replay` (the pipeline and
        /// detector figures) or `realistic` (the SDK workloads) alone, not
        /// written; another word filters criterion.
        only: Option<String>,
    },
    /// Set up, build, install the pinned MCP software, run unit and end-to-end tests.
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::toolchain(),
        Cmd::Build => build::all(),
        Cmd::Run { args } => {
            build::all()?;
            build::run_agent(&args)
        }
        Cmd::Image => image::build_image(),
        Cmd::Bench { only } => bench::all(only.as_deref()),
        Cmd::Test { filter } => test::all(filter.as_deref()),
    }
}

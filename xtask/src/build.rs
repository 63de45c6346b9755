//! Build: the kernel programs (nightly, bpfel-unknown-none, build-std) and
//! the agent with the object embedded.

use std::process::Command;

use anyhow::Result;

use crate::{
    setup,
    util::{root, run, step, target},
};

/// Path of the built kernel object.
pub fn ebpf_object() -> std::path::PathBuf {
    target().join("bpfel-unknown-none/release/mcpscope-ebpf")
}

/// Path of the built agent.
pub fn agent_binary() -> std::path::PathBuf {
    target().join("release/mcpscope")
}

/// Sets up the toolchain, builds the kernel object, then the agent.
pub fn all() -> Result<()> {
    setup::toolchain()?;
    step("building the kernel programs (agent-ebpf, bpfel-unknown-none)");
    let path = std::env::join_paths(std::iter::once(setup::tools_bin()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    run(Command::new("cargo")
        .current_dir(root())
        .args([
            "+nightly",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "-p",
            "mcpscope-ebpf",
        ])
        .env("PATH", path)
        // BTF (--btf, from debug info) is required: bpf_loop callbacks need func_info.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "debuginfo=2", "-C", "link-arg=--btf"].join("\u{1f}"),
        ))?;
    step("building target/release/mcpscope");
    run(Command::new("cargo")
        .current_dir(root())
        .args(["build", "--release", "-p", "mcpscope"])
        .env("MCPSCOPE_EBPF_OBJECT", ebpf_object()))?;
    Ok(())
}

/// Runs the agent with the live, readable view.
pub fn run_agent(args: &[String]) -> Result<()> {
    step("running `mcpscope run --stdout pretty` (Ctrl-C to stop)");
    run(Command::new(agent_binary())
        .args(["run", "--stdout", "pretty"])
        .args(args))
}

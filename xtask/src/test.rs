//! Test: set-up, build, install the pinned MCP software, then unit tests
//! and the end-to-end tests (real probes, real MCP software), serially —
//! every agent sees the whole host, so parallel tests would watch each other.

use std::process::Command;

use anyhow::Result;

use crate::{
    build, setup,
    util::{root, run, step},
};

/// Runs everything `cargo xtask test` promises.
pub fn all(filter: Option<&str>) -> Result<()> {
    let t0 = std::time::Instant::now();
    build::all()?;
    setup::test_software()?;
    step("unit tests");
    let mut unit = Command::new("cargo");
    unit.current_dir(root()).args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "mcpscope-e2e",
    ]);
    if let Some(f) = filter {
        unit.arg(f);
    }
    run(&mut unit)?;
    step("end-to-end tests (real eBPF probes, real MCP software)");
    let mut e2e = Command::new("cargo");
    e2e.current_dir(root())
        .args(["test", "--release", "-p", "mcpscope-e2e"])
        .env("MCPSCOPE_BIN", build::agent_binary());
    if std::env::var("CI").as_deref() == Ok("true") {
        e2e.env("MCPSCOPE_E2E_REQUIRED", "1");
    }
    e2e.arg("--");
    if let Some(f) = filter {
        e2e.arg(f);
    }
    e2e.arg("--test-threads=1");
    run(&mut e2e)?;
    step(&format!(
        "all tests passed in {:.0} s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

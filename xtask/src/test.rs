//! Test: set-up, build, install the pinned MCP software, then unit tests
//! and the end-to-end tests (real probes, real MCP software), serially —
//! every agent sees the whole host, so parallel tests would watch each other.

use std::process::Command;

use anyhow::Result;

use crate::{
    build, image, setup,
    util::{root, step},
};

/// Runs everything `cargo xtask test` promises.
pub fn all(filter: Option<&str>) -> Result<()> {
    let t0 = std::time::Instant::now();
    build::all()?;
    setup::test_software()?;
    setup::deploy_tools()?;
    // The failed-fsync test makes a thin-provisioned ext4 on a loop device.
    setup::system_packages(&[("mkfs.ext4", "e2fsprogs"), ("losetup", "mount")])?;
    // The podman test runs the image built from this very tree.
    image::image_only()?;
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
    let mut totals = Totals::default();
    totals.run(&mut unit)?;
    step("end-to-end tests (real eBPF probes, real MCP software)");
    let mut e2e = Command::new("cargo");
    e2e.current_dir(root())
        .args(["test", "--release", "-p", "mcpscope-e2e"])
        .env("MCPSCOPE_BIN", build::agent_binary())
        .env("MCPSCOPE_IMAGE", image::IMAGE)
        .env("MCPSCOPE_HELM", setup::helm())
        .env("CONTAINERS_CONF", setup::containers_conf());
    if std::env::var("CI").as_deref() == Ok("true") {
        e2e.env("MCPSCOPE_E2E_REQUIRED", "1");
    }
    e2e.arg("--");
    if let Some(f) = filter {
        e2e.arg(f);
    }
    e2e.arg("--test-threads=1");
    totals.run(&mut e2e)?;
    step(&format!(
        "all tests passed in {:.0} s",
        t0.elapsed().as_secs_f64()
    ));
    // One closing line for the whole run (cargo's own last line is a
    // doc-test binary's "0 passed").
    println!("xtask: {} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

/// Sums cargo's `test result:` lines across test binaries.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    /// Runs `cargo test`, echoing its stdout and adding up its results.
    fn run(&mut self, cmd: &mut Command) -> Result<()> {
        use std::io::{BufRead, BufReader};
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
        for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                self.passed += count(rest, "passed");
                self.failed += count(rest, "failed");
            }
        }
        let status = child.wait()?;
        if !status.success() {
            println!(
                "xtask: {} passed, {} failed",
                self.passed,
                self.failed.max(1)
            );
            anyhow::bail!("{cmd:?} failed ({status})");
        }
        Ok(())
    }
}

/// The number before `word` in "ok. 29 passed; 0 failed; …".
fn count(result: &str, word: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| {
            part.trim()
                .strip_suffix(word)?
                .trim()
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_cargo_test_results() {
        let line =
            "ok. 29 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.02s";
        assert_eq!(
            (super::count(line, "passed"), super::count(line, "failed")),
            (29, 2)
        );
    }
}

//! `cargo xtask image`: a static agent binary in a `FROM scratch` image,
//! built with podman (no Docker engine needed).

use std::{fs, process::Command};

use anyhow::Result;

use crate::{
    build, setup,
    util::{root, run, step, target},
};

/// Image name and tag built by `cargo xtask image`.
pub const IMAGE: &str = "localhost/mcpscope:dev";

/// Path of the statically linked agent.
pub fn static_binary() -> std::path::PathBuf {
    target().join("x86_64-unknown-linux-gnu/release/mcpscope")
}

/// Builds the kernel object, the static binary and the image.
pub fn build_image() -> Result<()> {
    build::all()?;
    image_only()
}

/// Builds the static binary and the image (the kernel object is built).
pub fn image_only() -> Result<()> {
    setup::system_packages(&[("podman", "podman"), ("runc", "runc")])?;
    step("building a static target/x86_64-unknown-linux-gnu/release/mcpscope (+crt-static)");
    run(Command::new("cargo")
        .current_dir(root())
        .args([
            "build",
            "--release",
            "-p",
            "mcpscope",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("MCPSCOPE_EBPF_OBJECT", build::ebpf_object())
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "target-feature=+crt-static"].join("\u{1f}"),
        )
        // A small image: no debug info, symbols stripped.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols"))?;
    let ctx = target().join("image-context");
    let _ = fs::remove_dir_all(&ctx);
    fs::create_dir_all(&ctx)?;
    fs::copy(static_binary(), ctx.join("mcpscope"))?;
    step(&format!("podman build -t {IMAGE}"));
    run(setup::podman()
        .args(["build", "--quiet", "-f"])
        .arg(root().join("deploy/Containerfile"))
        .args(["-t", IMAGE])
        .arg(&ctx))?;
    Ok(())
}

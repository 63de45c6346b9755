//! Set-up: the eBPF toolchain and the pinned MCP software the tests drive.
//! Versions are pinned here and nowhere else.

use std::{fs, os::unix::fs::symlink, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::util::{output, root, run, step, succeeds, target};

/// bpf-linker release built against the nightly toolchain's LLVM.
const BPF_LINKER: &str = "0.13.0";
/// The official Python SDK and its HTTP server.
pub const PY_PACKAGES: &[&str] = &["mcp==2.3.0", "uvicorn==0.54.0"];
/// npm reference servers and tools.
pub const NPM_PACKAGES: &[&str] = &[
    "@modelcontextprotocol/server-everything@2026.8.31",
    "@modelcontextprotocol/server-filesystem@2026.8.31",
    "@modelcontextprotocol/inspector@0.15.0",
];

/// rust-src for nightly and bpf-linker in `target/tools/bin`.
pub fn toolchain() -> Result<()> {
    if !succeeds(Command::new("rustc").args(["+nightly", "--version"])) {
        bail!("the nightly Rust toolchain is missing (the kernel crate needs -Z build-std); install it with `rustup toolchain install nightly`");
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    if !Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        step("installing rust-src for the nightly toolchain (needed to build `core` for bpfel-unknown-none)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    bpf_linker(&sysroot)
}

/// Path of the bpf-linker binary set-up installs.
pub fn tools_bin() -> std::path::PathBuf {
    target().join("tools/bin")
}

fn bpf_linker(sysroot: &str) -> Result<()> {
    let bin = tools_bin().join("bpf-linker");
    if output(Command::new(&bin).arg("--version")).is_ok_and(|v| v.contains(BPF_LINKER)) {
        return Ok(());
    }
    // bpf-linker must use rustc's own LLVM major. Debian ships older LLVMs,
    // but the nightly toolchain's libLLVM exports the C API and the BPF
    // target: give the build a prefix whose lib/ has it under both names.
    let lib = Path::new(sysroot).join("lib");
    let so = fs::read_dir(&lib)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM.so."))
        .context("the nightly toolchain has no libLLVM.so.* in its sysroot")?;
    let major = so
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or("")
        .to_owned();
    let prefix = target().join("tools/llvm");
    fs::create_dir_all(prefix.join("lib"))?;
    for name in ["libLLVM.so", so.as_str()] {
        let link = prefix.join("lib").join(name);
        let _ = fs::remove_file(&link);
        symlink(lib.join(&so), &link)?;
    }
    step(&format!("building bpf-linker {BPF_LINKER} against the nightly toolchain's LLVM {major} (about a minute, once)"));
    run(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .arg("--root")
        .arg(target().join("tools"))
        .env("LLVM_PREFIX", &prefix))?;
    Ok(())
}

/// The Python venv and npm packages the end-to-end tests drive.
pub fn test_software() -> Result<()> {
    let e2e = target().join("e2e");
    fs::create_dir_all(&e2e)?;
    let venv = e2e.join("venv");
    let marker = venv.join(".mcpscope-pins");
    let pins = PY_PACKAGES.join(" ");
    if fs::read_to_string(&marker).ok().as_deref() != Some(pins.as_str()) {
        step(&format!("installing {pins} into {}", venv.display()));
        let python = find_python()?;
        run(Command::new(&python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PY_PACKAGES))?;
        fs::write(&marker, &pins)?;
    }
    let node = e2e.join("node");
    let marker = node.join(".mcpscope-pins");
    let pins = NPM_PACKAGES.join(" ");
    if fs::read_to_string(&marker).ok().as_deref() != Some(pins.as_str()) {
        if !succeeds(Command::new("npm").arg("--version")) {
            bail!("npm is missing: install Node.js 20 and npm (`apt-get install nodejs npm`)");
        }
        step(&format!("installing {pins} into {}", node.display()));
        fs::create_dir_all(&node)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&node)
            .args(NPM_PACKAGES))?;
        fs::write(&marker, &pins)?;
    }
    let _ = root();
    Ok(())
}

fn find_python() -> Result<String> {
    for p in ["python3", "/usr/bin/python3"] {
        if succeeds(Command::new(p).args(["-c", "import venv, ensurepip"])) {
            return Ok(p.to_owned());
        }
    }
    bail!("no python3 with the venv module: install it (`apt-get install python3-venv`)")
}

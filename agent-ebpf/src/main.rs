//! mcpscope's kernel side. Syscall tracepoints, plus uprobes on the TLS
//! library for plaintext (`tls`): this kernel family has no kprobes and
//! refuses fentry/fexit, and tracepoints are a stable ABI.
//!
//! Flow: `sys_exit_*` knows how many bytes moved, reads the arguments from
//! the task's saved registers, decides whether the fd is worth capturing and
//! copies the bytes into the ring buffer in chunks. Everything else (framing,
//! parsing, identities) happens in userspace.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod capture;
#[cfg(target_arch = "bpf")]
mod files;
#[cfg(target_arch = "bpf")]
mod lifecycle;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod tls;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could
    // reach a panic (it would be an unbounded loop).
    loop {}
}

/// Lets `cargo clippy --workspace` type-check this crate on the host.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

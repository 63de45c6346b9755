//! fd → (file kind, inode), read from the task's file table with offsets
//! userspace took from the kernel's BTF. Done once per stream (the result is
//! cached in `STREAMS`), so its five dependent reads stay off the hot path.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use mcpscope_common::{FileOffsets, Flow, FILE_OTHER, FILE_PIPE, FILE_SOCKET, FILE_UNKNOWN};

use crate::maps::FILE_OFFSETS;

const S_IFMT: u16 = 0o170000;
const S_IFIFO: u16 = 0o010000;
const S_IFSOCK: u16 = 0o140000;

#[inline(always)]
unsafe fn read_ptr(base: u64, off: u32) -> Option<u64> {
    // bpf_probe_read_kernel: the pointers are kernel memory the verifier
    // cannot type without CO-RE, so every hop is a checked probe read.
    bpf_probe_read_kernel((base + off as u64) as *const u64)
        .ok()
        .filter(|p| *p != 0)
}

/// Kind, inode and (for TCP) connection of the current task's `fd`;
/// (FILE_UNKNOWN, 0, zero) when the offsets are unavailable or a read fails.
#[inline(always)]
pub fn file_of(fd: u32) -> (u32, u64, Flow) {
    let o = FILE_OFFSETS.load();
    let (kind, ino, file) = file_and_kind(fd, &o);
    let flow = if kind == FILE_SOCKET && o.sock_valid != 0 {
        // SAFETY: probe reads only.
        unsafe { flow_of(file, &o) }.unwrap_or(Flow::ZERO)
    } else {
        Flow::ZERO
    };
    (kind, ino, flow)
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// `file->private_data` (struct socket) → `sk` → the addresses and ports in
/// `sock_common`. Read once per stream, like the inode.
#[inline(always)]
unsafe fn flow_of(file: u64, o: &FileOffsets) -> Option<Flow> {
    let socket = read_ptr(file, o.file_private_data)?;
    let sk = read_ptr(socket, o.socket_sk)?;
    let at = |off: u32| sk + off as u64;
    let family = bpf_probe_read_kernel(at(o.skc_family) as *const u16).ok()?;
    let addr_xor = match family {
        AF_INET => {
            let d = bpf_probe_read_kernel(at(o.skc_daddr) as *const u32).ok()?;
            let s = bpf_probe_read_kernel(at(o.skc_rcv_saddr) as *const u32).ok()?;
            d ^ s
        }
        AF_INET6 => {
            let d = bpf_probe_read_kernel(at(o.skc_v6_daddr) as *const [u32; 4]).ok()?;
            let s = bpf_probe_read_kernel(at(o.skc_v6_rcv_saddr) as *const [u32; 4]).ok()?;
            d[0] ^ d[1] ^ d[2] ^ d[3] ^ s[0] ^ s[1] ^ s[2] ^ s[3]
        }
        _ => return None, // unix and other families: joined by inode
    };
    let lport = bpf_probe_read_kernel(at(o.skc_num) as *const u16).ok()?;
    let rport = u16::from_be(bpf_probe_read_kernel(at(o.skc_dport) as *const u16).ok()?);
    Some(Flow {
        lport,
        rport,
        addr_xor,
    })
}

/// Kind, inode and `struct file` pointer of the current task's `fd`.
#[inline(always)]
fn file_and_kind(fd: u32, o: &FileOffsets) -> (u32, u64, u64) {
    if o.valid == 0 {
        return (FILE_UNKNOWN, 0, 0);
    }
    // SAFETY: probe reads of kernel memory; a fault only yields None.
    unsafe {
        let task = bpf_get_current_task();
        let Some(files) = read_ptr(task, o.task_files) else {
            return (FILE_UNKNOWN, 0, 0);
        };
        let Some(fdt) = read_ptr(files, o.files_fdt) else {
            return (FILE_UNKNOWN, 0, 0);
        };
        let max = bpf_probe_read_kernel((fdt + o.fdt_max_fds as u64) as *const u32).unwrap_or(0);
        if fd >= max {
            return (FILE_UNKNOWN, 0, 0);
        }
        let Some(array) = read_ptr(fdt, o.fdt_fd) else {
            return (FILE_UNKNOWN, 0, 0);
        };
        let Some(file) = read_ptr(array + fd as u64 * 8, 0) else {
            return (FILE_UNKNOWN, 0, 0);
        };
        let Some(inode) = read_ptr(file, o.file_inode) else {
            return (FILE_UNKNOWN, 0, 0);
        };
        let ino = bpf_probe_read_kernel((inode + o.inode_ino as u64) as *const u64).unwrap_or(0);
        let mode = bpf_probe_read_kernel((inode + o.inode_mode as u64) as *const u16).unwrap_or(0);
        let kind = match mode & S_IFMT {
            S_IFIFO => FILE_PIPE,
            S_IFSOCK => FILE_SOCKET,
            0 => FILE_UNKNOWN,
            _ => FILE_OTHER,
        };
        (kind, ino, file)
    }
}

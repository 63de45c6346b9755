//! Where OpenSSL lives on this host: every `libssl.so*` mapped by a
//! process, and every executable that exports `SSL_write` itself (node
//! links OpenSSL statically). Uprobes are per file, not per process, so one
//! attachment per (device, inode) covers every process using that file,
//! now and later; a periodic rescan finds files that appear later (new
//! containers, a newly installed runtime). Paths inside other mount
//! namespaces are reached through `/proc/<pid>/root`.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Host paths attached at start even before any process maps them (Python
/// loads libssl only when it first imports `ssl`).
pub const WELL_KNOWN: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/aarch64-linux-gnu/libssl.so.3",
    "/usr/lib64/libssl.so.3",
    "/usr/lib/libssl.so.3",
    "/usr/bin/node",
    "/usr/local/bin/node",
];

/// Entry-only uprobe on `SSL_do_handshake` (resets an `SSL *`'s socket).
pub const HANDSHAKE: (&str, &str) = ("ssl_handshake", "SSL_do_handshake");

/// (uprobe program, symbol): entries; every symbol also gets the shared
/// return probe `ssl_return`.
pub const UPROBES: &[(&str, &str)] = &[
    ("ssl_write", "SSL_write"),
    ("ssl_write_ex", "SSL_write_ex"),
    ("ssl_read", "SSL_read"),
    ("ssl_read_ex", "SSL_read_ex"),
];

/// Where one entry program (and the shared return probe) goes in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The entry of this exported function.
    Symbol(&'static str),
    /// This file offset: the function an `_ex` wrapper hands its arguments
    /// to unchanged (see [`placements`]).
    Offset(u64),
}

/// The `_ex` entry points and their plain siblings: (`_ex` program,
/// `_ex` symbol, plain program, plain symbol).
const PAIRS: [(&str, &str, &str, &str); 2] = [
    ("ssl_write_ex", "SSL_write_ex", "ssl_write", "SSL_write"),
    ("ssl_read_ex", "SSL_read_ex", "ssl_read", "SSL_read"),
];

/// Where each entry program of [`UPROBES`] goes in the OpenSSL file at
/// `path` (each also gets `ssl_return` there).
///
/// A uprobe replaces a function's first instruction with a breakpoint;
/// after the probe the kernel either emulates that instruction (branches,
/// nops, `push`: see `emulated`) or single-steps a copy of it, a second
/// trap. On this machine kind that second trap costs ~8.5 µs per call
/// (the Python client's `SSL_write_ex` plus `SSL_read_ex` went from 2.3 to
/// 24 µs a round with bare tracefs probes at their entries, and to 4.9 µs
/// with probes on an emulated instruction), and it was most of the HTTPS
/// overhead. Debian's OpenSSL 3 starts `SSL_write_ex` and `SSL_read_ex`
/// with `sub $8, %rsp` (single-stepped) and then calls
/// `ssl_write_internal` / `ssl_read_internal` with the same four
/// arguments; those start with `push`. So where an `_ex` function is
/// such a wrapper (nothing but the stack adjustment before the call: the
/// argument registers reach the callee as they were), and its plain
/// sibling calls the same function too, both are probed once, at that
/// function, with the `_ex` program: it has the `_ex` arguments and
/// returns 1 with the count stored, as `SSL_write_ex` passes on. Anywhere
/// else (another build, another architecture), each symbol is probed at
/// its entry as before.
pub fn placements(path: &Path) -> Vec<(&'static str, Place)> {
    let elf = Mapped::open(path);
    let obj = elf
        .as_ref()
        .and_then(|m| object::File::parse(m.bytes()).ok())
        .filter(|o| object::Object::architecture(o) == object::Architecture::X86_64);
    let mut out = Vec::new();
    for (ex_prog, ex_sym, plain_prog, plain_sym) in PAIRS {
        match obj
            .as_ref()
            .and_then(|o| pass_through(o, ex_sym, plain_sym))
        {
            Some(offset) => out.push((ex_prog, Place::Offset(offset))),
            None => {
                out.push((plain_prog, Place::Symbol(plain_sym)));
                out.push((ex_prog, Place::Symbol(ex_sym)));
            }
        }
    }
    out
}

/// The file offset of the function the `_ex` wrapper `ex` passes its
/// arguments to, when probing it there saves a single-step and `plain`
/// calls it too (see [`placements`]).
fn pass_through(obj: &object::File<'_>, ex: &str, plain: &str) -> Option<u64> {
    let (ex_at, ex_code) = function(obj, ex)?;
    if emulated(ex_code) {
        return None; // its own entry is cheap already
    }
    let call_at = ex_at + wrapper_prefix(ex_code)? as u64;
    let target = call_target(call_at, &ex_code[(call_at - ex_at) as usize..])?;
    let (plain_at, plain_code) = function(obj, plain)?;
    let plain_calls_it = (0..plain_code.len())
        .any(|i| call_target(plain_at + i as u64, &plain_code[i..]) == Some(target));
    let (offset, code) = code_at(obj, target, 16)?;
    (plain_calls_it && emulated(code)).then_some(offset)
}

/// The length of an `_ex` wrapper's prologue before its call: an optional
/// `endbr64`, then `sub $imm8, %rsp` (which leaves the argument
/// registers alone), then a `call rel32` must follow.
fn wrapper_prefix(code: &[u8]) -> Option<usize> {
    const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
    let start = if code.starts_with(&ENDBR64) { 4 } else { 0 };
    match code.get(start..)? {
        [0x48, 0x83, 0xec, _, 0xe8, ..] => Some(start + 4),
        _ => None,
    }
}

/// Where a `call rel32` at virtual address `at` (its bytes `code`) goes.
fn call_target(at: u64, code: &[u8]) -> Option<u64> {
    match code {
        [0xe8, a, b, c, d, ..] => {
            let rel = i32::from_le_bytes([*a, *b, *c, *d]);
            Some(at.wrapping_add(5).wrapping_add(rel as i64 as u64))
        }
        _ => None,
    }
}

/// Whether x86-64 uprobes emulate this first instruction instead of
/// single-stepping it: `push` of a register, `call`/`jmp` with a
/// relative target, and nops (arch/x86/kernel/uprobes.c; this kernel's
/// costs are in [`placements`]). On a kernel that single-steps one of
/// these too (`push` is the most recent to be emulated), a probe moved
/// onto it costs what it cost at the wrapper's entry: never more.
fn emulated(code: &[u8]) -> bool {
    matches!(
        code,
        [0x50..=0x57, ..]
            | [0x41, 0x50..=0x57, ..]
            | [0xe8 | 0xe9 | 0xeb | 0x90, ..]
            | [0x0f, 0x1f, ..]
            | [0x66, 0x0f, 0x1f, ..]
    )
}

/// An exported function's virtual address and its code (its symbol's
/// size, or 128 bytes where the size is unknown).
fn function<'d>(obj: &object::File<'d>, name: &str) -> Option<(u64, &'d [u8])> {
    use object::{Object, ObjectSymbol};
    let sym = obj
        .dynamic_symbols()
        .find(|s| s.is_definition() && s.name() == Ok(name))?;
    let len = if sym.size() > 0 { sym.size() } else { 128 };
    let (_, code) = code_at(obj, sym.address(), len.min(4096))?;
    Some((sym.address(), code))
}

/// The file offset of virtual address `at` and up to `len` bytes of its
/// section from there.
fn code_at<'d>(obj: &object::File<'d>, at: u64, len: u64) -> Option<(u64, &'d [u8])> {
    use object::{Object, ObjectSection};
    let sec = obj
        .sections()
        .find(|s| s.address() <= at && at < s.address() + s.size())?;
    let (file_start, _) = sec.file_range()?;
    let data = sec.data().ok()?;
    let from = usize::try_from(at - sec.address()).ok()?;
    let to = data.len().min(from + usize::try_from(len).ok()?);
    Some((file_start + from as u64, data.get(from..to)?))
}

/// Files already handled (attached, or found to have no OpenSSL), by
/// (device, inode).
#[derive(Default)]
pub struct Seen {
    files: HashSet<(u64, u64)>,
}

impl Seen {
    /// Candidate files not seen before: `libssl.so*` in any process's maps
    /// and executables exporting `SSL_write`, plus the well-known paths.
    pub fn new_candidates(&mut self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for p in WELL_KNOWN {
            self.offer(Path::new(p).to_path_buf(), &mut out);
        }
        let Ok(dir) = fs::read_dir("/proc") else {
            return out;
        };
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) {
                for lib in libssl_paths(&maps) {
                    self.offer(PathBuf::from(format!("/proc/{pid}/root{lib}")), &mut out);
                }
            }
            // The executable itself, when it exports the symbols (static
            // OpenSSL). Checked once per file.
            self.offer(PathBuf::from(format!("/proc/{pid}/exe")), &mut out);
        }
        out
    }

    fn offer(&mut self, path: PathBuf, out: &mut Vec<PathBuf>) {
        if let Ok(m) = fs::metadata(&path) {
            if self.files.insert((m.dev(), m.ino())) && exports_ssl(&path) {
                out.push(path);
            }
        }
    }
}

/// Paths of `libssl.so*` mappings in a `/proc/<pid>/maps` text.
pub fn libssl_paths(maps: &str) -> Vec<&str> {
    let mut v: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            p.starts_with('/')
                && Path::new(p)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libssl.so"))
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// True when the ELF file exports `SSL_write` in its dynamic symbol table.
/// Reads the file through a map-less parse of its sections; files that are
/// not ELF, or too large to be worth it, say no.
pub fn exports_ssl(path: &Path) -> bool {
    use object::{Object, ObjectSymbol};
    let Some(map) = Mapped::open(path) else {
        return false;
    };
    let data = map.bytes();
    if !data.starts_with(b"\x7fELF") {
        return false;
    }
    let Ok(obj) = object::File::parse(data) else {
        return false;
    };
    obj.dynamic_symbols()
        .any(|s| s.is_definition() && s.name() == Ok("SSL_write"))
}

/// A read-only mapping of a whole file: the symbol check touches only the
/// pages of the ELF headers and dynamic symbols, not a 100 MB executable.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn open(path: &Path) -> Option<Self> {
        use std::os::fd::AsRawFd;
        let f = fs::File::open(path).ok()?;
        let len = usize::try_from(f.metadata().ok()?.len()).ok()?;
        if len < 64 || !f.metadata().ok()?.is_file() {
            return None;
        }
        // Shared, not private: the kernel writes the breakpoint of every
        // uprobe registered on this file (another agent's, an earlier
        // instance's still stopping, any tracer's) into each private
        // mapping that may execute — a private read-only one may — so the
        // code read there would show `int3` at their offsets. A shared
        // mapping shows the page cache: the file's own bytes.
        // SAFETY: a shared read-only mapping of a file we opened (read
        // only, so it cannot write the file); the mapping outlives the fd
        // legitimately and is unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(Self { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes mapped at `ptr` until drop.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_mappings_are_found_in_maps() {
        let maps = "7f00-7f10 r--p 00000000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3\n\
                    7f10-7f20 r-xp 00010000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3\n\
                    7f20-7f30 r--p 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n\
                    7f30-7f40 rw-p 00000000 00:00 0 [heap]\n";
        assert_eq!(
            libssl_paths(maps),
            ["/usr/lib/x86_64-linux-gnu/libssl.so.3"]
        );
    }

    #[test]
    fn an_ex_wrapper_is_probed_at_the_function_it_passes_its_arguments_to() {
        // Debian's OpenSSL 3 (this machine kind's): `SSL_write_ex` is
        // `sub $8,%rsp; call ssl_write_internal`, and `SSL_write` calls
        // the same function; so for reads.
        let ssl = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let placed = placements(ssl);
        let progs: Vec<&str> = placed.iter().map(|(p, _)| *p).collect();
        assert_eq!(progs, ["ssl_write_ex", "ssl_read_ex"], "{placed:x?}");
        let elf = Mapped::open(ssl).expect("readable");
        let obj = object::File::parse(elf.bytes()).expect("ELF");
        for ((prog, place), wrapper) in placed.iter().zip(["SSL_write_ex", "SSL_read_ex"]) {
            let Place::Offset(at) = *place else {
                panic!("{prog}: {place:x?}, not a function its wrapper calls");
            };
            // The wrapper's own entry is single-stepped; the offset is the
            // file offset of the function its call goes to, which starts
            // with an instruction the kernel emulates (`push`).
            let (ex_at, ex_code) = function(&obj, wrapper).expect("exported");
            assert!(!emulated(ex_code), "{wrapper}'s entry is single-stepped");
            let call_at = ex_at + wrapper_prefix(ex_code).expect("a wrapper") as u64;
            let target = call_target(call_at, &ex_code[(call_at - ex_at) as usize..]);
            let (offset, code) = code_at(&obj, target.expect("a call"), 4).expect("in .text");
            assert_eq!(at, offset, "{prog} goes where {wrapper} calls");
            assert!(emulated(code), "{code:x?}");
            assert_eq!(&elf.bytes()[at as usize..][..code.len()], code);
        }
    }

    #[test]
    fn wrappers_calls_and_emulated_instructions_are_decoded_exactly() {
        // `sub $8,%rsp; call +0x10`, with and without endbr64.
        let plain = [0x48, 0x83, 0xec, 0x08, 0xe8, 0x10, 0, 0, 0];
        assert_eq!(wrapper_prefix(&plain), Some(4));
        let cet = [&[0xf3, 0x0f, 0x1e, 0xfa][..], &plain].concat();
        assert_eq!(wrapper_prefix(&cet), Some(8));
        // Anything else before the call (an argument changed) is not one.
        assert_eq!(wrapper_prefix(&[0x48, 0x63, 0xd2, 0xe8, 0, 0, 0, 0]), None);
        assert_eq!(wrapper_prefix(&[0x48, 0x83, 0xec, 0x08, 0x31, 0xd2]), None);
        // rel32 is from the next instruction, and may be negative.
        assert_eq!(call_target(0x1000, &[0xe8, 0x10, 0, 0, 0]), Some(0x1015));
        assert_eq!(
            call_target(0x35a14, &[0xe8, 0x87, 0xfb, 0xff, 0xff]),
            Some(0x355a0)
        );
        assert_eq!(call_target(0x1000, &[0xe9, 0x10, 0, 0, 0]), None);
        assert_eq!(call_target(0x1000, &[0xe8, 0x10]), None, "cut short");
        // push %rbp, push %r14, call, nop; not sub, mov or ret.
        for yes in [
            &[0x55][..],
            &[0x41, 0x56],
            &[0xe8, 0, 0, 0, 0],
            &[0x0f, 0x1f, 0],
        ] {
            assert!(emulated(yes), "{yes:x?}");
        }
        for no in [
            &[0x48, 0x83, 0xec, 0x08][..],
            &[0x48, 0x89, 0xe5],
            &[0xc3],
            &[],
        ] {
            assert!(!emulated(no), "{no:x?}");
        }
    }

    #[test]
    fn system_libssl_exports_ssl_write_and_libc_does_not() {
        let ssl = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert!(ssl.exists(), "this machine kind has OpenSSL 3");
        assert!(exports_ssl(ssl));
        assert!(!exports_ssl(Path::new(
            "/usr/lib/x86_64-linux-gnu/libc.so.6"
        )));
    }
}

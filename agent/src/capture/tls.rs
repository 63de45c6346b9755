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
        // SAFETY: a private read-only mapping of a file we opened; the
        // mapping outlives the fd legitimately and is unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
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
    fn system_libssl_exports_ssl_write_and_libc_does_not() {
        let ssl = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert!(ssl.exists(), "this machine kind has OpenSSL 3");
        assert!(exports_ssl(ssl));
        assert!(!exports_ssl(Path::new(
            "/usr/lib/x86_64-linux-gnu/libc.so.6"
        )));
    }
}

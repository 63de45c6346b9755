//! Loading and attaching the kernel programs, with pre-flight checks whose
//! errors name the fix.

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        trace_point::TracePointLinkId,
        uprobe::{UProbe, UProbeAttachLocation, UProbeLinkId, UProbeScope},
        TracePoint,
    },
    Ebpf, EbpfLoader,
};
use mcpscope_common::{counter, stream_key, StreamInfo, STREAM_IGNORED};

use super::tls::Place;

/// The eBPF object, embedded at build time by `build.rs`.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mcpscope-ebpf.o"));

const TRACEFS: &str = "/sys/kernel/tracing";

/// (program, tracepoint category, tracepoint name).
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("exit_read", "syscalls", "sys_exit_read"),
    ("exit_write", "syscalls", "sys_exit_write"),
    ("exit_readv", "syscalls", "sys_exit_readv"),
    ("exit_writev", "syscalls", "sys_exit_writev"),
    ("exit_recvfrom", "syscalls", "sys_exit_recvfrom"),
    ("exit_sendto", "syscalls", "sys_exit_sendto"),
    ("exit_recvmsg", "syscalls", "sys_exit_recvmsg"),
    ("exit_sendmsg", "syscalls", "sys_exit_sendmsg"),
    ("exit_close", "syscalls", "sys_exit_close"),
    ("sched_exec", "sched", "sched_process_exec"),
    ("sched_exit", "sched", "sched_process_exit"),
];

/// Load-time settings of the kernel side.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Per-syscall capture cap, bytes.
    pub capture_cap: u32,
    /// Ring buffer size, bytes (power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// Threads whose TLS state the kernel keeps at once (`TLS_THREADS`,
    /// an LRU): a thread evicted while inside an SSL call loses that call,
    /// counted as `tls_calls_lost`.
    pub tls_threads: u32,
}

/// One attachment, by program name.
enum LinkOf {
    TracePoint(&'static str, TracePointLinkId),
    UProbe(&'static str, UProbeLinkId),
}

/// The loaded, attached kernel programs. Dropping it detaches everything.
pub struct Probes {
    _ebpf: Ebpf,
    links: Vec<LinkOf>,
    counters: PerCpuArray<MapData, u64>,
    /// Number of attached programs.
    pub attached: usize,
    tls_seen: super::tls::Seen,
    tls_files: Vec<String>,
}

/// Userspace's handle on the kernel's per-fd capture decisions.
pub struct KernelControl {
    streams: BpfHashMap<MapData, u64, StreamInfo>,
    tls_fds: BpfHashMap<MapData, u64, u32>,
}

impl Probes {
    /// Runs the pre-flight checks, loads the object and attaches every
    /// program. Returns the probes, the event ring buffer and the control.
    pub fn load(cfg: &ProbeConfig) -> Result<(Self, RingBuf<MapData>, KernelControl)> {
        preflight()?;
        if EBPF_OBJECT.is_empty() {
            bail!("this mcpscope binary was built without its eBPF object; build it with `cargo xtask build`");
        }
        let me = std::process::id();
        let group_dead = exit_group_dead_offset().unwrap_or(0);
        let cap = cfg.capture_cap.min(mcpscope_common::MAX_CAPTURE_CAP as u32);
        let offsets = match super::btf::file_offsets() {
            Ok(o) => o,
            Err(e) => {
                log::warn!("{e}: fd kinds will be resolved through /proc only (short-lived fds may not be joined)");
                mcpscope_common::FileOffsets::default()
            }
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("AGENT_TGID", &me, true)
            .override_global("CAPTURE_CAP", &cap, true)
            .override_global("EXIT_GROUP_DEAD_OFFSET", &group_dead, true)
            .override_global("FILE_OFFSETS", &offsets, true)
            .map_max_entries("EVENTS", cfg.ringbuf_bytes)
            .map_max_entries("TLS_THREADS", cfg.tls_threads)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object into the kernel")?;
        let mut attached = 0;
        let mut links = Vec::new();
        for (prog, category, name) in TRACEPOINTS {
            let tp: &mut TracePoint = ebpf
                .program_mut(prog)
                .with_context(|| format!("program {prog} missing from the eBPF object"))?
                .try_into()?;
            tp.load()
                .with_context(|| format!("the verifier rejected {prog}"))?;
            let id = tp
                .attach(category, name)
                .with_context(|| format!("attaching {prog} to {category}:{name}"))?;
            links.push(LinkOf::TracePoint(prog, id));
            attached += 1;
        }
        for prog in super::tls::UPROBES
            .iter()
            .map(|(p, _)| *p)
            .chain(["ssl_return", super::tls::HANDSHAKE.0])
        {
            let up: &mut UProbe = ebpf
                .program_mut(prog)
                .with_context(|| format!("program {prog} missing from the eBPF object"))?
                .try_into()?;
            up.load()
                .with_context(|| format!("the verifier rejected {prog}"))?;
        }
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map")?)?;
        let streams = BpfHashMap::try_from(ebpf.take_map("STREAMS").context("STREAMS map")?)?;
        let tls_fds = BpfHashMap::try_from(ebpf.take_map("TLS_FDS").context("TLS_FDS map")?)?;
        let counters = PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map")?)?;
        Ok((
            Self {
                _ebpf: ebpf,
                links,
                counters,
                attached,
                tls_seen: super::tls::Seen::default(),
                tls_files: Vec::new(),
            },
            ring,
            KernelControl { streams, tls_fds },
        ))
    }

    /// Finds OpenSSL files not seen before (see [`super::tls`]) and attaches
    /// the TLS uprobes to each; returns the newly attached files. A file
    /// that fails is logged and skipped (it stays seen: no retry storm).
    pub fn attach_tls(&mut self) -> Vec<String> {
        let mut new = Vec::new();
        for path in self.tls_seen.new_candidates() {
            match self.attach_tls_file(&path) {
                Ok(n) => {
                    log::info!("TLS: {n} uprobes on {}", path.display());
                    let shown = fs::read_link(&path).unwrap_or(path);
                    new.push(shown.display().to_string());
                }
                Err(e) => log::warn!("TLS: not attached to {}: {e:#}", path.display()),
            }
        }
        self.tls_files.extend(new.iter().cloned());
        new
    }

    /// Files with TLS uprobes attached.
    pub fn tls_files(&self) -> &[String] {
        &self.tls_files
    }

    fn attach_tls_file(&mut self, path: &Path) -> Result<usize> {
        let mut n = 0;
        let mut last_err = None;
        let (hp, hs) = super::tls::HANDSHAKE;
        let placed = super::tls::placements(path);
        for (p, place) in &placed {
            if let Place::Offset(o) = place {
                log::info!(
                    "TLS: {p} on {} at file offset {o:#x}, the function its wrapper calls (no single-step there)",
                    path.display()
                );
            }
        }
        let pairs = placed
            .into_iter()
            .flat_map(|(p, place)| [(p, place), ("ssl_return", place)])
            .chain([(hp, Place::Symbol(hs))]);
        for (p, place) in pairs {
            // A build without the `_ex` variants still gets the others.
            let up: &mut UProbe = self
                ._ebpf
                .program_mut(p)
                .with_context(|| format!("program {p}"))?
                .try_into()?;
            let at = match place {
                Place::Symbol(s) => UProbeAttachLocation::Symbol(s),
                Place::Offset(o) => UProbeAttachLocation::AbsoluteOffset(o),
            };
            match up.attach(at, path, UProbeScope::AllProcesses) {
                Ok(id) => {
                    self.links.push(LinkOf::UProbe(p, id));
                    n += 1
                }
                Err(e) => {
                    last_err = Some(anyhow::Error::new(e).context(format!("{p} at {place:?}")))
                }
            }
        }
        self.attached += n;
        match (n, last_err) {
            (0, Some(e)) => Err(e),
            _ => Ok(n),
        }
    }

    /// Per program: (name, runs, nanoseconds run), from the kernel's
    /// program info. The kernel counts only while `kernel.bpf_stats_enabled`
    /// is 1 (it costs a clock read per run, so it is off by default).
    pub fn program_stats(&self) -> Vec<(String, u64, u64)> {
        self._ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((
                    name.to_owned(),
                    info.run_count(),
                    info.run_time().as_nanos() as u64,
                ))
            })
            .collect()
    }

    /// Kernel counters summed over CPUs, indexed like `mcpscope_common::counter`.
    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                *slot = if i as u32 == counter::RINGBUF_PENDING_BYTES {
                    values.iter().copied().max().unwrap_or(0) // a gauge
                } else {
                    values.iter().sum()
                };
            }
        }
        out
    }
}

impl crate::stream::StreamControl for KernelControl {
    fn ignore(&mut self, tgid: u32, fd: u32) {
        // Failure only means the entry could not be written (map full of
        // newer entries); the stream stays captured and userspace drops it.
        let info = StreamInfo {
            state: STREAM_IGNORED,
            ..StreamInfo::default()
        };
        let _ = self.streams.insert(stream_key(tgid, fd), info, 0);
    }

    fn ignore_tls(&mut self, tgid: u32, fd: u32) {
        let _ = self.tls_fds.insert(stream_key(tgid, fd), STREAM_IGNORED, 0);
    }

    fn forget(&mut self, tgid: u32, fd: u32) {
        let _ = self.streams.remove(&stream_key(tgid, fd));
        let _ = self.tls_fds.remove(&stream_key(tgid, fd));
    }
}

/// Checks the things a user can fix, each failing with one line naming the fix.
pub fn preflight() -> Result<()> {
    check_kernel_version()?;
    check_capabilities()?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        // The syscall programs read their arguments through BTF pointers
        // (`bpf_task_pt_regs`), which the verifier types from it.
        bail!("kernel BTF (/sys/kernel/btf/vmlinux) is missing: mcpscope needs a kernel built with CONFIG_DEBUG_INFO_BTF=y");
    }
    ensure_tracefs()
}

fn check_kernel_version() -> Result<()> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) < (5, 17) {
        bail!("kernel {} is too old: mcpscope needs Linux 5.17 or newer (bpf_loop); upgrade the node's kernel", release.trim());
    }
    Ok(())
}

/// Effective capability bits from /proc/self/status.
fn effective_caps() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

fn check_capabilities() -> Result<()> {
    const CAP_DAC_READ_SEARCH: u32 = 2;
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    // Loading and attaching: CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN.
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            missing.push("CAP_BPF");
        }
        if !has(CAP_PERFMON) {
            missing.push("CAP_PERFMON");
        }
    }
    // Identities and fd resolution read other processes' /proc/<pid>/{fd,exe,environ}.
    if !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE");
    }
    if !has(CAP_DAC_READ_SEARCH) {
        missing.push("CAP_DAC_READ_SEARCH");
    }
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "mcpscope must run as root with {} (running as uid {euid}); try `sudo mcpscope run`",
            missing.join(", ")
        );
    }
    bail!("missing capabilities {}: grant them (Kubernetes: securityContext.capabilities.add; podman/docker: --cap-add) or run as full root", missing.join(", "))
}

fn ensure_tracefs() -> Result<()> {
    let events = Path::new(TRACEFS).join("events/syscalls");
    if events.exists() {
        return Ok(());
    }
    log::info!("tracefs is not mounted; mounting it at {TRACEFS}");
    let src = c"tracefs";
    let target = c"/sys/kernel/tracing";
    // SAFETY: constant NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 || !events.exists() {
        let err = std::io::Error::last_os_error();
        bail!("tracefs is not mounted at {TRACEFS} and mounting it failed ({err}); run `mount -t tracefs tracefs {TRACEFS}` (in Kubernetes, mount the host's /sys/kernel/tracing)");
    }
    Ok(())
}

/// Offset of `group_dead` in this kernel's sched_process_exit record.
fn exit_group_dead_offset() -> Option<u32> {
    let fmt = fs::read_to_string(Path::new(TRACEFS).join("events/sched/sched_process_exit/format"))
        .ok()?;
    let line = fmt.lines().find(|l| l.contains(" group_dead;"))?;
    let off = line.split("offset:").nth(1)?.split(';').next()?;
    off.trim().parse().ok()
}

impl Drop for Probes {
    /// Detaches every link from a thread of its own. Each detach costs
    /// the kernel a tracepoint unregistration with its grace periods,
    /// about 80–130 ms on a small VM, and the kernel serialises those; side
    /// by side, the rest of each detach overlaps: an idle agent's shutdown
    /// went from 3.9 to 2.6 s (three runs each).
    fn drop(&mut self) {
        let mut owned: Vec<Box<dyn Send>> = Vec::with_capacity(self.links.len());
        for link in self.links.drain(..) {
            let ebpf = &mut self._ebpf;
            let taken = match link {
                LinkOf::TracePoint(p, id) => {
                    take_link(ebpf, p, |tp: &mut TracePoint| tp.take_link(id).ok())
                }
                LinkOf::UProbe(p, id) => {
                    take_link(ebpf, p, |up: &mut UProbe| up.take_link(id).ok())
                }
            };
            // A link not taken stays with its program and is detached
            // when the object drops, after these.
            owned.extend(taken);
        }
        std::thread::scope(|s| {
            for link in owned {
                s.spawn(move || drop(link));
            }
        });
    }
}

/// The owned link `take` gets from program `name` (of type `P`).
fn take_link<P, L: Send + 'static>(
    ebpf: &mut Ebpf,
    name: &str,
    take: impl FnOnce(&mut P) -> Option<L>,
) -> Option<Box<dyn Send>>
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    let prog: &mut P = ebpf.program_mut(name)?.try_into().ok()?;
    take(prog).map(|l| Box::new(l) as Box<dyn Send>)
}

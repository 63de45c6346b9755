//! `cargo xtask bench`: the criterion micro-benchmarks, then the agent
//! measured on this machine with real workloads — overhead on the traced
//! workload (worst case and realistic, also against strace), kernel cost per
//! program, latency from syscall to event, footprint with 1,000 sessions,
//! idle CPU, and the pipeline's replay speed. Every overhead figure is a
//! ratio within one run, A and B alternating, medians and spread reported.
//! Prints a table and writes BENCHMARKS.md.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    build, setup,
    util::{output, root, run, step, target},
};

/// Alternating rounds of the worst-case overhead and the replay figures.
const ROUNDS: usize = 5;
/// Seconds per worst-case run.
const PINGPONG_SECS: &str = "2";
/// Calls of the latency run.
const CALLS: &str = "500";

/// One line of the report.
struct Row {
    figure: String,
    value: String,
    goal: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn add(&mut self, figure: &str, value: String, goal: &str, met: Option<bool>) {
        println!(
            "  {figure}: {value}{}",
            match met {
                Some(true) => "  (goal met)",
                Some(false) => "  (GOAL MISSED)",
                None => "",
            }
        );
        self.rows.push(Row {
            figure: figure.to_owned(),
            value,
            goal: goal.to_owned(),
            met,
        });
    }
}

/// Median and (min, max) of the ratios `v[i] / base[i]`, each pair taken in
/// one round.
fn paired(v: &[f64], base: &[f64]) -> (f64, f64, f64) {
    stats(&v.iter().zip(base).map(|(x, b)| x / b).collect::<Vec<_>>())
}

/// Median and (min, max) of samples.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let mid = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (mid, s[0], s[s.len() - 1])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The agent under measurement.
struct Agent {
    child: Reaped,
    addr: String,
}

impl Agent {
    fn start(extra: &[&str], stdout: Stdio) -> Result<Agent> {
        Self::start_with_state(extra, stdout, "state")
    }

    /// [`Agent::start`] with its own state directory (`target/bench/NAME`):
    /// for two agents running at once.
    fn start_with_state(extra: &[&str], stdout: Stdio, name: &str) -> Result<Agent> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let state = target().join("bench").join(name);
        // Pinned to CPU 1: the traced workloads have CPU 0 (see `on_cpu0`).
        let child = Command::new("taskset")
            .args(["-c", "1"])
            .arg(build::agent_binary())
            .args(["run", "--metrics-addr", &addr, "--state-dir"])
            .arg(&state)
            .args(extra)
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .context("starting mcpscope")?;
        let agent = Agent {
            child: Reaped(child),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(&agent.addr, "/readyz").map(|(c, _)| c) != Some(200) {
            if Instant::now() > deadline {
                bail!("mcpscope not ready after 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn metric(&self, name: &str) -> Vec<(String, f64)> {
        let body = http_get(&self.addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// CPU time of all the agent's threads so far, ns (schedstat).
    fn cpu_ns(&self) -> Result<f64> {
        let mut ns = 0.0;
        for t in fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let stat = fs::read_to_string(t?.path().join("schedstat"))?;
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .context("schedstat")?;
        }
        Ok(ns)
    }

    /// Sum of a counter over its labels.
    fn total(&self, name: &str) -> f64 {
        self.metric(name)
            .into_iter()
            .filter(|(k, _)| k == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc_kill(self.child.0.id() as i32, 15) };
        self.child.0.wait()?;
        Ok(())
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, resp.split_once("\r\n\r\n")?.1.to_owned()))
}

/// The strace invocation the overhead figures compare with.
const STRACE: [&str; 8] = [
    "strace",
    "-f",
    "-e",
    "trace=read,write",
    "-s",
    "65535",
    "-o",
    "/dev/null",
];

/// A command that runs the workload pinned to CPU 0, children included:
/// the agent has the other CPU. Unpinned, the scheduler places the two ends
/// of a ping-pong on one CPU or on both, run by run, and that alone moves
/// the rate by ±15 % on this 2-core machine — more than the effect measured.
fn on_cpu0() -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"]);
    cmd
}

fn pingpong_bin() -> PathBuf {
    target().join("release/mcp-pingpong")
}

/// Round trips per second of the Rust ping-pong pair, optionally under
/// strace. The pair is pinned to CPU 0 (a context switch per message, no
/// cross-CPU wakeups, whose cost depends on whether the other CPU idles);
/// the agent runs on the other CPU.
fn pingpong(strace: bool) -> Result<f64> {
    pingpong_paced(strace, "16", "0")
}

/// [`pingpong`] with `payload` bytes of argument text per request, paced
/// to `rate` round trips per second ("0": unpaced).
fn pingpong_paced(strace: bool, payload: &str, rate: &str) -> Result<f64> {
    let mut cmd = on_cpu0();
    if strace {
        cmd.args(STRACE);
    }
    let out = output(
        cmd.arg(pingpong_bin())
            .args(["client", PINGPONG_SECS, payload, rate]),
    )?;
    let rt = json_number(&out, "round_trips")?;
    let secs = json_number(&out, "seconds")?;
    Ok(rt / secs)
}

/// A number field of a one-line JSON object (no JSON crate in xtask).
fn json_number(line: &str, key: &str) -> Result<f64> {
    let at = line
        .find(&format!("\"{key}\":"))
        .with_context(|| format!("{key} missing in {line}"))?;
    let rest = &line[at + key.len() + 3..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Ok(rest[..end].trim().parse()?)
}

fn python() -> PathBuf {
    target().join("e2e/venv/bin/python")
}

/// The Python SDK test server over stdio.
fn py_server() -> Vec<String> {
    vec![
        python().display().to_string(),
        root().join("tests/mcp/py_server.py").display().to_string(),
        "stdio".to_owned(),
    ]
}

/// An MCP server over HTTP(S) for the bench: its URL, the certificate to
/// trust, and the process (killed on drop).
struct HttpServer {
    url: String,
    ca: Option<PathBuf>,
    child: Reaped,
}

impl HttpServer {
    /// The Python SDK test server: `streamable-http PORT` or `https PORT CERT KEY`.
    fn start(tls: bool) -> Result<HttpServer> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = on_cpu0();
        cmd.arg(python()).arg(root().join("tests/mcp/py_server.py"));
        let ca = if tls {
            let (cert, key) = bench_certificate()?;
            cmd.args(["https", &port.to_string()]).arg(&cert).arg(&key);
            Some(cert)
        } else {
            cmd.args(["streamable-http", &port.to_string()]);
            None
        };
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let scheme = if tls { "https" } else { "http" };
        let server = HttpServer {
            url: format!("{scheme}://127.0.0.1:{port}/mcp"),
            ca,
            child: Reaped(child),
        };
        // Ready when it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("{} not listening after 60 s", server.url);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

/// A self-signed certificate for 127.0.0.1 and its key, made anew (as
/// the TLS tests make theirs).
fn bench_certificate() -> Result<(PathBuf, PathBuf)> {
    let dir = target().join("bench/tls");
    fs::create_dir_all(&dir)?;
    mcpscope_e2e::self_signed_certificate(&dir).map_err(anyhow::Error::msg)
}

/// Runs the bench scenario; returns the truth header (pids, calls/s).
/// With `http`, the client calls that server instead of starting `server`.
fn sdk_run(
    server: &[String],
    kind: &str,
    file: &Path,
    strace: bool,
    http: Option<&HttpServer>,
) -> Result<String> {
    let truth = target().join("bench/truth.jsonl");
    let mut cmd = on_cpu0();
    if strace {
        cmd.args(STRACE);
    }
    cmd.arg(python());
    cmd.arg(root().join("tests/mcp/driver.py"))
        .arg("--truth")
        .arg(&truth)
        .args([
            "--scenario",
            "bench",
            "--count",
            CALLS,
            "--server-kind",
            kind,
            "--bench-file",
        ])
        .arg(file);
    match http {
        Some(h) => {
            cmd.args(["--url", &h.url]);
            if let Some(ca) = &h.ca {
                cmd.env("SSL_CERT_FILE", ca); // trust the bench's self-signed server
            }
        }
        None => {
            cmd.arg("--").args(server);
        }
    }
    cmd.stderr(Stdio::null());
    run(&mut cmd)?;
    let head = fs::read_to_string(&truth)?;
    Ok(head.lines().next().unwrap_or("").to_owned())
}

/// One overhead figure: rates without and with the agent (median, min,
/// max each), and the ratios with ÷ without and strace ÷
/// without paired within each round (median, min, max): pairing cancels
/// the machine's slow drifts, which move both runs of a round alike.
struct Overhead {
    without: (f64, f64, f64),
    with: (f64, f64, f64),
    ratio: (f64, f64, f64),
    strace_ratio: (f64, f64, f64),
    /// The ratio with the syscall slow path alone (see
    /// [`slow_path_only`]), where it was measured.
    slow_path_ratio: Option<(f64, f64, f64)>,
}

/// `once` run with the agent (its defaults, output discarded) running.
fn with_agent(once: &mut impl FnMut(bool) -> Result<f64>) -> Result<f64> {
    let agent = Agent::start(&[], Stdio::null())?;
    let rate = once(false);
    agent.stop()?;
    rate
}

/// Alternates without / with the agent / under strace, `rounds` times; the
/// first two swap places every other round so neither always runs first.
fn overhead(
    name: &str,
    rounds: usize,
    mut once: impl FnMut(bool) -> Result<f64>,
) -> Result<Overhead> {
    let (mut without, mut with, mut strace) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            without.push(once(false)?);
            with.push(with_agent(&mut once)?);
        } else {
            with.push(with_agent(&mut once)?);
            without.push(once(false)?);
        }
        strace.push(once(true)?);
        println!(
            "  {name} round {}: without {:.0}/s, with mcpscope {:.0}/s, under strace {:.0}/s",
            round + 1,
            without[round],
            with[round],
            strace[round]
        );
    }
    Ok(Overhead {
        without: stats(&without),
        with: stats(&with),
        ratio: paired(&with, &without),
        strace_ratio: paired(&strace, &without),
        slow_path_ratio: None,
    })
}

fn spread((m, lo, hi): (f64, f64, f64)) -> String {
    format!("{m:.0}/s (min {lo:.0}, max {hi:.0})")
}

fn ratio_spread((m, lo, hi): (f64, f64, f64)) -> String {
    format!("{m:.3} (min {lo:.3}, max {hi:.3})")
}

fn worst_case(r: &mut Report) -> Result<()> {
    step("worst case: Rust ping-pong of MCP tools/call messages over pipes");
    let o = overhead("ping-pong", ROUNDS, pingpong)?;
    // Four captured syscalls per round trip (two writes, two reads): the
    // round trip without the agent, stretched by the paired ratio.
    let added_us = (1.0 / o.ratio.0 - 1.0) / o.without.0 / 4.0 * 1e6;
    r.add(
        "worst case, round trips without mcpscope",
        spread(o.without),
        "",
        None,
    );
    r.add(
        "worst case, round trips with mcpscope",
        spread(o.with),
        "",
        None,
    );
    r.add(
        "worst case, ratio with ÷ without",
        ratio_spread(o.ratio),
        "",
        None,
    );
    r.add(
        "worst case, added cost per captured syscall",
        format!("{added_us:.2} µs"),
        "≤ 2 µs",
        Some(added_us <= 2.0),
    );
    r.add(
        "worst case, ratio under strace ÷ without",
        ratio_spread(o.strace_ratio),
        "(for comparison)",
        None,
    );
    uncaptured_syscalls(r)
}

/// What the agent adds to a syscall it does not capture (`getpid`, made
/// in a loop on CPU 0): its `sys_exit` tracepoints send every syscall of
/// every task on the host through the kernel's slow path.
fn uncaptured_syscalls(r: &mut Report) -> Result<()> {
    step("uncaptured syscalls: a getpid loop, the tax on every other syscall");
    let o = overhead("getpid loop", ROUNDS, |strace| {
        let mut cmd = on_cpu0();
        if strace {
            cmd.args(STRACE);
        }
        let out = output(cmd.arg(pingpong_bin()).args(["syscalls", PINGPONG_SECS]))?;
        Ok(json_number(&out, "syscalls")? / json_number(&out, "seconds")?)
    })?;
    let added_ns = (1.0 / o.ratio.0 - 1.0) / o.without.0 * 1e9;
    r.add(
        "uncaptured syscall (getpid), added cost",
        format!(
            "{added_ns:.0} ns ({:.0} ns without, ratio {}; under strace, ratio {})",
            1e9 / o.without.0,
            ratio_spread(o.ratio),
            ratio_spread(o.strace_ratio)
        ),
        "",
        None,
    );
    Ok(())
}

/// Round trips per second of the live detector-cost runs and of the
/// typical replay capture: 20,000 messages a second, below what the agent
/// keeps up with at 2 KB arguments and the JSONL output (at twice that, it
/// is at its limit on this machine and the ring buffer overflows now and
/// then). Unpaced, the pair outruns the agent, and CPU per message then
/// measures overload, not the detectors.
const LIVE_RATE: &str = "10000";
/// Rounds of the live detector-cost runs (each round measures both sides
/// at once; the ratio moves by a few percent round to round).
const LIVE_ROUNDS: usize = 9;

/// The detectors' share of the live agent's CPU per message: two agents
/// run at once, one with the detectors and one with `--no-detect`, both
/// with the default output (JSONL on stdout, here /dev/null) and both
/// pinned to CPU 1, under the ping-pong paced to [`LIVE_RATE`] with small
/// (16 B) and typical (2 KB) arguments. Each sees every message (its own
/// probes and ring buffer), so the two sides share the traffic and the
/// machine's slow and fast phases: one after the other, in separate runs,
/// the agent's CPU per message moved by ±15 % run to run, more than the
/// effect measured. A round's figure is the ratio of the two agents' CPU
/// time (all threads) per message each reported.
fn detector_cost_live(r: &mut Report) -> Result<()> {
    step("detectors: two live agents at once, with and without them, CPU per message");
    for (label, payload) in [("16 B", "16"), ("2 KB", "2000")] {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..LIVE_ROUNDS {
            let (w, wo) = live_cpu_per_message(payload)?;
            with.push(w);
            without.push(wo);
        }
        let (a, w, wo) = (paired(&with, &without), stats(&with), stats(&without));
        r.add(
            &format!("detectors' added cost per message, live agent (default JSONL output), ping-pong with {label} arguments"),
            format!(
                "{:+.1} % (min {:+.1}, max {:+.1}; {:.2} µs of agent CPU per message with, {:.2} µs without; medians of {LIVE_ROUNDS} rounds, both agents at once)",
                (a.0 - 1.0) * 100.0,
                (a.1 - 1.0) * 100.0,
                (a.2 - 1.0) * 100.0,
                w.0,
                wo.0,
            ),
            "≤ +10 %",
            Some(a.0 <= 1.10),
        );
    }
    Ok(())
}

/// One live round: the CPU µs per message of an agent with the detectors
/// and of one without, both running while the ping-pong pair ran with
/// `payload`-byte arguments. An error if either has not reported (nearly)
/// every message 30 s later: a side that fell behind would read as a
/// different cost per message.
fn live_cpu_per_message(payload: &str) -> Result<(f64, f64)> {
    let with = Agent::start_with_state(&[], Stdio::null(), "state-detect")?;
    let without = Agent::start_with_state(&["--no-detect"], Stdio::null(), "state-no-detect")?;
    let agents = [&with, &without];
    let mut start = Vec::new();
    for a in agents {
        start.push((a.cpu_ns()?, a.total("mcp_messages_total")));
    }
    let pairs = pingpong_paced(false, payload, LIVE_RATE)? * PINGPONG_SECS.parse::<f64>()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut per_msg = Vec::new();
    for (a, (cpu0, msgs0)) in agents.into_iter().zip(start) {
        while a.total("mcp_messages_total") - msgs0 < 2.0 * pairs * 0.99 {
            if Instant::now() > deadline {
                bail!(
                    "an agent reported {:.0} of {:.0} messages 30 s after the ping-pong ended",
                    a.total("mcp_messages_total") - msgs0,
                    2.0 * pairs
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let msgs = a.total("mcp_messages_total") - msgs0;
        per_msg.push((a.cpu_ns()? - cpu0) / msgs / 1e3);
    }
    with.stop()?;
    without.stop()?;
    Ok((per_msg[0], per_msg[1]))
}

fn realistic(r: &mut Report) -> Result<()> {
    step("realistic: the official Python SDK client calling real stdio servers");
    let dir = target().join("bench/files");
    fs::create_dir_all(&dir)?;
    let file = dir.join("4k.txt");
    fs::write(&file, &"mcpscope ".repeat(456).as_bytes()[..4096])?;
    let py = py_server();
    let fs_server = vec![
        "node".to_owned(),
        target()
            .join("e2e/node/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js")
            .display()
            .to_string(),
        dir.display().to_string(),
    ];
    for (name, server, kind, slow_path) in [
        ("Python SDK server, echo", &py, "python", SLOW_PATH_CYCLES),
        (
            "server-filesystem, read_text_file 4 KB",
            &fs_server,
            "filesystem",
            0,
        ),
    ] {
        let o = timeline_overhead(name, kind, &file, Client::Stdio(server), slow_path)?;
        realistic_rows(r, name, &o);
    }
    step("realistic: the official Python SDK client and server over Streamable HTTP and HTTPS");
    for (name, tls) in [
        ("Python SDK over Streamable HTTP, echo", false),
        ("Python SDK over HTTPS (TLS uprobes), echo", true),
    ] {
        let server = HttpServer::start(tls)?;
        let o = timeline_overhead(name, "python", &file, Client::Http(&server), 0)?;
        realistic_rows(r, name, &o);
    }
    Ok(())
}

/// Cycles of a realistic timeline without and with the agent, then without
/// and under strace (for comparison: fewer), the length of each window,
/// and the pause before each (what was just started or stopped settles).
///
/// Why 48: the SDK echo client alone, with no agent at all, runs in a fast
/// mode (calls of ~1.4 ms) and a slow one (~2.1 ms) that comes in bursts
/// of seconds; CPU speed and memory speed, probed alongside, stay steady.
/// Replaying this bench's schedule over 500 s of such a no-agent timeline,
/// the median of 16 paired ratios spread with a standard deviation of 2.7 %
/// and fell below 0.97 in 12 % of placements, with no overhead to find;
/// 32 cycles halved that. Ratios taken from the mean of the windows either
/// side of the agent's (rather than one neighbour) did worse: those windows
/// are seconds further apart.
const CYCLES: usize = 48;
const STRACE_CYCLES: usize = 5;
/// Cycles without and with the syscall slow path alone (no agent), for
/// the Python SDK echo over stdio: how much of the agent's cost there is
/// the kernel's, paid before any program runs.
const SLOW_PATH_CYCLES: usize = 16;
const WINDOW: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_millis(500);

/// Where the SDK client of a realistic workload finds its server.
enum Client<'a> {
    /// Started by the client over stdio: this command.
    Stdio(&'a [String]),
    /// Already listening.
    Http(&'a HttpServer),
}

/// A realistic workload's overhead, measured within one client session.
///
/// Separate runs of the Python SDK client differ by ±15 % on this machine
/// with nothing else changed, so the figure is taken inside one session:
/// the client calls without pause, pinned to CPU 0 with its server, while
/// the bench opens windows of [`WINDOW`] — [`CYCLES`] pairs without and
/// with the agent (started on CPU 1 and ready before its window opens,
/// stopped after it closes and after it has counted captured messages;
/// the pair's order swaps every cycle), then [`STRACE_CYCLES`] pairs
/// without and with `strace` attached to the client and its server. Each
/// window's rate is the calls completed in it, from the client's own
/// timeline; ratios pair the two windows of a cycle, taken seconds apart.
/// With `slow_path_cycles`, as many pairs without and with the syscall
/// slow path alone ([`slow_path_only`]) come between the agent's and
/// strace's.
fn timeline_overhead(
    name: &str,
    kind: &str,
    file: &Path,
    to: Client,
    slow_path_cycles: usize,
) -> Result<Overhead> {
    let timeline = target().join("bench/timeline.txt");
    let _ = fs::remove_file(&timeline);
    let mut cmd = on_cpu0();
    cmd.arg(python())
        .arg(root().join("tests/mcp/driver.py"))
        .arg("--truth")
        .arg(target().join("bench/truth.jsonl"))
        .args(["--scenario", "timeline", "--count", "3600"])
        .args(["--server-kind", kind, "--bench-file"])
        .arg(file)
        .arg("--timeline")
        .arg(&timeline);
    let server_pid = match to {
        Client::Http(h) => {
            cmd.args(["--url", &h.url]);
            if let Some(ca) = &h.ca {
                cmd.env("SSL_CERT_FILE", ca); // trust the bench's self-signed server
            }
            Some(h.child.0.id())
        }
        Client::Stdio(server) => {
            cmd.arg("--").args(server);
            None
        }
    };
    let mut client = Reaped(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the SDK client")?,
    );
    let ready = BufReader::new(client.0.stdout.take().context("client stdout")?)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "calling");
    if !ready {
        bail!("{name}: the SDK client exited before its first call was answered");
    }
    let mut traced = vec![client.0.id()];
    match server_pid {
        Some(p) => traced.push(p),
        None => traced.extend(children(client.0.id())?),
    }
    // Pairs of windows without and with the agent, then without and under
    // strace: strace's effect lingers for a while after it detaches, so its
    // windows come last, not between the others.
    let mut agent_pairs = Vec::new();
    for cycle in 0..CYCLES {
        let with = || {
            let agent = Agent::start(&[], Stdio::null())?;
            let w = window();
            // Proof that the window was traced: the agent counted messages
            // (its metrics are exported once a second).
            let deadline = Instant::now() + Duration::from_secs(10);
            while agent.total("mcp_messages_total") == 0.0 {
                if Instant::now() > deadline {
                    bail!("{name}: the agent captured none of the client's messages");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            agent.stop()?;
            Ok(w)
        };
        agent_pairs.push(window_pair(cycle, with)?);
    }
    let mut slow_path_pairs = Vec::new();
    for cycle in 0..slow_path_cycles {
        slow_path_pairs.push(window_pair(cycle, || {
            let perf = slow_path_only()?;
            let w = window();
            perf.stop()?;
            Ok(w)
        })?);
    }
    let mut strace_pairs = Vec::new();
    for _ in 0..STRACE_CYCLES {
        let a = window();
        let strace = strace_attach(&traced)?;
        let c = window();
        strace.stop()?;
        strace_pairs.push((a, c));
    }
    // SAFETY: signalling our own child: it stops calling and writes its
    // timeline.
    unsafe { libc_kill(client.0.id() as i32, 10) }; // SIGUSR1
    let status = client.0.wait()?;
    if !status.success() {
        bail!("{name}: the SDK client failed: {status}");
    }
    let done: Vec<f64> = fs::read_to_string(&timeline)?
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let rate = |(t0, t1): (f64, f64)| {
        done.iter().filter(|&&t| t >= t0 && t < t1).count() as f64 / (t1 - t0)
    };
    let rates = |pairs: &[(Window, Window)], what: &str| {
        let (mut base, mut other) = (Vec::new(), Vec::new());
        for (i, &(a, b)) in pairs.iter().enumerate() {
            base.push(rate(a));
            other.push(rate(b));
            println!(
                "  {name} cycle {}: without {:.0}/s, {what} {:.0}/s",
                i + 1,
                base[i],
                other[i]
            );
        }
        (base, other)
    };
    let (without, with) = rates(&agent_pairs, "with mcpscope");
    let (strace_base, strace) = rates(&strace_pairs, "under strace");
    let (slow_base, slow) = rates(&slow_path_pairs, "with the slow path alone");
    Ok(Overhead {
        without: stats(&without),
        with: stats(&with),
        ratio: paired(&with, &without),
        strace_ratio: paired(&strace, &strace_base),
        slow_path_ratio: (!slow.is_empty()).then(|| paired(&slow, &slow_base)),
    })
}

/// A child killed when dropped still running: the bench returned early (a
/// figure failed half-way). Left running, an agent's probes would weigh on
/// every figure after it, and an SDK client would keep calling for up to
/// an hour. (The kernel detaches a killed agent's programs as it exits.)
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A window of a timeline: its start and end (CLOCK_MONOTONIC, s).
type Window = (f64, f64);

/// A pair of windows, (without, `with`), the one without first in even
/// cycles and last in odd ones.
fn window_pair(cycle: usize, with: impl FnOnce() -> Result<Window>) -> Result<(Window, Window)> {
    Ok(if cycle.is_multiple_of(2) {
        let a = window();
        (a, with()?)
    } else {
        let b = with()?;
        (window(), b)
    })
}

/// One window of a timeline, opened after [`SETTLE`].
fn window() -> Window {
    std::thread::sleep(SETTLE);
    let t0 = monotonic_s();
    std::thread::sleep(WINDOW);
    (t0, monotonic_s())
}

/// `strace`, as the overhead figures run it, attached to `pids` (and their
/// threads); ready once it says each is attached.
fn strace_attach(pids: &[u32]) -> Result<Tracer> {
    let mut cmd = Command::new(STRACE[0]);
    cmd.args(&STRACE[1..]);
    for p in pids {
        cmd.arg("-p").arg(p.to_string());
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting strace")?;
    let mut said = BufReader::new(child.stderr.take().context("strace stderr")?);
    let mut attached = 0;
    let mut line = String::new();
    while attached < pids.len() {
        line.clear();
        if said.read_line(&mut line)? == 0 {
            bail!("strace exited before attaching to {pids:?}");
        }
        if pids
            .iter()
            .any(|p| line.starts_with(&format!("strace: Process {p} attached")))
        {
            attached += 1;
        }
    }
    Ok(Tracer {
        child: Reaped(child),
        _said: said,
    })
}

/// `perf stat` counting `sys_exit_close` host-wide (on CPU 1, printing
/// every 100 ms): a perf event on a syscall tracepoint and no program.
/// While it exists, every task's syscalls take the kernel's slow path, as
/// they do under the agent's `sys_exit_*` programs: what the agent costs
/// before any of its programs runs. Ready at its first interval line (the
/// event is open and counting).
fn slow_path_only() -> Result<Tracer> {
    let mut child = Command::new("taskset")
        .args(["-c", "1", "perf", "stat", "-a", "-x", ",", "-I", "100"])
        .args(["-e", "syscalls:sys_exit_close"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf stat (Debian's linux-perf)")?;
    let mut said = BufReader::new(child.stderr.take().context("perf stderr")?);
    let mut line = String::new();
    loop {
        line.clear();
        if said.read_line(&mut line)? == 0 {
            bail!("perf stat exited before counting sys_exit_close");
        }
        if line.contains("sys_exit_close") {
            break;
        }
    }
    Ok(Tracer {
        child: Reaped(child),
        _said: said,
    })
}

/// A tracing process: an attached `strace`, or [`slow_path_only`]'s perf.
/// Its stderr stays open (closed, it would die of SIGPIPE on its next
/// message).
struct Tracer {
    child: Reaped,
    _said: BufReader<std::process::ChildStderr>,
}

impl Tracer {
    /// Detaches (SIGINT) and waits.
    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc_kill(self.child.0.id() as i32, 2) };
        self.child.0.wait()?;
        Ok(())
    }
}

/// The child processes of `pid` (all its threads').
fn children(pid: u32) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task"))? {
        let text = fs::read_to_string(t?.path().join("children"))?;
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    if out.is_empty() {
        bail!("no server process under the client {pid}");
    }
    Ok(out)
}

/// CLOCK_MONOTONIC, in seconds: the clock of the client's timeline
/// (Python's `time.monotonic`).
fn monotonic_s() -> f64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC (1) always exists.
    unsafe { clock_gettime(1, &mut ts) };
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

/// The rows of one realistic workload: calls/s without and with the agent,
/// their paired ratio against its goal, and the ratio under `strace`.
fn realistic_rows(r: &mut Report, name: &str, o: &Overhead) {
    r.add(
        &format!("{name}: calls/s without"),
        spread(o.without),
        "",
        None,
    );
    r.add(
        &format!("{name}: calls/s with mcpscope"),
        spread(o.with),
        "",
        None,
    );
    r.add(
        &format!("{name}: ratio with ÷ without"),
        ratio_spread(o.ratio),
        "≥ 0.97",
        Some(o.ratio.0 >= 0.97),
    );
    if let Some(slow) = o.slow_path_ratio {
        r.add(
            &format!("{name}: ratio with the syscall slow path alone (no agent; perf counting sys_exit_close) ÷ without"),
            ratio_spread(slow),
            "(the kernel's share)",
            None,
        );
    }
    r.add(
        &format!("{name}: ratio under strace ÷ without"),
        ratio_spread(o.strace_ratio),
        "(for comparison)",
        None,
    );
}

/// Rounds of [`tls_hook_cost`]'s script per run.
const SSL_ROUNDS: &str = "100000";

/// What the TLS uprobes add to each hooked OpenSSL call, apart from any
/// I/O: Python's ssl over memory BIOs (one `SSL_write_ex` and one
/// `SSL_read_ex` a round, `tests/bench/ssl_rounds.py`) pinned to CPU 0,
/// without and with the agent, alternating, [`ROUNDS`] pairs. The traps
/// themselves are most of it: a probe on an instruction the kernel must
/// single-step costs a second trap (see `capture::tls::placements`).
fn tls_hook_cost(r: &mut Report) -> Result<()> {
    step("kernel: TLS uprobes, added cost per hooked OpenSSL call");
    let (cert, key) = bench_certificate()?;
    let round = || -> Result<f64> {
        let out = output(
            on_cpu0()
                .arg(python())
                .arg(root().join("tests/bench/ssl_rounds.py"))
                .arg(&cert)
                .arg(&key)
                .arg(SSL_ROUNDS),
        )?;
        json_number(&out, "us_per_round")
    };
    let (mut with, mut without, mut lost) = (Vec::new(), Vec::new(), 0.0);
    for i in 0..ROUNDS {
        let traced = || -> Result<(f64, f64)> {
            let agent = Agent::start(&["--stdout", "none"], Stdio::null())?;
            let us = round()?;
            // Proof that the calls were hooked: the agent reports every
            // round's message, or counts it lost (unpaced, the rounds can
            // outrun it; its metrics are exported once a second).
            let rounds: f64 = SSL_ROUNDS.parse()?;
            let deadline = Instant::now() + Duration::from_secs(10);
            // Only the stages a message can be lost in before it is
            // reported (not, say, an identity lookup given up).
            let lost = || {
                let stages = ["kernel", "decode", "framing", "tls", "join"];
                let mut m = agent.metric("mcpscope_events_lost_total");
                m.retain(|(k, _)| stages.iter().any(|s| k.contains(&format!("stage=\"{s}\""))));
                m
            };
            let accounted =
                || agent.total("mcp_messages_total") + lost().iter().map(|(_, v)| v).sum::<f64>();
            while accounted() < rounds {
                if Instant::now() > deadline {
                    bail!(
                        "the agent reported {} of the {rounds} TLS messages, and counted lost: {:?}",
                        agent.total("mcp_messages_total"),
                        lost()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let reported = agent.total("mcp_messages_total");
            agent.stop()?;
            Ok((us, rounds - reported.min(rounds)))
        };
        let mut traced_round = || -> Result<()> {
            let (us, missing) = traced()?;
            with.push(us);
            lost += missing;
            Ok(())
        };
        if i % 2 == 0 {
            without.push(round()?);
            traced_round()?;
        } else {
            traced_round()?;
            without.push(round()?);
        }
    }
    let added: Vec<f64> = with
        .iter()
        .zip(&without)
        .map(|(w, b)| (w - b) / 2.0)
        .collect();
    let (median, lo, hi) = stats(&added);
    r.add(
        "kernel: TLS uprobes, added time per hooked OpenSSL call (Python ssl, memory BIOs)",
        format!(
            "{median:.2} µs per call (min {lo:.2}, max {hi:.2}; {ROUNDS} pairs; a round of SSL_write_ex + SSL_read_ex {:.2} µs without, {:.2} µs with; unpaced, {lost:.0} of {} messages counted lost, none unaccounted)",
            stats(&without).0,
            stats(&with).0,
            ROUNDS * SSL_ROUNDS.parse::<usize>()?,
        ),
        "",
        None,
    );
    Ok(())
}

fn kernel_cost(r: &mut Report) -> Result<()> {
    step("kernel cost per program (kernel.bpf_stats_enabled=1 during one ping-pong run)");
    let knob = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let before = fs::read_to_string(knob)?.trim().to_owned();
    fs::write(knob, "1")?;
    let result = (|| -> Result<Vec<(String, f64, f64)>> {
        let agent = Agent::start(&["--stdout", "none"], Stdio::null())?;
        pingpong(false)?;
        // The agent may still be working through the ring: wait until it
        // is idle (other MCP traffic on the host may trickle on: a few
        // records a second count as idle).
        let mut last = -1e9;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            std::thread::sleep(Duration::from_millis(1100)); // metrics export once a second
            let now = metric_sum(&agent, "mcpscope_ringbuf_records_total", "");
            if now - last < 100.0 || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let runs = agent.metric("mcpscope_bpf_program_runs_total");
        let ns: Vec<(String, f64)> = agent
            .metric("mcpscope_bpf_program_run_seconds_total")
            .into_iter()
            .map(|(k, s)| (k, s * 1e9))
            .collect();
        agent.stop()?;
        let mut out = Vec::new();
        for (k, n) in runs {
            let prog = k.split('"').nth(1).unwrap_or("?").to_owned();
            let t = ns
                .iter()
                .find(|(kk, _)| kk.split('"').nth(1) == Some(prog.as_str()))
                .map_or(0.0, |(_, v)| *v);
            if n > 0.0 {
                out.push((prog, n, t / n));
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(out)
    })();
    fs::write(knob, before)?;
    for (prog, runs, per) in result? {
        r.add(
            &format!("kernel: {prog}"),
            format!("{per:.0} ns/run over {runs:.0} runs"),
            "",
            None,
        );
    }
    Ok(())
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn rfc3339_secs(ts: &str) -> Option<f64> {
    let num = |a: usize, b: usize| ts.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm) = (num(11, 13)?, num(14, 16)?);
    let ss: f64 = ts.get(17..ts.len() - 1)?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some((days * 86400 + hh * 3600 + mm * 60) as f64 + ss)
}

fn latency(r: &mut Report) -> Result<()> {
    step("latency from syscall to emitted event (events read from the agent's stdout)");
    let mut agent = Agent::start(&["--stdout", "json"], Stdio::piped())?;
    let stdout = agent.child.0.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut lat = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            let Some(at) = line.find("\"ts\":\"") else {
                continue;
            };
            let ts = &line[at + 6..];
            let pid = |end: &str| {
                let key = format!("\"{end}\":{{\"pid\":");
                let at = line.find(&key)? + key.len();
                line[at..].split([',', '}']).next()?.parse::<f64>().ok()
            };
            if let Some(t) = ts.split('"').next().and_then(rfc3339_secs) {
                lat.push(((now - t) * 1000.0, pid("from"), pid("to")));
            }
        }
        lat
    });
    let py = py_server();
    let head = sdk_run(&py, "python", Path::new(""), false, None)?;
    agent.stop()?;
    // Only the workload's messages: other MCP traffic on the host is
    // reported too, but its timing is not this measurement's.
    let pids = [
        json_number(&head, "pid")?,
        json_number(&head, "server_pid")?,
    ];
    let mut lat: Vec<f64> = reader
        .join()
        .expect("reader")
        .into_iter()
        .filter(|(_, f, t)| {
            f.is_some_and(|p| pids.contains(&p)) || t.is_some_and(|p| pids.contains(&p))
        })
        .map(|(l, _, _)| l)
        .collect();
    if lat.is_empty() {
        bail!("no events read from the agent");
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    r.add(
        "latency syscall → event, p50 / p99",
        format!("{p50:.1} ms / {p99:.1} ms over {} events", lat.len()),
        "p99 ≤ 50 ms",
        Some(p99 <= 50.0),
    );
    Ok(())
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<f64> {
    fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
}

fn footprint(r: &mut Report) -> Result<()> {
    step("footprint: 1,000 concurrent sessions, then idle");
    let agent = Agent::start(&[], Stdio::null())?;
    let idle_rss = proc_field(agent.pid(), "status", "VmRSS:").unwrap_or(0.0);
    let mut fan = Command::new(pingpong_bin())
        .args(["fan", "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(fan.stdout.take().expect("piped")).read_line(&mut line)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sessions: f64 = 0.0;
    while Instant::now() < deadline {
        // The most seen: a scrape that fails (an agent too busy to answer)
        // reads as none, not as zero sessions.
        let open = agent.metric("mcp_sessions_active").first().map(|(_, v)| *v);
        sessions = sessions.max(open.unwrap_or(0.0));
        if sessions >= 1000.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss = proc_field(agent.pid(), "status", "VmRSS:").unwrap_or(0.0) / 1024.0;
    let hwm = proc_field(agent.pid(), "status", "VmHWM:").unwrap_or(0.0) / 1024.0;
    drop(fan.stdin.take());
    fan.wait()?;
    r.add(
        "agent RSS with 1,000 concurrent sessions",
        format!(
            "{rss:.1} MiB (peak {hwm:.1} MiB; {sessions:.0} sessions open; idle before: {:.1} MiB)",
            idle_rss / 1024.0
        ),
        "≤ 50 MiB",
        Some(rss <= 50.0 && sessions >= 1000.0),
    );
    std::thread::sleep(Duration::from_secs(2));
    let t0 = cpu_ticks(agent.pid()).unwrap_or(0.0);
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let t1 = cpu_ticks(agent.pid()).unwrap_or(0.0);
    let tck = 100.0; // USER_HZ on Linux x86-64
    let cpu = (t1 - t0) / tck / wall.elapsed().as_secs_f64() * 100.0;
    r.add(
        "idle CPU (10 s, no MCP traffic)",
        format!("{cpu:.2} % of one core"),
        "",
        None,
    );
    agent.stop()?;
    Ok(())
}

/// The sum of a metric family's samples whose labels contain `filter`.
fn metric_sum(agent: &Agent, name: &str, filter: &str) -> f64 {
    agent
        .metric(name)
        .iter()
        .filter(|(k, _)| k.contains(filter))
        .map(|(_, v)| v)
        .sum()
}

fn loss(r: &mut Report) -> Result<()> {
    step("loss: an open-loop flood of MCP notifications at rising rates, one write per message");
    let agent = Agent::start(&["--stdout", "none", "--no-detect"], Stdio::null())?;
    let reported = |a: &Agent| {
        metric_sum(
            a,
            "mcp_messages_total",
            "mcp_method_name=\"notifications/message\"",
        )
    };
    let kernel_lost = |a: &Agent| metric_sum(a, "mcpscope_events_lost_total", "stage=\"kernel\"");
    // Userspace counters that stand for lost messages (not pairing or
    // join bookkeeping, which lose no message; parse errors come from
    // unrelated non-MCP streams on the host, the flood has none).
    let user_lost = |a: &Agent| {
        ["decode", "framing", "sink"]
            .iter()
            .map(|s| metric_sum(a, "mcpscope_events_lost_total", &format!("stage=\"{s}\"")))
            .sum::<f64>()
    };
    let mut best_zero = 0.0f64;
    let mut first_lossy: Option<String> = None;
    for rate in [
        10_000.0, 20_000.0, 40_000.0, 80_000.0, 160_000.0, 320_000.0, 1e9,
    ] {
        let (r0, k0, u0) = (reported(&agent), kernel_lost(&agent), user_lost(&agent));
        let out = output(Command::new(pingpong_bin()).args(["flood", &rate.to_string(), "2"]))?;
        let sent = json_number(&out, "sent")?;
        let secs = json_number(&out, "seconds")?;
        // Wait until the agent has reported everything it will report.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = -1.0;
        loop {
            std::thread::sleep(Duration::from_millis(1100)); // metrics export once a second
            let now = reported(&agent) + kernel_lost(&agent);
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let got = reported(&agent) - r0;
        let (klost, ulost) = (kernel_lost(&agent) - k0, user_lost(&agent) - u0);
        let offered = sent / secs;
        let short = sent - got;
        println!(
            "  offered {offered:.0}/s: sent {sent:.0}, reported {got:.0}, shortfall {short:.0}; counted lost: kernel {klost:.0}, userspace {ulost:.0}"
        );
        if short <= 0.0 && klost == 0.0 {
            best_zero = best_zero.max(offered);
        } else if first_lossy.is_none() {
            first_lossy = Some(format!(
                "at {offered:.0}/s offered: {sent:.0} sent, {got:.0} reported, shortfall {short:.0}; counted: kernel {klost:.0} + userspace {ulost:.0} = {:.0} ({})",
                klost + ulost,
                if (klost + ulost - short).abs() < 0.5 { "adds up exactly" } else { "does NOT add up" }
            ));
        }
        if rate >= 1e9 {
            r.add(
                "loss: unpaced writer reached",
                format!("{offered:.0} messages/s"),
                "",
                None,
            );
        }
    }
    agent.stop()?;
    r.add(
        "loss: highest offered rate with zero loss",
        format!("{best_zero:.0} messages/s"),
        "≥ 20,000 messages/s",
        Some(best_zero >= 20_000.0),
    );
    r.add(
        "loss: beyond it, shortfall against the counters",
        first_lossy.unwrap_or_else(|| "no loss at any rate the writer could offer".to_owned()),
        "counted exactly",
        None,
    );
    Ok(())
}

/// Records a capture of ping-pong runs with these argument sizes, each
/// 0.5 s unpaced (rate "0") or 2 s at `rate` round trips/s. Paced below
/// what the agent keeps up with, the capture is whole (checked: no record
/// lost in the kernel), so the replay sees every conversation complete, as a
/// healthy agent does; unpaced, the ring buffer overflows and the replay
/// sees torn conversations (cheaper to pair and to detect on).
fn record(name: &str, sizes: &[&str], rate: &str) -> Result<PathBuf> {
    let capture = target().join(format!("bench/capture-{name}.bin"));
    let _ = fs::remove_file(&capture);
    let agent = Agent::start(
        &[
            "--stdout",
            "none",
            "--record",
            &capture.display().to_string(),
        ],
        Stdio::null(),
    )?;
    let secs = if rate == "0" { "0.5" } else { "2" };
    let mut sent = 0.0;
    for size in sizes {
        let out = output(Command::new(pingpong_bin()).args(["client", secs, size, rate]))?;
        sent += 2.0 * json_number(&out, "round_trips")?;
    }
    if rate != "0" {
        // Whole: the agent counts every message sent, and no loss.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lost = metric_sum(&agent, "mcpscope_events_lost_total", "stage=\"kernel\"");
            if lost > 0.0 {
                bail!(
                    "the {name} capture lost {lost} records in the kernel at {rate} round trips/s"
                );
            }
            let seen = agent.total("mcp_messages_total");
            if seen >= sent {
                break;
            }
            if Instant::now() > deadline {
                bail!("the {name} capture: the agent counted {seen} of the {sent} messages sent");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    agent.stop()?;
    Ok(capture)
}

/// One replay's summary: messages, messages/s, MB/s.
struct Replayed {
    messages: f64,
    per_s: f64,
    mb_per_s: f64,
}

/// What `mcpscope replay` of `capture` printed on stderr, run under
/// `wrapper` (a command and its arguments, or nothing), with or without the
/// detectors, with no output or with JSONL events (to /dev/null).
fn replay_stderr(
    wrapper: &[&str],
    capture: &Path,
    detect: bool,
    jsonl: bool,
    extra: &[&str],
) -> Result<String> {
    let agent = build::agent_binary();
    let mut c = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(agent);
            c
        }
        None => Command::new(agent),
    };
    c.args(["replay", "--stdout", if jsonl { "json" } else { "none" }]);
    if !detect {
        c.arg("--no-detect");
    }
    let out = c
        .args(extra)
        .arg(capture)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running mcpscope replay (wrapper: {wrapper:?})"))?;
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The numeric `key=value` fields of the line of `stderr` that starts
/// with `marker` (a replay's summary), by key.
fn summary(stderr: &str, marker: &str) -> Result<impl Fn(&str) -> Result<f64>> {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(marker))
        .with_context(|| format!("no `{marker}` line: {stderr}"))?
        .to_owned();
    Ok(move |k: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .with_context(|| format!("no numeric `{k}` in: {line}"))
    })
}

/// Replays `capture` on one core, with or without the detectors, with no
/// output or with the default one (JSONL events on stdout, here /dev/null).
fn replay_run(capture: &Path, detect: bool, jsonl: bool) -> Result<Replayed> {
    let err = replay_stderr(&[], capture, detect, jsonl, &[])?;
    let field = summary(&err, "mcpscope: replayed")?;
    Ok(Replayed {
        messages: field("messages")?,
        per_s: field("messages_per_s")?,
        mb_per_s: field("mb_per_s")?,
    })
}

fn replay(r: &mut Report) -> Result<()> {
    step("pipeline: `mcpscope replay` of recorded captures, one core, detectors on");
    let typical = record("typical", &["200", "2000"], LIVE_RATE)?;
    // Medians of a few runs, with their spread: this VM is noisy.
    let runs = |capture: &Path| -> Result<(Replayed, (f64, f64, f64))> {
        let mut per_s = Vec::new();
        let mut last = None;
        for _ in 0..ROUNDS {
            let run = replay_run(capture, true, false)?;
            per_s.push(run.per_s);
            last = Some(run);
        }
        Ok((last.expect("ROUNDS > 0"), stats(&per_s)))
    };
    let (t, (median, lo, hi)) = runs(&typical)?;
    r.add(
        "replay, typical messages (200 B and 2 KB arguments)",
        format!(
            "{median:.0} messages/s (min {lo:.0}, max {hi:.0}; {ROUNDS} runs), {:.0} MB/s, over {:.0} messages",
            t.mb_per_s * median / t.per_s,
            t.messages
        ),
        "≥ 300,000 messages/s",
        Some(median >= 300_000.0),
    );
    let large = record("large", &["20000", "200000"], "0")?;
    let (l, (median, lo, hi)) = runs(&large)?;
    r.add(
        "replay, large messages (20 KB and 200 KB arguments)",
        format!(
            "{median:.0} messages/s (min {lo:.0}, max {hi:.0}; {ROUNDS} runs), {:.0} MB/s, over {:.0} messages",
            l.mb_per_s * median / l.per_s,
            l.messages
        ),
        "",
        None,
    );
    r.notes.push(format!("Replay: each capture holds ping-pong runs per argument size, recorded live (both ends of both pipes, as the agent sees them): the typical one 2 s per size paced to {LIVE_RATE} round trips/s, so that it is whole (no record lost in the kernel, checked), the large one 0.5 s per size unpaced; the replay runs decode → reassembly → framing → two-ends join → JSON-RPC/MCP parse → pairing → identity → detectors → metrics, with no output sink, on one core."));
    detector_cost(r, &typical)
}

/// Pairs of replays, with and without the detectors, in one process.
const DETECTOR_PAIRS: u32 = 30;

/// The detectors' share of the userspace cost per message: the typical
/// capture replayed with and without them, alternating within one
/// process (`mcpscope replay --compare-detectors`), pinned to one CPU,
/// with no output and with the default output. Separate processes run
/// one after the other landed in different phases of this VM's speed, so
/// their medians moved by tens of points from run to run.
fn detector_cost(r: &mut Report, capture: &Path) -> Result<()> {
    step("detectors: replays with and without them, alternating in one process");
    for (jsonl, what) in [
        (false, "the pipeline alone (no output)"),
        (true, "with the default output (JSONL events)"),
    ] {
        let pairs = DETECTOR_PAIRS.to_string();
        let err = replay_stderr(
            &["taskset", "-c", "1"],
            capture,
            true,
            jsonl,
            &["--compare-detectors", &pairs],
        )?;
        let field = summary(&err, "mcpscope: compared")?;
        let added = field("added_pct")?;
        r.add(
            &format!("detectors' added cost per message, {what}"),
            format!(
                "{added:+.1} % (min {:+.1}, max {:+.1}; {:.2} µs with, {:.2} µs without; median of {DETECTOR_PAIRS} pairs in one process)",
                field("min_pct")?,
                field("max_pct")?,
                field("with_us")?,
                field("without_us")?,
            ),
            "≤ +10 %",
            Some(added <= 10.0),
        );
    }
    detector_instructions(r, capture)
}

/// The detectors' added instructions per message, counted by callgrind
/// in the pipeline alone (with the JSONL output, with and without
/// `--no-detect`, side by side): the same on every replay of one capture,
/// where wall time on a shared VM moves by tens of percent from run to run. (Each bench run
/// records its capture anew, and the mix of message sizes it catches
/// moves the figure by a point or two.)
fn detector_instructions(r: &mut Report, capture: &Path) -> Result<()> {
    step("detectors: instructions per message under callgrind, with and without them");
    let count = |detect: bool| -> Result<f64> {
        let callgrind = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            // Only the pipeline fed the capture: reading the file (a
            // zeroed buffer per record) is no part of its cost, and counted
            // in it diluted the detectors' share by a sixth.
            "--toggle-collect=mcpscope::feed",
        ];
        let err = replay_stderr(&callgrind, capture, detect, true, &[])?;
        let number = |after: &str| {
            err.lines()
                .find_map(|l| {
                    let rest = &l[l.find(after)? + after.len()..];
                    rest.split(|c: char| !c.is_ascii_digit())
                        .find(|t| !t.is_empty())?
                        .parse::<f64>()
                        .ok()
                })
                .with_context(|| format!("no `{after}` in valgrind's output: {err}"))
        };
        let collected = number("Collected :")?;
        if collected == 0.0 {
            // The toggle matched no function: the figure would be 0.
            bail!("callgrind counted nothing in mcpscope::feed: {err}");
        }
        Ok(collected / number("messages=")?)
    };
    let (with, without) = std::thread::scope(|s| {
        let with = s.spawn(|| count(true));
        let without = count(false);
        (with.join().expect("callgrind thread"), without)
    });
    let (with, without) = (with?, without?);
    let added = with / without - 1.0;
    r.add(
        "detectors' added cost per message, instructions (callgrind, replay with the JSONL output)",
        format!(
            "{:+.1} % ({:+.0} instructions per message: {:.0} with, {:.0} without)",
            added * 100.0,
            with - without,
            with,
            without
        ),
        "≤ +10 %",
        Some(added <= 0.10),
    );
    Ok(())
}

fn machine() -> String {
    let kernel = output(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), kernel {}, {}",
        kernel.trim(),
        date.trim()
    )
}

fn write_markdown(r: &Report) -> Result<()> {
    let mut md = String::new();
    writeln!(md, "# mcpscope benchmarks\n")?;
    writeln!(md, "Written by `cargo xtask bench` on {}.\n", machine())?;
    writeln!(
        md,
        "Overhead figures are ratios within this run; rates are medians with min and max, ratios are medians (with min and max) of ratios paired within each round. Worst case: runs without and with the agent (and under `strace -f -e trace=read,write -s 65535 -o /dev/null`) alternate, which of the first two runs first swaps every round, {ROUNDS} rounds. Realistic workloads: separate runs of the Python SDK client differ by ±15 % here with nothing changed, so each is measured inside one client session that calls without pause: {CYCLES} pairs of {WINDOW:?} windows without and with the agent (started before its window, stopped after it; the pair's order swaps every cycle), then {STRACE_CYCLES} pairs without and under strace attached to the client and its server, each window's rate counted from the client's own timeline. For the Python SDK echo over stdio, {SLOW_PATH_CYCLES} pairs without and with the syscall slow path alone (`perf stat -e syscalls:sys_exit_close -a`: a perf event on a syscall tracepoint, no program, no agent, which sends every syscall through the kernel's slow path as the agent's tracepoints do) come between the agent's and strace's. The agent runs with its defaults (detectors on, JSONL events on stdout, written to /dev/null) for the overhead, latency and footprint figures; the loss figure runs it with no output and no detectors (the capture path's own limit). Every traced workload (the worst-case pair, the SDK client and its server, the HTTP server) is pinned to CPU 0, the agent to CPU 1: unpinned, the scheduler puts the two ends of a ping-pong on one CPU or on two, run by run, and that alone moves the rate by ±15 % on this 2-core machine, more than the effect measured. The detectors' live cost runs two agents at once, one with the detectors and one without (each with its own probes and ring buffer, both on CPU 1), so that both see the same messages in the same phase of this VM's speed; the ping-pong is paced to {LIVE_RATE} round trips/s ({LIVE_ROUNDS} rounds), below what the agents keep up with: unpaced, the ring buffer overflows and CPU per message measures overload. The agent's RSS includes its ring buffer, which the kernel maps twice (2 × 16 MiB by default).\n"
    )?;
    writeln!(md, "| figure | value | goal |\n|---|---|---|")?;
    for row in &r.rows {
        let goal = match row.met {
            Some(true) => format!("{} ✓", row.goal),
            Some(false) => format!("{} ✗ missed", row.goal),
            None => row.goal.clone(),
        };
        writeln!(md, "| {} | {} | {} |", row.figure, row.value, goal)?;
    }
    for n in &r.notes {
        writeln!(md, "\n{n}")?;
    }
    writeln!(
        md,
        "\nCriterion micro-benchmarks (newline framer, HTTP/1.1 and SSE framers, JSON-RPC/MCP parsing, detector facts, identity parsers, the whole pipeline, audit queries) are in `target/criterion`; `cargo xtask bench criterion` runs only them."
    )?;
    fs::write(root().join("BENCHMARKS.md"), md)?;
    Ok(())
}

/// Runs the benchmarks: `only` = `criterion` for the micro-benchmarks alone,
/// `agent` for the agent measurements alone, anything else filters criterion.
pub fn all(only: Option<&str>) -> Result<()> {
    build::all()?;
    if !matches!(
        only,
        Some("agent" | "worst" | "replay" | "realistic" | "detectors" | "tls")
    ) {
        step("criterion benchmarks (reports in target/criterion)");
        let mut c = Command::new("cargo");
        c.current_dir(root()).args(["bench", "-p", "mcpscope"]);
        if let Some(f) = only.filter(|f| *f != "criterion") {
            c.args(["--", f]);
        }
        run(&mut c)?;
        if only.is_some() {
            return Ok(());
        }
    }
    setup::test_software()?;
    // `perf` (the syscall slow path alone) comes in Debian's linux-perf.
    setup::system_packages(&[
        ("strace", "strace"),
        ("valgrind", "valgrind"),
        ("perf", "linux-perf"),
    ])?;
    run(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "mcpscope-e2e",
        "--bin",
        "mcp-pingpong",
    ]))?;
    fs::create_dir_all(target().join("bench"))?;
    let mut r = Report::default();
    // One group alone (quicker); BENCHMARKS.md is then left as it is.
    let group: Option<fn(&mut Report) -> Result<()>> = match only {
        Some("replay") => Some(|r| {
            replay(r)?;
            detector_cost_live(r)
        }),
        Some("worst") => Some(|r| {
            worst_case(r)?;
            kernel_cost(r)?;
            tls_hook_cost(r)
        }),
        Some("realistic") => Some(realistic),
        Some("tls") => Some(tls_hook_cost),
        Some("detectors") => Some(detector_cost_live),
        _ => None,
    };
    if let Some(group) = group {
        group(&mut r)?;
        for row in &r.rows {
            println!("{} | {} | {}", row.figure, row.value, row.goal);
        }
        return Ok(());
    }
    worst_case(&mut r)?;
    realistic(&mut r)?;
    kernel_cost(&mut r)?;
    tls_hook_cost(&mut r)?;
    latency(&mut r)?;
    loss(&mut r)?;
    footprint(&mut r)?;
    replay(&mut r)?;
    detector_cost_live(&mut r)?;
    write_markdown(&r)?;
    step("written to BENCHMARKS.md");
    Ok(())
}

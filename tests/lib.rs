//! Harness for the end-to-end tests: starts the real agent (real eBPF
//! programs in this kernel), waits for its `/readyz`, drives real MCP
//! software installed by `cargo xtask test`, and compares what the agent
//! reported with ground truth taken inside the official client.
//!
//! Without root the tests print SKIPPED loudly and pass — unless
//! `MCPSCOPE_E2E_REQUIRED=1` (set by `.ci/run`), which turns that into a
//! failure: CI runs as root, so a skip there is a defect.

use std::{
    collections::HashMap,
    io::{BufRead, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Paths of the things the tests run.
pub struct Env {
    /// Workspace root.
    pub root: PathBuf,
    /// The `mcpscope` binary under test.
    pub bin: PathBuf,
    /// Python of the venv holding `mcp==2.3.0`.
    pub python: PathBuf,
    /// `node_modules` holding the npm reference servers.
    pub node_modules: PathBuf,
}

/// Returns the environment, or `None` (after a loud SKIPPED) when the test
/// cannot load eBPF here.
pub fn env(test: &str) -> Option<Env> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let required = std::env::var("MCPSCOPE_E2E_REQUIRED").as_deref() == Ok("1");
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            !required,
            "{test}: eBPF needs root, and MCPSCOPE_E2E_REQUIRED=1 forbids skipping"
        );
        eprintln!("\n*** SKIPPED {test}: not root, eBPF cannot be loaded (run `sudo cargo xtask test`) ***\n");
        return None;
    }
    let bin = std::env::var_os("MCPSCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/mcpscope"));
    let e2e = root.join("target/e2e");
    let env = Env {
        python: e2e.join("venv/bin/python"),
        node_modules: e2e.join("node/node_modules"),
        bin,
        root,
    };
    for p in [&env.bin, &env.python, &env.node_modules] {
        if !p.exists() {
            missing(test, p);
            return None;
        }
    }
    Some(env)
}

impl Env {
    /// Path of a file under `tests/`.
    pub fn test_file(&self, rel: &str) -> PathBuf {
        self.root.join("tests").join(rel)
    }

    /// A fresh scratch directory under `target/e2e/tmp`.
    pub fn tmpdir(&self, name: &str) -> PathBuf {
        let d = self
            .root
            .join("target/e2e/tmp")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Command line of server-everything over stdio.
    pub fn everything_cmd(&self) -> Vec<String> {
        let js = self
            .node_modules
            .join("@modelcontextprotocol/server-everything/dist/index.js");
        vec!["node".into(), js.display().to_string(), "stdio".into()]
    }

    /// Command line of the MCP Inspector CLI (a Node client) calling `echo`
    /// on the Python SDK test server, which it spawns over a socketpair.
    pub fn inspector_echo_cmd(&self) -> Vec<String> {
        let cli = self
            .node_modules
            .join("@modelcontextprotocol/inspector/cli/build/cli.js");
        let mut v = vec!["node".into(), cli.display().to_string(), "--cli".into()];
        v.extend(self.py_server_cmd());
        v.extend(
            [
                "--method",
                "tools/call",
                "--tool-name",
                "echo",
                "--tool-arg",
                "message=hi",
            ]
            .map(String::from),
        );
        v
    }

    /// Command line of the Python SDK test server over stdio.
    pub fn py_server_cmd(&self) -> Vec<String> {
        vec![
            self.python.display().to_string(),
            self.test_file("mcp/py_server.py").display().to_string(),
            "stdio".into(),
        ]
    }
}

/// A running agent.
pub struct Agent {
    child: Child,
    events: PathBuf,
    /// Address of /readyz and /metrics.
    pub addr: String,
}

/// What the agent left behind after it stopped.
pub struct Stopped {
    /// Every JSONL event it wrote.
    pub events: Vec<Value>,
    /// Its stderr.
    pub stderr: String,
    /// How long SIGTERM → exit took.
    pub shutdown: Duration,
}

impl Stopped {
    /// The events of an agent started outside [`Agent`] (its stderr and
    /// shutdown time not kept).
    pub fn of_events(events: Vec<Value>) -> Stopped {
        Stopped {
            events,
            stderr: String::new(),
            shutdown: Duration::ZERO,
        }
    }

    /// A `key=value` counter from the agent's closing summary line.
    pub fn counter(&self, key: &str) -> u64 {
        let line = self
            .stderr
            .lines()
            .find(|l| l.contains("mcpscope: stopped:"))
            .expect("summary line");
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("counter {key} missing from: {line}"))
    }

    /// Message events whose sender and receiver are both in `pids`.
    pub fn between(&self, pids: &[u64]) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| {
                e["kind"] != "flag"
                    && pids.contains(&pid(&e["from"]))
                    && pids.contains(&pid(&e["to"]))
            })
            .collect()
    }

    /// Flag events.
    pub fn flags(&self) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == "flag").collect()
    }

    /// Events sent by `pid`.
    pub fn from_pid(&self, p: u64) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| pid(&e["from"]) == p)
            .collect()
    }
}

/// `pid` of an endpoint object (0 when absent).
pub fn pid(endpoint: &Value) -> u64 {
    endpoint["pid"].as_u64().unwrap_or(0)
}

impl Agent {
    /// Starts `mcpscope run` writing JSONL to `dir/events.jsonl` and waits
    /// until `/readyz` answers 200 (probes attached).
    pub fn start(env: &Env, dir: &Path, extra: &[&str]) -> Agent {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let events = dir.join("events.jsonl");
        let mut cmd = Command::new(&env.bin);
        cmd.args([
            "run",
            "--stdout",
            "none",
            "--metrics-addr",
            &addr,
            "--output",
        ])
        .arg(&events);
        if !extra.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(dir.join("state")); // detector baselines, per test
        }
        let child = cmd
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning mcpscope");
        let mut agent = Agent {
            child,
            events,
            addr,
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut delay = Duration::from_millis(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("mcpscope exited ({status}) before it was ready:\n{err}");
            }
            if http_get(&self.addr, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "mcpscope not ready after 120 s");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// SIGKILL: no flush, no clean shutdown (a crash).
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The agent's pid.
    pub fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }

    /// SIGTERM, wait for exit, read the events.
    pub fn stop(mut self) -> Stopped {
        let t0 = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = self.child.wait().unwrap();
        let shutdown = t0.elapsed();
        assert!(status.success(), "mcpscope failed: {status}\n{stderr}");
        let events = read_events(&self.events);
        Stopped {
            events,
            stderr,
            shutdown,
        }
    }
}

/// The JSONL events the agent wrote to `path` (none if it wrote none).
pub fn read_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSONL line {l}: {e}")))
        .collect()
}

/// Reports a missing prerequisite: a loud SKIPPED, or a failure under
/// `MCPSCOPE_E2E_REQUIRED=1` (CI runs as root with everything installed).
fn missing(test: &str, p: &Path) {
    let required = std::env::var("MCPSCOPE_E2E_REQUIRED").as_deref() == Ok("1");
    assert!(
        !required,
        "{test}: {} is missing; `cargo xtask test` installs it",
        p.display()
    );
    eprintln!(
        "\n*** SKIPPED {test}: {} missing (run `cargo xtask test`) ***\n",
        p.display()
    );
}

/// A tool the deployment tests need (from `cargo xtask test`'s set-up):
/// its path, or `None` after a loud SKIPPED (a failure under
/// `MCPSCOPE_E2E_REQUIRED=1`).
pub fn tool(test: &str, var: &str, fallback: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(fallback));
    let found = if p.is_absolute() {
        p.exists()
    } else {
        Command::new("sh")
            .args(["-c", &format!("command -v {}", p.display())])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found {
        return Some(p);
    }
    missing(test, &p);
    None
}

/// Percent-encodes a URL query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `check` until it returns `Some`, backing off, at most `secs`.
pub fn wait_for<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// A server process listening on a TCP port, killed when dropped.
pub struct Listening {
    /// The process.
    pub child: Child,
    /// Its port.
    pub port: u16,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Listening {
    /// Spawns `cmd` (with `PORT` set, for servers that read it) and waits
    /// until `host:port` accepts a connection — the readiness signal.
    pub fn start(cmd: &mut Command, host: &str, port: u16) -> Listening {
        let child = cmd
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the server");
        let mut s = Listening { child, port };
        wait_for("the server's port", 60, || {
            assert!(
                s.child.try_wait().unwrap().is_none(),
                "the server exited before listening"
            );
            TcpStream::connect((host, port)).ok()
        });
        s
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The agent's `mcpscope_tls_files_attached` gauge, read from `/metrics`.
pub fn tls_files_attached(agent: &Agent) -> Option<u64> {
    http_get(&agent.addr, "/metrics").and_then(|(_, body)| {
        body.lines()
            .find_map(|l| l.strip_prefix("mcpscope_tls_files_attached "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    })
}

/// A test that panics before `stop` must not leave its agent running (its
/// probes would slow every later test): killed when dropped.
impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A self-signed certificate for 127.0.0.1, made anew in `dir` by the
/// `openssl` command: (cert, key). The TLS tests and the TLS bench use it.
pub fn self_signed_certificate(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| format!("running openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((cert, key))
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP GET (status, body); `None` when nothing listens.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
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
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// Ground truth recorded by `tests/mcp/driver.py` inside the official client.
pub struct Truth {
    /// Client process id.
    pub client: u64,
    /// Server process id.
    pub server: u64,
    /// (direction `sent`|`recv`, raw line), in order.
    pub lines: Vec<(String, Value)>,
    /// The first record's extra fields (e.g. `tools`).
    pub info: Value,
}

/// The common shape of an end-to-end test: an agent (with `extra`
/// arguments), one client run of `scenario` against `server`, the agent
/// stopped. Returns what it reported and the client's ground truth.
#[allow(clippy::too_many_arguments)]
pub fn capture(
    env: &Env,
    name: &str,
    extra: &[&str],
    mode: &str,
    scenario: &str,
    server_kind: &str,
    count: u32,
    server: &[String],
) -> (Stopped, Truth) {
    let dir = env.tmpdir(name);
    let agent = Agent::start(env, &dir, extra);
    let truth = drive(env, &dir, mode, scenario, server_kind, count, server);
    (agent.stop(), truth)
}

/// Runs `mcpscope` with `args`; returns (exit code, stdout, stderr).
pub fn mcpscope(env: &Env, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(&env.bin)
        .args(args)
        .output()
        .expect("running mcpscope");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the official Python SDK client against `server` and returns truth.
pub fn drive(
    env: &Env,
    dir: &Path,
    mode: &str,
    scenario: &str,
    server_kind: &str,
    count: u32,
    server: &[String],
) -> Truth {
    drive_with_env(env, dir, mode, scenario, server_kind, count, server, &[])
}

/// [`drive`] of the basic scenario (tools/list; echo, add, a failing tool
/// and an unknown one; a resource and a prompt) against the Python SDK
/// server, in legacy mode.
pub fn drive_basic(env: &Env, dir: &Path) -> Truth {
    drive(
        env,
        dir,
        "legacy",
        "basic",
        "python",
        0,
        &env.py_server_cmd(),
    )
}

/// [`drive`], with `KEY=VALUE` environment for the server.
#[allow(clippy::too_many_arguments)]
pub fn drive_with_env(
    env: &Env,
    dir: &Path,
    mode: &str,
    scenario: &str,
    server_kind: &str,
    count: u32,
    server: &[String],
    server_env: &[&str],
) -> Truth {
    let truth = dir.join(format!("truth-{mode}-{}.jsonl", scenario.replace(':', "-")));
    let mut cmd = Command::new(&env.python);
    cmd.arg(env.test_file("mcp/driver.py"))
        .args(["--truth"])
        .arg(&truth)
        .args([
            "--mode",
            mode,
            "--scenario",
            scenario,
            "--server-kind",
            server_kind,
            "--count",
            &count.to_string(),
        ])
        .args(server_env.iter().flat_map(|kv| ["--server-env", kv]))
        .arg("--")
        .args(server);
    run_driver(&mut cmd, &truth)
}

/// One run of the official Python SDK client (`basic` scenario) against an
/// HTTP server's MCP endpoint.
pub struct HttpClient<'a> {
    /// `legacy`, `auto` or `2026-07-28`.
    pub mode: &'a str,
    /// `python` or `everything`: which tools the scenario calls.
    pub server_kind: &'a str,
    /// The MCP endpoint.
    pub url: String,
    /// `streamable-http` or `sse` (legacy HTTP+SSE).
    pub transport: &'a str,
    /// The server's pid, for the truth file.
    pub server_pid: u32,
    /// A file holding a bearer token to send as `Authorization`.
    pub bearer_file: Option<&'a Path>,
    /// A certificate to trust (a self-signed HTTPS server).
    pub ca: Option<&'a Path>,
}

impl<'a> HttpClient<'a> {
    /// `legacy` mode over Streamable HTTP, against the Python SDK test server.
    pub fn new(url: String, server_pid: u32) -> Self {
        HttpClient {
            mode: "legacy",
            server_kind: "python",
            url,
            transport: "streamable-http",
            server_pid,
            bearer_file: None,
            ca: None,
        }
    }
}

/// Runs `c` and returns the client's ground truth.
pub fn drive_http(env: &Env, dir: &Path, c: &HttpClient<'_>) -> Truth {
    let HttpClient {
        mode,
        server_kind,
        ref url,
        transport,
        server_pid,
        bearer_file,
        ca,
    } = *c;
    let scenario = "basic";
    let truth = dir.join(format!(
        "truth-{mode}-{scenario}-{transport}-{server_pid}.jsonl"
    ));
    let mut cmd = Command::new(&env.python);
    cmd.arg(env.test_file("mcp/driver.py"))
        .arg("--truth")
        .arg(&truth)
        .args(["--mode", mode, "--scenario", scenario, "--url", url])
        .args(["--server-kind", server_kind])
        .args(["--http-transport", transport])
        .args(["--server-pid", &server_pid.to_string()]);
    if let Some(b) = bearer_file {
        cmd.arg("--bearer-file").arg(b);
    }
    if let Some(ca) = ca {
        cmd.env("SSL_CERT_FILE", ca); // trust the test's self-signed server
    }
    run_driver(&mut cmd, &truth)
}

/// Runs a driver command to its end and reads the truth file it wrote.
fn run_driver(cmd: &mut Command, truth: &Path) -> Truth {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("running the MCP client driver");
    assert!(
        out.status.success(),
        "driver failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    read_truth(truth)
}

/// Reads a truth file written by `tests/mcp/driver.py`.
pub fn read_truth(truth: &Path) -> Truth {
    let f = std::io::BufReader::new(std::fs::File::open(truth).unwrap());
    let mut lines = f
        .lines()
        .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap());
    let info = lines.next().expect("truth header");
    let lines = lines
        .map(|v| {
            (
                v["dir"].as_str().unwrap().to_owned(),
                serde_json::from_str(v["line"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    Truth {
        client: info["pid"].as_u64().unwrap(),
        server: info["server_pid"].as_u64().unwrap(),
        lines,
        info,
    }
}

/// The event kind a JSON-RPC message should be reported as.
pub fn expected_kind(m: &Value) -> &'static str {
    if m.get("method").is_some() {
        if m.get("id").is_some() {
            "request"
        } else {
            "notification"
        }
    } else if m.get("error").is_some() {
        "error"
    } else {
        "response"
    }
}

/// Asserts that every truth line was reported exactly once between the two
/// processes, in the right direction, with method/tool/id/is_error right and
/// responses paired with a latency. Returns the matched events in order.
pub fn assert_exactly_once<'a>(stopped: &'a Stopped, truth: &Truth) -> Vec<&'a Value> {
    assert_exactly_once_over(stopped, truth, &["stdio"], "pipe")
}

/// [`assert_exactly_once`] for messages carried by one of `transports`
/// over `net`.
pub fn assert_exactly_once_over<'a>(
    stopped: &'a Stopped,
    truth: &Truth,
    transports: &[&str],
    net: &str,
) -> Vec<&'a Value> {
    let events = stopped.between(&[truth.client, truth.server]);
    assert_eq!(
        events.len(),
        truth.lines.len(),
        "expected {} messages between client {} and server {}, got {}:\n{}",
        truth.lines.len(),
        truth.client,
        truth.server,
        events.len(),
        events
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Request method/tool by id and direction, to check response pairing.
    let mut requests: HashMap<(bool, String), (&Value, Option<&Value>)> = HashMap::new();
    let mut used = vec![false; events.len()];
    let mut ordered = Vec::new();
    for (dir, m) in &truth.lines {
        let sent = dir == "sent";
        let (from, to) = if sent {
            (truth.client, truth.server)
        } else {
            (truth.server, truth.client)
        };
        let kind = expected_kind(m);
        let id = m.get("id").map(|v| v.to_string());
        let found = events.iter().enumerate().position(|(i, e)| {
            !used[i]
                && pid(&e["from"]) == from
                && pid(&e["to"]) == to
                && e["kind"] == kind
                && e.get("id").map(|v| v.to_string()) == id
                && (kind != "request" && kind != "notification" || e["method"] == m["method"])
        });
        let i = found.unwrap_or_else(|| {
            panic!(
                "{dir} {m} not reported; events:\n{}",
                events
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        used[i] = true;
        let e = events[i];
        match kind {
            "request" => {
                if m["method"] == "tools/call" {
                    assert_eq!(e["tool"], m["params"]["name"], "tool of {e}");
                }
                requests.insert(
                    (sent, id.clone().unwrap()),
                    (&m["method"], m["params"].get("name")),
                );
            }
            "response" | "error" => {
                let (method, name) = requests
                    .get(&(!sent, id.clone().unwrap()))
                    .unwrap_or_else(|| panic!("response {m} without request"));
                assert_eq!(&e["method"], *method, "paired method of {e}");
                if *method == "tools/call" {
                    assert_eq!(Some(&e["tool"]), *name, "paired tool of {e}");
                }
                assert!(
                    e["latency_ms"].as_f64().is_some_and(|l| l >= 0.0),
                    "latency of {e}"
                );
                let is_error = m.get("error").is_some() || m["result"]["isError"] == true;
                assert_eq!(e["is_error"], is_error, "is_error of {e}");
                if m["result"]["isError"] == true {
                    assert_eq!(e["error_type"], "tool_error");
                }
            }
            _ => {}
        }
        assert!(
            transports.iter().any(|t| e["transport"] == *t),
            "transport of {e}"
        );
        assert_eq!(e["net"], net, "net of {e}");
        assert_eq!(e["truncated"], false);
        ordered.push(e);
    }
    ordered
}

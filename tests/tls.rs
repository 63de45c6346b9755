//! End-to-end TLS: uprobes on OpenSSL give the plaintext of HTTPS MCP
//! traffic on both ends — the Python SDK server under uvicorn (system
//! `libssl.so.3`, memory BIOs), the Python SDK client (httpx, the same
//! library), and the MCP Inspector CLI in node (OpenSSL linked statically
//! into `/usr/bin/node`). Every message once, with `tls: true`. The
//! certificate is made by `openssl` here; every server binds 127.0.0.1.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use mcpscope_e2e::{
    assert_exactly_once_over, drive_http, env, free_port, pid, tls_files_attached, wait_for, Agent,
    Env, HttpClient, Listening,
};
use serde_json::Value;

/// A self-signed certificate for 127.0.0.1: (cert, key).
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    mcpscope_e2e::self_signed_certificate(dir).unwrap_or_else(|e| panic!("{e}"))
}

/// The Python SDK test server over HTTPS (uvicorn), with extra environment.
fn https_server(env: &Env, cert: &Path, key: &Path, vars: &[(&str, &Path)]) -> Listening {
    let port = free_port();
    let mut cmd = Command::new(&env.python);
    cmd.envs(vars.iter().map(|(k, v)| (*k, *v)))
        .arg(env.test_file("mcp/py_server.py"))
        .args(["https", &port.to_string()])
        .arg(cert)
        .arg(key);
    Listening::start(&mut cmd, "127.0.0.1", port)
}

/// `https://127.0.0.1:<port>/mcp`.
fn url(s: &Listening) -> String {
    format!("https://127.0.0.1:{}/mcp", s.port)
}

/// The server is the capturing end (with its fd) of everything it sent:
/// its TLS library was attached.
fn assert_server_captured(events: &[&Value], server: u64) {
    for e in events.iter().filter(|e| pid(&e["from"]) == server) {
        assert!(e["from"]["fd"].is_u64(), "captured by the server: {e}");
    }
}

fn assert_all_tls(events: &[&Value]) {
    for e in events {
        assert_eq!(e["tls"], true, "{e}");
        assert!(e["http"].is_object(), "{e}");
    }
}

#[test]
fn python_sdk_over_https_plaintext_from_both_ends_every_message_once() {
    let Some(env) = env("python_sdk_over_https_plaintext_from_both_ends_every_message_once") else {
        return;
    };
    let dir = env.tmpdir("tls-python");
    let (cert, key) = certificate(&dir);
    let server = https_server(&env, &cert, &key, &[]);
    let agent = Agent::start(&env, &dir, &[]);
    let truth = drive_http(
        &env,
        &dir,
        &HttpClient {
            ca: Some(&cert),
            ..HttpClient::new(url(&server), server.pid())
        },
    );
    let stopped = agent.stop();
    let events = assert_exactly_once_over(&stopped, &truth, &["http", "sse"], "tcp");
    assert_all_tls(&events);
}

#[test]
fn inspector_cli_in_node_over_https_every_message_once() {
    let Some(env) = env("inspector_cli_in_node_over_https_every_message_once") else {
        return;
    };
    let dir = env.tmpdir("tls-node");
    let (cert, key) = certificate(&dir);
    let server = https_server(&env, &cert, &key, &[]);
    let agent = Agent::start(&env, &dir, &[]);
    let cli = env
        .node_modules
        .join("@modelcontextprotocol/inspector/cli/build/index.js");
    let child = Command::new("node")
        .arg(cli)
        .arg(url(&server))
        .args(["--transport", "http", "--method", "tools/call"])
        .args([
            "--tool-name",
            "echo",
            "--tool-arg",
            "message=hello over tls",
        ])
        .env("NODE_EXTRA_CA_CERTS", &cert)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let node = u64::from(child.id());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ground truth from the client: it printed the tool's answer.
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["structuredContent"]["result"], "hello over tls");
    let stopped = agent.stop();
    let server_pid = u64::from(server.pid());
    let events = stopped.between(&[node, server_pid]);
    // The CLI's exchange: initialize, initialized, tools/list (the CLI
    // checks the tool), tools/call — each once, answered and paired.
    let summary: Vec<(String, String, bool)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["method"].as_str().unwrap_or("").to_owned(),
                pid(&e["from"]) == node,
            )
        })
        .collect();
    let want: Vec<(String, String, bool)> = [
        ("request", "initialize", true),
        ("response", "initialize", false),
        ("notification", "notifications/initialized", true),
        ("request", "tools/list", true),
        ("response", "tools/list", false),
        ("request", "tools/call", true),
        ("response", "tools/call", false),
    ]
    .iter()
    .map(|(k, m, f)| ((*k).to_owned(), (*m).to_owned(), *f))
    .collect();
    let mut sorted = summary.clone();
    sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(sorted, want_sorted, "{events:?}");
    assert_all_tls(&events);
    let call = events
        .iter()
        .find(|e| e["kind"] == "request" && e["method"] == "tools/call")
        .unwrap();
    assert_eq!(call["tool"], "echo");
    assert_eq!(call["from"]["comm"], "node");
    let answer = events
        .iter()
        .find(|e| e["kind"] == "response" && e["method"] == "tools/call")
        .unwrap();
    assert!(answer["latency_ms"].is_f64(), "paired: {answer}");
}

#[test]
fn https_connection_open_before_the_agent_is_captured_from_its_next_message() {
    let Some(env) = env("https_connection_open_before_the_agent_is_captured_from_its_next_message")
    else {
        return;
    };
    use std::io::{BufRead, BufReader, Write};
    let dir = env.tmpdir("tls-late");
    let (cert, key) = certificate(&dir);
    let server = https_server(&env, &cert, &key, &[]);
    let mut client = Command::new(&env.python)
        .arg(env.test_file("mcp/tls_late.py"))
        .arg(url(&server))
        .env("SSL_CERT_FILE", &cert)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the client's session is up");
    let agent = Agent::start(&env, &dir, &[]);
    writeln!(client.stdin.take().unwrap(), "go").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(client.wait().unwrap().success());
    let truth: Value = serde_json::from_str(&line).unwrap();
    let stopped = agent.stop();
    let client_pid = truth["pid"].as_u64().unwrap();
    let events = stopped.between(&[client_pid, u64::from(server.pid())]);
    let got: Vec<_> = events
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["id"].clone()))
        .collect();
    let want: Vec<_> = truth["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let kind = if m.get("method").is_some() {
                "request"
            } else {
                "response"
            };
            (kind, m["id"].clone())
        })
        .collect();
    assert_eq!(
        got, want,
        "only the call after the agent started, once: {events:?}"
    );
    assert_all_tls(&events);
    assert_eq!(events[0]["tool"], "echo");
    assert_eq!(events[1]["method"], "tools/call", "paired");
}

/// A `libssl.so.3` copy the agent has never seen, loaded through
/// `LD_LIBRARY_PATH` by the server and the client started after the agent:
/// the periodic scan of `/proc/*/maps` attaches to it.
#[test]
fn a_libssl_loaded_after_the_agent_started_is_attached_and_captured() {
    let Some(env) = env("a_libssl_loaded_after_the_agent_started_is_attached_and_captured") else {
        return;
    };
    let dir = env.tmpdir("tls-new-lib");
    let (cert, key) = certificate(&dir);
    let libdir = dir.join("lib");
    std::fs::create_dir_all(&libdir).unwrap();
    std::fs::copy(
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        libdir.join("libssl.so.3"),
    )
    .unwrap();
    let agent = Agent::start(&env, &dir, &[]);
    let attached = || tls_files_attached(&agent);
    let before = attached().expect("the TLS gauge");
    let server = https_server(&env, &cert, &key, &[("LD_LIBRARY_PATH", &libdir)]);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    assert!(
        maps.contains(&libdir.join("libssl.so.3").display().to_string()),
        "the server runs on the copy"
    );
    // Readiness: the agent's gauge counts the new file.
    wait_for("the agent to attach to the new libssl", 30, || {
        attached().filter(|n| *n > before)
    });
    let truth = drive_http(
        &env,
        &dir,
        &HttpClient {
            ca: Some(&cert),
            ..HttpClient::new(url(&server), server.pid())
        },
    );
    let stopped = agent.stop();
    let events = assert_exactly_once_over(&stopped, &truth, &["http", "sse"], "tcp");
    assert_all_tls(&events);
    // The client runs on the system library (attached at start); the
    // server's own copies prove the new attachment.
    assert_server_captured(&events, truth.server);
}

/// The server runs in its own mount namespace where the system path of
/// `libssl.so.3` is a bind mount of a copy: its `/proc/<pid>/maps` names the
/// usual path, which in the agent's namespace is another file. Only
/// `/proc/<pid>/root/<path>` reaches the library the server really runs.
#[test]
fn a_libssl_in_another_mount_namespace_is_attached_through_proc_root() {
    let Some(env) = env("a_libssl_in_another_mount_namespace_is_attached_through_proc_root") else {
        return;
    };
    let dir = env.tmpdir("tls-mntns");
    let (cert, key) = certificate(&dir);
    let copy = dir.join("libssl.so.3");
    let system = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
    std::fs::copy(system, &copy).unwrap();
    let agent = Agent::start(&env, &dir, &[]);
    let attached = || tls_files_attached(&agent);
    let before = attached().expect("the TLS gauge");
    let port = free_port();
    let script = format!(
        "mount --bind {copy} {system} && exec {python} {server} https {port} {cert} {key}",
        copy = copy.display(),
        python = env.python.display(),
        server = env.test_file("mcp/py_server.py").display(),
        cert = cert.display(),
        key = key.display(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let server = Listening::start(&mut cmd, "127.0.0.1", port);
    let server_pid = server.pid();
    let maps = std::fs::read_to_string(format!("/proc/{server_pid}/maps")).unwrap();
    assert!(
        maps.contains(system),
        "the server maps libssl by its usual path"
    );
    let theirs = std::fs::metadata(format!("/proc/{server_pid}/root{system}")).unwrap();
    let ours = std::fs::metadata(system).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_ne!(
        theirs.ino(),
        ours.ino(),
        "another file behind the same path"
    );
    wait_for("the agent to attach through /proc/<pid>/root", 30, || {
        attached().filter(|n| *n > before)
    });
    let truth = drive_http(
        &env,
        &dir,
        &HttpClient {
            ca: Some(&cert),
            ..HttpClient::new(url(&server), server_pid)
        },
    );
    let stopped = agent.stop();
    let events = assert_exactly_once_over(&stopped, &truth, &["http", "sse"], "tcp");
    assert_all_tls(&events);
    assert_server_captured(&events, truth.server);
}

/// Runs `tls_evict.py` (a TLS read parked while `threads` other threads
/// make TLS round trips) under an agent with a TLS thread table of
/// `table` entries (the default: `None`); returns the agent's
/// `tls_calls_lost`.
fn tls_calls_lost_with(env: &Env, dir: &Path, table: Option<u32>, threads: u32) -> u64 {
    use std::io::{BufRead, BufReader};
    let (cert, key) = certificate(dir);
    let table = table.map(|t| t.to_string());
    let args: Vec<&str> = table.iter().flat_map(|t| ["--tls-threads", t]).collect();
    let agent = Agent::start(env, dir, &args);
    let mut script = Command::new(&env.python)
        .arg(env.test_file("mcp/tls_evict.py"))
        .arg(&cert)
        .arg(&key)
        .arg(threads.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(script.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(script.wait().unwrap().success(), "{lines:?}");
    assert_eq!(lines, ["parked".to_owned(), format!("done {threads}")]);
    agent.stop().counter("tls_calls_lost")
}

#[test]
fn a_tls_call_whose_thread_state_is_evicted_before_it_returns_is_counted_lost() {
    let Some(env) =
        env("a_tls_call_whose_thread_state_is_evicted_before_it_returns_is_counted_lost")
    else {
        return;
    };
    // 200 round trips, each on a new client and a new server thread: far
    // more than a table of 16, far fewer than the default 16384.
    let small = tls_calls_lost_with(&env, &env.tmpdir("tls-evict-small"), Some(16), 200);
    assert!(
        small >= 1,
        "the parked read's state was evicted: counted lost ({small})"
    );
    let default = tls_calls_lost_with(&env, &env.tmpdir("tls-evict-default"), None, 200);
    assert_eq!(default, 0, "nothing evicted, nothing lost");
}

/// The agent's "TLS: …" placement lines for the system libssl: where each
/// probe went (other files' lines may come from processes started while
/// it ran).
fn placements(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.split_once("] TLS: ").map(|(_, p)| p.to_owned()))
        .filter(|p| p.contains("/usr/lib/x86_64-linux-gnu/libssl.so.3"))
        .collect()
}

#[test]
fn a_second_agent_places_its_tls_probes_as_the_first_despite_the_firsts_breakpoints() {
    let Some(env) =
        env("a_second_agent_places_its_tls_probes_as_the_first_despite_the_firsts_breakpoints")
    else {
        return;
    };
    // The first agent's uprobes put `int3` into every private mapping of
    // libssl that may execute, a read-only one too: an agent starting while
    // another (or an earlier instance still stopping, or any tracer) has
    // probes there must read the file's own bytes.
    let first = Agent::start(&env, &env.tmpdir("tls-first"), &[]);
    let second = Agent::start(&env, &env.tmpdir("tls-second"), &[]).stop();
    let first = first.stop();
    let (a, b) = (placements(&first.stderr), placements(&second.stderr));
    assert!(
        a.iter().any(|p| p.starts_with("ssl_write_ex on ")
            && p.contains("libssl.so.3")
            && p.ends_with("the function its wrapper calls (no single-step there)")),
        "{a:#?}"
    );
    assert_eq!(a, b, "the second agent's placements");
}

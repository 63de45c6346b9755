//! End-to-end: the real probes see the official Python SDK client talk to
//! real stdio servers (the Python SDK's MCPServer and the npm reference
//! server-everything) and report every message exactly once.

use std::process::{Command, Stdio};

use mcpscope_e2e::{assert_exactly_once, capture, drive, drive_basic, env, pid, Agent};

#[test]
fn python_sdk_legacy_mode_every_message_once_with_pairing() {
    let Some(env) = env("python_sdk_legacy_mode_every_message_once_with_pairing") else {
        return;
    };
    let (stopped, truth) = capture(
        &env,
        "py-legacy",
        &[],
        "legacy",
        "basic",
        "python",
        0,
        &env.py_server_cmd(),
    );
    let events = assert_exactly_once(&stopped, &truth);
    // The initialize handshake names both ends, and later messages carry it.
    let last = events.last().unwrap();
    assert_eq!(last["client"]["name"], "mcp", "{last}");
    assert_eq!(last["server"]["name"], "mcpscope-test-server", "{last}");
    assert_eq!(last["protocol_version"], "2025-11-25", "{last}");
    // resources/read and prompts/get name what they touched.
    assert!(events
        .iter()
        .any(|e| e["resource"] == "test://greeting" && e["kind"] == "response"));
    assert!(events
        .iter()
        .any(|e| e["prompt"] == "review" && e["kind"] == "response"));
    // One session for the pair, both pipes.
    let sessions: std::collections::HashSet<_> = events
        .iter()
        .map(|e| e["session"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
}

#[test]
fn python_sdk_2026_mode_every_message_once_with_meta_identity() {
    let Some(env) = env("python_sdk_2026_mode_every_message_once_with_meta_identity") else {
        return;
    };
    let (stopped, truth) = capture(
        &env,
        "py-2026",
        &[],
        "2026-07-28",
        "basic",
        "python",
        0,
        &env.py_server_cmd(),
    );
    let events = assert_exactly_once(&stopped, &truth);
    assert!(
        !events.iter().any(|e| e["method"] == "initialize"),
        "2026-07-28 has no handshake"
    );
    for e in &events {
        assert_eq!(e["protocol_version"], "2026-07-28", "{e}");
        assert_eq!(e["client"]["name"], "mcp", "{e}");
    }
    let responses: Vec<_> = events.iter().filter(|e| e["kind"] == "response").collect();
    assert!(
        responses.iter().all(|e| e["result_type"] == "complete"),
        "resultType recorded"
    );
    assert!(
        responses
            .iter()
            .any(|e| e["server"]["name"] == "mcpscope-test-server"),
        "serverInfo from result _meta"
    );
}

#[test]
fn python_sdk_auto_mode_discover_then_calls_every_message_once() {
    let Some(env) = env("python_sdk_auto_mode_discover_then_calls_every_message_once") else {
        return;
    };
    let (stopped, truth) = capture(
        &env,
        "py-auto",
        &[],
        "auto",
        "basic",
        "python",
        0,
        &env.py_server_cmd(),
    );
    let events = assert_exactly_once(&stopped, &truth);
    assert_eq!(events[0]["method"], "server/discover");
}

#[test]
fn server_everything_legacy_every_message_once_id_last_key_order() {
    let Some(env) = env("server_everything_legacy_every_message_once_id_last_key_order") else {
        return;
    };
    let (stopped, truth) = capture(
        &env,
        "everything-legacy",
        &[],
        "legacy",
        "basic",
        "everything",
        0,
        &env.everything_cmd(),
    );
    let events = assert_exactly_once(&stopped, &truth);
    let init = events
        .iter()
        .find(|e| e["kind"] == "response" && e["method"] == "initialize")
        .unwrap();
    assert_eq!(init["server"]["name"], "mcp-servers/everything", "{init}");
    // Unknown tool: answered as a tool error (isError), not a JSON-RPC error.
    let unknown = events
        .iter()
        .find(|e| e["kind"] == "response" && e["tool"] == "no_such_tool")
        .unwrap();
    assert_eq!(unknown["error_type"], "tool_error");
}

#[test]
fn server_everything_auto_mode_probe_falls_back_to_initialize() {
    let Some(env) = env("server_everything_auto_mode_probe_falls_back_to_initialize") else {
        return;
    };
    let (stopped, truth) = capture(
        &env,
        "everything-auto",
        &[],
        "auto",
        "basic",
        "everything",
        0,
        &env.everything_cmd(),
    );
    let events = assert_exactly_once(&stopped, &truth);
    assert_eq!(events[0]["method"], "server/discover");
    let probe_answer = events
        .iter()
        .find(|e| e["method"] == "server/discover" && e["kind"] != "request")
        .unwrap();
    assert_eq!(
        probe_answer["kind"], "error",
        "a 2025-era server rejects server/discover: {probe_answer}"
    );
    assert!(probe_answer["error_code"].is_i64());
    assert!(events.iter().any(|e| e["method"] == "initialize"));
}

#[test]
fn a_600k_response_written_in_one_syscall_arrives_whole() {
    let Some(env) = env("a_600k_response_written_in_one_syscall_arrives_whole") else {
        return;
    };
    let dir = env.tmpdir("large");
    let agent = Agent::start(&env, &dir, &[]);
    // The SDK puts the text in `content` and `structuredContent`: 2 × 300 KiB.
    let truth = drive(
        &env,
        &dir,
        "legacy",
        "large",
        "python",
        300,
        &env.py_server_cmd(),
    );
    let stopped = agent.stop();
    let events = assert_exactly_once(&stopped, &truth);
    let big = events
        .iter()
        .find(|e| e["kind"] == "response" && e["tool"] == "blob")
        .unwrap();
    assert!(big["bytes"].as_u64().unwrap() > 600 * 1024, "{big}");
    assert_eq!(big["truncated"], false);
    assert_eq!(stopped.counter("truncated_syscalls"), 0);
    assert_eq!(stopped.counter("ringbuf_full_records"), 0);
}

#[test]
fn agent_never_captures_itself_and_stops_within_5s() {
    let Some(env) = env("agent_never_captures_itself_and_stops_within_5s") else {
        return;
    };
    let dir = env.tmpdir("self");
    let agent = Agent::start(&env, &dir, &[]);
    let agent_pid = agent.pid();
    // The agent writes JSONL (it starts with `{`) for every message it sees:
    // if it captured itself this would feed back.
    let truth = drive(
        &env,
        &dir,
        "legacy",
        "repeat",
        "python",
        20,
        &env.py_server_cmd(),
    );
    let stopped = agent.stop();
    assert_exactly_once(&stopped, &truth);
    assert!(stopped
        .events
        .iter()
        .all(|e| pid(&e["from"]) != agent_pid && pid(&e["to"]) != agent_pid));
    assert!(
        stopped.shutdown.as_secs_f64() < 5.0,
        "shutdown took {:?}",
        stopped.shutdown
    );
}

#[test]
fn node_inspector_client_over_socketpair_every_message_once() {
    let Some(env) = env("node_inspector_client_over_socketpair_every_message_once") else {
        return;
    };
    let dir = env.tmpdir("inspector");
    let agent = Agent::start(&env, &dir, &[]);
    // Node's child_process gives the server a unix socketpair as stdio, so
    // both ends of each message are captured on unix sockets.
    let cmd = env.inspector_echo_cmd();
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .current_dir(&env.node_modules)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stopped = agent.stop();
    let on_unix: Vec<_> = stopped
        .events
        .iter()
        .filter(|e| e["net"] == "unix")
        .collect();
    let seq: Vec<(String, String)> = on_unix
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["method"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("request", "initialize"),
        ("response", "initialize"),
        ("notification", "notifications/initialized"),
        ("request", "tools/list"),
        ("response", "tools/list"),
        ("request", "tools/call"),
        ("response", "tools/call"),
    ];
    assert_eq!(
        seq,
        want.map(|(k, m)| (k.to_owned(), m.to_owned())),
        "the Inspector's exchange, each message once"
    );
    let client = pid(&on_unix[0]["from"]);
    let server = pid(&on_unix[0]["to"]);
    assert!(client != 0 && server != 0 && client != server);
    for e in &on_unix {
        let (f, t) = (pid(&e["from"]), pid(&e["to"]));
        assert!(
            (f, t) == (client, server) || (f, t) == (server, client),
            "{e}"
        );
    }
    assert_eq!(on_unix[6]["tool"], "echo");
    assert!(on_unix[6]["latency_ms"].as_f64().is_some());
    assert_eq!(on_unix[1]["server"]["name"], "mcpscope-test-server");
}

#[test]
fn kernel_without_btf_fails_with_one_line_naming_the_kernel_option() {
    let Some(env) = env("kernel_without_btf_fails_with_one_line_naming_the_kernel_option") else {
        return;
    };
    // The kernel's BTF hidden, not removed: a private mount namespace with
    // an empty tmpfs over /sys/kernel/btf (the host keeps its own).
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /sys/kernel/btf && exec \"$0\" run --metrics-addr 127.0.0.1:0")
        .arg(&env.bin)
        .stdin(Stdio::null())
        .output()
        .expect("running unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the agent started without BTF: {err}"
    );
    assert!(
        err.contains("/sys/kernel/btf/vmlinux) is missing")
            && err.contains("CONFIG_DEBUG_INFO_BTF=y"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// An agent started by `cmd` (stdin null, stderr piped, stdout as `cmd`
/// has it), up to its readiness line: the agent, its stderr's further
/// lines, the lines so far and whether it became ready (else its stderr
/// ended first).
fn until_ready(cmd: &mut Command) -> (Running, impl Iterator<Item = String>, Vec<String>, bool) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the agent");
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok);
    let mut seen = Vec::new();
    let ready = lines.by_ref().any(|line| {
        let ready = line.starts_with("mcpscope: ready:") && line.contains("programs attached");
        seen.push(line);
        ready
    });
    (Running(child), lines, seen, ready)
}

/// An agent [`until_ready`] started: killed if a failed assertion leaves
/// it running (its probes would stay, and weigh on the tests after it).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGTERM to the agent (itself: unshare and sh exec it); its exit status.
fn terminate(agent: &mut Running) -> std::process::ExitStatus {
    // SAFETY: a plain signal to a child of this process.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    agent.0.wait().unwrap()
}

#[test]
fn missing_tracefs_is_mounted_by_the_agent_which_then_attaches_its_programs() {
    let Some(env) = env("missing_tracefs_is_mounted_by_the_agent_which_then_attaches_its_programs")
    else {
        return;
    };
    // The control: what the agent attaches with tracefs where it is.
    let (mut child, _, seen, ready) = until_ready(Command::new(&env.bin).args([
        "run",
        "--stdout",
        "none",
        "--metrics-addr",
        "127.0.0.1:0",
    ]));
    terminate(&mut child);
    assert!(ready, "control never ready: {}", seen.join("\n"));
    let control = attached(&seen);
    assert!(control > 0, "{seen:?}");
    // tracefs unmounted for the agent alone: an empty tmpfs over
    // /sys/kernel/tracing in a private mount namespace.
    let (mut child, rest, mut seen, ready) = until_ready(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs none /sys/kernel/tracing && exec \"$0\" run --stdout none --metrics-addr 127.0.0.1:0")
            .arg(&env.bin),
    );
    // Its counters too, which it reports as it stops.
    let reader = std::thread::spawn(move || rest.collect::<Vec<_>>());
    let status = terminate(&mut child);
    seen.extend(reader.join().unwrap());
    let log = seen.join("\n");
    assert!(ready, "never ready: {log}");
    assert!(
        log.contains("tracefs is not mounted; mounting it at /sys/kernel/tracing"),
        "{log}"
    );
    assert_eq!(
        attached(&seen),
        control,
        "every program attached, as with tracefs mounted: {log}"
    );
    assert!(
        status.success(),
        "stopped by SIGTERM, then: {status}: {log}"
    );
}

/// The number of programs the agent's ready line says it attached.
fn attached(log: &[String]) -> u32 {
    log.iter()
        .find_map(|l| l.strip_prefix("mcpscope: ready: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn agent_whose_stderr_is_closed_goes_on_and_stops_cleanly() {
    let Some(env) = env("agent_whose_stderr_is_closed_goes_on_and_stops_cleanly") else {
        return;
    };
    let dir = env.tmpdir("stderr-closed");
    let events = dir.join("events.jsonl");
    let (mut child, rest, seen, ready) = until_ready(
        Command::new(&env.bin)
            .args([
                "run",
                "--stdout",
                "none",
                "--metrics-addr",
                "127.0.0.1:0",
                "--output",
            ])
            .arg(&events),
    );
    assert!(ready, "never ready: {}", seen.join("\n"));
    drop(rest); // the read end of its stderr: its next line meets a closed pipe
    let truth = drive_basic(&env, &dir);
    let status = terminate(&mut child);
    // It logged its summary into the closed pipe, and exited 0 all the same
    // (a panic there exits 101), with every message of the session written.
    assert!(status.success(), "{status}");
    let events = mcpscope_e2e::read_events(&events);
    assert_exactly_once(&mcpscope_e2e::Stopped::of_events(events), &truth);
}

#[test]
fn stdout_whose_reader_went_away_counts_each_event_lost_once_and_the_agent_goes_on() {
    let Some(env) =
        env("stdout_whose_reader_went_away_counts_each_event_lost_once_and_the_agent_goes_on")
    else {
        return;
    };
    let dir = env.tmpdir("stdout-closed");
    let events = dir.join("events.jsonl");
    let addr = format!("127.0.0.1:{}", mcpscope_e2e::free_port());
    // `mcpscope run | head` after head has exited: the read end is closed
    // before the agent starts, so its first write to stdout fails.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let (mut child, rest, seen, ready) = until_ready(
        Command::new(&env.bin)
            .args([
                "run",
                "--stdout",
                "json",
                "--metrics-addr",
                &addr,
                "--output",
            ])
            .arg(&events)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdout(writer),
    );
    assert!(ready, "never ready: {}", seen.join("\n"));
    let stderr = std::thread::spawn(move || rest.collect::<Vec<_>>());
    let truth = drive_basic(&env, &dir);
    // The file output took every event (messages and flags) that stdout
    // lost: the counter must come to exactly that many, however many ticks
    // the agent flushed since the first write failed (it counted each
    // failed flush, some 50 a second, before: never equal).
    let lost_to_stdout = || {
        let (_, body) = mcpscope_e2e::http_get(&addr, "/metrics")?;
        body.lines().find_map(|l| {
            l.strip_prefix("mcpscope_events_lost_total{reason=\"write_error\",stage=\"sink\"} ")
                .and_then(|n| n.parse::<usize>().ok())
        })
    };
    let written = || mcpscope_e2e::read_events(&events);
    let settled = mcpscope_e2e::wait_for(
        "every message in the file output, and stdout's loss counter at the number of events there",
        30,
        || {
            let all = written();
            let messages = all.iter().filter(|e| e["kind"] != "flag").count();
            (messages >= truth.lines.len() && lost_to_stdout() == Some(all.len())).then_some(all)
        },
    );
    let status = terminate(&mut child);
    let log = stderr.join().unwrap().join("\n");
    assert!(status.success(), "{status}: {log}");
    assert_eq!(
        log.matches("an output's reader went away (broken pipe)")
            .count(),
        1,
        "said once: {log}"
    );
    // Every message once in the file output, as the counter was read.
    assert_eq!(settled.len(), mcpscope_e2e::read_events(&events).len());
    assert_exactly_once(&mcpscope_e2e::Stopped::of_events(settled), &truth);
}

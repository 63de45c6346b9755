//! End-to-end flags: the official Python SDK client drives the SDK's own
//! server in the pattern each flag is for, captured by the real probes; the
//! flag must fire once, with its evidence. A benign heavy-use workload must
//! raise nothing.

use mcpscope_e2e::{drive, drive_with_env, env, pid, Agent, Env, Stopped, Truth};
use serde_json::Value;

/// Runs `scenario` under an agent with detector config `toml`.
fn run(env: &Env, name: &str, toml: &str, extra: &[&str]) -> (Stopped, Truth, std::path::PathBuf) {
    let dir = env.tmpdir(name);
    let cfg = dir.join("detect.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut args = vec!["--detect-config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let agent = Agent::start(env, &dir, &args);
    let truth = drive(
        env,
        &dir,
        "legacy",
        &format!("flag:{name}"),
        "python",
        0,
        &env.py_server_cmd(),
    );
    (agent.stop(), truth, dir)
}

/// Flags raised about the truth's two processes.
fn flags_of<'a>(s: &'a Stopped, t: &Truth, flag: &str) -> Vec<&'a Value> {
    s.flags()
        .into_iter()
        .filter(|f| {
            f["flag"] == flag
                && [pid(&f["from"]), pid(&f["to"])]
                    .iter()
                    .all(|p| *p == t.client || *p == t.server)
        })
        .collect()
}

/// The evidence ids of a flag.
fn evidence_ids(f: &Value) -> Vec<u64> {
    f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect()
}

/// Ids of the client's tools/call requests, in order, for tool `tool`.
fn call_ids(t: &Truth, tool: &str) -> Vec<u64> {
    t.lines
        .iter()
        .filter(|(d, m)| d == "sent" && m["method"] == "tools/call" && m["params"]["name"] == tool)
        .map(|(_, m)| m["id"].as_u64().unwrap())
        .collect()
}

/// Ids of responses to requests with these ids.
fn assert_once<'a>(v: &[&'a Value], what: &str) -> &'a Value {
    assert_eq!(v.len(), 1, "{what} must fire exactly once: {v:#?}");
    v[0]
}

#[test]
fn duplicate_call_fires_once_with_both_calls_as_evidence() {
    let Some(env) = env("flag_dup") else { return };
    let (s, t, _) = run(&env, "dup", "", &[]);
    let f = assert_once(&flags_of(&s, &t, "duplicate_call"), "duplicate_call");
    assert_eq!(evidence_ids(f), call_ids(&t, "echo"));
    assert_eq!(f["severity"], "low");
    assert_eq!(f["details"]["reason"], "repeat_after_a_success");
    assert!(f["message"]
        .as_str()
        .unwrap()
        .contains("2 times with identical arguments"));
}

#[test]
fn retry_storm_fires_once_after_five_failures_and_duplicates_say_retry_after_error() {
    let Some(env) = env("flag_retry") else { return };
    let (s, t, _) = run(&env, "retry_storm", "", &[]);
    let f = assert_once(&flags_of(&s, &t, "retry_storm"), "retry_storm");
    assert_eq!(f["evidence"].as_array().unwrap().len(), 5);
    let dups = flags_of(&s, &t, "duplicate_call");
    assert!(
        !dups.is_empty()
            && dups
                .iter()
                .all(|d| d["details"]["reason"] == "retry_after_an_error"),
        "{dups:#?}"
    );
    // Severity rises with the count: low at 2, medium at 3, high at 5.
    let sev: Vec<&str> = dups
        .iter()
        .map(|d| d["severity"].as_str().unwrap())
        .collect();
    assert_eq!(sev, ["low", "medium", "high"]);
}

#[test]
fn loop_of_period_two_fires_once() {
    let Some(env) = env("flag_loop") else { return };
    let (s, t, _) = run(&env, "loop", "", &[]);
    let f = assert_once(&flags_of(&s, &t, "loop"), "loop");
    assert_eq!(f["details"]["period"], 2);
    assert_eq!(f["details"]["cycle"], serde_json::json!(["echo", "add"]));
    assert_eq!(
        f["evidence"].as_array().unwrap().len(),
        6,
        "three repetitions of two calls"
    );
}

#[test]
fn rate_spike_fires_once_after_warm_up() {
    let Some(env) = env("flag_rate") else { return };
    let toml =
        "[rate_spike]\nbucket_s = 1.0\nwarmup_buckets = 2\nmin_calls = 15\ndeviations = 3.0\n";
    let (s, t, _) = run(&env, "rate", toml, &[]);
    let f = assert_once(&flags_of(&s, &t, "rate_spike"), "rate_spike");
    assert!(f["details"]["count"].as_u64().unwrap() >= 15);
    // The baseline is the ticks' rate (about 2.5 a bucket, more in the
    // first one with the handshake), far below the burst's.
    assert!(
        f["details"]["baseline_mean"].as_f64().unwrap() < 10.0,
        "{f}"
    );
}

#[test]
fn first_seen_fires_for_a_new_tool_after_learning_and_for_an_unlisted_tool() {
    let Some(env) = env("flag_first_seen") else {
        return;
    };
    let (s, t, _) = run(&env, "first_seen", "[first_seen]\nlearning_s = 3.0\n", &[]);
    let f = assert_once(&flags_of(&s, &t, "first_seen"), "first_seen");
    assert_eq!(f["details"]["reason"], "new_tool");
    assert_eq!(f["tool"], "add");
    assert_eq!(evidence_ids(f), call_ids(&t, "add"));
    let (s, t, _) = run(&env, "not_listed", "", &[]);
    let f = assert_once(&flags_of(&s, &t, "first_seen"), "first_seen (unlisted)");
    assert_eq!(f["details"]["reason"], "tool_not_listed");
    assert_eq!(f["tool"], "no_such_tool");
}

#[test]
fn tool_definition_drift_fires_across_sessions_and_agent_restarts() {
    let Some(env) = env("flag_drift") else { return };
    let dir = env.tmpdir("drift");
    let state = dir.join("state");
    let st = state.to_str().unwrap();
    // First agent run: the server's tools become the baseline.
    let agent = Agent::start(&env, &dir, &["--state-dir", st]);
    drive(
        &env,
        &dir,
        "legacy",
        "flag:drift",
        "python",
        0,
        &env.py_server_cmd(),
    );
    let first = agent.stop();
    assert!(first
        .flags()
        .iter()
        .all(|f| f["flag"] != "tool_definition_drift"));
    assert!(
        state.join("tool_baselines.json").exists(),
        "baselines persist"
    );
    // A new agent (restart), the same server with a changed tool description.
    let agent = Agent::start(&env, &dir, &["--state-dir", st]);
    let t = drive_with_env(
        &env,
        &dir,
        "legacy",
        "flag:drift",
        "python",
        0,
        &env.py_server_cmd(),
        &["MCPSCOPE_TEST_VARIANT=drifted"],
    );
    let s = agent.stop();
    let f = assert_once(
        &flags_of(&s, &t, "tool_definition_drift"),
        "tool_definition_drift",
    );
    let changed = &f["details"]["changed"];
    assert_eq!(changed[0]["tool"], "lookup");
    assert_eq!(changed[0]["description_changed"], true);
    assert_eq!(changed[0]["schema_changed"], false);
}

#[test]
fn error_burst_fires_once() {
    let Some(env) = env("flag_error_burst") else {
        return;
    };
    let (s, t, _) = run(&env, "error_burst", "", &[]);
    let f = assert_once(&flags_of(&s, &t, "error_burst"), "error_burst");
    assert!(f["details"]["ratio"].as_f64().unwrap() >= 0.5);
    assert_eq!(f["evidence"].as_array().unwrap().len(), 5);
}

#[test]
fn large_response_fires_once_against_the_tools_own_baseline() {
    let Some(env) = env("flag_large") else { return };
    let (s, t, _) = run(&env, "large", "", &[]);
    let f = assert_once(&flags_of(&s, &t, "large_response"), "large_response");
    assert!(f["details"]["bytes"].as_u64().unwrap() > 200 * 1024);
    assert_eq!(f["details"]["samples"], 5);
}

#[test]
fn secret_in_payload_reports_kind_and_position_never_the_value() {
    let Some(env) = env("flag_secret") else {
        return;
    };
    let (s, t, dir) = run(&env, "secret", "", &[]);
    let f = assert_once(&flags_of(&s, &t, "secret_in_payload"), "secret_in_payload");
    assert_eq!(f["details"]["found"][0]["kind"], "aws_access_key");
    assert!(f["details"]["found"][0]["offset"].as_u64().is_some());
    let out = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert!(
        !out.contains("AKIAIOSFODNN7EXAMPLE"),
        "the value is never written"
    );
}

#[test]
fn injection_marker_fires_once_on_the_poisoned_result() {
    let Some(env) = env("flag_injection") else {
        return;
    };
    let (s, t, _) = run(&env, "injection", "", &[]);
    let f = assert_once(&flags_of(&s, &t, "injection_marker"), "injection_marker");
    let markers: Vec<&str> = f["details"]["found"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["marker"].as_str().unwrap())
        .collect();
    assert!(
        markers.contains(&"ignore previous instructions") && markers.contains(&"<important>"),
        "{markers:?}"
    );
    assert_eq!(f["tool"], "poisoned");
}

#[test]
fn policy_violation_flags_a_write_tool_for_a_read_only_identity() {
    let Some(env) = env("flag_policy") else {
        return;
    };
    let dir = env.tmpdir("policy-file");
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[default]\nservers = [\"*\"]\ntools = [\"*\"]\nallow_write = false\n",
    )
    .unwrap();
    let (s, t, _) = run(&env, "policy", "", &["--policy", policy.to_str().unwrap()]);
    let f = assert_once(&flags_of(&s, &t, "policy_violation"), "policy_violation");
    assert_eq!(f["tool"], "write_note");
    assert_eq!(f["details"]["write_class"], true);
    assert_eq!(evidence_ids(f), call_ids(&t, "write_note"));
}

#[test]
fn benign_heavy_use_raises_no_flag() {
    let Some(env) = env("flag_benign") else {
        return;
    };
    // Repeats spaced beyond the duplicate window (1 s here, 60 s by default).
    let (s, t, _) = run(&env, "benign", "[duplicate_call]\nwindow_s = 1\n", &[]);
    let flags: Vec<&Value> = s
        .flags()
        .into_iter()
        .filter(|f| pid(&f["from"]) == t.client || pid(&f["to"]) == t.client)
        .collect();
    assert!(flags.is_empty(), "{flags:#?}");
    assert!(s.between(&[t.client, t.server]).len() > 120);
}

#[test]
fn flags_are_counted_in_metrics_and_kept_in_the_audit_trail() {
    let Some(env) = env("flag_metrics") else {
        return;
    };
    let dir = env.tmpdir("flag-metrics");
    let audit = dir.join("audit");
    let agent = Agent::start(&env, &dir, &["--audit-dir", audit.to_str().unwrap()]);
    drive(
        &env,
        &dir,
        "legacy",
        "flag:dup",
        "python",
        0,
        &env.py_server_cmd(),
    );
    let body = mcpscope_e2e::wait_for("mcp_flags_total", 10, || {
        mcpscope_e2e::http_get(&agent.addr, "/metrics")
            .map(|(_, b)| b)
            .filter(|b| b.contains(r#"mcp_flags_total{flag="duplicate_call",severity="low"} 1"#))
    });
    assert!(body.contains("mcp_flags_total"));
    agent.stop();
    let (code, out, _) = mcpscope_e2e::mcpscope(
        &env,
        &[
            "flags",
            "--dir",
            audit.to_str().unwrap(),
            "--kind",
            "duplicate_call",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0);
    let v: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(v.len(), 1);
    let (_, out, _) = mcpscope_e2e::mcpscope(
        &env,
        &[
            "sessions",
            "--dir",
            audit.to_str().unwrap(),
            "--flagged",
            "--output",
            "json",
        ],
    );
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["flags"], 1);
}

//! End-to-end bad input on a real pipe between real processes: the agent
//! must not crash, must report the valid messages around the bad ones, and
//! must count what it could not parse or had to cut.

use std::process::Command;

use mcpscope_e2e::{env, Agent, Env, Stopped};
use serde_json::Value;

fn produce(env: &Env, case: &str) -> Value {
    let out = Command::new("python3")
        .arg(env.test_file("mcp/bad_input.py"))
        .arg(case)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{case}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn run_case(case: &str) -> Option<(Stopped, Value)> {
    let env = env(case)?;
    let dir = env.tmpdir(case);
    let agent = Agent::start(&env, &dir, &[]);
    let info = produce(&env, case);
    Some((agent.stop(), info))
}

fn ids_between(s: &Stopped, info: &Value) -> Vec<String> {
    let pids = [
        info["writer"].as_u64().unwrap(),
        info["reader"].as_u64().unwrap(),
    ];
    s.between(&pids)
        .iter()
        .map(|e| e["id"].to_string())
        .collect()
}

#[test]
fn binary_garbage_is_counted_and_valid_messages_survive() {
    let Some((s, info)) = run_case("garbage") else {
        return;
    };
    assert_eq!(ids_between(&s, &info), ["1", "2", "3"]);
    assert!(s.counter("invalid_json") >= 1, "{}", s.stderr);
}

#[test]
fn invalid_utf8_is_counted_and_valid_messages_survive() {
    let Some((s, info)) = run_case("invalid_utf8") else {
        return;
    };
    assert_eq!(ids_between(&s, &info), ["1", "2", "3"]);
    assert!(s.counter("invalid_json") >= 1, "{}", s.stderr);
}

#[test]
fn ten_megabyte_line_is_reported_once_truncated_with_true_size() {
    let Some((s, info)) = run_case("huge_line") else {
        return;
    };
    let pids = [
        info["writer"].as_u64().unwrap(),
        info["reader"].as_u64().unwrap(),
    ];
    let events = s.between(&pids);
    assert_eq!(events.len(), 2, "{events:?}");
    let big = events[0];
    assert_eq!(
        (
            big["id"].as_u64(),
            big["method"].as_str(),
            big["tool"].as_str()
        ),
        (Some(1), Some("tools/call"), Some("big")),
        "{big}"
    );
    assert_eq!(big["truncated"], true);
    assert_eq!(
        big["bytes"].as_u64(),
        info["huge_len"].as_u64(),
        "true size, not captured size"
    );
    assert_eq!(events[1]["id"], 2);
    assert_eq!(events[1]["truncated"], false);
    assert!(
        s.counter("truncated_syscalls") >= 1,
        "the 1 MiB cap cut the 10 MB write"
    );
    assert!(s.counter("truncated") >= 1);
}

#[test]
fn unterminated_json_is_counted_and_framing_resyncs() {
    let Some((s, info)) = run_case("unterminated") else {
        return;
    };
    assert_eq!(ids_between(&s, &info), ["2", "3"]);
    assert!(s.counter("invalid_json") >= 1);
}

#[test]
fn two_threads_writing_one_pipe_every_message_once() {
    let Some((s, info)) = run_case("two_threads") else {
        return;
    };
    let mut ids = ids_between(&s, &info);
    ids.sort();
    let mut want: Vec<String> = (0..2)
        .flat_map(|t| (0..200).map(move |i| format!("\"t{t}-{i}\"")))
        .collect();
    want.sort();
    assert_eq!(ids, want);
}

#[test]
fn process_killed_mid_message_is_reported_truncated_once() {
    let Some((s, info)) = run_case("killed_mid_message") else {
        return;
    };
    let pids = [
        info["writer"].as_u64().unwrap(),
        info["reader"].as_u64().unwrap(),
    ];
    let events = s.between(&pids);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["id"], 77);
    assert_eq!(events[0]["truncated"], true);
    assert_eq!(events[0]["tool"], "slow");
}

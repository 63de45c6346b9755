//! Detectors on synthetic sequences: interleaved sessions, ids reused
//! across sessions, responses out of order, and each detector's edges.

use std::{collections::HashMap, sync::Arc};

use super::{
    facts::MessageFacts, facts::ToolDef, policy::Policy, Asked, DetectConfig, Detectors, Flag,
    SessionState,
};
use crate::{
    identity::ProcessInfo,
    protocol::{Kind, PeerInfo, RpcId},
    sink::{Endpoint, McpEvent},
};

const S: u64 = 1_000_000_000;

fn end(pid: u32) -> Option<Endpoint> {
    let p = ProcessInfo {
        pid,
        ppid: None,
        comm: format!("p{pid}"),
        exe: Some(format!("/bin/p{pid}")),
        ..Default::default()
    };
    Some(Endpoint {
        process: Arc::new(p),
        fd: None,
        tid: None,
        k8s: None,
    })
}

/// A scripted conversation: requests and responses with explicit sessions,
/// each with its detector state, and tools/call requests kept for their
/// responses as the pipeline's pairing keeps them.
struct Script {
    d: Detectors,
    seq: u64,
    flags: Vec<Flag>,
    sessions: HashMap<String, SessionState>,
    asked: HashMap<u64, Asked>,
}

impl Script {
    fn new(cfg: DetectConfig) -> Self {
        Self::with(Detectors::new(cfg, None, None))
    }

    fn with(d: Detectors) -> Self {
        Self {
            d,
            seq: 0,
            flags: Vec::new(),
            sessions: HashMap::new(),
            asked: HashMap::new(),
        }
    }

    /// The detectors' flags for `ev` in its session; a response comes with
    /// its request, if that was seen.
    fn observe(&mut self, ev: &McpEvent, ts: u64, facts: &MessageFacts) -> Vec<Flag> {
        if ev.kind == Kind::Request {
            let asked = Asked {
                seq: ev.seq,
                ts_ns: ts,
                args_hash: facts.args_hash,
            };
            self.asked.insert(ev.seq, asked);
        }
        let asked = ev.request_seq.and_then(|s| self.asked.remove(&s));
        let session = self.sessions.entry(ev.session.to_string()).or_default();
        let mut flags = Vec::new();
        self.d
            .observe(session, ev, ts, facts, asked.as_ref(), &mut flags);
        flags
    }

    fn event(
        &mut self,
        kind: Kind,
        session: &str,
        caller: u32,
        id: i64,
        tool: &str,
        _ts: u64,
    ) -> McpEvent {
        self.seq += 1;
        let (from, to) = if kind == Kind::Request {
            (end(caller), end(caller + 1000))
        } else {
            (end(caller + 1000), end(caller))
        };
        McpEvent {
            ts: String::new(),
            seq: self.seq,
            kind,
            method: Some("tools/call".into()),
            id: Some(RpcId::Num(id)),
            logical_id: None,
            tool: Some(tool.into()),
            resource: None,
            prompt: None,
            is_error: false,
            error_code: None,
            error_type: None,
            error_message: None,
            result_type: None,
            latency_ms: None,
            request_seq: None,
            transport: "stdio",
            net: "pipe",
            tls: false,
            from,
            to,
            session: session.into(),
            protocol_version: None,
            client: Some(PeerInfo {
                name: "agent".into(),
                version: None,
            }),
            server: Some(PeerInfo {
                name: "srv".into(),
                version: None,
            }),
            bytes: 100,
            truncated: false,
            batch_index: None,
            http: None,
            payload: None,
        }
    }

    /// A request; returns its seq.
    fn call(&mut self, session: &str, caller: u32, id: i64, tool: &str, args: u64, ts: u64) -> u64 {
        let ev = self.event(Kind::Request, session, caller, id, tool, ts);
        let f = MessageFacts {
            args_hash: Some(args),
            ..MessageFacts::default()
        };
        let flags = self.observe(&ev, ts, &f);
        self.flags.extend(flags);
        ev.seq
    }

    /// The response to request `req_seq`.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        session: &str,
        caller: u32,
        id: i64,
        tool: &str,
        req_seq: u64,
        failed: bool,
        result: u64,
        bytes: u64,
        ts: u64,
    ) {
        let mut ev = self.event(Kind::Response, session, caller, id, tool, ts);
        ev.request_seq = Some(req_seq);
        ev.is_error = failed;
        ev.bytes = bytes;
        let f = MessageFacts {
            result_hash: Some(result),
            ..MessageFacts::default()
        };
        let flags = self.observe(&ev, ts, &f);
        self.flags.extend(flags);
    }

    fn names(&self) -> Vec<&'static str> {
        self.flags.iter().map(|f| f.flag).collect()
    }

    fn count(&self, flag: &str) -> usize {
        self.flags.iter().filter(|f| f.flag == flag).count()
    }
}

fn quiet() -> DetectConfig {
    let mut c = DetectConfig::default();
    c.first_seen.enabled = false;
    c.rate_spike.enabled = false;
    c
}

#[test]
fn duplicates_are_per_caller_across_interleaved_sessions_with_reused_ids() {
    let mut s = Script::new(quiet());
    // Two sessions of the same caller identity interleave and both use id 1.
    let a = s.call("s1", 7, 1, "read", 42, S);
    let b = s.call("s2", 7, 1, "other", 9, S + 1);
    s.answer("s2", 7, 1, "other", b, false, 1, 10, S + 2);
    s.answer("s1", 7, 1, "read", a, false, 1, 10, S + 3);
    assert!(s.flags.is_empty(), "{:?}", s.names());
    s.call("s2", 7, 2, "read", 42, 2 * S);
    assert_eq!(s.names(), ["duplicate_call"]);
    assert_eq!(
        s.flags[0]
            .evidence
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [a, 5]
    );
    assert_eq!(s.flags[0].details["reason"], "repeat_after_a_success");
    // Another caller with the same call is someone else.
    s.call("s3", 8, 1, "read", 42, 3 * S);
    assert_eq!(s.count("duplicate_call"), 1);
    // Different arguments are not a duplicate; outside the window is a new episode.
    s.call("s1", 7, 3, "read", 43, 3 * S);
    s.call("s1", 7, 4, "read", 42, 200 * S);
    assert_eq!(s.count("duplicate_call"), 1);
}

#[test]
fn one_call_repeated_many_times_fires_three_times_and_keeps_bounded_evidence() {
    let mut c = quiet();
    c.loop_.enabled = false;
    let mut s = Script::new(c);
    for i in 0..5_000 {
        s.call("s", 1, i, "read", 42, S + i as u64);
    }
    // min_count 2: Low at 2, Medium at 3, High at 5; never again.
    assert_eq!(s.count("duplicate_call"), 3, "{:?}", s.names());
    let kept = s.d.calls.values().next().unwrap().dup.calls.len();
    assert_eq!(kept, super::EPISODE_KEEP);
}

#[test]
fn out_of_order_responses_pair_by_request_and_feed_retry_storm() {
    let mut c = quiet();
    c.retry_storm.min_failures = 3;
    c.duplicate_call.enabled = false;
    let mut s = Script::new(c);
    let r: Vec<u64> = (1..=3)
        .map(|i| s.call("s", 1, i, "deploy", 5, i as u64 * S))
        .collect();
    // Answers arrive 3, 1, 2, all failures.
    for &(i, seq) in &[(3, r[2]), (1, r[0]), (2, r[1])] {
        s.answer("s", 1, i, "deploy", seq, true, 0, 50, 5 * S);
    }
    assert_eq!(s.count("retry_storm"), 1, "{:?}", s.names());
    assert_eq!(
        s.flags
            .iter()
            .find(|f| f.flag == "retry_storm")
            .unwrap()
            .evidence
            .len(),
        3
    );
    // A success resets the storm.
    let x = s.call("s", 1, 9, "deploy", 5, 6 * S);
    s.answer("s", 1, 9, "deploy", x, false, 0, 50, 6 * S);
    for i in 10..12 {
        let q = s.call("s", 1, i, "deploy", 5, 7 * S);
        s.answer("s", 1, i, "deploy", q, true, 0, 50, 7 * S);
    }
    assert_eq!(s.count("retry_storm"), 1);
}

fn run_cycle(s: &mut Script, session: &str, pattern: &[(&str, u64, u64)], times: usize) {
    let mut id = 100;
    for _ in 0..times {
        for &(tool, args, result) in pattern {
            id += 1;
            let q = s.call(session, 1, id, tool, args, id as u64 * S / 10);
            s.answer(
                session,
                1,
                id,
                tool,
                q,
                false,
                result,
                10,
                id as u64 * S / 10,
            );
        }
    }
}

#[test]
fn loops_of_period_one_two_and_three_fire_once_each() {
    let mut c = quiet();
    c.duplicate_call.enabled = false;
    for (pattern, period) in [
        (vec![("a", 1, 1)], 1),
        (vec![("a", 1, 1), ("b", 2, 2)], 2),
        (vec![("a", 1, 1), ("b", 2, 2), ("c", 3, 3)], 3),
    ] {
        let mut s = Script::new(c.clone());
        run_cycle(&mut s, "s", &pattern, 5);
        assert_eq!(s.count("loop"), 1, "period {period}: {:?}", s.names());
        assert_eq!(s.flags[0].details["period"], period);
        let names: Vec<&str> = pattern.iter().map(|p| p.0).collect();
        assert_eq!(s.flags[0].details["cycle"], serde_json::json!(names));
    }
}

#[test]
fn a_loop_that_goes_on_fires_once_and_the_next_loop_fires_again() {
    // A flagged cycle is followed without a search while it goes on: it
    // must neither fire again nor hide the loop that comes after it.
    let mut c = quiet();
    c.duplicate_call.enabled = false;
    let mut s = Script::new(c);
    run_cycle(&mut s, "s", &[("a", 1, 1), ("b", 2, 2)], 50);
    assert_eq!(s.count("loop"), 1, "{:?}", s.names());
    // Straight into another cycle, with no other call between.
    run_cycle(&mut s, "s", &[("c", 3, 3)], 50);
    assert_eq!(s.count("loop"), 2, "{:?}", s.names());
    assert_eq!(s.flags[1].details["period"], 1);
    assert_eq!(s.flags[1].details["cycle"], serde_json::json!(["c"]));
    // A period-four cycle holding a run of three: each run is a loop of
    // period one until the cycle has repeated three times (three flags);
    // from then on the window always repeats at period four, so while the
    // run passes it repeats at period one too, and nothing fires again.
    let with_a_run = [("d", 4, 4), ("d", 4, 4), ("d", 4, 4), ("e", 5, 5)];
    for _ in 0..2 {
        run_cycle(&mut s, "s", &with_a_run, 20);
        assert_eq!(s.count("loop"), 5, "{:?}", s.names());
    }
}

#[test]
fn loops_flag_as_a_search_of_every_window_would() {
    // Random calls over a few tools, arguments and results (so that
    // cycles form, go on, turn into others and break), against a model
    // that searches every window: the same flags, response by response.
    let mut c = quiet();
    c.duplicate_call.enabled = false;
    let (maxp, k) = (c.loop_.max_period, c.loop_.min_repeats);
    let mut seed = 7u64;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for round in 0..40 {
        let mut s = Script::new(c.clone());
        let (mut sigs, mut fired, mut expected) = (Vec::new(), false, 0);
        let tools = ["a", "b", "c"];
        let mut pattern: Vec<(usize, u64)> = Vec::new();
        for id in 0..600u64 {
            // Mostly a repeating pattern, changed now and then.
            if pattern.is_empty() || next(40) == 0 {
                pattern = (0..1 + next(5))
                    .map(|_| (next(3) as usize, next(2)))
                    .collect();
            }
            let (tool, args) = pattern[id as usize % pattern.len()];
            let result = if next(25) == 0 { 9 } else { args };
            let q = s.call("s", 1, id as i64, tools[tool], args, id * S / 10);
            s.answer(
                "s",
                1,
                id as i64,
                tools[tool],
                q,
                false,
                result,
                10,
                id * S / 10,
            );
            sigs.push(((tool, args, result), ()));
            let window = &sigs[sigs.len().saturating_sub(maxp * k)..];
            match super::repeating_period(window, maxp, k) {
                Some(_) if !fired => {
                    fired = true;
                    expected += 1;
                }
                Some(_) => {}
                None => fired = false,
            }
            assert_eq!(s.count("loop"), expected, "round {round}, call {id}");
        }
    }
}

#[test]
fn a_loop_after_many_other_tools_names_its_own_cycle() {
    // Forty different tools pass through the session's window first, so
    // the loop state has forgotten most of their names by the loop.
    let mut c = quiet();
    c.duplicate_call.enabled = false;
    let mut s = Script::new(c);
    let tools: Vec<String> = (0..40).map(|i| format!("tool{i}")).collect();
    let others: Vec<(&str, u64, u64)> = tools.iter().map(|t| (t.as_str(), 1, 1)).collect();
    run_cycle(&mut s, "s", &others, 1);
    assert_eq!(s.count("loop"), 0, "{:?}", s.names());
    run_cycle(&mut s, "s", &[("read", 1, 1), ("tool3", 2, 2)], 5);
    assert_eq!(s.count("loop"), 1, "{:?}", s.names());
    assert_eq!(
        s.flags[0].details["cycle"],
        serde_json::json!(["read", "tool3"])
    );
}

#[test]
fn a_cycle_with_changing_results_is_progress_not_a_loop() {
    let mut c = quiet();
    c.duplicate_call.enabled = false;
    let mut s = Script::new(c);
    for i in 0..6 {
        let q = s.call("s", 1, i, "poll", 1, i as u64 * S);
        s.answer("s", 1, i, "poll", q, false, i as u64, 10, i as u64 * S); // a new result each time
    }
    assert_eq!(s.count("loop"), 0);
}

#[test]
fn loops_are_per_session() {
    let mut c = quiet();
    c.duplicate_call.enabled = false;
    let mut s = Script::new(c);
    // The same call alternates between two sessions: twice each, no loop.
    for i in 0..4 {
        let session = if i % 2 == 0 { "s1" } else { "s2" };
        let q = s.call(session, 1, i, "a", 1, i as u64 * S);
        s.answer(session, 1, i, "a", q, false, 1, 10, i as u64 * S);
    }
    assert_eq!(s.count("loop"), 0);
}

#[test]
fn error_burst_fires_once_and_rearms_after_recovery() {
    let mut c = quiet();
    c.duplicate_call.enabled = false;
    c.retry_storm.enabled = false;
    c.loop_.enabled = false;
    let mut s = Script::new(c);
    let mut id = 0;
    let mut step = |s: &mut Script, failed: bool| {
        id += 1;
        let q = s.call("s", 1, id, "t", id as u64, id as u64 * S);
        s.answer("s", 1, id, "t", q, failed, 0, 10, id as u64 * S);
    };
    for _ in 0..5 {
        step(&mut s, true);
    }
    assert_eq!(s.count("error_burst"), 1);
    for _ in 0..20 {
        step(&mut s, false);
    }
    for _ in 0..20 {
        step(&mut s, true);
    }
    assert_eq!(s.count("error_burst"), 2, "a second burst after recovery");
}

#[test]
fn error_burst_state_does_not_grow_with_the_call_rate() {
    let mut c = quiet();
    c.duplicate_call.enabled = false;
    c.loop_.enabled = false;
    let mut s = Script::new(c);
    // 20,000 calls over 200 s (100 a second), one in four failing: the
    // ratio stays under 0.5, and the window holds 30 slots, not 6,000 calls.
    for i in 0..20_000i64 {
        let ts = S + i as u64 * (S / 100);
        let q = s.call("s", 1, i, "t", i as u64, ts);
        s.answer("s", 1, i, "t", q, i % 4 == 0, 0, 10, ts);
    }
    assert_eq!(s.count("error_burst"), 0);
    let e = &s.d.pairs.values().next().unwrap().errors;
    assert!(e.outcomes.len() <= super::ERROR_SLOTS as usize + 1);
    // 60 s of calls at 100 a second, give or take one slot (2 s) at the edge.
    assert!((6_000..=6_200).contains(&e.calls), "{}", e.calls);
    assert!(
        (e.calls / 4).abs_diff(e.errors) <= 1,
        "{} of {}",
        e.errors,
        e.calls
    );
}

#[test]
fn large_response_absolute_and_relative() {
    let mut c = quiet();
    c.duplicate_call.enabled = false;
    c.loop_.enabled = false;
    let mut s = Script::new(c);
    let q = s.call("s", 1, 1, "dump", 1, S);
    s.answer("s", 1, 1, "dump", q, false, 1, 2 << 20, S);
    assert_eq!(s.count("large_response"), 1, "above the absolute limit");
    for i in 2..8 {
        let q = s.call("s", 1, i, "small", i as u64, S);
        s.answer("s", 1, i, "small", q, false, i as u64, 1000, S);
    }
    let q = s.call("s", 1, 9, "small", 9, S);
    s.answer("s", 1, 9, "small", q, false, 9, 20_000, S);
    assert_eq!(s.count("large_response"), 2);
}

/// rate_spike alone, with 1 s buckets, 5 of warm-up and 10 calls at least.
fn rate_spike_script() -> Script {
    let mut c = DetectConfig::default();
    c.duplicate_call.enabled = false;
    c.first_seen.enabled = false;
    c.rate_spike.bucket_s = 1.0;
    c.rate_spike.warmup_buckets = 5;
    c.rate_spike.min_calls = 10;
    Script::new(c)
}

#[test]
fn rate_spike_waits_for_warm_up() {
    let mut s = rate_spike_script();
    // A burst during warm-up raises nothing (and joins the baseline).
    for i in 0..15 {
        s.call("s", 1, i, "t", i as u64, S / 2);
    }
    for b in 1..8u64 {
        s.call("s", 1, 100 + b as i64, "t", b, b * S + 1);
    }
    assert_eq!(s.count("rate_spike"), 0);
    for i in 0..40 {
        s.call("s", 1, 200 + i, "t", i as u64, 9 * S + i as u64);
    }
    assert_eq!(s.count("rate_spike"), 1);
}

#[test]
fn rate_spike_counts_a_late_timestamp_in_the_current_bucket() {
    let mut s = rate_spike_script();
    for b in 0..9u64 {
        s.call("s", 1, b as i64, "t", b, b * S + 1);
    }
    // In the spike's bucket, every other request carries a timestamp read
    // a little earlier on another CPU, in the bucket before: it joins the
    // current one (before, the bucket number went back and a count of
    // empty buckets overflowed: a panic in a debug build, and in release
    // the spike's bucket closed again and again).
    for i in 0..40u64 {
        let ts = if i % 2 == 0 { 9 * S + i } else { 9 * S - 1_000 };
        s.call("s", 1, 100 + i as i64, "t", i, ts);
    }
    assert_eq!(s.count("rate_spike"), 1);
    // It fired at the tenth request of the bucket, late ones included
    // (counting only the on-time ones, it would have taken nineteen).
    let flag = &s.flags[0];
    assert_eq!(flag.details["count"], 10);
    let ids: Vec<_> = flag.evidence.iter().map(|e| e.id.clone()).collect();
    assert!(ids.contains(&Some(RpcId::Num(101))), "{ids:?}");
}

#[test]
fn a_time_slot_is_found_by_range_and_never_goes_back() {
    use super::time_slot;
    assert_eq!(time_slot(25, None, 10), 2, "the first slot");
    assert_eq!(time_slot(29, Some(2), 10), 2, "within the newest");
    assert_eq!(time_slot(30, Some(2), 10), 3, "past its end");
    assert_eq!(time_slot(75, Some(2), 10), 7, "slots skipped");
    assert_eq!(time_slot(19, Some(2), 10), 2, "late: counted in the newest");
    assert_eq!(time_slot(u64::MAX, Some(u64::MAX / 10), 10), u64::MAX / 10);
}

#[test]
fn first_seen_only_after_learning() {
    let mut c = DetectConfig::default();
    c.duplicate_call.enabled = false;
    c.rate_spike.enabled = false;
    c.first_seen.learning_s = 10.0;
    let mut s = Script::new(c);
    s.call("s", 1, 1, "a", 1, S);
    s.call("s", 1, 2, "b", 1, 5 * S);
    assert_eq!(s.count("first_seen"), 0, "still learning");
    s.call("s", 1, 3, "b", 1, 20 * S);
    assert_eq!(s.count("first_seen"), 0, "known");
    s.call("s", 1, 4, "c", 1, 21 * S);
    assert_eq!(s.count("first_seen"), 1);
    assert_eq!(s.flags.last().unwrap().details["reason"], "new_tool");
}

#[test]
fn learning_period_is_per_caller() {
    let mut c = DetectConfig::default();
    c.duplicate_call.enabled = false;
    c.rate_spike.enabled = false;
    c.first_seen.learning_s = 10.0;
    let mut s = Script::new(c);
    // Another caller's traffic long before does not end caller 2's learning.
    s.call("s1", 1, 1, "a", 1, S);
    s.call("s2", 2, 1, "a", 1, 100 * S);
    s.call("s2", 2, 2, "b", 1, 105 * S);
    assert_eq!(s.count("first_seen"), 0, "caller 2 is still learning");
    s.call("s2", 2, 3, "c", 1, 111 * S);
    assert_eq!(s.count("first_seen"), 1, "caller 2 learned: c is new");
}

#[test]
fn drift_is_summarised_and_persists_across_restarts() {
    let dir = std::env::temp_dir().join(format!("mcpscope-drift-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let defs = |desc: u64| {
        vec![
            ToolDef {
                name: "a".into(),
                description: desc,
                schema: 1,
                write: false,
            },
            ToolDef {
                name: "b".into(),
                description: 1,
                schema: 1,
                write: false,
            },
        ]
    };
    let list = |d: &mut Detectors, tools: Vec<ToolDef>| {
        let mut s = Script::new(DetectConfig::default());
        let mut ev = s.event(Kind::Response, "s", 1, 1, "", S);
        ev.method = Some("tools/list".into());
        let mut flags = Vec::new();
        d.observe(
            &mut SessionState::default(),
            &ev,
            S,
            &MessageFacts::listing(tools),
            None,
            &mut flags,
        );
        flags
    };
    let mut d = Detectors::new(DetectConfig::default(), None, Some(dir.clone()));
    assert!(
        list(&mut d, defs(1)).is_empty(),
        "first sight is the baseline"
    );
    // A restart: a new set of detectors reads the persisted baseline.
    let mut d = Detectors::new(DetectConfig::default(), None, Some(dir.clone()));
    let flags = list(&mut d, defs(2));
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].flag, "tool_definition_drift");
    assert_eq!(flags[0].details["changed"][0]["description_changed"], true);
    let mut gone = defs(2);
    gone.pop();
    let flags = list(&mut d, gone);
    assert_eq!(flags[0].details["removed"], serde_json::json!(["b"]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn policy_rules_select_by_client_and_default_read_only() {
    let p = Policy::from_toml(
        "[default]\nallow_write = false\n\n[[rule]]\nclient = \"agent\"\nservers = [\"srv\"]\ntools = [\"read_*\", \"write_*\"]\nallow_write = true\n",
    )
    .unwrap();
    let s = Script::new(quiet());
    let mut s = s;
    let ev = s.event(Kind::Request, "s", 1, 1, "write_file", S);
    assert_eq!(
        p.check(&ev, "srv", "write_file", true),
        None,
        "the rule allows writes"
    );
    assert!(p
        .check(&ev, "srv", "delete_file", true)
        .unwrap()
        .contains("not allowed"));
    assert!(p
        .check(&ev, "other", "read_file", false)
        .unwrap()
        .contains("server"));
    let mut anon = ev.clone();
    anon.client = None;
    assert!(
        p.check(&anon, "srv", "write_file", true)
            .unwrap()
            .contains("read-only"),
        "default: read-only"
    );
    assert!(Policy::from_toml("[[rule]]\nservers = [\"x\"]\n")
        .unwrap_err()
        .contains("no selector"));
}

#[test]
fn policy_rules_select_by_namespace_and_service_account() {
    let p = Policy::from_toml(
        "[[rule]]\nnamespace = \"team-a\"\nservice_account = \"agent-sa\"\nservers = [\"srv\"]\nallow_write = true\n",
    )
    .unwrap();
    let mut s = Script::new(quiet());
    let mut ev = s.event(Kind::Request, "s", 1, 1, "write_file", S);
    assert!(
        p.check(&ev, "srv", "write_file", true).is_some(),
        "no pod: the default (read-only) applies"
    );
    let pod = |ns: &str, sa: &str| crate::identity::PodInfo {
        pod: "p".into(),
        namespace: ns.into(),
        uid: "u".into(),
        node: None,
        service_account: Some(sa.into()),
        workload_kind: None,
        workload: None,
        spiffe_id: None,
        labels: Default::default(),
    };
    let from = ev.from.as_mut().unwrap();
    from.k8s = Some(Arc::new(pod("team-a", "agent-sa")));
    assert_eq!(p.check(&ev, "srv", "write_file", true), None);
    ev.from.as_mut().unwrap().k8s = Some(Arc::new(pod("team-a", "other")));
    assert!(p.check(&ev, "srv", "write_file", true).is_some());
    ev.from.as_mut().unwrap().k8s = Some(Arc::new(pod("team-b", "agent-sa")));
    assert!(p.check(&ev, "srv", "write_file", true).is_some());
}

#[test]
fn state_is_bounded_and_evictions_counted() {
    let mut c = quiet();
    c.limits.max_keys = 16;
    let mut s = Script::new(c);
    for i in 0..100 {
        s.call("s", 1, i, &format!("tool{i}"), i as u64, S);
    }
    assert!(s.d.stats.evicted > 0);
    assert!(s.d.calls.len() <= 16 && s.d.seen.len() <= 16);
}

#[test]
fn header_mismatch_fires_on_disagreeing_mcp_headers_only() {
    use crate::protocol::http::HttpHead;
    use crate::sink::HttpInfo;
    let mut s = Script::new(DetectConfig::default());
    let mut with_headers = |method: Option<&str>, name: Option<&str>| {
        let mut ev = s.event(Kind::Request, "h", 1, 1, "echo", 0);
        let head = HttpHead {
            method: Some("POST".into()),
            mcp_method: method.map(Into::into),
            mcp_name: name.map(Into::into),
            ..HttpHead::default()
        };
        ev.http = Some(HttpInfo {
            head: Arc::new(head),
            sse_event: None,
            sse_id: None,
            from_status: false,
            tls: false,
            answers: None,
            session_key: None,
        });
        s.observe(&ev, 0, &MessageFacts::default())
            .into_iter()
            .filter(|f| f.flag == "header_mismatch")
            .collect::<Vec<_>>()
    };
    assert!(with_headers(Some("tools/call"), Some("echo")).is_empty());
    assert!(with_headers(None, None).is_empty(), "no headers: 2025 era");
    let m = with_headers(Some("tools/list"), Some("echo"));
    assert_eq!(m.len(), 1);
    assert!(
        m[0].message.contains("Mcp-Method \"tools/list\""),
        "{}",
        m[0].message
    );
    let n = with_headers(Some("tools/call"), Some("delete_everything"));
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].details["header_name"], "delete_everything");
    assert_eq!(n[0].details["body_name"], "echo");
}

#[test]
fn a_call_to_a_tool_the_server_did_not_list_is_flagged_once() {
    let listed = |write| ToolDef {
        name: "echo".into(),
        description: 1,
        schema: 1,
        write,
    };
    let mut s = Script::new(DetectConfig::default());
    // The server's tools/list, seen live (no baseline before it).
    let mut ev = s.event(Kind::Response, "s", 1, 1, "", S);
    ev.method = Some("tools/list".into());
    let facts = MessageFacts::listing(vec![listed(false)]);
    assert!(s.observe(&ev, S, &facts).is_empty());
    s.call("s", 1, 2, "echo", 1, 2 * S);
    s.call("s", 1, 3, "rm_rf", 1, 3 * S);
    s.call("s", 1, 4, "rm_rf", 2, 4 * S);
    let unlisted: Vec<_> = s
        .flags
        .iter()
        .filter(|f| f.details["reason"] == "tool_not_listed")
        .collect();
    assert_eq!(unlisted.len(), 1, "{:?}", s.names());
    assert_eq!(unlisted[0].tool.as_deref(), Some("rm_rf"));
    // Baselines handed over (as replay does) index the same way.
    let mut s = Script::with(
        Detectors::new(DetectConfig::default(), None, None)
            .with_baselines([("srv@/bin/p1001".to_owned(), vec![listed(true)])].into()),
    );
    s.call("s", 1, 2, "echo", 1, S);
    s.call("s", 1, 3, "other", 1, 2 * S);
    assert_eq!(s.count("first_seen"), 1, "{:?}", s.names());
}

#[test]
fn a_sessions_names_follow_its_ends_and_client_names() {
    let mut s = Script::new(quiet());
    // Events of one session share their processes' `Arc`s, as the
    // pipeline's do: the session's names are kept and checked against them.
    let first = s.event(Kind::Request, "s", 1, 1, "read", S);
    let call = |s: &mut Script, client: &str, from: &Option<Endpoint>| {
        let mut ev = first.clone();
        s.seq += 1;
        ev.seq = s.seq;
        ev.id = Some(RpcId::Num(s.seq as i64));
        ev.from = from.clone();
        ev.client = Some(PeerInfo {
            name: client.into(),
            version: None,
        });
        let f = MessageFacts {
            args_hash: Some(42),
            ..MessageFacts::default()
        };
        let flags = s.observe(&ev, S, &f);
        s.flags.extend(flags);
    };
    // The same call, before the client named itself and after: two callers.
    call(&mut s, "before", &first.from);
    call(&mut s, "after", &first.from);
    assert!(s.flags.is_empty(), "{:?}", s.names());
    // Another process at the client end (another `Arc`) is another caller.
    let other = end(2);
    call(&mut s, "after", &other);
    assert!(s.flags.is_empty(), "{:?}", s.names());
    call(&mut s, "after", &other);
    assert_eq!(s.names(), ["duplicate_call"]);
    assert_eq!(s.flags[0].caller, "after@/bin/p2");
}

#[test]
fn the_loop_window_is_always_the_last_signatures_pushed() {
    for w in [1, 2, 3, 24] {
        let mut l = super::LoopState::default();
        for i in 0..200u64 {
            let me = super::Evidence {
                seq: i,
                id: None,
                ts_ns: i,
            };
            let window: Vec<u64> = l
                .push((0, i, i), me, w)
                .iter()
                .map(|(_, e)| e.seq)
                .collect();
            let expected: Vec<u64> = (i.saturating_sub(w as u64 - 1)..=i).collect();
            assert_eq!(window, expected, "w {w}, after {i}");
            assert!(l.sigs.len() <= 2 * w, "trimmed at twice the window");
        }
    }
}

//! The audit trail through its public API: tamper evidence, crash and
//! resume, keyed chains, rotation and retention, and queries at scale.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use mcpscope::audit::{
    query::{self, CallFilter, Filter},
    segment_name, segments,
    verify::{verify, Verdict},
    AuditConfig, AuditLog,
};
use serde_json::json;

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("audit-{name}"));
    let _ = fs::remove_dir_all(&d);
    d
}

fn message(i: u64, session: &str, tool: &str, kind: &str) -> serde_json::Value {
    json!({
        "ts": format!("2026-11-26T06:{:02}:{:02}.{:06}Z", (i / 60_000_000) % 60, (i / 1_000_000) % 60, i % 1_000_000),
        "seq": i, "kind": kind, "method": "tools/call", "id": i, "tool": tool, "is_error": i.is_multiple_of(10) && kind == "response",
        "transport": "stdio", "net": "pipe", "tls": false,
        "from": {"pid": 100, "comm": "agent", "exe": "/usr/bin/agent"}, "to": {"pid": 200, "comm": "server", "exe": "/usr/bin/server"},
        "session": session, "client": {"name": "client-a"}, "server": {"name": "server-b"}, "bytes": 120, "truncated": false,
        "latency_ms": 1.5
    })
}

/// Writes `n` message records (plus headers) with small segments.
fn write_trail(d: &Path, n: u64, segment_bytes: u64, key: Option<&[u8]>) {
    let mut cfg = AuditConfig::new(d.to_path_buf());
    cfg.max_segment_bytes = segment_bytes;
    cfg.hmac_key = key.map(|k| k.to_vec());
    let mut log = AuditLog::open(cfg).unwrap();
    for i in 0..n {
        let m = message(
            i,
            &format!("stdio:{:04}", i % 7),
            if i % 3 == 0 { "echo" } else { "add" },
            if i % 2 == 0 { "request" } else { "response" },
        );
        log.append_json("message", m["ts"].as_str().unwrap(), &m)
            .unwrap();
    }
    log.close().unwrap();
}

fn lines(p: &Path) -> Vec<String> {
    fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(p: &Path, l: &[String]) {
    fs::write(p, l.join("\n") + "\n").unwrap();
}

fn broken(d: &Path) -> (String, String) {
    match verify(d, None).unwrap() {
        Verdict::Broken { at, what } => (at, what),
        v => panic!("expected a break, got {v}"),
    }
}

#[test]
fn a_clean_trail_verifies_and_files_are_private() {
    let d = dir("clean");
    write_trail(&d, 500, 8 << 10, None);
    let v = verify(&d, None).unwrap();
    assert!(
        matches!(v, Verdict::Ok { records, .. } if records > 500),
        "{v}"
    );
    assert!(segments(&d).unwrap().len() > 3, "rotated by size");
    assert_eq!(
        fs::metadata(&d).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for s in segments(&d).unwrap() {
        assert_eq!(
            fs::metadata(d.join(segment_name(s)))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
}

#[test]
fn an_edited_record_is_named() {
    let d = dir("edited");
    write_trail(&d, 100, 1 << 20, None);
    let p = d.join(segment_name(1));
    let mut l = lines(&p);
    assert!(l[10].contains("\"bytes\":120"));
    l[10] = l[10].replace("\"bytes\":120", "\"bytes\":121");
    write_lines(&p, &l);
    let (at, what) = broken(&d);
    assert_eq!(at, "audit-000001.jsonl line 11");
    assert!(what.starts_with("edited"), "{what}");
}

#[test]
fn a_deleted_record_is_named() {
    let d = dir("deleted");
    write_trail(&d, 100, 1 << 20, None);
    let p = d.join(segment_name(1));
    let mut l = lines(&p);
    l.remove(20);
    write_lines(&p, &l);
    let (at, what) = broken(&d);
    assert_eq!(at, "audit-000001.jsonl line 21 (seq 22)");
    assert!(what.contains("seq 21..21 deleted"), "{what}");
}

#[test]
fn reordered_records_are_named() {
    let d = dir("reordered");
    write_trail(&d, 100, 1 << 20, None);
    let p = d.join(segment_name(1));
    let mut l = lines(&p);
    l.swap(30, 31);
    write_lines(&p, &l);
    let (at, what) = broken(&d);
    assert!(at.starts_with("audit-000001.jsonl line 31"), "{at}");
    assert!(
        what.contains("deleted") || what.contains("reordered"),
        "{what}"
    );
}

#[test]
fn a_truncated_segment_is_named() {
    let d = dir("truncated");
    write_trail(&d, 300, 8 << 10, None);
    let p = d.join(segment_name(2));
    let mut l = lines(&p);
    l.truncate(l.len() - 3);
    write_lines(&p, &l);
    let (at, what) = broken(&d);
    assert!(at.starts_with("audit-000003.jsonl line 1"), "{at}");
    assert!(what.contains("segment 2 is truncated"), "{what}");
}

#[test]
fn a_missing_segment_is_named() {
    let d = dir("missing");
    write_trail(&d, 300, 8 << 10, None);
    fs::remove_file(d.join(segment_name(3))).unwrap();
    let (at, what) = broken(&d);
    assert_eq!(at, "audit-000003.jsonl");
    assert!(what.contains("missing segment(s) 3..3"), "{what}");
    // Removing the first segment is caught too (no retention record vouches).
    let d = dir("missing-first");
    write_trail(&d, 300, 8 << 10, None);
    fs::remove_file(d.join(segment_name(1))).unwrap();
    let (_, what) = broken(&d);
    assert!(
        what.contains("missing segment(s) 1..1 (not removed by retention)"),
        "{what}"
    );
}

#[test]
fn a_torn_last_line_is_reported_then_acknowledged_on_resume() {
    let d = dir("torn");
    write_trail(&d, 50, 1 << 20, None);
    let p = d.join(segment_name(1));
    let mut bytes = fs::read(&p).unwrap();
    bytes.extend_from_slice(br#"{"seq":52,"ts":"2026-11-26T07:00:00Z","kind":"mess"#); // killed mid-write
    fs::write(&p, bytes).unwrap();
    let v = verify(&d, None).unwrap();
    assert!(
        matches!(&v, Verdict::Torn { at, .. } if at.starts_with("audit-000001.jsonl line 52")),
        "{v}"
    );
    // The agent restarts: a new segment, linked to the last good record.
    let mut log = AuditLog::open(AuditConfig::new(d.clone())).unwrap();
    let m = message(999, "stdio:x", "echo", "request");
    log.append_json("message", "2026-11-26T07:00:01Z", &m)
        .unwrap();
    log.close().unwrap();
    match verify(&d, None).unwrap() {
        Verdict::Ok { notes, .. } => {
            assert!(notes.iter().any(|n| n.contains("torn line")), "{notes:?}")
        }
        v => panic!("{v}"),
    }
}

#[test]
fn a_segment_left_empty_by_a_failed_header_write_is_resumed_past() {
    let d = dir("empty-segment");
    write_trail(&d, 20, 1 << 20, None);
    // The next run's header never reached the full disk: its segment is
    // an empty file. The run after it continues the last record there is.
    let last = *segments(&d).unwrap().last().unwrap();
    fs::File::create(d.join(segment_name(last + 1))).unwrap();
    write_trail(&d, 20, 1 << 20, None);
    assert_eq!(segments(&d).unwrap().len(), 3);
    let v = verify(&d, None).unwrap();
    assert!(
        matches!(v, Verdict::Ok { records, .. } if records == 42),
        "{v}"
    );
}

#[test]
fn a_keyed_chain_needs_its_key() {
    let d = dir("keyed");
    let key = b"0123456789abcdef0123456789abcdef";
    write_trail(&d, 50, 1 << 20, Some(key));
    let (_, what) = broken(&d);
    assert!(what.contains("pass --hmac-key"), "{what}");
    assert!(matches!(
        verify(&d, Some(b"wrong-key-wrong-key")).unwrap(),
        Verdict::Broken { .. }
    ));
    assert!(matches!(verify(&d, Some(key)).unwrap(), Verdict::Ok { .. }));
}

#[test]
fn retention_by_count_is_vouched_for_in_the_chain() {
    let d = dir("retention");
    let mut cfg = AuditConfig::new(d.clone());
    cfg.max_segment_bytes = 4 << 10;
    cfg.keep_segments = 3;
    let mut log = AuditLog::open(cfg).unwrap();
    for i in 0..400 {
        let m = message(i, "stdio:r", "echo", "request");
        log.append_json("message", m["ts"].as_str().unwrap(), &m)
            .unwrap();
    }
    log.close().unwrap();
    let segs = segments(&d).unwrap();
    assert_eq!(segs.len(), 3, "{segs:?}");
    assert!(segs[0] > 1);
    match verify(&d, None).unwrap() {
        Verdict::Ok { notes, .. } => assert!(
            notes.iter().any(|n| n.contains("removed by retention")),
            "{notes:?}"
        ),
        v => panic!("{v}"),
    }
}

/// A crash after retention has recorded (and synced) what it removes, but
/// before the files are gone: the state is made exactly, by putting the
/// removed segments back. The chain vouches for segments still on disk;
/// the trail verifies, and the next rotation removes them.
#[test]
fn a_crash_between_the_retention_record_and_the_deletion_leaves_a_verifiable_trail() {
    let d = dir("retention-crash");
    let aside = dir("retention-crash-aside");
    let append = |log: &mut AuditLog, range: std::ops::Range<u64>| {
        for i in range {
            let m = message(i, "stdio:c", "echo", "request");
            log.append_json("message", m["ts"].as_str().unwrap(), &m)
                .unwrap();
        }
    };
    let cfg = |keep| {
        let mut cfg = AuditConfig::new(d.clone());
        cfg.max_segment_bytes = 4 << 10;
        cfg.keep_segments = keep;
        cfg
    };
    // Five segments, none removed; a copy of each.
    let mut log = AuditLog::open(cfg(0)).unwrap();
    append(&mut log, 0..100);
    log.close().unwrap();
    fs::create_dir_all(&aside).unwrap();
    let before = segments(&d).unwrap();
    assert!(before.len() >= 5, "{before:?}");
    for s in &before {
        fs::copy(d.join(segment_name(*s)), aside.join(segment_name(*s))).unwrap();
    }
    // Resumed with a limit of three: the first rotation records the
    // removal of the oldest, then deletes them.
    let mut log = AuditLog::open(cfg(3)).unwrap();
    let mut i = 100;
    while segments(&d).unwrap()[0] == before[0] {
        append(&mut log, i..i + 1);
        i += 1;
    }
    log.close().unwrap();
    let removed: Vec<u64> = before
        .iter()
        .copied()
        .filter(|s| !d.join(segment_name(*s)).exists())
        .collect();
    assert!(!removed.is_empty());
    // The crash: every removal recorded, none done.
    for s in &removed {
        fs::copy(aside.join(segment_name(*s)), d.join(segment_name(*s))).unwrap();
    }
    let v = verify(&d, None).unwrap();
    assert!(
        matches!(v, Verdict::Ok { .. }),
        "a crash before the deletions must still verify: {v}"
    );
    // Resumed: the next rotation removes what the chain said was removed.
    let mut log = AuditLog::open(cfg(3)).unwrap();
    let last = *segments(&d).unwrap().last().unwrap();
    while *segments(&d).unwrap().last().unwrap() == last {
        append(&mut log, i..i + 1);
        i += 1;
    }
    log.close().unwrap();
    for s in &removed {
        assert!(
            !d.join(segment_name(*s)).exists(),
            "segment {s} still there"
        );
    }
    assert_eq!(segments(&d).unwrap().len(), 3);
    assert!(matches!(verify(&d, None).unwrap(), Verdict::Ok { .. }));
}

#[test]
fn retention_by_bytes_keeps_the_total_bounded() {
    let d = dir("retention-bytes");
    let mut cfg = AuditConfig::new(d.clone());
    cfg.max_segment_bytes = 4 << 10;
    cfg.keep_bytes = 20 << 10;
    let mut log = AuditLog::open(cfg).unwrap();
    for i in 0..1000 {
        let m = message(i, "stdio:b", "echo", "request");
        log.append_json("message", m["ts"].as_str().unwrap(), &m)
            .unwrap();
    }
    log.close().unwrap();
    let total: u64 = segments(&d)
        .unwrap()
        .iter()
        .map(|s| fs::metadata(d.join(segment_name(*s))).unwrap().len())
        .sum();
    // At most the limit plus the segment being written.
    assert!(total <= (20 << 10) + (8 << 10), "total {total}");
    assert!(matches!(verify(&d, None).unwrap(), Verdict::Ok { .. }));
}

#[test]
fn queries_over_a_million_records_are_correct() {
    let d = dir("million");
    let n = 1_000_000u64;
    write_trail(&d, n, 32 << 20, None);
    let answer = query::sessions(&d, &Filter::default()).unwrap();
    assert_eq!(answer.unreadable, 0, "every line read");
    let rows = answer.rows;
    assert_eq!(rows.len(), 7);
    assert_eq!(rows.iter().map(|r| r.summary.messages).sum::<u64>(), n);
    let s0 = rows.iter().find(|r| r.session == "stdio:0000").unwrap();
    assert_eq!(
        s0.summary.messages,
        (0..n).filter(|i| i % 7 == 0).count() as u64
    );
    assert_eq!(s0.summary.client.as_deref(), Some("client-a"));
    // Completed echo calls: responses (odd i) with i % 3 == 0.
    let echo = query::calls(
        &d,
        &CallFilter {
            tool: Some("echo".into()),
            ..CallFilter::default()
        },
    )
    .unwrap()
    .rows;
    assert_eq!(
        echo.len() as u64,
        (0..n).filter(|i| i % 2 == 1 && i % 3 == 0).count() as u64
    );
    let errors = query::calls(
        &d,
        &CallFilter {
            tool: Some("echo".into()),
            status: Some("error".into()),
            ..CallFilter::default()
        },
    )
    .unwrap()
    .rows;
    assert!(
        errors.is_empty(),
        "errors are on even (request-numbered) i only"
    );
    let tl = query::timeline(&d, Some("stdio:0003"), None).unwrap();
    assert_eq!(tl.unreadable, 0, "every line read");
    let tl = tl.rows;
    assert_eq!(
        tl.len() as u64,
        (0..n).filter(|i| i % 7 == 3).count() as u64
    );
    assert!(
        tl.windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()),
        "ordered"
    );
    assert!(matches!(verify(&d, None).unwrap(), Verdict::Ok { records, .. } if records > n));
}

#[test]
fn sessions_and_timeline_filter_by_kubernetes_namespace_and_pod() {
    let d = dir("k8s");
    let mut log = AuditLog::open(AuditConfig::new(d.clone())).unwrap();
    for (i, (ns, pod)) in [("team-a", "agent-7d9f"), ("team-b", "agent-55c1")]
        .iter()
        .enumerate()
    {
        let mut m = message(i as u64, &format!("stdio:k{i}"), "echo", "request");
        m["from"]["k8s"] = json!({"namespace": ns, "pod": pod});
        log.append_json("message", m["ts"].as_str().unwrap(), &m)
            .unwrap();
    }
    log.close().unwrap();
    let f = Filter {
        namespace: Some("team-b".into()),
        ..Filter::default()
    };
    let rows = query::sessions(&d, &f).unwrap().rows;
    assert_eq!(
        rows.iter().map(|r| r.session.as_str()).collect::<Vec<_>>(),
        ["stdio:k1"]
    );
    let f = Filter {
        pod: Some("agent-7d9f".into()),
        ..Filter::default()
    };
    assert_eq!(query::sessions(&d, &f).unwrap().rows[0].session, "stdio:k0");
    let tl = query::timeline_of(&d, None, None, Some("agent-55c1"))
        .unwrap()
        .rows;
    assert_eq!(tl.len(), 1);
    assert_eq!(tl[0]["data"]["session"], "stdio:k1");
}

#[test]
fn rotation_by_age_and_retention_by_age() {
    let d = dir("age");
    let mut cfg = AuditConfig::new(d.clone());
    cfg.max_segment_age = std::time::Duration::from_millis(30);
    cfg.keep_age = std::time::Duration::from_millis(200);
    let mut log = AuditLog::open(cfg).unwrap();
    let m = message(1, "stdio:a", "echo", "request");
    log.append_json("message", m["ts"].as_str().unwrap(), &m)
        .unwrap();
    // Time passing is what is tested here: let the segment age, then tick.
    std::thread::sleep(std::time::Duration::from_millis(40));
    log.tick().unwrap();
    assert_eq!(segments(&d).unwrap(), [1, 2], "rotated by age");
    std::thread::sleep(std::time::Duration::from_millis(250));
    log.append_json("message", m["ts"].as_str().unwrap(), &m)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(40));
    log.tick().unwrap();
    log.close().unwrap();
    let segs = segments(&d).unwrap();
    assert!(
        !segs.contains(&1),
        "segment 1 is older than keep_age: {segs:?}"
    );
    match verify(&d, None).unwrap() {
        Verdict::Ok { notes, .. } => assert!(
            notes.iter().any(|n| n.contains("removed by retention")),
            "{notes:?}"
        ),
        v => panic!("{v}"),
    }
}

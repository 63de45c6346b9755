//! Investigation queries over a 1,000,000-record audit trail (the issue's
//! bound: each answers within 2 s on the project's 2-core machine).
//!
//! How they stay fast: closed segments carry an index (time range, session
//! summaries, tools), so `sessions` reads only indexes and the others skip
//! segments that cannot match; inside a segment `memmem` finds candidate
//! lines before any JSON is parsed.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use mcpscope::audit::{
    query::{self, CallFilter, Filter},
    AuditConfig, AuditLog,
};
use serde_json::json;

const RECORDS: u64 = 1_000_000;
const SESSIONS: u64 = 1000;

fn trail() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-audit-1m");
    if dir.join("audit-000001.idx.json").exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = AuditConfig::new(dir.clone());
    cfg.max_segment_bytes = 32 << 20;
    cfg.fsync_every = 0;
    let mut log = AuditLog::open(cfg).unwrap();
    for i in 0..RECORDS {
        let ts = format!(
            "2026-11-26T{:02}:{:02}:{:02}.{:06}Z",
            (i / 3_600_000_000) % 24,
            (i / 60_000_000) % 60,
            (i / 1_000_000) % 60,
            i % 1_000_000
        );
        let m = json!({
            "ts": ts, "seq": i, "kind": if i % 2 == 0 { "request" } else { "response" }, "method": "tools/call", "id": i,
            "tool": format!("tool-{}", i % 50), "is_error": i % 97 == 0, "transport": "stdio", "net": "pipe", "tls": false,
            "from": {"pid": 1000 + i % SESSIONS, "comm": "agent", "exe": "/usr/bin/agent"},
            "to": {"pid": 5000 + i % SESSIONS, "comm": "server", "exe": "/usr/bin/mcp-server"},
            "session": format!("stdio:{:016x}", i % SESSIONS), "client": {"name": "claude-code"}, "server": {"name": "fs"},
            "bytes": 240, "truncated": false, "latency_ms": 3.25
        });
        log.append_json("message", m["ts"].as_str().unwrap(), &m)
            .unwrap();
    }
    log.close().unwrap();
    dir
}

fn queries(c: &mut Criterion) {
    let dir = trail();
    let mut g = c.benchmark_group("audit_1m_records");
    g.sample_size(10);
    g.bench_function("sessions", |b| {
        b.iter(|| query::sessions(&dir, &Filter::default()).unwrap())
    });
    g.bench_function("timeline_one_session", |b| {
        b.iter(|| query::timeline(&dir, Some("stdio:00000000000002a7"), None).unwrap())
    });
    g.bench_function("calls_one_tool", |b| {
        b.iter(|| {
            query::calls(
                &dir,
                &CallFilter {
                    tool: Some("tool-7".into()),
                    ..CallFilter::default()
                },
            )
            .unwrap()
        })
    });
    g.bench_function("calls_errors_all_tools", |b| {
        b.iter(|| {
            query::calls(
                &dir,
                &CallFilter {
                    status: Some("error".into()),
                    ..CallFilter::default()
                },
            )
            .unwrap()
        })
    });
    g.bench_function("flags", |b| {
        b.iter(|| query::flags(&dir, None, None, &Filter::default()).unwrap())
    });
    g.bench_function("verify", |b| {
        b.iter(|| mcpscope::audit::verify::verify(&dir, None).unwrap())
    });
    g.finish();
}

criterion_group!(benches, queries);
criterion_main!(benches);

//! The pipeline end to end on synthetic ring records: both ends of two
//! pipes, as a real stdio session produces them.

use mcpscope::{
    capture::record::data_record,
    pipeline::{Pipeline, PipelineConfig},
    sink::{Sink, VecSink},
    stream::NoControl,
    world::ReplayWorld,
};
use std::sync::{Arc, Mutex};

struct Shared(Arc<Mutex<VecSink>>);
impl Sink for Shared {
    fn emit(&mut self, ev: &mcpscope::sink::McpEvent) -> std::io::Result<()> {
        self.0.lock().unwrap().emit(ev)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A TCP socket's record from process `tgid`, as the kernel writes it: it
/// read the socket's ports (local 40000+fd, remote 443) and addresses.
fn tcp_record(tgid: u32, fd: u32, ts: u64, data: &str, egress: bool) -> Vec<u8> {
    let mut r = data_record(tgid, fd, 8000 + u64::from(fd), ts, data.as_bytes(), egress);
    // SAFETY: the record starts with a POD header.
    let mut h: mcpscope_common::DataHeader =
        unsafe { std::ptr::read_unaligned(r.as_ptr() as *const _) };
    h.file_kind = mcpscope_common::FILE_SOCKET;
    h.flow = mcpscope_common::Flow {
        lport: 40000 + fd as u16,
        rport: 443,
        addr_xor: 0x0a00_0001 ^ 0xc0a8_0001,
    };
    // SAFETY: a POD header written back over itself.
    unsafe { std::ptr::write_unaligned(r.as_mut_ptr() as *mut _, h) };
    r
}

/// A replay pipeline (no /proc) whose events land in the returned sink.
fn pipeline() -> (Pipeline<NoControl>, Arc<Mutex<VecSink>>) {
    let sink = Arc::new(Mutex::new(VecSink::default()));
    let p = Pipeline::new(
        PipelineConfig::default(),
        NoControl,
        vec![Box::new(Shared(sink.clone()))],
        0,
    )
    .with_world(Box::new(ReplayWorld::default()));
    (p, sink)
}

/// Round trip `i` of a stdio session, as the kernel records it: the client
/// (pid 100) writes a tools/call at `i` ms, the server (pid 200) reads it
/// 10 µs later and answers at +500 µs, which the client reads at +510 µs.
fn round_trip(i: u64) -> [Vec<u8>; 4] {
    let req = format!(
        r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"t","arguments":{{}}}}}}"#
    ) + "\n";
    let resp = format!(r#"{{"result":{{"content":[]}},"jsonrpc":"2.0","id":{i}}}"#) + "\n";
    let t = i * 1_000_000;
    [
        data_record(100, 5, 7001, t, req.as_bytes(), true),
        data_record(200, 0, 7001, t + 10_000, req.as_bytes(), false),
        data_record(200, 1, 7002, t + 500_000, resp.as_bytes(), true),
        data_record(100, 6, 7002, t + 510_000, resp.as_bytes(), false),
    ]
}

#[test]
fn both_ends_of_two_pipes_pair_every_response_once() {
    let (mut p, sink) = pipeline();
    let n = 5000u64;
    for i in 0..n {
        for r in round_trip(i) {
            p.on_record(&r);
        }
    }
    p.finish();
    let events = &sink.lock().unwrap().0;
    assert_eq!(events.len() as u64, 2 * n, "each message once");
    let paired = events.iter().filter(|e| e.latency_ms.is_some()).count() as u64;
    assert_eq!(
        paired,
        n,
        "every response paired; pair stats {:?}",
        p.pair_stats()
    );
    assert_eq!(p.pair_stats().evicted, 0);
}

/// Durations on a long session: every response's responder-side and
/// requester-side durations are observed (the read times they start and
/// end at are kept only as long as they are needed), and none of that
/// state is evicted, however many messages pass: more than the state's
/// bound (65,536) here.
#[test]
fn durations_of_a_long_session_lose_no_state() {
    let metrics = Arc::new(mcpscope::metrics::Metrics::new(100));
    let (p, _sink) = pipeline();
    let mut p = p.with_metrics(metrics.clone());
    let n = 70_000u64;
    for i in 0..n {
        for r in round_trip(i) {
            p.on_record(&r);
        }
    }
    p.finish();
    p.export_metrics(&metrics);
    let text = metrics.render();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in the metrics"))
            .rsplit_once(' ')
            .unwrap()
            .1
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(
        line(r#"mcpscope_events_lost_total{reason="duration_state_evicted",stage="metrics"}"#),
        0.0
    );
    // Responder side: from the server's read (t + 10 µs) to its write
    // (t + 500 µs); requester side: from the client's write to its read.
    let count = |name: &str| line(&format!("{name}_count{{"));
    let sum = |name: &str| line(&format!("{name}_sum{{"));
    let (server, client) = (
        "mcp_server_operation_duration_seconds",
        "mcp_client_operation_duration_seconds",
    );
    assert_eq!((count(server), count(client)), (n as f64, n as f64));
    assert!(
        (sum(server) / n as f64 - 490e-6).abs() < 1e-9,
        "{}",
        sum(server)
    );
    assert!(
        (sum(client) / n as f64 - 510e-6).abs() < 1e-9,
        "{}",
        sum(client)
    );
}

/// A writer's record is made when its syscall returns, so the server's
/// response can enter the ring buffer before the client's request (the
/// server preempted the client inside write(2)). The response waits for
/// its request and pairs; a response whose request never comes is still
/// reported, unpaired, once its wait is over.
#[test]
fn a_response_recorded_before_its_request_pairs_with_it() {
    let (mut p, sink) = pipeline();
    let req =
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","arguments":{}}}"#
            .to_owned()
            + "\n";
    let resp = r#"{"result":{"content":[]},"jsonrpc":"2.0","id":7}"#.to_owned() + "\n";
    let orphan = r#"{"result":{"content":[]},"jsonrpc":"2.0","id":99}"#.to_owned() + "\n";
    for r in [
        data_record(200, 0, 7001, 10_000, req.as_bytes(), false),
        data_record(200, 1, 7002, 500_000, resp.as_bytes(), true),
        data_record(100, 6, 7002, 510_000, resp.as_bytes(), false),
        data_record(100, 5, 7001, 520_000, req.as_bytes(), true),
        data_record(200, 1, 7002, 600_000, orphan.as_bytes(), true),
        data_record(100, 6, 7002, 610_000, orphan.as_bytes(), false),
    ] {
        p.on_record(&r);
    }
    {
        let events = &sink.lock().unwrap().0;
        let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.id.clone())).collect();
        assert_eq!(events.len(), 2, "the orphan still waits: {kinds:?}");
        assert_eq!(events[0].kind, mcpscope::protocol::Kind::Request);
        assert_eq!(events[1].request_seq, Some(events[0].seq), "paired");
    }
    p.tick(610_000 + 100_000_000);
    let events = &sink.lock().unwrap().0;
    assert_eq!(events.len(), 3, "the orphan reported once its wait is over");
    assert_eq!(events[2].request_seq, None);
    assert_eq!(p.pair_stats().unmatched, 1);
}

/// A Streamable HTTP POST of `body`, in MCP session `sid` if given.
fn post(body: &str, sid: Option<&str>) -> String {
    let sid = sid.map_or(String::new(), |s| format!("Mcp-Session-Id: {s}\r\n"));
    format!(
        "POST /mcp HTTP/1.1\r\nHost: mcp.example\r\nContent-Type: application/json\r\n\
Accept: application/json, text/event-stream\r\n{sid}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A JSON answer to a Streamable HTTP POST, in MCP session `sid`.
fn answer(body: &str, sid: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: {sid}\r\n\
Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// What the kernel records of an HTTP client whose server is elsewhere:
/// on connection 1 (fd 5) an initialize with no session yet, answered
/// with `Mcp-Session-Id: s-123`; on connection 2 (fd 6) a call in it.
fn one_sided_http_client() -> [Vec<u8>; 4] {
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"far-client","version":"1"}}}"#;
    let init_ok = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"far-server","version":"1"}}}"#;
    let call =
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    let call_ok = r#"{"jsonrpc":"2.0","id":2,"result":{"content":[]}}"#;
    let ms = 1_000_000;
    let tcp = |fd, ts, data: &str, egress| tcp_record(100, fd, ts, data, egress);
    [
        tcp(5, ms, &post(init, None), true),
        tcp(5, 2 * ms, &answer(init_ok, "s-123"), false),
        tcp(6, 3 * ms, &post(call, Some("s-123")), true),
        tcp(6, 4 * ms, &answer(call_ok, "s-123"), false),
    ]
}

/// An HTTP client whose server is not on this host: only the client's
/// copies exist (synthetic records, as the kernel writes them). The
/// initialize response names the session its request did not have yet;
/// later requests carry it on a new connection. Every response pairs.
#[test]
fn one_sided_http_client_pairs_across_connections_by_mcp_session() {
    let (mut p, sink) = pipeline();
    for r in one_sided_http_client() {
        p.on_record(&r);
    }
    p.finish();
    let events = &sink.lock().unwrap().0;
    let got: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.method.as_deref(),
                e.latency_ms.is_some(),
                e.transport,
            )
        })
        .collect();
    use mcpscope::protocol::Kind::{Request, Response};
    assert_eq!(
        got,
        [
            (Request, Some("initialize"), false, "http"),
            (Response, Some("initialize"), true, "http"),
            (Request, Some("tools/call"), false, "http"),
            (Response, Some("tools/call"), true, "http"),
        ],
        "every response paired"
    );
    // The session's fingerprint, never the id itself.
    let sid = events[1]
        .http
        .as_ref()
        .unwrap()
        .head
        .session_id
        .clone()
        .unwrap();
    assert_eq!(sid.len(), 16);
    assert_ne!(&*sid, "s-123");
    assert_eq!(events[2].session, events[3].session);
    assert_eq!(
        events[3].client.as_ref().map(|c| c.name.as_str()),
        Some("far-client")
    );
}

/// A writer's fd 5 moves to a new pipe without its close ever being
/// reported (a lost record): the old pipe's stream ends there, so the new
/// pipe's message joins its own reader's copy and is reported once, to the
/// right process, and the missed close is counted.
#[test]
fn fd_reused_without_a_close_record_starts_a_new_stream() {
    let (mut p, sink) = pipeline();
    let line = |id: u32| {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"t"}}}}"#)
            + "\n"
    };
    let ms = 1_000_000;
    for r in [
        // fd 5 of process 100 is pipe 7001, read by process 200.
        data_record(100, 5, 7001, ms, line(1).as_bytes(), true),
        data_record(200, 0, 7001, 2 * ms, line(1).as_bytes(), false),
        // No close of fd 5: it is now pipe 7003, read by process 300.
        data_record(100, 5, 7003, 3 * ms, line(2).as_bytes(), true),
        data_record(300, 0, 7003, 4 * ms, line(2).as_bytes(), false),
    ] {
        p.on_record(&r);
    }
    p.finish();
    let events = &sink.lock().unwrap().0;
    let to: Vec<(String, Option<u32>)> = events
        .iter()
        .map(|e| (format!("{:?}", e.id), e.to.as_ref().map(|t| t.process.pid)))
        .collect();
    assert_eq!(events.len(), 2, "each message once: {to:?}");
    assert_eq!(
        to[1].1,
        Some(300),
        "the second line went to pipe 7003's reader: {to:?}"
    );
    assert_eq!(p.stats().streams_close_missed, 1);
}

/// A server behind an auth layer answers 401 from the request's head,
/// before it reads the body (synthetic records of the server's end, in the
/// order a loaded host produced them in a real run): the error is made
/// once the body names the request, and pairs with it.
#[test]
fn error_status_written_before_the_request_body_pairs_once_the_body_is_read() {
    let (mut p, sink) = pipeline();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let unauthorized =
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer error=\"invalid_token\"\r\n\
Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let ms = 1_000_000;
    for r in [
        tcp_record(300, 7, ms, &head, false),
        tcp_record(300, 7, 2 * ms, unauthorized, true),
        tcp_record(300, 7, 3 * ms, body, false),
    ] {
        p.on_record(&r);
    }
    p.finish();
    let events = &sink.lock().unwrap().0;
    let got: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.method.as_deref(), e.latency_ms.is_some()))
        .collect();
    use mcpscope::protocol::Kind::{Error, Request};
    assert_eq!(
        got,
        [
            (Request, Some("initialize"), false),
            (Error, Some("initialize"), true)
        ],
        "the 401 answers request 1"
    );
    assert_eq!(
        events[1].http.as_ref().map(|h| h.head.status),
        Some(Some(401))
    );
}

/// Keeps the pipeline's non-message records (`session_start`, …), and the
/// session of each message.
#[derive(Clone, Default)]
struct Records(
    Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    Arc<Mutex<Vec<String>>>,
);
impl Sink for Records {
    fn emit(&mut self, ev: &mcpscope::sink::McpEvent) -> std::io::Result<()> {
        self.1.lock().unwrap().push(ev.session.to_string());
        Ok(())
    }
    fn record(&mut self, kind: &str, _ts: &str, data: &serde_json::Value) -> std::io::Result<()> {
        self.0.lock().unwrap().push((kind.to_owned(), data.clone()));
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A long-lived HTTP client that opens a new MCP session (a new
/// `Mcp-Session-Id`) for every call and never exits: its sessions would
/// otherwise be held until it does. Past `max_sessions` the least recently
/// active go, each with a `session_end` saying so, counted; the gauge
/// never passes the bound, and the session in use still pairs.
#[test]
fn sessions_past_the_bound_end_as_evicted_and_are_counted() {
    let records = Records::default();
    let cfg = PipelineConfig {
        max_sessions: 16,
        ..PipelineConfig::default()
    };
    let metrics = Arc::new(mcpscope::metrics::Metrics::new(100));
    let mut p = Pipeline::new(cfg, NoControl, vec![Box::new(records.clone())], 0)
        .with_world(Box::new(ReplayWorld::default()))
        .with_metrics(metrics.clone());
    let call =
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    let call_ok = r#"{"jsonrpc":"2.0","id":2,"result":{"content":[]}}"#;
    let ms = 1_000_000;
    let sessions = 100u64;
    for i in 0..sessions {
        let sid = format!("s-{i}");
        let t = i * 1000 * ms;
        p.on_record(&tcp_record(100, 5, t + ms, &post(call, Some(&sid)), true));
        p.on_record(&tcp_record(
            100,
            5,
            t + 2 * ms,
            &answer(call_ok, &sid),
            false,
        ));
        p.tick(t + 500 * ms); // past every hold: the messages are emitted
        p.export_metrics(&metrics);
        assert!(
            metrics.sessions_active.get() <= 16,
            "held {}",
            metrics.sessions_active.get()
        );
    }
    assert_eq!(p.pair_stats().unmatched, 0, "every response paired");
    let recs = records.0.lock().unwrap();
    let count = |kind: &str, reason: Option<&str>| {
        recs.iter()
            .filter(|(k, d)| k == kind && reason.is_none_or(|r| d["reason"] == r))
            .count() as u64
    };
    let started = count("session_start", None);
    let evicted = count("session_end", Some("evicted"));
    assert_eq!(started, sessions, "one session per MCP session id");
    assert_eq!(
        evicted + metrics.sessions_active.get() as u64,
        started,
        "every session not held ended as evicted"
    );
    let text = metrics.render();
    let lost = text
        .lines()
        .find(|l| l.starts_with("mcpscope_events_lost_total{reason=\"evicted\",stage=\"session\"}"))
        .expect("the eviction counter is exported");
    assert!(lost.ends_with(&format!(" {evicted}")), "{lost}");
}

/// Every session has its `session_start` on record, the one-sided HTTP
/// session an initialize answer names (`Mcp-Session-Id`) too: the audit
/// trail never shows a session's messages or its end without its start.
#[test]
fn a_session_named_by_an_initialize_answer_has_its_session_start() {
    let records = Records::default();
    let cfg = PipelineConfig {
        max_sessions: 1, // the named session's arrival evicts the first: its end is on record
        ..PipelineConfig::default()
    };
    let mut p = Pipeline::new(cfg, NoControl, vec![Box::new(records.clone())], 0)
        .with_world(Box::new(ReplayWorld::default()));
    for r in one_sided_http_client() {
        p.on_record(&r);
    }
    p.finish();
    let recs = records.0.lock().unwrap();
    let named = |kind: &str| -> Vec<String> {
        recs.iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, d)| d["session"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let (started, ended) = (named("session_start"), named("session_end"));
    let carried = records.1.lock().unwrap();
    assert!(
        carried.iter().all(|s| started.contains(s)),
        "messages in sessions never started: {carried:?}, started {started:?}"
    );
    assert!(!ended.is_empty(), "the bound of one ended a session");
    for s in &ended {
        assert!(started.contains(s), "{s} ended, never started: {started:?}");
    }
    assert_eq!(
        started.len(),
        2,
        "the connection's and the MCP session's: {started:?}"
    );
}

#[test]
fn with_detectors_a_non_ascii_message_is_parsed_and_invalid_utf8_is_counted() {
    // The detectors' pass tells the parser when a message is all ASCII
    // (its UTF-8 check is then skipped): a message that is not must still
    // be checked, valid text parsed and invalid text counted.
    let (p, sink) = pipeline();
    let mut p = p.with_detectors(mcpscope::detect::Detectors::new(
        mcpscope::detect::DetectConfig::default(),
        None,
        None,
    ));
    let lines: [&[u8]; 3] = [
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":"plain"}}}"#,
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"t\",\"arguments\":{\"a\":\"caf\u{e9} \u{2019}\"}}}".as_bytes(),
        b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"t\",\"arguments\":{\"a\":\"\xff\xfe\"}}}",
    ];
    for (i, line) in lines.iter().enumerate() {
        let data = [*line, b"\n"].concat();
        let t = i as u64 * 1_000_000;
        p.on_record(&data_record(100, 5, 7001, t, &data, true));
        p.on_record(&data_record(200, 0, 7001, t + 10_000, &data, false));
    }
    p.finish();
    let ids: Vec<String> = sink
        .lock()
        .unwrap()
        .0
        .iter()
        .filter(|e| e.method.as_deref() == Some("tools/call"))
        .filter_map(|e| e.id.as_ref().map(|id| format!("{id:?}")))
        .collect();
    assert_eq!(ids, ["Num(1)", "Num(2)"], "1 and 2 reported, 3 not");
    assert!(
        p.stats().parse_invalid_json >= 1,
        "invalid UTF-8 is counted as invalid JSON: {:?}",
        p.stats()
    );
}

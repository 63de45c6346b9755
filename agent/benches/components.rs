//! The hot path's parts one at a time: the newline framer, the HTTP/1.1 and
//! SSE framers, the JSON-RPC/MCP model (both eras), detector facts from a
//! message's bytes, and the identity parsers. Throughput in bytes (or
//! elements) per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mcpscope::{
    detect::facts,
    identity::{container::parse_proc_cgroup, secrets::redact_cmdline},
    protocol::{parse, parse_raw},
    stream::{framer::LineFramer, http::HttpFramer, sse::SseParser},
};

const REQUEST: &[u8] = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/srv/data/file-7.txt"}}}"#;
const REQUEST_2026: &[u8] = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"agent","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;

fn response(text_len: usize) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":42,"result":{{"content":[{{"type":"text","text":"{}"}}],"isError":false}}}}"#,
        "x".repeat(text_len)
    )
    .into_bytes()
}

fn framer(c: &mut Criterion) {
    let mut g = c.benchmark_group("framer");
    // 64 KiB of 600-byte lines in 4 KiB reads: lines split across reads.
    let line = [response(500), b"\n".to_vec()].concat();
    let stream: Vec<u8> = line.iter().copied().cycle().take(64 * 1024).collect();
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("lines_600B_in_4KiB_reads", |b| {
        b.iter(|| {
            let mut f = LineFramer::new(8 << 20);
            let mut n = 0usize;
            for chunk in stream.chunks(4096) {
                f.push(chunk, &mut |_| n += 1);
            }
            n
        })
    });
    g.finish();
}

/// A Streamable HTTP exchange as one connection carries it: a POST with a
/// JSON body (and the SDK's headers, a bearer JWT among them), answered by
/// an SSE stream, chunked.
fn http_exchange(body_len: usize) -> (Vec<u8>, Vec<u8>) {
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZ2VudCIsImlzcyI6Imh0dHBzOi8vaWRwIn0.c2ln";
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:8000\r\naccept: application/json, text/event-stream\r\n\
content-type: application/json\r\nmcp-session-id: 7d766ea5acef1e2f7d766ea5acef1e2f\r\n\
mcp-protocol-version: 2025-11-25\r\nauthorization: Bearer {jwt}\r\ncontent-length: {}\r\n\r\n",
        REQUEST.len()
    )
    .into_bytes();
    req.extend_from_slice(REQUEST);
    let event = [
        b"event: message\r\ndata: ".as_slice(),
        &response(body_len),
        b"\r\n\r\n",
    ]
    .concat();
    let mut resp =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
mcp-session-id: 7d766ea5acef1e2f7d766ea5acef1e2f\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    resp.extend_from_slice(format!("{:x}\r\n", event.len()).as_bytes());
    resp.extend_from_slice(&event);
    resp.extend_from_slice(b"\r\n0\r\n\r\n");
    (req, resp)
}

fn http(c: &mut Criterion) {
    let mut g = c.benchmark_group("http");
    let (req, resp) = http_exchange(500);
    g.throughput(Throughput::Bytes(req.len() as u64));
    g.bench_function("post_json_with_bearer_jwt", |b| {
        let mut f = HttpFramer::new(8 << 20);
        b.iter(|| {
            let mut n = 0usize;
            f.push(&req, &mut |_| n += 1);
            n
        })
    });
    g.throughput(Throughput::Bytes(resp.len() as u64));
    g.bench_function("sse_response_chunked_600B", |b| {
        let mut f = HttpFramer::new(8 << 20);
        b.iter(|| {
            let mut n = 0usize;
            f.push(&resp, &mut |_| n += 1);
            n
        })
    });
    // SSE alone: 64 KiB of 600-byte events in 4 KiB reads.
    let event = [b"data: ".as_slice(), &response(500), b"\n\n"].concat();
    let stream: Vec<u8> = event.iter().copied().cycle().take(64 * 1024).collect();
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("sse_events_600B_in_4KiB_reads", |b| {
        let mut p = SseParser::new(8 << 20);
        b.iter(|| {
            let mut n = 0usize;
            for chunk in stream.chunks(4096) {
                p.push(chunk, &mut |_| n += 1);
            }
            n
        })
    });
    g.finish();
}

fn model(c: &mut Criterion) {
    let mut g = c.benchmark_group("jsonrpc_mcp");
    let resp = response(500);
    for (name, bytes) in [
        ("request_2025", REQUEST),
        ("request_2026_meta", REQUEST_2026),
        ("response_600B", resp.as_slice()),
    ] {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| b.iter(|| parse(bytes).expect("valid")));
    }
    g.finish();
}

fn detector_facts(c: &mut Criterion) {
    let mut g = c.benchmark_group("detector_facts");
    let resp = response(500);
    g.throughput(Throughput::Bytes(REQUEST.len() as u64));
    // The parser's raw parts are an input here (parsing is `model`'s figure).
    let (_, req_raw) = parse_raw(REQUEST).expect("valid");
    g.bench_function("request", |b| {
        b.iter(|| {
            facts::extract(
                facts::Needs::ALL,
                req_raw,
                None,
                Some("tools/call"),
                false,
                None,
            )
        })
    });
    let (_, resp_raw) = parse_raw(&resp).expect("valid");
    g.throughput(Throughput::Bytes(resp.len() as u64));
    g.bench_function("response_600B", |b| {
        b.iter(|| {
            facts::extract(
                facts::Needs::ALL,
                resp_raw,
                None,
                None,
                true,
                Some("tools/call"),
            )
        })
    });
    g.finish();
}

fn identity(c: &mut Criterion) {
    let mut g = c.benchmark_group("identity");
    let cgroup = "12:pids:/kubepods/besteffort/pod5f8a2c3e-1b2d-4c5e-8f90-a1b2c3d4e5f6/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5f8a2c3e_1b2d_4c5e_8f90_a1b2c3d4e5f6.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope\n";
    g.bench_function("parse_proc_cgroup", |b| {
        b.iter(|| parse_proc_cgroup(cgroup))
    });
    let args = [
        "node",
        "/srv/server.js",
        "--port",
        "8080",
        "--api-key",
        "s3cr3t",
        "https://u:p@h/x",
    ];
    g.bench_function("redact_cmdline", |b| b.iter(|| redact_cmdline(args)));
    g.finish();
}

criterion_group!(benches, framer, http, model, detector_facts, identity);
criterion_main!(benches);

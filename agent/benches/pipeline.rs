//! Userspace cost per message: decode → assemble → frame → parse → pair →
//! event, with and without the detectors (the issue's bound: detectors add
//! at most 10%). Input: ring-buffer records of a realistic stdio exchange —
//! tools/call requests with small arguments and ~600-byte results, each
//! captured at both ends of its pipe (so paired and joined as live).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mcpscope::{
    detect::{DetectConfig, Detectors},
    pipeline::{Pipeline, PipelineConfig},
    stream::NoControl,
    world::ReplayWorld,
};
use mcpscope_common::{DataHeader, RecordKind, Syscall, DATA_HEADER_LEN, FILE_PIPE, FLAG_EGRESS};

const MESSAGES: usize = 10_000;

fn record(tgid: u32, fd: u32, ino: u64, ts: u64, line: &[u8], egress: bool) -> Vec<u8> {
    let h = DataHeader {
        kind: RecordKind::Data as u32,
        flags: if egress { FLAG_EGRESS } else { 0 },
        tgid,
        tid: tgid,
        fd,
        syscall: if egress {
            Syscall::Write
        } else {
            Syscall::Read
        } as u32,
        ts_ns: ts,
        total_len: line.len() as u64,
        offset: 0,
        len: line.len() as u32,
        cgroup_id: 1,
        comm: *b"bench\0\0\0\0\0\0\0\0\0\0\0",
        ino,
        file_kind: FILE_PIPE,
        _pad: 0,
    };
    let mut v = vec![0u8; DATA_HEADER_LEN];
    // SAFETY: a POD header written into a buffer of its size.
    unsafe { std::ptr::write_unaligned(v.as_mut_ptr() as *mut DataHeader, h) };
    v.extend_from_slice(line);
    v
}

fn records() -> Vec<Vec<u8>> {
    let text = "x".repeat(480);
    (0..MESSAGES / 2)
        .flat_map(|i| {
            let req = format!(
                r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"read_file","arguments":{{"path":"/srv/data/file-{}.txt"}}}}}}"#,
                i % 50
            ) + "\n";
            let resp = format!(r#"{{"result":{{"content":[{{"type":"text","text":"{text}"}}],"isError":false}},"jsonrpc":"2.0","id":{i}}}"#) + "\n";
            let t = i as u64 * 1_000_000;
            // Both ends of both pipes, as on a real host: the client writes
            // the request and the server reads it; then the reverse.
            [
                record(100, 5, 7001, t, req.as_bytes(), true),
                record(200, 0, 7001, t + 10_000, req.as_bytes(), false),
                record(200, 1, 7002, t + 500_000, resp.as_bytes(), true),
                record(100, 6, 7002, t + 510_000, resp.as_bytes(), false),
            ]
        })
        .collect()
}

fn run(recs: &[Vec<u8>], detect: bool) {
    let mut p = Pipeline::new(PipelineConfig::default(), NoControl, Vec::new(), 0)
        .with_world(Box::new(ReplayWorld::default()));
    if detect {
        p = p.with_detectors(Detectors::new(DetectConfig::default(), None, None));
    }
    for r in recs {
        p.on_record(r);
    }
    p.finish();
}

fn pipeline(c: &mut Criterion) {
    let recs = records();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(MESSAGES as u64));
    g.sample_size(20);
    g.bench_function("without_detectors", |b| {
        b.iter_batched(|| (), |_| run(&recs, false), BatchSize::SmallInput)
    });
    g.bench_function("with_detectors", |b| {
        b.iter_batched(|| (), |_| run(&recs, true), BatchSize::SmallInput)
    });
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);

//! Userspace cost per message: decode → assemble → frame → parse → pair →
//! event, with and without the detectors (the issue's bound: detectors add
//! at most 10%). Input: ring-buffer records of a realistic stdio exchange —
//! tools/call requests with small arguments and ~600-byte results, each
//! captured at both ends of its pipe (so paired and joined as live).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mcpscope::{
    capture::record::data_record,
    detect::{DetectConfig, Detectors},
    pipeline::{Pipeline, PipelineConfig},
    sink::{JsonlWriter, Sink},
    stream::NoControl,
    world::ReplayWorld,
};

const MESSAGES: usize = 10_000;

fn records() -> Vec<Vec<u8>> {
    // English and code, as file contents are: not one repeated byte, which
    // every scanner skips at memory speed.
    let text = "The quick brown fox jumps over the lazy dog; fn main() { println!(\\\"hello\\\"); } 42 files in /srv/data were read. ".repeat(4);
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
                data_record(100, 5, 7001, t, req.as_bytes(), true),
                data_record(200, 0, 7001, t + 10_000, req.as_bytes(), false),
                data_record(200, 1, 7002, t + 500_000, resp.as_bytes(), true),
                data_record(100, 6, 7002, t + 510_000, resp.as_bytes(), false),
            ]
        })
        .collect()
}

fn run(recs: &[Vec<u8>], detect: bool, jsonl: bool) {
    let sinks: Vec<Box<dyn Sink + Send>> = if jsonl {
        vec![Box::new(JsonlWriter::new(std::io::sink(), false))]
    } else {
        Vec::new()
    };
    let mut p = Pipeline::new(PipelineConfig::default(), NoControl, sinks, 0)
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
    // Without an output: the pipeline's own cost. With the default output
    // (JSONL events, written to a sink that discards them): the agent's.
    for (name, detect, jsonl) in [
        ("without_detectors", false, false),
        ("with_detectors", true, false),
        ("jsonl_without_detectors", false, true),
        ("jsonl_with_detectors", true, true),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(|| (), |_| run(&recs, detect, jsonl), BatchSize::SmallInput)
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);

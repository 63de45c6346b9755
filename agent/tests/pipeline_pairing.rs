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

#[test]
fn both_ends_of_two_pipes_pair_every_response_once() {
    let sink = Arc::new(Mutex::new(VecSink::default()));
    let mut p = Pipeline::new(
        PipelineConfig::default(),
        NoControl,
        vec![Box::new(Shared(sink.clone()))],
        0,
    )
    .with_world(Box::new(ReplayWorld::default()));
    let n = 5000u64;
    for i in 0..n {
        let req = format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"t","arguments":{{}}}}}}"#
        ) + "\n";
        let resp = format!(r#"{{"result":{{"content":[]}},"jsonrpc":"2.0","id":{i}}}"#) + "\n";
        let t = i * 1_000_000;
        for r in [
            data_record(100, 5, 7001, t, req.as_bytes(), true),
            data_record(200, 0, 7001, t + 10_000, req.as_bytes(), false),
            data_record(200, 1, 7002, t + 500_000, resp.as_bytes(), true),
            data_record(100, 6, 7002, t + 510_000, resp.as_bytes(), false),
        ] {
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

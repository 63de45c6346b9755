//! The pipeline end to end on synthetic ring records: both ends of two
//! pipes, as a real stdio session produces them.

use mcpscope::{
    pipeline::{Pipeline, PipelineConfig},
    sink::{Sink, VecSink},
    stream::NoControl,
    world::ReplayWorld,
};
use mcpscope_common::{DataHeader, RecordKind, Syscall, DATA_HEADER_LEN, FILE_PIPE, FLAG_EGRESS};
use std::sync::{Arc, Mutex};

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
        comm: *b"test\0\0\0\0\0\0\0\0\0\0\0\0",
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
            record(100, 5, 7001, t, req.as_bytes(), true),
            record(200, 0, 7001, t + 10_000, req.as_bytes(), false),
            record(200, 1, 7002, t + 500_000, resp.as_bytes(), true),
            record(100, 6, 7002, t + 510_000, resp.as_bytes(), false),
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

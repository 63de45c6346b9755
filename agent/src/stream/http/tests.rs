use std::io::Write;

use super::*;

/// Items as comparable text: `H <method|status>`, `M <body>`, `E`, `P <url>`.
fn run(chunks: &[&[u8]], max: usize) -> (Vec<String>, HttpStats) {
    let mut f = HttpFramer::new(max);
    let mut out = Vec::new();
    let mut on = |i: HttpItem<'_>| {
        out.push(match i {
            HttpItem::Head(h) => match h.status {
                Some(s) => format!("H {s}"),
                None => format!("H {}", h.method.as_deref().unwrap_or("")),
            },
            HttpItem::Message(m) => format!(
                "M{} {}",
                if m.truncated { "!" } else { "" },
                String::from_utf8_lossy(m.bytes)
            ),
            HttpItem::End(_) => "E".into(),
            HttpItem::Endpoint(u) => format!("P {u}"),
        })
    };
    for c in chunks {
        f.push(c, &mut on);
    }
    f.finish(&mut on);
    (out, f.stats)
}

const POST: &[u8] = b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"id\":1,\"a\":2}";

#[test]
fn keep_alive_and_pipelined_requests() {
    let post = b"POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
    let two = [&post[..], &post[..]].concat();
    let (items, st) = run(&[&two], 1 << 20);
    assert_eq!(
        items,
        ["H POST", "M {\"a\":1}", "E", "H POST", "M {\"a\":1}", "E"]
    );
    assert_eq!(st.messages, 2);
    let (_, st) = run(&[POST], 1 << 20);
    assert_eq!(st.bad_heads, 0);
}

#[test]
fn chunked_response_split_at_every_byte() {
    let resp: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n7\r\n{\"id\":1\r\n3;ext=1\r\n,\"r\r\n5\r\n\":{}}\r\n0\r\n\r\n";
    for split in 0..resp.len() {
        let (items, st) = run(&[&resp[..split], &resp[split..]], 1 << 20);
        assert_eq!(
            items,
            ["H 200", "M {\"id\":1,\"r\":{}}", "E"],
            "split {split}"
        );
        assert_eq!(st.bad_chunks, 0);
    }
}

#[test]
fn sse_response_events_endpoint_and_priming() {
    let mut resp =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for part in [
        &b"event: endpoint\r\ndata: /m?s=1\r\n\r\n"[..],
        b"id: 0\ndata:\n\n",
        b"event: message\ndata: {\"id\":2}\n\n",
    ] {
        resp.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        resp.extend_from_slice(part);
        resp.extend_from_slice(b"\r\n");
    }
    resp.extend_from_slice(b"0\r\n\r\n");
    let (items, _) = run(&[&resp], 1 << 20);
    assert_eq!(items, ["H 200", "P /m?s=1", "M {\"id\":2}", "E"]);
}

#[test]
fn gzip_and_deflate_bodies_are_decoded() {
    let body = br#"{"jsonrpc":"2.0","id":3,"result":{}}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body).unwrap();
    let gz = gz.finish().unwrap();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(body).unwrap();
    let z = z.finish().unwrap();
    for (enc, data) in [("gzip", gz), ("deflate", z)] {
        let mut msg = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: {enc}\r\nContent-Length: {}\r\n\r\n",
            data.len()
        )
        .into_bytes();
        msg.extend_from_slice(&data);
        let (items, st) = run(&[&msg], 1 << 20);
        assert_eq!(
            items[1],
            format!("M {}", String::from_utf8_lossy(body)),
            "{enc}"
        );
        assert_eq!(st.decode_errors, 0);
    }
    // Corrupt gzip: counted, the message still ends.
    let bad = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd";
    let (items, st) = run(&[bad], 1 << 20);
    assert_eq!(items, ["H 200", "E"]);
    assert_eq!(st.decode_errors, 1);
}

#[test]
fn non_mcp_http_is_skipped_without_reading_the_body() {
    let page =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 11\r\n\r\n<html></html";
    let (items, st) = run(&[page], 1 << 20);
    assert_eq!(items, ["H 200", "E"]);
    assert_eq!(st.skipped_body_bytes, 11);
}

#[test]
fn huge_chunked_body_is_bounded_and_marked() {
    let mut f = HttpFramer::new(1 << 20);
    let mut got = Vec::new();
    f.push(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        &mut |_| {},
    );
    let chunk = [b'x'; 65536];
    let mut framed = b"10000\r\n".to_vec();
    framed.extend_from_slice(&chunk);
    framed.extend_from_slice(b"\r\n");
    for _ in 0..800 {
        // 50 MiB
        f.push(&framed, &mut |_| {});
        assert!(f.buffered() <= (1 << 20) + 8192);
    }
    f.push(b"0\r\n\r\n", &mut |i| {
        if let HttpItem::Message(m) = i {
            got.push((m.len, m.truncated, m.bytes.len()))
        }
    });
    assert_eq!(got, [(800 * 65536, true, (1 << 20) + 4096)]);
    assert_eq!(f.stats.oversized_bodies, 1);
}

#[test]
fn invalid_chunk_size_resyncs_at_the_next_start_line() {
    let bad = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}";
    let (items, st) = run(&[bad, b"more garbage", POST], 1 << 20);
    // Nothing of the body had arrived: no message, the response ends.
    assert_eq!(items[..2], ["H 200".to_string(), "E".to_string()]);
    assert_eq!(&items[2..], ["H POST", "M {\"id\":1,\"a\":2}", "E"]);
    assert_eq!(st.bad_chunks, 1);
    assert_eq!(st.resyncs, 1);
    assert_eq!(
        st.resync_bytes,
        b"more garbage".len() as u64 + 2,
        "the rest of the bad chunk too"
    );
}

#[test]
fn truncated_http_and_garbage_heads_are_counted() {
    let (items, _) = run(&[&POST[..40]], 1 << 20);
    assert!(
        items.is_empty(),
        "an unfinished head emits nothing: {items:?}"
    );
    let (items, st) = run(&[b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"], 1 << 20);
    assert!(items.is_empty());
    assert_eq!(st.bad_heads, 1);
    // A body cut by the connection's end is reported cut.
    let (items, _) = run(&[&POST[..POST.len() - 4]], 1 << 20);
    assert_eq!(items, ["H POST", "M! {\"id\":1,\"a", "E"]);
}

#[test]
fn a_gap_inside_a_body_cuts_the_message_only() {
    let mut f = HttpFramer::new(1 << 20);
    let mut out = Vec::new();
    let split = POST.len() - 6;
    let mut on = |i: HttpItem<'_>| {
        if let HttpItem::Message(m) = i {
            out.push((m.truncated, m.len))
        }
    };
    f.push(&POST[..split], &mut on);
    f.gap(3, &mut on);
    f.push(&POST[split + 3..], &mut on);
    f.push(POST, &mut on);
    assert_eq!(out, [(true, 14), (false, 14)]);
}

#[test]
fn a_gap_beyond_the_body_reports_the_cut_message_then_resyncs() {
    let head =
        b"POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"d":"xxxx"#;
    let mut f = HttpFramer::new(1 << 20);
    let mut out = Vec::new();
    let mut on = |i: HttpItem<'_>| match i {
        HttpItem::Message(m) => out.push(format!("M{} {}", m.truncated, m.bytes.len())),
        HttpItem::End(_) => out.push("E".into()),
        HttpItem::Head(_) => out.push("H".into()),
        HttpItem::Endpoint(_) => {}
    };
    f.push(head, &mut on);
    f.push(body, &mut on);
    f.gap(200_000, &mut on); // more than the rest of the body
    f.push(b"xxxx garbage", &mut on);
    f.push(POST, &mut on);
    assert_eq!(
        out,
        [
            "H",
            &format!("Mtrue {}", body.len()),
            "E",
            "H",
            "Mfalse 14",
            "E"
        ]
    );
    assert_eq!(f.stats.resyncs, 1);
}

"""Bad HTTP between two real processes on loopback TCP, for the HTTP
bad-input end-to-end tests. Standard library only.

usage: http_bad_input.py CASE
  runs a raw HTTP server in a child process, plays CASE against it, and
  prints {"client": pid, "server": pid, ...} when done.
"""

import json
import os
import socket
import subprocess
import sys


def rpc(i, method="tools/call", **params):
    return json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}).encode()


def post(path, body, extra=b""):
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + b"Accept: application/json, text/event-stream\r\n" + extra
        + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


# ---------------------------------------------------------------- server side


def read_head(conn, buf):
    while b"\r\n\r\n" not in buf:
        more = conn.recv(65536)
        if not more:
            return None, buf
        buf += more
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def serve():
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    # Readiness: the port, once listening.
    print(ls.getsockname()[1], flush=True)
    while True:
        conn, _ = ls.accept()
        try:
            handle(conn)
        except OSError:
            pass
        conn.close()


def handle(conn):
    buf = b""
    while True:
        head, buf = read_head(conn, buf)
        if head is None:
            return
        path = head.split(b" ")[1].decode()
        if path == "/sink":
            while conn.recv(1 << 20):
                pass
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(buf) < length:
            buf += conn.recv(65536)
        body, buf = buf[:length], buf[length:]
        rid = json.loads(body)["id"]
        if path == "/ok":
            # Pipelined requests: answer everything already read in one send.
            out = []
            while True:
                resp = json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"content": []}}).encode()
                out.append(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(resp)).encode() + b"\r\n\r\n" + resp
                )
                if b"\r\n\r\n" not in buf:
                    break
                head, buf = read_head(conn, buf)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                rid = json.loads(body)["id"]
            conn.sendall(b"".join(out))
            continue
        if path == "/sse-mixed":
            note = json.dumps({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}})
            resp = json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"content": []}})
            half = len(resp) // 2
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
                + b": comment\r\nid: 1\rdata:\n\n"  # priming event, CR line end
                + b"event: message\r\ndata: " + note.encode() + b"\r\n\r\n"
                + b"id: 2\ndata: " + resp[:half].encode() + b"\rdata: " + resp[half:].encode() + b"\n\n"
            )
            return  # the body ends with the connection
        if path == "/close-mid":
            resp = json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"content": []}})
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                + b"data: " + resp.encode() + b"\n\n"
                + b'data: {"jsonrpc":"2.0","method":"notifications/mess'
            )
            return  # closes mid-event


# ---------------------------------------------------------------- client side


def connect(port):
    return socket.create_connection(("127.0.0.1", port))


def exchange(port, i):
    """One valid request and its response on a fresh connection."""
    s = connect(port)
    s.sendall(post("/ok", rpc(i, name="echo")))
    got = b""
    while b'"id": %d' % i not in got and b'"id":%d' % i not in got:
        more = s.recv(65536)
        if not more:
            break
        got += more
    s.close()


def read_all(s):
    while s.recv(65536):
        pass
    s.close()


def run(case, port):
    out = {}
    if case == "truncated_http":
        exchange(port, 1)
        s = connect(port)
        s.sendall(post("/sink", rpc(99, name="cut"))[:40])  # half a head
        s.close()
        exchange(port, 2)
    elif case == "chunked_50mb":
        s = connect(port)
        s.sendall(
            b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        first = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"data":"'
        s.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        block = b"x" * 65536
        framed = b"%x\r\n%s\r\n" % (len(block), block)
        for _ in range(800):  # 50 MiB
            s.sendall(framed)
        last = b'"}}}'
        s.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(last), last))
        s.shutdown(socket.SHUT_WR)
        read_all(s)
        out["body_len"] = len(first) + 800 * 65536 + len(last)
        exchange(port, 2)
    elif case == "bad_chunk_size":
        s = connect(port)
        s.sendall(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        s.sendall(b"zz\r\n{}\r\n0\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        read_all(s)
        exchange(port, 2)
    elif case == "sse_mixed_line_endings":
        s = connect(port)
        s.sendall(post("/sse-mixed", rpc(5, name="echo")))
        read_all(s)
    elif case == "pipelining":
        s = connect(port)
        s.sendall(b"".join(post("/ok", rpc(i, name="echo")) for i in (1, 2, 3)))
        got = b""
        while got.count(b"HTTP/1.1 200") < 3:
            more = s.recv(65536)
            if not more:
                break
            got += more
        s.close()
    elif case == "garbage_after_tls_handshake":
        s = connect(port)
        # A TLS ClientHello-like record, then noise: never MCP, never parsed.
        s.sendall(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(4096))
        s.close()
        exchange(port, 2)
    elif case == "server_closes_mid_stream":
        s = connect(port)
        s.sendall(post("/close-mid", rpc(7, name="slow")))
        read_all(s)
    else:
        raise SystemExit(f"unknown case {case}")
    return out


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve()
    else:
        server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE)
        try:
            port = int(server.stdout.readline())
            info = run(sys.argv[1], port)
        finally:
            server.kill()
        print(json.dumps({"client": os.getpid(), "server": server.pid, **info}))

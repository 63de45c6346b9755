"""Sends MCP requests that real servers answer with HTTP errors, one
connection each, and prints what came back (the ground truth):

  401  no bearer token, to the SDK server with auth (WWW-Authenticate)
  404  a session id the server does not know
  400  -32020 HeaderMismatch: Mcp-Method disagrees with the body (2026-07-28)
  405  PUT instead of POST

usage: http_errors.py AUTH_PORT STATEFUL_PORT STATELESS_PORT
prints one JSON line: {"pid": …, "answers": [{"id", "status", "www_authenticate", "body"}]}
"""

import http.client
import json
import os
import sys

auth_port, stateful_port, stateless_port = (int(p) for p in sys.argv[1:4])
ACCEPT = "application/json, text/event-stream"


def send(port, method, msg, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps(msg)
    conn.request(method, "/mcp", body, {"Content-Type": "application/json", "Accept": ACCEPT, **headers})
    r = conn.getresponse()
    text = r.read().decode(errors="replace")
    conn.close()
    return {
        "id": msg["id"],
        "status": r.status,
        "www_authenticate": r.getheader("WWW-Authenticate"),
        "body": text[:300],
    }


def envelope(method, params):
    params = dict(params)
    params["_meta"] = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return params


init = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "errs", "version": "1"}},
}
answers = [
    send(auth_port, "POST", init, {}),
    send(
        stateful_port,
        "POST",
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"Mcp-Session-Id": "no-such-session", "MCP-Protocol-Version": "2025-11-25"},
    ),
    send(
        stateless_port,
        "POST",
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": envelope("tools/call", {"name": "echo", "arguments": {"message": "x"}})},
        {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"},
    ),
    send(stateful_port, "PUT", {"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, {}),
]
print(json.dumps({"pid": os.getpid(), "answers": answers}))

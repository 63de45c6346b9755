"""Drives a real MCP server with the official Python SDK client (mcp==2.3.0)
and records ground truth: every raw line the client wrote to the server's
stdin and read from its stdout, tapped inside the SDK's stdio transport.

usage: driver.py --truth FILE --mode legacy|auto|2026-07-28 --scenario NAME -- COMMAND ARGS...
Prints `ready` lines? No: it runs the scenario and exits; the truth file is
JSONL: {"pid": client, "server_pid": N} then {"dir": "sent"|"recv", "line": …}.
"""

import argparse
import asyncio
import json
import os
import sys

import mcp.client.stdio as stdio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

truth = []
server_pid = []

_orig_parse = stdio._parse_line


def _tap_parse(line):
    truth.append({"dir": "recv", "line": line})
    return _orig_parse(line)


_orig_create = stdio._create_platform_compatible_process


async def _tap_create(*args, **kwargs):
    proc = await _orig_create(*args, **kwargs)
    server_pid.append(proc.pid)
    send = proc.stdin.send

    async def tapped(data):
        truth.append({"dir": "sent", "line": data.decode().rstrip("\n")})
        await send(data)

    proc.stdin.send = tapped
    return proc


stdio._parse_line = _tap_parse
stdio._create_platform_compatible_process = _tap_create


# HTTP transports: every JSON body the client POSTs, and every JSON-RPC
# message it parses from a JSON response or an SSE event.
import mcp.client.sse as sse_transport
import mcp.client.streamable_http as http_transport
import mcp_types


def _tap_post(orig):
    def tapped(client, method, url, **kw):
        if kw.get("json") is not None:
            truth.append({"dir": "sent", "line": json.dumps(kw["json"])})
        return orig(client, method, url, **kw)

    return tapped


class _TapAdapter:
    def __init__(self, inner):
        self.inner = inner

    def validate_json(self, data, **kw):
        text = data if isinstance(data, str) else bytes(data).decode()
        truth.append({"dir": "recv", "line": text})
        return self.inner.validate_json(data, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def install_http_taps():
    """Only for HTTP runs: the stdio transport parses through the same
    adapter and is tapped at its line parser already."""
    http_transport.stream_within_origin = _tap_post(http_transport.stream_within_origin)
    http_transport.jsonrpc_message_adapter = _TapAdapter(http_transport.jsonrpc_message_adapter)
    sse_transport.request_within_origin = _tap_post(sse_transport.request_within_origin)
    mcp_types.jsonrpc_message_adapter = _TapAdapter(mcp_types.jsonrpc_message_adapter)


def http_target(url, transport, bearer):
    """A URL client transport (Streamable HTTP or legacy SSE), with an
    Authorization header when `bearer` is set."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
    if transport == "sse":
        return sse_transport.sse_client(url, headers=headers)
    from mcp.shared._httpx_utils import create_mcp_http_client

    return http_transport.streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))


async def scenario_basic(client, server_kind):
    tools = await client.list_tools()
    names = {t.name for t in tools.tools}
    if server_kind == "everything":
        await client.call_tool("echo", {"message": "hello mcpscope"})
        await client.call_tool("get-sum", {"a": 2, "b": 3})
    else:
        await client.call_tool("echo", {"message": "hello mcpscope"})
        await client.call_tool("add", {"a": 2, "b": 3})
        await client.call_tool("fail", {"reason": "test"})
        await client.read_resource("test://greeting")
        await client.get_prompt("review", {"code": "x = 1"})
    # A tool the server does not have: both SDKs answer with isError: true.
    await client.call_tool("no_such_tool", {})
    return sorted(names)


async def scenario_repeat(client, server_kind, n):
    for i in range(n):
        await client.call_tool("echo", {"message": f"m{i}"})


async def scenario_large(client, server_kind, kib):
    await client.call_tool("blob", {"kib": kib})


def bench_call(server_kind, path):
    """The bench's call: read `path` (filesystem server) or echo."""
    if server_kind == "filesystem":
        return "read_text_file", {"path": path}
    return "echo", {"message": "bench"}


async def scenario_bench(client, server_kind, n, path):
    """`n` calls, timed from the first to the last response: calls/s."""
    import time

    tool, args = bench_call(server_kind, path)
    await client.call_tool(tool, args)  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        await client.call_tool(tool, args)
    return n / (time.perf_counter() - t0)


async def scenario_timeline(client, server_kind, seconds, path, out):
    """Calls until SIGUSR1 (or for `seconds` at most), then writes each
    call's completion time (CLOCK_MONOTONIC, s) to `out`, a line each;
    prints `calling` once the first call is answered (the bench's
    readiness signal)."""
    import signal
    import time

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, stop.set)
    tool, args = bench_call(server_kind, path)
    await client.call_tool(tool, args)  # warm-up
    print("calling", flush=True)
    done = []
    end = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < end:
        await client.call_tool(tool, args)
        done.append(time.monotonic())
        truth.clear()  # ground truth is not kept here: it would only grow
    with open(out, "w") as f:
        f.write("".join(f"{t:.6f}\n" for t in done))


async def call(client, tool, args):
    return await client.call_tool(tool, args)


async def scenario_flags(client, name, count):
    """One workload per flag; pacing sleeps are part of the workload."""
    if name == "dup":
        await call(client, "echo", {"message": "same"})
        await call(client, "echo", {"message": "same"})
    elif name == "retry_storm":
        for _ in range(count or 5):
            await call(client, "fail", {"reason": "disk full"})
    elif name == "loop":
        for _ in range(3):
            await call(client, "echo", {"message": "step"})
            await call(client, "add", {"a": 1, "b": 2})
    elif name == "rate":
        # A baseline of about 2.5 calls per 1 s bucket, then a burst of 80:
        # at least 15 land in one bucket even on a loaded machine.
        for _ in range(8):
            await call(client, "echo", {"message": "tick"})
            await asyncio.sleep(0.4)
        for i in range(80):
            await call(client, "add", {"a": i, "b": 1})
    elif name == "first_seen":
        # Learning lasts 3 s from the client's first request (initialize):
        # this call falls well inside it, the next well after.
        await call(client, "echo", {"message": "early"})
        await asyncio.sleep(3.2)
        await call(client, "add", {"a": 1, "b": 1})
    elif name == "not_listed":
        await client.list_tools()
        await call(client, "no_such_tool", {})
    elif name == "drift":
        await client.list_tools()
    elif name == "error_burst":
        for i in range(6):
            await call(client, "fail", {"reason": f"r{i}"})
    elif name == "large":
        for _ in range(5):
            await call(client, "blob", {"kib": 1})
        await call(client, "blob", {"kib": 100})
    elif name == "secret":
        await call(client, "leak", {})
    elif name == "injection":
        await call(client, "poisoned", {})
    elif name == "policy":
        await call(client, "echo", {"message": "read-only is fine"})
        await call(client, "write_note", {"text": "not allowed"})
    elif name == "benign":
        await client.list_tools()
        for i in range(30):
            await call(client, "add", {"a": i, "b": i})
            await call(client, "echo", {"message": f"note {i}"})
        # Legitimate repeats: the same read again later, between other work.
        for i in range(3):
            await asyncio.sleep(1.1)
            await call(client, "echo", {"message": "spaced repeat"})
            await call(client, "add", {"a": 100 + i, "b": 1})
    else:
        raise SystemExit(f"unknown flag scenario {name}")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--truth", required=True)
    ap.add_argument("--mode", default="legacy")
    ap.add_argument("--scenario", default="basic")
    ap.add_argument("--server-kind", default="python")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the server")
    ap.add_argument("--bench-file", default="", help="file the bench scenario reads (filesystem server)")
    ap.add_argument("--timeline", default="", help="timeline scenario: where call completion times go")
    ap.add_argument("--url", default="", help="an HTTP server's MCP endpoint instead of a command")
    ap.add_argument("--http-transport", default="streamable-http", help="streamable-http or sse")
    ap.add_argument("--server-pid", type=int, default=0, help="pid of the HTTP server (for the truth file)")
    ap.add_argument("--bearer-file", default="", help="file holding a bearer token to send")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    env = dict(kv.split("=", 1) for kv in a.server_env) or None
    if a.url:
        install_http_taps()
        bearer = open(a.bearer_file).read().strip() if a.bearer_file else ""
        target = http_target(a.url, a.http_transport, bearer)
        server_pid.append(a.server_pid)
    else:
        target = StdioServerParameters(command=cmd[0], args=cmd[1:], env=env)
    info = {}
    async with Client(target, mode=a.mode) as client:
        if a.scenario == "basic":
            info["tools"] = await scenario_basic(client, a.server_kind)
        elif a.scenario == "repeat":
            await scenario_repeat(client, a.server_kind, a.count)
        elif a.scenario == "bench":
            info["calls_per_s"] = await scenario_bench(client, a.server_kind, a.count, a.bench_file)
        elif a.scenario == "timeline":
            await scenario_timeline(client, a.server_kind, a.count, a.bench_file, a.timeline)
        elif a.scenario == "large":
            await scenario_large(client, a.server_kind, a.count)
        elif a.scenario.startswith("flag:"):
            await scenario_flags(client, a.scenario[5:], a.count)
    with open(a.truth, "w") as f:
        f.write(json.dumps({"pid": os.getpid(), "server_pid": server_pid[0], **info}) + "\n")
        for t in truth:
            f.write(json.dumps(t) + "\n")


if __name__ == "__main__":
    asyncio.run(main())

"""An MCP client whose HTTPS connection is open before the agent starts:
initialize and one call, then `ready` on stdout; after a line on stdin, one
more call on the same kept-alive connection. Prints the JSON-RPC messages
of that second call (the ground truth) as one JSON line, then exits.

usage: tls_late.py URL     (SSL_CERT_FILE names the server's certificate)
"""

import asyncio
import json
import os
import sys

import mcp.client.streamable_http as http_transport
from mcp import Client

truth = []


class Tap:
    def __init__(self, inner):
        self.inner = inner

    def validate_json(self, data, **kw):
        truth.append(json.loads(data))
        return self.inner.validate_json(data, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


http_transport.jsonrpc_message_adapter = Tap(http_transport.jsonrpc_message_adapter)
_orig = http_transport.stream_within_origin


def tapped(client, method, url, **kw):
    if kw.get("json") is not None:
        truth.append(kw["json"])
    return _orig(client, method, url, **kw)


http_transport.stream_within_origin = tapped


async def main():
    async with Client(sys.argv[1], mode="legacy") as client:
        await client.call_tool("echo", {"message": "before the agent"})
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        truth.clear()
        await client.call_tool("echo", {"message": "after the agent"})
        print(json.dumps({"pid": os.getpid(), "messages": truth}), flush=True)


asyncio.run(main())

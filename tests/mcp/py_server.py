"""A small MCP server built on the official Python SDK (mcp==2.3.0), used by
the end-to-end tests. Transport from argv[1]: stdio (default)."""

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("mcpscope-test-server")


@server.tool()
def echo(message: str) -> str:
    """Echo a message back."""
    return message


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def fail(reason: str) -> str:
    """Always fails (a tool execution error: isError true)."""
    raise RuntimeError(f"failed on purpose: {reason}")


@server.tool()
def blob(kib: int) -> str:
    """Returns `kib` KiB of text (large responses)."""
    return "x" * (kib * 1024)


@server.resource("test://greeting")
def greeting() -> str:
    """A fixed resource."""
    return "hello from a resource"


@server.prompt()
def review(code: str) -> str:
    """A prompt template."""
    return f"Please review: {code}"


if __name__ == "__main__":
    transport = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    server.run(transport=transport)

#!/usr/bin/env python3
"""Upstream MCP test server built on the official Python SDK (`mcp` 2.3.0).

Serves MCP Streamable HTTP at http://127.0.0.1:PORT/mcp. One endpoint speaks
both protocol eras at once (that is how the SDK's StreamableHTTPSessionManager
works; there is no switch to turn either off):

* 2025-11-25 (and older handshake revisions): `initialize` handshake,
  `Mcp-Session-Id` sessions (or no sessions with --stateless), GET/DELETE.
* 2026-07-28: stateless per-request `_meta` envelope, `server/discover`.
  The SDK routes a request to this path when its `MCP-Protocol-Version`
  header names a version that is not a handshake version.

Prints `READY <port>` on stdout (one line, flushed) once the socket is
listening and the app's lifespan has started. Everything else goes to stderr.

Usage:
    python py_server.py --port 0 --name alpha [--stateless] [--json-response]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import socket
import sys

import anyio
from typing import Any

from mcp_types import CallToolResult, InputRequiredResult, TextContent
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings


def add_broken_tool(mcp: MCPServer) -> None:
    """`bad_add`: declares an integer `result` in its output schema but reports a string, as a buggy or
    hostile upstream would. The SDK validates structured output against the function's return model, so
    the model is removed after registration: the schema is still published, no longer enforced here."""

    @mcp.tool(description="Add two integers; the structured result breaks the declared output schema.")
    def bad_add(a: int, b: int) -> int:
        return CallToolResult(
            content=[TextContent(type="text", text=str(a + b))],
            structured_content={"result": f"{a + b}"},
        )

    tool = mcp._tool_manager.get_tool("bad_add")
    tool.fn_metadata.output_model = None


def sha(v: str | None) -> str | None:
    return None if v is None else hashlib.sha256(v.encode()).hexdigest()


def describe_credentials(headers, request) -> dict:
    """Digests of the Authorization, X-Api-Key and Cookie headers and the query parameters a request
    carried, and the claims of a bearer JWT (read, not verified): enough for a test to tell which credential
    arrived without the credential itself reaching the agent through the tool result."""
    auth = headers.get("authorization")
    out = {
        "authorization_sha256": sha(auth),
        "x_api_key_sha256": sha(headers.get("x-api-key")),
        "cookie_sha256": sha(headers.get("cookie")),
        "query_sha256": sha(str(getattr(getattr(request, "url", None), "query", "") or "") or None),
        "jwt_claims": None,
    }
    if auth and auth.lower().startswith("bearer ") and auth.count(".") == 2:
        try:
            payload = auth.split(" ", 1)[1].split(".")[1]
            payload += "=" * (-len(payload) % 4)
            claims = json.loads(base64.urlsafe_b64decode(payload))
            out["jwt_claims"] = {k: claims.get(k) for k in ("iss", "sub", "aud", "act")}
        except Exception:
            pass
    return out


def require_auth(app, expected: str, reject_log: str | None):
    """ASGI wrapper: a request whose Authorization is not exactly `expected` gets 401 with a body that
    echoes every request header back (as careless error pages do), and a line in `reject_log`."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if headers.get("authorization") == expected:
            return await app(scope, receive, send)
        if reject_log:
            with open(reject_log, "a") as f:
                f.write(f"{scope['method']} {scope['path']}\n")
        body = json.dumps({"error": "unauthorized", "you_sent": headers}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def build_server(name: str) -> MCPServer:
    mcp = MCPServer(name, version="1.0.0", instructions=f"Portcullis test peer {name}", log_level="WARNING")
    # Every echo/add call that reached this server, so tests can prove what a gateway let through.
    received: list[str] = []

    @mcp.tool(description="Echo the given text back unchanged.")
    def echo(text: str) -> str:
        received.append(f"echo:{text}")
        return text

    @mcp.tool(description="Add two integers; the result is also returned as structured content.")
    def add(a: int, b: int) -> int:
        received.append(f"add:{a},{b}")
        return a + b

    @mcp.tool(description="The echo and add calls this server received, in order, comma-separated.")
    def received_calls() -> str:
        return ",".join(received)

    @mcp.tool(description="Count to n, sending one progress notification and one log message per step.")
    async def slow_count(n: int, ctx: Context) -> str:
        for i in range(1, n + 1):
            await anyio.sleep(0.05)
            await ctx.report_progress(i, n, message=f"step {i}/{n}")
            await ctx.info(f"{name}: counted {i} of {n}")
        return f"counted {n}"

    @mcp.tool(description="Return the name this server was started with.")
    def whoami() -> str:
        return name

    @mcp.tool(description="What credentials this request carried, as SHA-256 digests (never the values), with a bearer JWT's unverified claims.")
    def credentials(ctx: Context) -> str:
        return json.dumps(describe_credentials(ctx.headers or {}, ctx.request_context.request))

    @mcp.tool(description="The keys of the `_meta` this request arrived with, sorted, as a JSON list.")
    def meta_keys(ctx: Context) -> str:
        meta = ctx.request_context.meta
        if meta is None:
            keys = []
        elif hasattr(meta, "model_dump"):
            keys = list(meta.model_dump(by_alias=True, exclude_none=True).keys())
        else:
            keys = list(dict(meta).keys())
        return json.dumps(sorted(keys))

    @mcp.tool(description="Announce that the tool list changed (to subscriptions/listen streams and to the session's GET stream).")
    async def announce(ctx: Context) -> str:
        # 2026-07-28 subscribers hear it through the subscription bus; a 2025-11-25 session on its GET stream.
        await ctx.notify_tools_changed()
        try:
            await ctx.session.send_tool_list_changed()
        except Exception:  # no standalone stream in this era or session
            pass
        return "announced"

    @mcp.tool(description="Change the echo tool's description (a definition change behind its approval) and announce it.")
    async def redefine(description: str, ctx: Context) -> str:
        tool = mcp._tool_manager.get_tool("echo")
        if tool is None:
            raise ValueError("no echo tool")
        tool.description = description
        await ctx.notify_tools_changed()
        try:
            await ctx.session.send_tool_list_changed()
        except Exception:
            pass
        return "redefined"

    @mcp.tool(description="Ask the user to confirm an action (2026-07-28 multi round-trip: input_required, then the retry).")
    async def confirm(action: str, ctx: Context) -> Any:
        answers = ctx.input_responses
        if not answers:
            return InputRequiredResult(
                input_requests={
                    "ok": {
                        "method": "elicitation/create",
                        "params": {
                            "mode": "form",
                            "message": f"Allow {action}?",
                            "requestedSchema": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
                        },
                    }
                },
                request_state=f"{name}:{action}",
            )
        answer = answers["ok"]
        content = getattr(answer, "content", None) or (answer.get("content") if isinstance(answer, dict) else None) or {}
        verdict = "allowed" if content.get("ok") else "declined"
        return f"{action} {verdict} by {name} (state {ctx.request_state})"

    @mcp.prompt(description="A greeting prompt.")
    def greet(who: str = "world") -> str:
        return f"Hello, {who}! Greetings from {name}."

    @mcp.resource("portcullis://info", name="info", description="Static text about this peer.", mime_type="text/plain")
    def info() -> str:
        return f"peer {name} (python mcp 2.3.0)"

    return mcp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = pick a free one)")
    parser.add_argument("--name", default="py-server", help="server name; returned by the whoami tool")
    parser.add_argument("--stateless", action="store_true", help="2025 path: no Mcp-Session-Id (stateless_http=True)")
    parser.add_argument(
        "--json-response", action="store_true", help="answer POSTs with application/json instead of SSE streams"
    )
    parser.add_argument(
        "--no-host-check",
        action="store_true",
        help="disable the SDK's default DNS-rebinding protection (Host/Origin must be 127.0.0.1/localhost/[::1])",
    )
    parser.add_argument("--path", default="/mcp", help="endpoint path (default /mcp)")
    parser.add_argument("--verbose", action="store_true", help="uvicorn/SDK logs at INFO on stderr")
    parser.add_argument(
        "--require-auth", help="answer 401 (echoing the request headers) unless Authorization is exactly this"
    )
    parser.add_argument("--reject-log", help="with --require-auth: append one line per refused request here")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM) ...")
    parser.add_argument("--tls-key", help="... and this key")
    parser.add_argument(
        "--broken-output", action="store_true", help="also serve bad_add, whose results break its output schema"
    )
    args = parser.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING)

    mcp = build_server(args.name)
    if args.broken_output:
        add_broken_tool(mcp)
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False) if args.no_host_check else None
    app = mcp.streamable_http_app(
        streamable_http_path=args.path,
        json_response=args.json_response,
        stateless_http=args.stateless,
        transport_security=security,
        host="127.0.0.1",
    )
    if args.require_auth:
        app = require_auth(app, args.require_auth, args.reject_log)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    port = sock.getsockname()[1]

    tls = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key} if args.tls_cert else {}
    config = uvicorn.Config(
        app,
        log_level="info" if args.verbose else "warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
        **tls,
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        async def announce() -> None:
            while not server.started:
                if server.should_exit:
                    return
                await anyio.sleep(0.01)
            print(f"READY {port}", flush=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(announce)
            await server.serve(sockets=[sock])
            tg.cancel_scope.cancel()

    anyio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())

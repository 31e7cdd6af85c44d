#!/usr/bin/env python3
"""MCP test client built on the official Python SDK (`mcp` 2.3.0), Streamable HTTP.

Runs one scenario against URL and prints exactly one JSON line on stdout:
    {"ok": true, "peer": "py_client", "revision": ..., "negotiated": ..., "scenario": ..., ...}
Exit status 0 on success; 1 with {"ok": false, "error": "..."} on failure
(diagnostics on stderr); 2 for bad usage.

Revision forcing (mcp 2.3.0 `Client(mode=...)`):
  --revision 2025-11-25  -> mode="legacy": the `initialize` handshake (offers 2025-11-25).
  --revision 2026-07-28  -> --connect auto (default): mode="auto", i.e. a
                            `server/discover` probe first (falls back to
                            `initialize` on legacy servers, which this client
                            then reports as a failure);
                            --connect pin: mode="2026-07-28", no probe at all,
                            the first request on the wire is the real one.
  In every case the negotiated version must equal --revision or the run fails.

Scenarios:
  list            tools/list (+ prompts/list, resources/list; --tools-only to skip those)
  call            tools/call --tool NAME --args JSON
  progress        tools/call slow_count {"n": N} with a progress callback (--n, default 3)
  session-delete  2025-11-25 only: initialize, tools/call echo, then the SDK's
                  session termination (HTTP DELETE with Mcp-Session-Id, sent by the
                  transport on close, terminate_on_close=True); then checks with a raw
                  POST that the session is gone (expects 404).
  sequence        tools/list --calls N times, --pause S seconds apart, on one client; reports each
                  outcome ("ok" or the error) in "results" without failing, so a test can watch a
                  session idle out or outlive its duration. Response headers `portcullis-session`
                  (the gateway session of a 2026-07-28 client) are recorded per request.
"""

from __future__ import annotations

import argparse
import os
import json
import ssl
import sys
import traceback
from typing import Any

import anyio
import httpx2
from mcp import Client, Implementation
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

REVISIONS = ("2025-11-25", "2026-07-28")


class Fail(Exception):
    pass


def _dump(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", by_alias=True, exclude_none=True)
    return obj


def _flatten(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class HttpLog:
    """httpx2 event hooks: one record per HTTP exchange the SDK makes."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.session_ids: list[str] = []

    async def on_request(self, request: httpx2.Request) -> None:
        rec: dict[str, Any] = {"method": request.method}
        try:
            body = json.loads(request.content) if request.content else None
        except Exception:
            body = None
        if isinstance(body, dict):
            rec["rpc"] = body.get("method", "(response)")
        pv = request.headers.get("mcp-protocol-version")
        if pv:
            rec["mcp-protocol-version"] = pv
        if request.headers.get("mcp-session-id"):
            rec["mcp-session-id"] = request.headers["mcp-session-id"]
        request.extensions["portcullis_rec"] = rec
        self.records.append(rec)

    async def on_response(self, response: httpx2.Response) -> None:
        rec = response.request.extensions.get("portcullis_rec")
        if rec is None:
            return
        rec["status"] = response.status_code
        ct = response.headers.get("content-type")
        if ct:
            rec["content-type"] = ct.split(";")[0]
        gw = response.headers.get("portcullis-session")
        if gw:
            rec["portcullis-session"] = gw
        sid = response.headers.get("mcp-session-id")
        if sid:
            rec["response-session-id"] = sid
            if sid not in self.session_ids:
                self.session_ids.append(sid)


async def run(args: argparse.Namespace, out: dict[str, Any]) -> None:

    if args.revision == "2025-11-25":
        mode = "legacy"
    elif args.connect == "pin":
        mode = args.revision
    else:
        mode = "auto"
    out["mode"] = mode
    if args.scenario == "session-delete" and args.revision != "2025-11-25":
        raise Fail("session-delete is a 2025-11-25 scenario (2026-07-28 has no sessions)")

    log = HttpLog()
    progress_events: list[dict[str, Any]] = []
    log_messages: list[Any] = []

    async def on_log(params: Any) -> None:
        log_messages.append(_dump(params.data))

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        ev: dict[str, Any] = {"progress": progress}
        if total is not None:
            ev["total"] = total
        if message is not None:
            ev["message"] = message
        progress_events.append(ev)

    http = create_mcp_http_client()
    # TLS to the gateway (https:// URLs): trust its certificate, and present a client certificate when
    # the test identifies the agent by mTLS.
    if os.environ.get("PORTCULLIS_TLS_CA"):
        ctx = ssl.create_default_context(cafile=os.environ["PORTCULLIS_TLS_CA"])
        if os.environ.get("PORTCULLIS_CLIENT_CERT"):
            ctx.load_cert_chain(os.environ["PORTCULLIS_CLIENT_CERT"], os.environ["PORTCULLIS_CLIENT_KEY"])
        http = httpx2.AsyncClient(timeout=http.timeout, verify=ctx)
    # The gateway's agent API key, when the test runs against a governed gateway.
    if os.environ.get("PORTCULLIS_BEARER"):
        http.headers["authorization"] = "Bearer " + os.environ["PORTCULLIS_BEARER"]
    http.event_hooks = {"request": [log.on_request], "response": [log.on_response]}
    async with http:
        transport = streamable_http_client(args.url, http_client=http, terminate_on_close=True)
        client = Client(
            transport,
            mode=mode,
            client_info=Implementation(name="portcullis-py-client", version="1.0.0"),
            logging_callback=on_log,
            # 2026-07-28: log delivery is a per-request opt-in (_meta logLevel); no effect on 2025.
            log_level="debug" if args.scenario == "progress" else None,
            read_timeout_seconds=args.timeout,
        )
        async with client:
            out["negotiated"] = client.protocol_version
            si = client.server_info
            out["server_info"] = _dump(si) if si is not None else None
            if client.protocol_version != args.revision:
                raise Fail(f"negotiated protocol version {client.protocol_version!r}, wanted {args.revision!r}")

            if args.scenario == "list":
                tools = await client.list_tools()
                out["tools"] = sorted(t.name for t in tools.tools)
                if not args.tools_only:
                    prompts = await client.list_prompts()
                    out["prompts"] = sorted(p.name for p in prompts.prompts)
                    resources = await client.list_resources()
                    out["resources"] = sorted(str(r.uri) for r in resources.resources)
            elif args.scenario == "call":
                if not args.tool:
                    raise Fail("--tool is required for the call scenario")
                arguments = json.loads(args.args) if args.args else {}
                res = await client.call_tool(args.tool, arguments)
                out.update(_call_result(res))
                if res.is_error:
                    raise Fail(f"tool {args.tool} returned isError: {out.get('text')}")
            elif args.scenario == "progress":
                res = await client.call_tool(args.prefix + "slow_count", {"n": args.n}, progress_callback=on_progress)
                out.update(_call_result(res))
                out["progress"] = progress_events
                out["logs"] = log_messages
                if res.is_error or out["text"] != f"counted {args.n}":
                    raise Fail(f"unexpected slow_count result: {out.get('text')!r}")
                if [e["progress"] for e in progress_events] != [float(i) for i in range(1, args.n + 1)]:
                    raise Fail(f"expected progress 1..{args.n}, got {progress_events}")
            elif args.scenario == "sequence":
                results: list[str] = []
                for i in range(args.calls):
                    if i:
                        await anyio.sleep(args.pause)
                    try:
                        await client.list_tools()
                        results.append("ok")
                    except Exception as e:  # the outcome is the result
                        results.append(f"{type(e).__name__}: {_flatten(e)}")
                out["results"] = results
            elif args.scenario == "session-delete":
                res = await client.call_tool(args.prefix + "echo", {"text": "before-delete"})
                out.update(_call_result(res))
                if not log.session_ids:
                    raise Fail("server did not assign an Mcp-Session-Id")
        # Leaving `async with client` closes the transport; with a session id and
        # terminate_on_close=True the SDK sends DELETE (StreamableHTTPTransport.terminate_session).

        if args.scenario == "session-delete":
            sid = log.session_ids[0]
            out["session_id"] = sid
            deletes = [r for r in log.records if r["method"] == "DELETE"]
            if not deletes:
                raise Fail("the SDK sent no DELETE on close")
            out["delete_status"] = deletes[-1].get("status")
            if out["delete_status"] not in (200, 204):
                raise Fail(f"DELETE answered {out['delete_status']}")
            # The session must be gone now.
            probe = await http.post(
                args.url,
                headers={
                    "accept": "application/json, text/event-stream",
                    "content-type": "application/json",
                    "mcp-session-id": sid,
                    "mcp-protocol-version": "2025-11-25",
                },
                content=json.dumps({"jsonrpc": "2.0", "id": 99, "method": "tools/list", "params": {}}),
            )
            out["post_after_delete_status"] = probe.status_code
            if probe.status_code != 404:
                raise Fail(f"POST with the deleted session id answered {probe.status_code}, expected 404")

    out["http"] = log.records
    out["ok"] = True


def _call_result(res: Any) -> dict[str, Any]:
    texts = [c.text for c in res.content if getattr(c, "type", None) == "text"]
    return {
        "text": "".join(texts),
        "content": [_dump(c) for c in res.content],
        "structured": res.structured_content,
        "is_error": res.is_error,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--revision", required=True, choices=REVISIONS)
    p.add_argument("--scenario", required=True, choices=("list", "call", "progress", "session-delete", "sequence"))
    p.add_argument("--connect", choices=("auto", "pin"), default="auto", help="2026-07-28 only (see above)")
    p.add_argument("--tool")
    p.add_argument("--prefix", default="", help="prepended to the tool names progress and session-delete call (a gateway namespace)")
    p.add_argument("--args", help="JSON object of tool arguments")
    p.add_argument("--n", type=int, default=3, help="slow_count steps for the progress scenario")
    p.add_argument("--tools-only", action="store_true", help="list scenario: only tools/list")
    p.add_argument("--calls", type=int, default=2, help="sequence scenario: how many tools/list")
    p.add_argument("--pause", type=float, default=1.0, help="sequence scenario: seconds between them")
    p.add_argument("--timeout", type=float, default=30.0, help="overall deadline in seconds")
    args = p.parse_args()

    result: dict[str, Any] = {
        "ok": False,
        "peer": "py_client",
        "sdk": "mcp==2.3.0",
        "revision": args.revision,
        "scenario": args.scenario,
    }

    async def guarded() -> None:
        with anyio.fail_after(args.timeout):
            await run(args, result)

    try:
        anyio.run(guarded)
    except BaseException as e:  # noqa: BLE001 - report everything as one JSON line
        err = _flatten(e)
        if isinstance(err, KeyboardInterrupt):
            raise
        if not isinstance(err, Fail):
            traceback.print_exception(err, file=sys.stderr)
        result["ok"] = False
        result["error"] = f"{type(err).__name__}: {err}"
        print(json.dumps(result), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""HTTP/3 test client built on aioquic (PyPI `aioquic` 1.7.2): MCP requests over QUIC.

The MCP SDKs speak HTTP/1.1 and HTTP/2 only, so this client frames MCP's Streamable HTTP requests
itself on top of aioquic's HTTP/3 stack (software we did not write): one QUIC connection, the
requests given by --request (a JSON object {"headers": {...}, "body": <JSON-RPC message>}) sent in
order, each answered before the next. Prints exactly one JSON line:
    {"ok": true, "alpn": "h3", "responses": [{"status": 200, "headers": {...}, "body": "..."}], ...}

Options:
  --ca FILE         trust this certificate (the gateway's self-signed one)
  --bearer KEY      sent as `authorization: Bearer KEY` on every request
  --cert F --key K  present this client certificate
  --rebind-every N  after every Nth response, move the connection to a new local UDP port (a NAT
                    rebinding: same connection, new address) and, with --new-cid, to a new
                    connection id; the remaining requests go from there
  --streams N       first open N request streams at once (2026-07-28 tools/list each) and report
                    how many were answered and how many refused or reset
  --garbage N       first send N datagrams of random bytes and a truncated Initial packet to the
                    server's port from another socket (they must cost the connection nothing)
  --early           send the first --request on a first connection, keep its TLS session ticket, then
                    send the others on a second, resumed connection without waiting for its
                    handshake (0-RTT early data where the server allows it)
  --idle S          after the last response, stay connected S seconds without traffic and report
                    whether the server closed the connection meanwhile
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from typing import Any
from urllib.parse import urlparse

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamReset


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.pending: dict[int, dict[str, Any]] = {}
        self.terminated: asyncio.Future[Any] = asyncio.get_event_loop().create_future()

    def quic_event_received(self, event: Any) -> None:
        if isinstance(event, ConnectionTerminated):
            reason = event.reason_phrase or f"error {event.error_code:#x}"
            if not self.terminated.done():
                self.terminated.set_result(reason)
            for p in self.pending.values():
                if not p["done"].done():
                    p["done"].set_exception(ConnectionError(f"connection closed: {reason}"))
            self.pending.clear()
        if isinstance(event, StreamReset) and event.stream_id in self.pending:
            p = self.pending.pop(event.stream_id)
            if not p["done"].done():
                p["done"].set_result({"reset": event.error_code})
        for ev in self.http.handle_event(event):
            p = self.pending.get(ev.stream_id)
            if p is None:
                continue
            if isinstance(ev, HeadersReceived):
                for k, v in ev.headers:
                    p["headers"][k.decode()] = v.decode()
            elif isinstance(ev, DataReceived):
                p["body"] += ev.data
            if getattr(ev, "stream_ended", False):
                self.pending.pop(ev.stream_id, None)
                status = int(p["headers"].pop(":status", "0"))
                p["done"].set_result(
                    {"status": status, "headers": p["headers"], "body": p["body"].decode("utf-8", "replace")}
                )

    def send(self, authority: str, path: str, headers: dict[str, str], body: bytes) -> asyncio.Future[Any]:
        sid = self._quic.get_next_available_stream_id()
        h = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", authority.encode()), (b":path", path.encode())]
        h += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        h.append((b"content-length", str(len(body)).encode()))
        self.http.send_headers(sid, h, end_stream=False)
        self.http.send_data(sid, body, end_stream=True)
        fut = asyncio.get_event_loop().create_future()
        self.pending[sid] = {"headers": {}, "body": b"", "done": fut}
        self.transmit()
        return fut


BASE_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


async def run(args: argparse.Namespace, out: dict[str, Any]) -> None:
    u = urlparse(args.url)
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_REQUIRED)
    if args.ca:
        cfg.load_verify_locations(args.ca)
    if args.cert:
        cfg.load_cert_chain(args.cert, args.key)
    cfg.server_name = u.hostname
    authority = u.netloc
    extra = {"authorization": f"Bearer {args.bearer}"} if args.bearer else {}
    if args.garbage:
        import os
        import socket

        g = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(args.garbage):
            g.sendto(os.urandom(1 + os.urandom(1)[0] * 4), (u.hostname, u.port))
        # A long-header Initial (version 1, 8-byte DCID) cut off after its header.
        g.sendto(bytes([0xC0, 0, 0, 0, 1, 8]) + os.urandom(8) + bytes([0]), (u.hostname, u.port))
        # A short-header packet for a connection that does not exist.
        g.sendto(bytes([0x40]) + os.urandom(40), (u.hostname, u.port))
        g.close()
    requests = list(args.request or [])
    if args.early:
        tickets: list[Any] = []
        async with connect(
            u.hostname, u.port, configuration=cfg, create_protocol=H3Client, session_ticket_handler=tickets.append
        ) as first:
            req = json.loads(requests.pop(0))
            headers = {**BASE_HEADERS, **extra, **req.get("headers", {})}
            resp = await asyncio.wait_for(first.send(authority, u.path, headers, json.dumps(req["body"]).encode()), args.timeout)
            out["first"] = resp
            await asyncio.sleep(0.3)  # the ticket follows the handshake
        if not tickets:
            raise RuntimeError("the server issued no session ticket")
        cfg.session_ticket = tickets[-1]
        out["ticket_max_early_data"] = tickets[-1].max_early_data_size
    async with connect(
        u.hostname, u.port, configuration=cfg, create_protocol=H3Client, wait_connected=not args.early
    ) as client:
        assert isinstance(client, H3Client)
        out["alpn"] = client._quic.tls.alpn_negotiated
        responses: list[Any] = []
        if args.streams:
            meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}).encode()
            futs = [client.send(authority, u.path, {**BASE_HEADERS, **extra, **json.loads(args.streams_headers)}, body) for _ in range(args.streams)]
            done = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), args.timeout)
            out["answered"] = sum(1 for d in done if isinstance(d, dict) and d.get("status") == 200)
            out["other"] = [d if isinstance(d, dict) else repr(d) for d in done if not (isinstance(d, dict) and d.get("status") == 200)][:5]
        if args.early:
            # Everything goes out before the handshake is done: 0-RTT where the ticket allows.
            sent = []
            for raw in requests:
                req = json.loads(raw)
                headers = {**BASE_HEADERS, **extra, **req.get("headers", {})}
                sent.append(client.send(authority, u.path, headers, json.dumps(req["body"]).encode()))
            out["responses"] = await asyncio.wait_for(asyncio.gather(*sent), args.timeout)
            out["ok"] = True
            return
        for i, raw in enumerate(requests):
            req = json.loads(raw)
            headers = {**BASE_HEADERS, **extra, **req.get("headers", {})}
            body = json.dumps(req["body"]).encode()
            try:
                resp = await asyncio.wait_for(client.send(authority, u.path, headers, body), args.timeout)
            except Exception as e:
                raise RuntimeError(f"request {i + 1}: {type(e).__name__} {e}") from None
            responses.append(resp)
            if args.rebind_every and (i + 1) % args.rebind_every == 0 and i + 1 < len(requests):
                # aioquic's own NAT-rebinding interop step: the same protocol on a new UDP socket.
                before = client._transport.get_extra_info("sockname")
                client._transport.close()
                loop = asyncio.get_event_loop()
                # As `connect` made the first: dual-stack, so the path's IPv4-mapped addresses still work.
                await loop.create_datagram_endpoint(lambda: client, local_addr=("::", 0))
                out.setdefault("rebound", []).append([before[1], client._transport.get_extra_info("sockname")[1]])
                if args.new_cid:
                    client.change_connection_id()
        out["responses"] = responses
        if args.idle:
            try:
                reason = await asyncio.wait_for(asyncio.shield(client.terminated), args.idle)
                out["closed_by_server"] = reason
            except asyncio.TimeoutError:
                out["closed_by_server"] = None
    out["ok"] = True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--ca")
    p.add_argument("--bearer")
    p.add_argument("--cert", help="client certificate (PEM), with --key")
    p.add_argument("--key")
    p.add_argument("--request", action="append")
    p.add_argument("--rebind-every", type=int, default=0)
    p.add_argument("--new-cid", action="store_true")
    p.add_argument("--streams", type=int, default=0)
    p.add_argument("--streams-headers", default="{}")
    p.add_argument("--idle", type=float, default=0)
    p.add_argument("--garbage", type=int, default=0)
    p.add_argument("--early", action="store_true")
    p.add_argument("--timeout", type=float, default=20.0)
    args = p.parse_args()
    out: dict[str, Any] = {"ok": False, "peer": "h3_client"}
    try:
        asyncio.run(run(args, out))
    except Exception as e:  # reported, not raised: the test reads the line
        import traceback

        traceback.print_exc()
        out["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(out))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

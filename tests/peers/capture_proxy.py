#!/usr/bin/env python3
"""Transparent TCP proxy that records the exact bytes of every HTTP/1.1 exchange.

    python capture_proxy.py --listen-port 0 --upstream-port 8123 --out DIR

Prints `READY <port>` on stdout once listening. For each accepted connection N it
writes DIR/conn-NNN.c2s (client->server bytes) and DIR/conn-NNN.s2c
(server->client bytes), byte-exact. Stdlib only.

    python capture_proxy.py --dump DIR [--max N] [--responses]

prints the captured requests in order of arrival (request line, headers, body),
parsed from the .c2s files (Content-Length or chunked bodies); --responses
also prints the response head and (de-chunked) body that came back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sink, index=None) -> None:
    offset = 0
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if index is not None:
                index.write(f"{time.time():.6f} {offset}\n")
                index.flush()
            offset += len(data)
            sink.write(data)
            sink.flush()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def serve(listen_port: int, upstream_host: str, upstream_port: int, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    counter = 0

    async def handle(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        nonlocal counter
        counter += 1
        n = counter
        with open(os.path.join(out, f"conn-{n:03d}.c2s"), "wb") as c2s, open(
            os.path.join(out, f"conn-{n:03d}.s2c"), "wb"
        ) as s2c, open(os.path.join(out, f"conn-{n:03d}.idx"), "w") as idx:
            try:
                ureader, uwriter = await asyncio.open_connection(upstream_host, upstream_port)
            except OSError:
                cwriter.close()
                return
            await asyncio.gather(_pipe(creader, uwriter, c2s, idx), _pipe(ureader, cwriter, s2c))
            for w in (uwriter, cwriter):
                try:
                    w.close()
                except OSError:
                    pass

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    async with server:
        await server.serve_forever()


def _parse_messages(data: bytes, is_response: bool = False) -> list[tuple[bytes, bytes, int]]:
    """Split raw HTTP/1.1 bytes into (head, body, start_offset) triples."""
    msgs = []
    i = 0
    while i < len(data):
        start = i
        end = data.find(b"\r\n\r\n", i)
        if end < 0:
            break
        head = data[i:end]
        i = end + 4
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        body = b""
        if b"content-length" in headers:
            n = int(headers[b"content-length"])
            body = data[i : i + n]
            i += n
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                crlf = data.find(b"\r\n", i)
                if crlf < 0:
                    i = len(data)
                    break
                size = int(data[i:crlf].split(b";")[0], 16)
                i = crlf + 2
                if size == 0:
                    i += 2
                    break
                body += data[i : i + size]
                i += size + 2
        elif is_response:
            body = data[i:]
            i = len(data)
        msgs.append((head, body, start))
    return msgs


def dump(out: str, max_requests: int | None, responses: bool) -> None:
    conns = sorted(f[:-4] for f in os.listdir(out) if f.endswith(".c2s"))
    reqs = []
    for c in conns:
        with open(os.path.join(out, c + ".c2s"), "rb") as f:
            c2s = f.read()
        with open(os.path.join(out, c + ".s2c"), "rb") as f:
            s2c = f.read()
        chunks = []
        idx_path = os.path.join(out, c + ".idx")
        if os.path.exists(idx_path):
            with open(idx_path) as f:
                chunks = [(float(t), int(o)) for t, o in (line.split() for line in f if line.strip())]
        rq = _parse_messages(c2s)
        rs = _parse_messages(s2c, is_response=True)
        # Requests on one keep-alive connection are answered in order.
        for k, (head, body, start) in enumerate(rq):
            when = max((t for t, o in chunks if o <= start), default=0.0)
            reqs.append((when, c, k, head, body, rs[k] if k < len(rs) else None))
    # Order by the time the first byte of each request arrived.
    reqs.sort(key=lambda r: (r[0], r[1], r[2]))
    for idx, (_, c, k, head, body, resp) in enumerate(reqs[: max_requests or None], 1):
        print(f"===== request {idx} ({c}, #{k + 1} on that connection) =====")
        print(head.decode("latin-1"))
        print()
        if body:
            print(body.decode("utf-8", "replace"))
        if responses and resp is not None:
            rhead, rbody, _ = resp
            print(f"----- response -----")
            print(rhead.decode("latin-1"))
            print()
            if rbody:
                print(rbody.decode("utf-8", "replace"))
        print()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen-port", type=int, default=0)
    p.add_argument("--upstream-host", default="127.0.0.1")
    p.add_argument("--upstream-port", type=int)
    p.add_argument("--out")
    p.add_argument("--dump", metavar="DIR")
    p.add_argument("--max", type=int)
    p.add_argument("--responses", action="store_true")
    a = p.parse_args()
    if a.dump:
        dump(a.dump, a.max, a.responses)
        return 0
    if a.upstream_port is None or not a.out:
        p.error("--upstream-port and --out are required (or use --dump DIR)")
    try:
        asyncio.run(serve(a.listen_port, a.upstream_host, a.upstream_port, a.out))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

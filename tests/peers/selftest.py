#!/usr/bin/env python3
"""Peer self-test: every client peer against every server peer, directly (no gateway).

    "$(tests/setup.sh --print-env | sed -n 's/^PORTCULLIS_TEST_PYTHON=//p')" tests/peers/selftest.py [-j 4] [-k SUBSTR] [-v]

Starts each server variant on a free port (waits for its `READY <port>` line),
runs the client scenarios that the pair supports, checks the JSON each client
prints, and also checks the expected *failures* (a 2026-07-28 client against a
server without 2026-07-28 must fail cleanly). Ends with `N passed, M failed`;
exit status 1 if anything failed. Stdlib only (run it with the venv python so
the Python peers find `mcp`).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "node")
PY = sys.executable
TOOLS = ["add", "echo", "slow_count", "whoami"]
R25, R26 = "2025-11-25", "2026-07-28"


@dataclass
class Server:
    label: str
    cmd: list[str]
    eras: tuple[str, ...]
    stateful: bool = True  # 2025: Mcp-Session-Id + DELETE
    notifications: bool = True  # progress/log notifications reach the client (not JSON-response mode)
    full: bool = False  # run the full scenario set (else the smoke set)
    port: int | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)


@dataclass
class ClientPeer:
    label: str
    cmd: list[str]
    revisions: tuple[str, ...]
    # extra argument sets to exercise for 2026-07-28 (connect modes)
    modern_variants: tuple[tuple[str, ...], ...] = ((),)


SERVERS = [
    Server("py", [PY, "py_server.py"], (R25, R26), full=True),
    Server("py-stateless", [PY, "py_server.py", "--stateless"], (R25, R26), stateful=False),
    Server("py-json", [PY, "py_server.py", "--json-response"], (R25, R26), notifications=False),
    Server("ts-v1", ["node", "node/ts_server_v1.mjs"], (R25,), full=True),
    Server("ts-v1-stateless", ["node", "node/ts_server_v1.mjs", "--stateless"], (R25,), stateful=False),
    Server("ts-v1-json", ["node", "node/ts_server_v1.mjs", "--json-response"], (R25,), notifications=False),
    Server("ts-v2", ["node", "node/ts_server_v2.mjs"], (R25, R26), full=True),
    Server("ts-v2-stateless", ["node", "node/ts_server_v2.mjs", "--stateless"], (R25, R26), stateful=False),
    Server("ts-v2-json", ["node", "node/ts_server_v2.mjs", "--json-response"], (R25, R26), notifications=False),
    Server("ts-v2-modern-only", ["node", "node/ts_server_v2.mjs", "--modern-only"], (R26,), stateful=False),
]

CLIENTS = [
    ClientPeer("py", [PY, "py_client.py"], (R25, R26), modern_variants=(("--connect", "auto"), ("--connect", "pin"))),
    ClientPeer("ts-v1", ["node", "node/ts_client_v1.mjs"], (R25,)),
    ClientPeer("ts-v2", ["node", "node/ts_client_v2.mjs"], (R25, R26), modern_variants=(("--connect", "pin"), ("--connect", "auto"))),
]


@dataclass
class Case:
    name: str
    server: Server
    argv: list[str]
    expect_ok: bool
    check: object = None  # callable(result_dict) -> str | None (error)


def start_server(s: Server, timeout: float = 30.0) -> None:
    name = f"peer-{s.label}"
    s.proc = subprocess.Popen(
        [*s.cmd, "--port", "0", "--name", name],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if not VERBOSE else None,
        text=True,
    )
    deadline = time.monotonic() + timeout
    assert s.proc.stdout is not None
    while time.monotonic() < deadline:
        line = s.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server {s.label} exited before READY (rc={s.proc.poll()})")
        if line.startswith("READY "):
            s.port = int(line.split()[1])
            return
    raise RuntimeError(f"server {s.label} not READY within {timeout}s")


def stop_server(s: Server) -> None:
    if s.proc and s.proc.poll() is None:
        s.proc.terminate()
        try:
            s.proc.wait(5)
        except subprocess.TimeoutExpired:
            s.proc.kill()


def expect_eq(key, want):
    def check(d):
        return None if d.get(key) == want else f"{key}={d.get(key)!r}, want {want!r}"

    return check


def build_cases(servers: list[Server]) -> list[Case]:
    cases: list[Case] = []
    for s in servers:
        for c in CLIENTS:
            for rev in c.revisions:
                variants = c.modern_variants if rev == R26 else ((),)
                for vi, variant in enumerate(variants):
                    tag = f"{c.label}-client {rev}{' ' + ' '.join(variant) if variant else ''} -> {s.label}-server"
                    base = [*c.cmd, None, "--revision", rev, *variant, "--timeout", "40"]

                    def add(scn: str, extra: list[str], expect_ok: bool = True, check=None) -> None:
                        cases.append(Case(f"{tag}: {scn}", s, [*base, "--scenario", *extra], expect_ok, check))

                    if rev not in s.eras:
                        add("list (unsupported revision, must fail)", ["list"], expect_ok=False)
                        continue
                    add("list", ["list"], check=lambda d: None
                        if d.get("tools") == TOOLS and d.get("prompts") == ["greet"] and d.get("resources") == ["portcullis://info"]
                        else f"unexpected listing {d.get('tools')} {d.get('prompts')} {d.get('resources')}")
                    add("call whoami", ["call", "--tool", "whoami"], check=expect_eq("text", f"peer-{s.label}"))
                    if vi > 0:
                        continue  # connect-mode variants: list + whoami are enough
                    if s.full:
                        add("call echo", ["call", "--tool", "echo", "--args", '{"text":"hello \\u00e9"}'],
                            check=expect_eq("text", "hello \u00e9"))
                        add("call add", ["call", "--tool", "add", "--args", '{"a":2,"b":3}'],
                            check=lambda d: None if d.get("text") == "5" and d.get("structured") == {"result": 5}
                            else f"add -> text={d.get('text')!r} structured={d.get('structured')!r}")
                    if s.notifications:
                        add("progress", ["progress", "--n", "3"],
                            check=lambda d: None if len(d.get("logs") or []) == 3 else f"logs={d.get('logs')!r}")
                    if rev == R25 and s.stateful:
                        add("session-delete", ["session-delete"],
                            check=lambda d: None if d.get("delete_status") in (200, 204) and d.get("post_after_delete_status") == 404
                            else "bad delete statuses")
    return cases


def run_case(case: Case) -> tuple[Case, bool, str]:
    argv = [a if a is not None else f"http://127.0.0.1:{case.server.port}/mcp" for a in case.argv]
    try:
        p = subprocess.run(argv, cwd=HERE, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return case, False, "client timed out (60s)"
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    try:
        d = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        d = {}
    detail = d.get("error") or (p.stderr.strip().splitlines() or [""])[-1]
    if not case.expect_ok:
        if p.returncode != 0 and d.get("ok") is False:
            return case, True, f"failed as expected: {d.get('error')}"
        return case, False, f"expected failure, got rc={p.returncode} ok={d.get('ok')}"
    if p.returncode != 0 or d.get("ok") is not True:
        return case, False, f"rc={p.returncode}: {detail}"
    if len(lines) != 1:
        return case, False, f"expected exactly one stdout line, got {len(lines)}"
    if case.check is not None and (err := case.check(d)):
        return case, False, err
    return case, True, ""


VERBOSE = False


def main() -> int:
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-j", "--jobs", type=int, default=4)
    ap.add_argument("-k", dest="filter", help="only cases whose name contains this substring")
    ap.add_argument("-v", "--verbose", action="store_true", help="server stderr through; print passing detail")
    a = ap.parse_args()
    VERBOSE = a.verbose

    cases = build_cases(SERVERS)
    if a.filter:
        cases = [c for c in cases if a.filter in c.name]
    needed = [s for s in SERVERS if any(c.server is s for c in cases)]
    passed = failed = 0
    t0 = time.monotonic()
    try:
        for s in needed:
            start_server(s)
        with cf.ThreadPoolExecutor(max_workers=a.jobs) as ex:
            for case, ok, detail in ex.map(run_case, cases):
                if ok:
                    passed += 1
                    print(f"PASS {case.name}" + (f"  ({detail})" if detail and a.verbose else ""), flush=True)
                else:
                    failed += 1
                    print(f"FAIL {case.name}: {detail}", flush=True)
    finally:
        for s in needed:
            stop_server(s)
    print(f"peers selftest: {len(cases)} cases in {time.monotonic() - t0:.1f}s", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Boot test of the appliance image (run by images/test, which sets up the host first).

Boots images/out/portcullis.qcow2 in QEMU (TCG unless KVM works) with UEFI firmware, a config drive and
two user-mode NICs (data: MCP port forwarded; management: admin port forwarded), an MCP upstream from the
official Python SDK on the host (reached by the guest at 10.0.2.2). Then, from the host:
  1. waits for the appliance's health banner on the serial console and /readyz on the management port;
  2. checks the TLS certificate the MCP port presents against the fingerprint the console printed;
  3. registers the upstream, an agent and a policy with the portcullis CLI, approves a snapshot;
  4. lists and calls tools with the official SDK client (both revisions) and over HTTP/3 (aioquic);
  5. checks that only the allowed ports answer on each network;
  6. cuts the power (SIGKILL to QEMU), grows the disk, boots again: the data partition grows, the
     snapshot is still active, `audit verify` passes and the call made before the cut is in the trail;
  7. attaches an update drive with a newer image whose appliance cannot start: the update goes into
     slot B, its tries fail their health check, the boot loader falls back to slot A, which serves the
     same snapshot.
Prints one JSON summary line (boot times, sizes) and exits 0, or fails with the serial log's tail.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("IMAGE_OUT", REPO / "images" / "out"))
ART = Path(os.environ.get("IMAGE_TEST_DIR", REPO / "tests" / "artifacts" / "image"))
PEERS = REPO / "tests" / "peers"
PY = os.environ.get("PORTCULLIS_PYTHON", sys.executable)
BOOT_TIMEOUT = float(os.environ.get("IMAGE_BOOT_TIMEOUT", "600"))
# A reset that printed nothing for this long is taken as hung in QEMU (see VM.wait_for).
STUCK_RESET_S = 120
MGMT_MAC = "52:54:00:00:00:02"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


class Fail(Exception):
    pass


def log(msg: str) -> None:
    print(f"images/test: {msg}", file=sys.stderr, flush=True)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mtools_env() -> dict:
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def fat_image(path: Path, label: str, files: dict[str, Path], extra_kib: int = 4096) -> None:
    """A FAT drive with these files at its root (mkfs.fat + mcopy: no mounts)."""
    kib = sum(p.stat().st_size for p in files.values()) // 1024 + extra_kib
    path.unlink(missing_ok=True)
    subprocess.run(["mkfs.fat", "-C", "-n", label, str(path), str(kib)], check=True, capture_output=True)
    for name, src in files.items():
        subprocess.run(["mcopy", "-i", str(path), str(src), f"::/{name}"], check=True, env=mtools_env())


def kvm_works() -> bool:
    """KVM where it really runs a guest (nested setups can expose /dev/kvm and still fail)."""
    if not os.access("/dev/kvm", os.W_OK):
        return False
    try:
        p = subprocess.run(
            ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-nodefaults",
             "-display", "none", "-no-user-config", "-m", "64", "-bios", OVMF_CODE, "-no-reboot"],
            capture_output=True, timeout=4)
        return False if p.returncode != 0 else True
    except subprocess.TimeoutExpired:
        return True  # still running firmware after 4 s: KVM executes guests


class Vm:
    def __init__(self, work: Path, ports: dict[str, int], accel: list[str]):
        self.work = work
        self.ports = ports
        self.accel = accel
        self.serial = work / "serial.log"
        self.proc: subprocess.Popen | None = None
        self.drives: list[Path] = []

    def start(self, keep_mark: bool = False) -> float:
        p = self.ports
        data = (f"user,id=data,net=10.0.2.0/24,"
                f"hostfwd=tcp:127.0.0.1:{p['mcp']}-:8443,hostfwd=udp:127.0.0.1:{p['mcp_udp']}-:8443,"
                f"hostfwd=tcp:127.0.0.1:{p['data_admin']}-:8444,hostfwd=tcp:127.0.0.1:{p['data_ssh']}-:22,"
                f"hostfwd=tcp:127.0.0.1:{p['data_other']}-:9999")
        mgmt = (f"user,id=mgmt,net=10.0.3.0/24,"
                f"hostfwd=tcp:127.0.0.1:{p['admin']}-:8444,hostfwd=tcp:127.0.0.1:{p['mgmt_ssh']}-:22")
        cmd = ["qemu-system-x86_64", "-machine", "q35", *self.accel, "-smp", "2", "-m", "2048",
               "-nodefaults", "-no-user-config", "-display", "none",
               "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
               "-drive", f"if=pflash,format=raw,unit=1,file={self.work / 'vars.fd'}",
               "-drive", f"file={self.work / 'disk.qcow2'},if=virtio,format=qcow2,cache=writeback",
               "-netdev", data, "-device", "virtio-net-pci,netdev=data,mac=52:54:00:00:00:01",
               "-netdev", mgmt, "-device", f"virtio-net-pci,netdev=mgmt,mac={MGMT_MAC}",
               "-chardev", f"file,id=ser,path={self.serial},append=on", "-serial", "chardev:ser"]
        for d in self.drives:
            cmd += ["-drive", f"file={d},if=virtio,format=raw,readonly=on"]
        if not keep_mark:
            self.mark = self.serial.stat().st_size if self.serial.exists() else 0
        self.proc = subprocess.Popen(cmd, stdout=open(self.work / "qemu.log", "ab"), stderr=subprocess.STDOUT)
        return time.monotonic()

    def console(self) -> str:
        """What the serial console printed since this start."""
        if not self.serial.exists():
            return ""
        with open(self.serial, "rb") as f:
            f.seek(self.mark)
            return f.read().decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float = BOOT_TIMEOUT, count: int = 1) -> re.Match:
        deadline = time.monotonic() + timeout
        size, changed = -1, time.monotonic()
        while time.monotonic() < deadline:
            text = self.console()
            found = list(re.finditer(pattern, text))
            if len(found) >= count:
                return found[count - 1]
            if self.proc and self.proc.poll() is not None:
                raise Fail(f"QEMU exited ({self.proc.returncode}) waiting for {pattern!r}")
            now = time.monotonic()
            if len(text) != size:
                size, changed = len(text), now
            elif now - changed > STUCK_RESET_S and text.rstrip().endswith("reboot: Restarting system"):
                # QEMU under TCG now and then never comes back from a guest's reset (the firmware
                # prints nothing); pull the plug and power on, as a BMC watchdog would. The guest had
                # finished shutting down, so nothing of what is tested is skipped.
                log(f"the guest's reset hung in QEMU for {now - changed:.0f} s: power-cycling it")
                self.power_cut()
                self.start(keep_mark=True)
                changed = time.monotonic()
            time.sleep(1)
        raise Fail(f"no {pattern!r} on the console within {timeout:.0f} s")

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL, no shutdown of the guest."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def http(port: int, path: str, token: str | None = None, timeout: float = 10) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def answers(port: int, wait: float = 6.0) -> bool:
    """Whether anything answers an HTTP request on this forwarded port. QEMU's user network accepts the
    host side of a forward at once; a guest port that is dropped or closed sends nothing back."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
            s.settimeout(wait)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return len(s.recv(1)) > 0
    except OSError:
        return False


class Cli:
    def __init__(self, binary: Path, admin_port: int, token: str):
        self.binary = binary
        self.env = {**os.environ, "PORTCULLIS_ADMIN_TOKEN": token}
        self.admin = f"http://127.0.0.1:{admin_port}"

    def __call__(self, *args: str) -> dict:
        p = subprocess.run([str(self.binary), *args, "--json", "--admin", self.admin, "--as", "image-test"],
                           env=self.env, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise Fail(f"portcullis {' '.join(args)}: {p.stderr.strip()}")
        return json.loads(p.stdout) if p.stdout.strip() else {}


def sdk_client(mcp_port: int, ca: Path, key: str, revision: str, *args: str) -> dict:
    env = {**os.environ, "PORTCULLIS_TLS_CA": str(ca), "PORTCULLIS_BEARER": key}
    p = subprocess.run([PY, str(PEERS / "py_client.py"), f"https://127.0.0.1:{mcp_port}/mcp",
                        "--revision", revision, *args, "--timeout", "120"],
                       env=env, capture_output=True, text=True, timeout=180)
    line = (p.stdout.strip().splitlines() or [""])[-1]
    try:
        out = json.loads(line)
    except json.JSONDecodeError:
        raise Fail(f"py_client printed no JSON: {p.stdout}\n{p.stderr}")
    if not out.get("ok"):
        raise Fail(f"py_client {revision} {args}: {out}")
    return out


def h3_list(udp_port: int, ca: Path, key: str) -> dict:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "image-test", "version": "0"}}}}
    req = {"headers": {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/list"}, "body": body}
    p = subprocess.run([PY, str(PEERS / "h3_client.py"), f"https://127.0.0.1:{udp_port}/mcp", "--ca", str(ca),
                        "--bearer", key, "--request", json.dumps(req)],
                       capture_output=True, text=True, timeout=120)
    line = (p.stdout.strip().splitlines() or [""])[-1]
    out = json.loads(line) if line.startswith("{") else {"ok": False, "stderr": p.stderr[-2000:]}
    if not out.get("ok") or out["responses"][0]["status"] != 200:
        raise Fail(f"HTTP/3 tools/list: {out}")
    return json.loads(out["responses"][0]["body"])


def broken_update(work: Path, serial: int) -> Path:
    """An update drive holding a newer image whose appliance binary exits at once: the update a
    health check must refuse."""
    parts = OUT / "parts"
    tree = work / "broken-root"
    shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(parts / "root.squashfs")], check=True,
                   stdout=subprocess.DEVNULL)
    binary = tree / "usr/bin/portcullis"
    binary.write_text("#!/bin/sh\necho 'portcullis: this build is broken on purpose' >&2\nexit 70\n")
    binary.chmod(0o755)
    release = (tree / "usr/lib/portcullis/image-release").read_text()
    release = re.sub(r"SERIAL=\d+", f"SERIAL={serial}", release)
    (tree / "usr/lib/portcullis/image-release").write_text(release)
    bundle = work / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir()
    subprocess.run(["mksquashfs", str(tree), str(bundle / "root.squashfs"), "-noappend", "-quiet",
                    "-no-progress", "-comp", "zstd", "-Xcompression-level", "3"], check=True,
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(tree)
    for f in ("vmlinuz", "initrd.img"):
        shutil.copy(parts / f, bundle / f)
    (bundle / "release").write_text(release)
    sums = "".join(f"{hashlib.sha256((bundle / f).read_bytes()).hexdigest()}  {f}\n"
                   for f in ("release", "root.squashfs", "vmlinuz", "initrd.img"))
    (bundle / "SHA256SUMS").write_text(sums)
    drive = work / "update.img"
    fat_image(drive, "PCL-UPDATE", {f: bundle / f for f in ("release", "root.squashfs", "vmlinuz",
                                                             "initrd.img", "SHA256SUMS")})
    shutil.rmtree(bundle)
    return drive


def main() -> int:
    manifest = json.loads((OUT / "manifest.json").read_text())
    binary = OUT / "parts" / "portcullis"
    shutil.rmtree(ART, ignore_errors=True)
    ART.mkdir(parents=True)
    work = ART
    shutil.copy(OUT / "portcullis.qcow2", work / "disk.qcow2")
    shutil.copy(OVMF_VARS, work / "vars.fd")

    token = secrets.token_hex(32)
    (work / "admin.token").write_text(token + "\n")
    # BOOT_TRIES=2 keeps the fallback test to two failed boots; the default is 3.
    (work / "appliance.conf").write_text(f"HOSTNAME=pc-image-test\nMGMT_MAC={MGMT_MAC}\nBOOT_TRIES=2\n")
    fat_image(work / "config.img", "PORTCULLIS",
              {"appliance.conf": work / "appliance.conf", "admin.token": work / "admin.token"})

    ports = {k: free_port() for k in ("mcp", "data_admin", "data_ssh", "data_other", "admin", "mgmt_ssh")}
    ports["mcp_udp"] = ports["mcp"]
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm_works() else ["-accel", "tcg,thread=multi", "-cpu", "max"]
    log(f"accelerator: {accel[1]}; artifacts in {work}")

    upstream = subprocess.Popen([PY, str(PEERS / "py_server.py"), "--name", "docs", "--no-host-check"],
                                stdout=subprocess.PIPE, stderr=open(work / "upstream.log", "wb"), text=True)
    up_line = upstream.stdout.readline()
    if not up_line.startswith("READY "):
        raise Fail(f"upstream did not start: {up_line!r}")
    up_port = int(up_line.split()[1])

    vm = Vm(work, ports, accel)
    vm.drives = [work / "config.img"]
    summary: dict = {"image": manifest["version"], "accelerator": accel[1],
                     "qcow2_bytes": manifest["qcow2_bytes"], "root_squashfs_bytes": manifest["root_squashfs_bytes"],
                     "security_exposure": manifest["security_exposure"]}
    try:
        # 1. First boot.
        t0 = vm.start()
        vm.wait_for(r"health: slot a healthy")
        summary["first_boot_to_ready_s"] = round(time.monotonic() - t0, 1)
        console = vm.console()
        if "first boot: creating the data partition" not in console:
            raise Fail("the first boot did not create the data partition")
        status, body = http(ports["admin"], "/readyz")
        if status != 503 or "snapshot: FAIL" not in body:
            raise Fail(f"/readyz before any snapshot: {status} {body}")
        log(f"first boot ready in {summary['first_boot_to_ready_s']} s")

        # 2. The certificate the MCP port presents is the one the console names.
        fp = re.search(r"TLS certificate SHA-256: ([0-9a-f]{64})", console)
        if not fp:
            raise Fail("the console banner has no certificate fingerprint")
        pem = ssl.get_server_certificate(("127.0.0.1", ports["mcp"]), timeout=30)
        if hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest() != fp.group(1):
            raise Fail("the MCP port presents another certificate than the console printed")
        ca = work / "gateway-cert.pem"
        ca.write_text(pem)

        # 3. Register, approve.
        cli = Cli(binary, ports["admin"], token)
        cli("capability", "add", "docs", "--kind", "mcp", "--owner", "team-docs", "--risk", "low",
            "--environment", "prod", "--endpoint", f"http://10.0.2.2:{up_port}/mcp")
        cli("agent", "add", "helper", "--owner", "qa", "--surface", "service", "--environment", "prod",
            "--credential-mode", "service", "--group", "testers")
        key = cli("agent", "key", "issue", "helper")["key"]
        cli("policy", "add", "testers-all", "--text", 'permit(principal in Group::"testers", action, resource);')
        snap = cli("approve", "--note", "image test")
        log(f"approved: {json.dumps(snap)[:200]}")

        # 4. Through the box with the official SDK (both revisions) and HTTP/3.
        for rev in ("2025-11-25", "2026-07-28"):
            out = sdk_client(ports["mcp"], ca, key, rev, "--scenario", "list", "--tools-only")
            names = out["tools"]
            if "docs__echo" not in names:
                raise Fail(f"tools/list ({rev}) through the image lacks docs__echo: {names}")
        call = sdk_client(ports["mcp"], ca, key, "2026-07-28", "--scenario", "call", "--tool", "docs__echo",
                          "--args", json.dumps({"text": "before the power cut"}))
        if "before the power cut" not in json.dumps(call):
            raise Fail(f"tools/call echo: {call}")
        h3 = h3_list(ports["mcp_udp"], ca, key)
        if "docs__echo" not in json.dumps(h3):
            raise Fail(f"HTTP/3 tools/list lacks docs__echo: {h3}")
        status, body = http(ports["admin"], "/readyz")
        if status != 200:
            raise Fail(f"/readyz with a snapshot: {status} {body}")

        # 5. Only the allowed ports answer.
        checks = {"mcp (data)": (ports["mcp"], True), "admin (management)": (ports["admin"], True),
                  "admin (data)": (ports["data_admin"], False), "ssh (data)": (ports["data_ssh"], False),
                  "ssh (management, off by default)": (ports["mgmt_ssh"], False),
                  "9999 (data)": (ports["data_other"], False)}
        for what, (port, expect) in checks.items():
            if answers(port) != expect:
                raise Fail(f"port {what}: {'no answer' if expect else 'answered'}")
        summary["ports"] = {k: ("open" if v[1] else "closed") for k, v in checks.items()}

        # 6. Power cut, bigger disk, boot again.
        vm.power_cut()
        subprocess.run(["qemu-img", "resize", "-q", str(work / "disk.qcow2"), "+1G"], check=True)
        t0 = vm.start()
        vm.wait_for(r"health: slot a healthy")
        summary["boot_after_power_cut_to_ready_s"] = round(time.monotonic() - t0, 1)
        if "the disk grew: growing" not in vm.console():
            raise Fail("the second boot did not grow the data partition into the larger disk")
        check_intact(ports["admin"], token, snap)
        out = sdk_client(ports["mcp"], ca, key, "2025-11-25", "--scenario", "list", "--tools-only")
        if "docs__echo" not in out["tools"]:
            raise Fail("tools/list after the power cut lacks docs__echo")
        log(f"after the power cut: ready in {summary['boot_after_power_cut_to_ready_s']} s, trail verified")

        # 7. A broken update falls back to slot A.
        drive = broken_update(work, int(manifest["serial"]) + 1)
        vm.power_cut()
        vm.drives.append(drive)
        t0 = vm.start()
        vm.wait_for(r"portcullis-update: image \S+ is in slot b with 2 tries; rebooting")
        vm.wait_for(r"health: slot b FAILED its health check", count=2)
        vm.wait_for(r"health: slot a healthy")
        summary["update_fallback_s"] = round(time.monotonic() - t0, 1)
        tail = vm.console()[vm.console().rfind("health: slot b FAILED"):]
        if "slot A) is ready" not in tail or "was tried before" not in tail:
            raise Fail("after the failed update the box is not back on slot A with the update skipped")
        check_intact(ports["admin"], token, snap)
        out = sdk_client(ports["mcp"], ca, key, "2026-07-28", "--scenario", "list", "--tools-only")
        if "docs__echo" not in out["tools"]:
            raise Fail("tools/list after the fallback lacks docs__echo")
        log(f"broken update: fell back to slot A in {summary['update_fallback_s']} s")
        vm.power_cut()
    except (Fail, OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError) as e:
        vm.power_cut()
        tail = vm.console()[-6000:]
        print(f"images/test: FAILED: {e}\n--- serial console (tail) ---\n{tail}", file=sys.stderr)
        return 1
    finally:
        vm.power_cut()
        upstream.terminate()
    print(json.dumps({"ok": True, **summary}))
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def check_intact(admin: int, token: str, snap: dict) -> None:
    status, body = http(admin, "/admin/v1/health", token)
    if status != 200:
        raise Fail(f"health document: {status} {body}")
    health = json.loads(body)
    active = health.get("snapshot") or {}
    want = snap.get("version") or (snap.get("snapshot") or {}).get("version")
    if not active or (want is not None and active.get("version") != want):
        raise Fail(f"the active snapshot after reboot is {active}, approved was {want}")
    status, body = http(admin, "/admin/v1/audit/verify", token, timeout=60)
    verify = json.loads(body) if body.startswith("{") else {}
    if status != 200 or verify.get("verified") is not True:
        raise Fail(f"audit verify after the power cut: {status} {body[:500]}")
    status, body = http(admin, "/admin/v1/audit?tool=docs__echo&limit=5", token, timeout=60)
    if status != 200 or "docs__echo" not in body:
        raise Fail(f"the call made before the power cut is not in the audit trail: {status} {body[:500]}")


if __name__ == "__main__":
    sys.exit(main())

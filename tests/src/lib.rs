//! Shared helpers for the end-to-end tests: the real `portcullis` binary, official MCP SDK peers (Python
//! `mcp`, npm `@modelcontextprotocol/*`) and a raw HTTP client for bad-input cases.
//!
//! Every process started here is killed when its guard drops; every test gets its own temp dir and
//! ephemeral ports; readiness is awaited (a `READY <port>` line, `/readyz`), never slept for. The peers'
//! toolchains are installed by `tests/setup.sh`, which `tests/run` calls before the test binaries start.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use serde_json::{json, Value};

/// Longest wait for a process to become ready. Generous: the CI machine has 2 cores and builds in parallel.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The checkout the tests run from. Cargo and nextest name it at run time; the path compiled in is only a
/// fallback, since a shared build cache may hold a binary built from another checkout of the same sources.
pub fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .parent()
        .unwrap()
        .to_owned()
}

pub fn peers_dir() -> PathBuf {
    workspace_root().join("tests/peers")
}

/// The gateway binary: `$PORTCULLIS_BIN`, else the `portcullis` next to this test's profile directory.
pub fn gateway_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PORTCULLIS_BIN") {
        return PathBuf::from(p);
    }
    // current_exe = <target>/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("portcullis");
    assert!(
        bin.exists(),
        "{} missing: build it first (tests/run does: cargo build --profile ci -p portcullis)",
        bin.display()
    );
    bin
}

pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("PORTCULLIS_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("PORTCULLIS_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/portcullis")
        });
    let py = cache.join("venv/bin/python");
    assert!(
        py.exists(),
        "{} missing: run tests/setup.sh (tests/run does)",
        py.display()
    );
    py
}

/// A loopback port no other test process holds. Tests run as separate processes (nextest), and the
/// gateway binds with SO_REUSEPORT: two processes handed the same free port by the kernel would both bind
/// it and silently split each other's connections. Each port handed out is claimed with a file lock held
/// for the life of this process (the kernel drops it when the process ends, so nothing goes stale).
pub fn free_port() -> u16 {
    static CLAIMS: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("portcullis-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(port.to_string()))
            .unwrap();
        if f.try_lock().is_ok() {
            CLAIMS.lock().unwrap().push(f);
            return port;
        }
    }
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "portcullis-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGTERM and wait for the exit status (at most `READY_TIMEOUT`).
    pub fn terminate(&mut self) -> ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t0.elapsed() < READY_TIMEOUT,
                "{} did not exit after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a peer that prints `READY <port>` on stdout and return it with that port.
fn start_ready(mut cmd: Command, name: &str) -> (Proc, u16) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(port) = line.strip_prefix("READY ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(port.trim().parse::<u16>().ok());
                }
            }
        }
    });
    let label = name.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{label}] {line}");
        }
    });
    let proc = Proc {
        child,
        name: name.to_owned(),
    };
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Some(port)) => (proc, port),
        _ => panic!("{name} did not print READY within {READY_TIMEOUT:?}"),
    }
}

/// An upstream MCP server written with the official Python SDK (`tests/peers/py_server.py`).
pub fn py_server(name: &str, extra: &[&str]) -> (Proc, u16) {
    let mut cmd = Command::new(python());
    cmd.arg(peers_dir().join("py_server.py"))
        .args(["--port", "0", "--name", name])
        .args(extra);
    start_ready(cmd, &format!("py_server:{name}"))
}

/// The FastAPI REST upstream (`tests/peers/rest_api.py`), whose OpenAPI document FastAPI generates.
pub fn rest_api() -> (Proc, u16) {
    rest_api_with(&[])
}

/// `rest_api` with more arguments (`--tls-cert C --tls-key K` serves HTTPS).
pub fn rest_api_with(extra: &[&str]) -> (Proc, u16) {
    let mut cmd = Command::new(python());
    cmd.arg(peers_dir().join("rest_api.py"))
        .args(["--port", "0"])
        .args(extra);
    start_ready(cmd, "rest_api")
}

/// An upstream MCP server written with an official TypeScript SDK: `v1` (`@modelcontextprotocol/sdk` 1.x)
/// or `v2` (`@modelcontextprotocol/server` 2.x).
pub fn ts_server(sdk: &str, name: &str) -> (Proc, u16) {
    ts_server_with(sdk, name, &[])
}

/// `ts_server` with extra flags (`--modern-only`, `--stateless`, `--json-response`).
pub fn ts_server_with(sdk: &str, name: &str, extra: &[&str]) -> (Proc, u16) {
    let mut cmd = Command::new("node");
    cmd.arg(peers_dir().join(format!("node/ts_server_{sdk}.mjs")))
        .args(["--port", "0", "--name", name])
        .args(extra);
    start_ready(cmd, &format!("ts_server_{sdk}:{name}"))
}

/// The upstream the MCP conformance suite's server scenarios expect (`tests/peers/node/conformance_server.mjs`,
/// TypeScript SDK 2.x, both revisions).
pub fn conformance_server() -> (Proc, u16) {
    let mut cmd = Command::new("node");
    cmd.arg(peers_dir().join("node/conformance_server.mjs"))
        .args(["--port", "0"]);
    start_ready(cmd, "conformance_server")
}

/// Run a client peer and return its one JSON line. Panics with its output if it fails.
pub fn run_client(mut cmd: Command, what: &str) -> Value {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    assert!(
        out.status.success() && v["ok"] == json!(true),
        "{what} failed: status {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    v
}

pub fn py_client(url: &str, revision: &str, scenario: &str, extra: &[&str]) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(peers_dir().join("py_client.py"))
        .arg(url)
        .args(["--revision", revision, "--scenario", scenario])
        .args(extra);
    if let Some(key) = bearer() {
        cmd.env("PORTCULLIS_BEARER", key);
    }
    run_client(cmd, &format!("py_client {revision} {scenario}"))
}

pub fn ts_client(sdk: &str, url: &str, revision: &str, scenario: &str, extra: &[&str]) -> Value {
    let mut cmd = Command::new("node");
    cmd.arg(peers_dir().join(format!("node/ts_client_{sdk}.mjs")))
        .arg(url)
        .args(["--revision", revision, "--scenario", scenario])
        .args(extra);
    if let Some(key) = bearer() {
        cmd.env("PORTCULLIS_BEARER", key);
    }
    run_client(cmd, &format!("ts_client_{sdk} {revision} {scenario}"))
}

/// A running gateway with its own data dir and ports.
#[derive(Debug)]
pub struct Gateway {
    pub proc: Proc,
    pub plain_port: u16,
    pub tls_port: u16,
    pub admin_port: u16,
    pub dir: TempDir,
    /// The `up` arguments after `--config` and `--data-dir`, kept for `restart`.
    pub args: Vec<String>,
    /// Everything the process wrote to stdout and stderr so far (also echoed to the test's stderr).
    pub output: std::sync::Arc<std::sync::Mutex<String>>,
    /// How `cli` reaches an admin listener over TLS (`--admin https://...` and a client certificate);
    /// empty for the default plain one.
    pub admin_cli: Vec<String>,
}

/// Upstreams for a gateway config: (name, port); the URL is `http://127.0.0.1:PORT/mcp`.
pub fn upstreams_yaml(upstreams: &[(&str, u16)]) -> String {
    let mut y = String::from("upstreams:\n");
    if upstreams.is_empty() {
        y = String::from("upstreams: []\n");
    }
    for (name, port) in upstreams {
        y.push_str(&format!(
            "  - name: {name}\n    url: http://127.0.0.1:{port}/mcp\n"
        ));
    }
    y
}

/// Write `dir/portcullis.yaml` on fresh loopback ports, `listen` lines added to its `listen:` block;
/// returns the (plain MCP, TLS MCP, admin) ports.
fn write_config(
    dir: &TempDir,
    listen: &str,
    upstreams: &[(&str, u16)],
    extra: &str,
) -> (u16, u16, u16) {
    let (plain_port, tls_port, admin_port) = (free_port(), free_port(), free_port());
    let config = format!(
        "listen:\n  mcp_plain: 127.0.0.1:{plain_port}\n  mcp_tls: 127.0.0.1:{tls_port}\n  admin: 127.0.0.1:{admin_port}\n{listen}{}{extra}",
        upstreams_yaml(upstreams)
    );
    std::fs::write(dir.path().join("portcullis.yaml"), config).unwrap();
    (plain_port, tls_port, admin_port)
}

impl Gateway {
    /// Start with these upstreams plus `extra` YAML (e.g. a `limits:` block), on two cores.
    pub fn start(upstreams: &[(&str, u16)], extra: &str) -> Gateway {
        Self::start_with(upstreams, extra, &["--cores", "2"])
    }

    pub fn start_with(upstreams: &[(&str, u16)], extra: &str, args: &[&str]) -> Gateway {
        Self::start_in(TempDir::new("gw"), "", upstreams, extra, args)
    }

    /// Start with its files in `dir` (its data dir is `dir/data`, which may be prepared beforehand) and
    /// `listen` lines (e.g. `"  sync: 127.0.0.1:PORT\n"`) added to the `listen:` block.
    pub fn start_in(
        dir: TempDir,
        listen: &str,
        upstreams: &[(&str, u16)],
        extra: &str,
        args: &[&str],
    ) -> Gateway {
        let ports = write_config(&dir, listen, upstreams, extra);
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Self::launch(dir, ports, args, Vec::new())
    }

    /// Start with the admin listener on TLS requiring a client certificate from `client_ca` (PEM files
    /// in `dir`); `cli` presents `cert` and `key`, and readiness is the admin API answering through it.
    pub fn start_admin_mtls(dir: TempDir, client_ca: &str, cert: &str, key: &str) -> Gateway {
        let at = |f: &str| dir.path().join(f).display().to_string();
        let listen = format!("  admin_tls: true\n  admin_client_ca: {}\n", at(client_ca));
        let ports = write_config(&dir, &listen, &[], "");
        let admin_cli = vec![
            "--admin".to_owned(),
            format!("https://127.0.0.1:{}", ports.2),
            "--client-cert".to_owned(),
            at(cert),
            "--client-key".to_owned(),
            at(key),
        ];
        Self::launch(dir, ports, vec!["--cores".into(), "1".into()], admin_cli)
    }

    /// The data dir.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Start again on the same config, ports and data dir (after `proc.terminate()`).
    pub fn restart(self) -> Gateway {
        let Gateway {
            proc,
            plain_port,
            tls_port,
            admin_port,
            dir,
            args,
            admin_cli,
            ..
        } = self;
        drop(proc);
        Self::launch(dir, (plain_port, tls_port, admin_port), args, admin_cli)
    }

    fn launch(
        dir: TempDir,
        (plain_port, tls_port, admin_port): (u16, u16, u16),
        args: Vec<String>,
        admin_cli: Vec<String>,
    ) -> Gateway {
        let cfg = dir.path().join("portcullis.yaml");
        let mut cmd = Command::new(gateway_bin());
        cmd.arg("up")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(&args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[gateway] {line}");
                let mut o = out.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut o = out.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        let mut gw = Gateway {
            proc: Proc {
                child,
                name: "gateway".into(),
            },
            plain_port,
            tls_port,
            admin_port,
            dir,
            args,
            output,
            admin_cli,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.proc.child.try_wait().unwrap() {
                panic!("gateway exited during start: {s}");
            }
            if !self.admin_cli.is_empty() {
                if cli(self, &["agent", "list"]).status.success() {
                    return;
                }
            } else if let Ok(r) = request(self.admin_port, "GET", "/readyz", &[], b"") {
                if serving(&r) {
                    return;
                }
            }
            assert!(
                t0.elapsed() < READY_TIMEOUT,
                "gateway not ready within {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.plain_port)
    }

    pub fn metrics(&self) -> String {
        request(self.admin_port, "GET", "/metrics", &[], b"")
            .unwrap()
            .text()
    }
}

/// Whether a `/readyz` answer says the gateway serves: ready, or failing only for want of an approved
/// snapshot (most tests start a gateway and then approve one). A snapshot still being checked before it
/// is served is not serving yet.
pub fn serving(r: &RawResponse) -> bool {
    r.status == 200
        || (r.status == 503
            && r.text()
                .lines()
                .filter(|l| l.contains(": FAIL"))
                .all(|l| l.starts_with("snapshot: FAIL no approved snapshot")))
}

/// A response read by the raw client.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// The JSON-RPC response in the body: the body itself, or the last `data:` event of an SSE stream.
    pub fn message(&self) -> Value {
        if !self
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
        {
            return self.json();
        }
        let text = self.text();
        let last = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .rfind(|d| !d.is_empty())
            .unwrap_or_else(|| panic!("SSE body without data: {text}"));
        serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {last}"))
    }
    /// `error.data.reason` of a JSON-RPC error body.
    pub fn reason(&self) -> String {
        self.json()["error"]["data"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// Send raw bytes and read one response (to close or by framing), 30 s at most.
pub fn raw(port: u16, bytes: &[u8]) -> std::io::Result<RawResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(bytes)?;
    read_response(&mut s)
}

pub fn read_response(s: &mut TcpStream) -> std::io::Result<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let mut body = buf[head_end..].to_vec();
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        while !body.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body = dechunk(&body);
    } else {
        s.read_to_end(&mut body)?;
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[i + 2 + size + 2..];
    }
    out
}

/// The agent API key this test process presents on `/mcp` (see `act_as`).
static BEARER: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// From now on every request helper and SDK client of this test presents `key` as its bearer token
/// (unless a request names its own `authorization`). nextest runs each test in a process of its own, so
/// this never leaks between tests.
pub fn act_as(key: &str) {
    *BEARER.lock().unwrap() = Some(key.to_owned());
}

/// Stop presenting a key.
pub fn act_anonymously() {
    *BEARER.lock().unwrap() = None;
}

fn bearer() -> Option<String> {
    BEARER.lock().unwrap().clone()
}

/// `authorization: Bearer KEY\r\n` for the key of `act_as` (empty without one), for requests written
/// by hand.
pub fn auth_line() -> String {
    bearer().map_or_else(String::new, |k| format!("authorization: Bearer {k}\r\n"))
}

/// Register a low-risk MCP capability `name` at `http://127.0.0.1:PORT/mcp` (owner `team`, `prod`).
pub fn add_capability(g: &Gateway, name: &str, port: u16) {
    let endpoint = format!("http://127.0.0.1:{port}/mcp");
    ok(
        g,
        &[
            "capability",
            "add",
            name,
            "--kind",
            "mcp",
            "--owner",
            "team",
            "--risk",
            "low",
            "--environment",
            "prod",
            "--endpoint",
            &endpoint,
        ],
    );
}

/// Register agent `name` in `group` and issue it a key; returns the key.
pub fn register_agent_in(g: &Gateway, name: &str, group: &str) -> String {
    register_agent_with(g, name, group, &[])
}

/// `register_agent_in` with more `agent add` flags (e.g. `--limit 5/1m`).
pub fn register_agent_with(g: &Gateway, name: &str, group: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "agent",
        "add",
        name,
        "--owner",
        "qa",
        "--surface",
        "service",
        "--environment",
        "prod",
        "--credential-mode",
        "service",
        "--group",
        group,
    ];
    args.extend_from_slice(extra);
    ok(g, &args);
    let issued = ok(g, &["agent", "key", "issue", name]);
    issued["key"].as_str().unwrap().to_owned()
}

/// Agents `ops` (group `operators`: everything of capability `alpha`) and `viewer` (group `viewers`:
/// only `alpha__echo`), with the two policies that say so; returns their keys. The caller approves.
pub fn ops_and_viewer(g: &Gateway) -> (String, String) {
    let ops = register_agent_in(g, "ops", "operators");
    let viewer = register_agent_in(g, "viewer", "viewers");
    for (id, text) in [
        (
            "operators-all",
            r#"permit(principal in Group::"operators", action, resource in Capability::"alpha");"#,
        ),
        (
            "viewers-echo",
            r#"permit(principal in Group::"viewers", action, resource == Tool::"alpha__echo");"#,
        ),
    ] {
        ok(g, &["policy", "add", id, "--text", text]);
    }
    (ops, viewer)
}

/// Register agent `name` (group `testers`), a policy letting the group discover and call everything, and
/// a key for the agent; returns the key. The caller approves (so the agent is in the served snapshot).
pub fn register_agent(g: &Gateway, name: &str) -> String {
    let key = register_agent_in(g, name, "testers");
    if cli(g, &["policy", "show", "testers-all"]).status.success() {
        // Already there from an earlier agent.
    } else {
        ok(
            g,
            &[
                "policy",
                "add",
                "testers-all",
                "--text",
                r#"permit(principal in Group::"testers", action, resource);"#,
            ],
        );
    }
    key
}

/// `register_agent("tester")`, then `act_as` its key.
pub fn admit_tester(g: &Gateway) -> String {
    let key = register_agent(g, "tester");
    act_as(&key);
    key
}

/// `admit_tester`, then approve: the tester is served (with whatever capabilities are registered).
pub fn approve_tester(g: &Gateway) -> String {
    let key = admit_tester(g);
    ok(g, &["approve", "--note", "tester"]);
    key
}

/// One HTTP/1.1 request with `connection: close`.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(key) = bearer() {
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        {
            req.push_str(&format!("authorization: Bearer {key}\r\n"));
        }
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(port, &bytes)
}

pub const JSON_HEADERS: [(&str, &str); 2] = [
    ("content-type", "application/json"),
    ("accept", "application/json, text/event-stream"),
];

/// POST a JSON-RPC body to `/mcp` with the standard content headers plus `extra`.
pub fn post(port: u16, extra: &[(&str, &str)], body: &str) -> RawResponse {
    let mut h: Vec<(&str, &str)> = JSON_HEADERS.to_vec();
    h.extend_from_slice(extra);
    request(port, "POST", "/mcp", &h, body.as_bytes()).unwrap()
}

/// Open a 2025-11-25 session by raw `initialize`; returns its `Mcp-Session-Id`.
pub fn initialize(port: u16) -> String {
    let r = post(
        port,
        &[],
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("mcp-session-id")
        .expect("initialize answered without Mcp-Session-Id")
        .to_owned()
}

/// `_meta` and headers of a 2026-07-28 request.
pub fn modern_body(id: u64, method: &str, params: Value) -> String {
    let mut p = params;
    p["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}
    });
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": p}).to_string()
}

/// Run `portcullis ARGS --json` as operator `alice` against a gateway's admin API.
pub fn cli(g: &Gateway, args: &[&str]) -> std::process::Output {
    let plain = vec![
        "--admin".to_owned(),
        format!("http://127.0.0.1:{}", g.admin_port),
    ];
    let admin = if g.admin_cli.is_empty() {
        &plain
    } else {
        &g.admin_cli
    };
    Command::new(gateway_bin())
        .args(args)
        .arg("--json")
        .args(admin)
        .arg("--data-dir")
        .arg(g.dir.path().join("data"))
        .arg("--as")
        .arg("alice")
        .env_remove("PORTCULLIS_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `cli` that must succeed; its JSON output.
pub fn ok(g: &Gateway, args: &[&str]) -> Value {
    let out = cli(g, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `cli` that must fail; its stderr.
pub fn fails(g: &Gateway, args: &[&str]) -> String {
    let out = cli(g, args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A 2026-07-28 request to `/mcp` with its routing headers (`Mcp-Name` from `params.name` where the
/// method routes by name).
pub fn modern(port: u16, id: u64, method: &str, params: Value) -> RawResponse {
    let name = params["name"].as_str().map(str::to_owned);
    let mut h = vec![
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", method),
    ];
    if let Some(n) = name.as_deref() {
        h.push(("mcp-name", n));
    }
    post(port, &h, &modern_body(id, method, params))
}

/// Read a raw stream until `needle` appears (30 s at most); everything read so far.
pub fn wait_for_event(s: &mut TcpStream, needle: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(n > 0, "stream ended before `{needle}`: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    seen
}

/// The test identity provider (`tests/peers/idp.py`): a JWKS over HTTPS, tokens minted with PyJWT.
#[derive(Debug)]
pub struct Idp {
    pub proc: Proc,
    pub control: u16,
    pub jwks_port: u16,
    /// PEM of the CA that issued the JWKS listener's certificate.
    pub ca: String,
    pub dir: TempDir,
}

impl Idp {
    pub fn start() -> Idp {
        let dir = TempDir::new("idp");
        let mut cmd = Command::new(python());
        cmd.arg(peers_dir().join("idp.py"))
            .arg("--dir")
            .arg(dir.path());
        let (proc, control) = start_ready(cmd, "idp");
        let info = request(control, "GET", "/info", &[("authorization", "none")], b"")
            .unwrap()
            .json();
        Idp {
            proc,
            control,
            jwks_port: info["jwks_port"].as_u64().unwrap() as u16,
            ca: info["ca"].as_str().unwrap().to_owned(),
            dir,
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let r = request(
            self.control,
            "POST",
            path,
            &[("authorization", "none")],
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "idp {path}: {}", r.text());
        r.json()
    }

    /// A token with these claims signed by key `kid` (`r1` RS256, `e1` ES256, `d1` EdDSA, or rotated
    /// ones); `forge` as `idp.py` documents.
    pub fn mint(&self, kid: &str, claims: Value, forge: Option<&str>) -> String {
        let mut req = json!({"kid": kid, "claims": claims});
        if let Some(f) = forge {
            req["forge"] = json!(f);
        }
        self.post("/mint", req)["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Add a signing key to the JWKS.
    pub fn rotate(&self, kid: &str, alg: &str) {
        self.post("/rotate", json!({"kid": kid, "alg": alg}));
    }

    /// Make the JWKS endpoint answer 503 (`true`) or serve again.
    pub fn set_down(&self, down: bool) {
        self.post(if down { "/down" } else { "/up" }, json!({}));
    }

    /// GET /jwks requests it has had.
    pub fn hits(&self) -> u64 {
        request(
            self.control,
            "GET",
            "/hits",
            &[("authorization", "none")],
            b"",
        )
        .unwrap()
        .json()["hits"]
            .as_u64()
            .unwrap()
    }

    /// The JWKS URL for a gateway config.
    pub fn jwks_url(&self) -> String {
        format!("https://127.0.0.1:{}/jwks", self.jwks_port)
    }
}

/// Client certificates for `names` (and rogue ones, from an untrusted CA that has the same name, for
/// `rogues`) in `dir`: `tests/peers/pki.py`.
pub fn client_pki(dir: &TempDir, names: &[&str], rogues: &[&str]) {
    let mut cmd = Command::new(python());
    cmd.arg(peers_dir().join("pki.py"))
        .arg("--dir")
        .arg(dir.path());
    for n in names {
        cmd.args(["--client", n]);
    }
    for n in rogues {
        cmd.args(["--rogue", n]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! `portcullis`: the appliance binary. `portcullis up` runs the gateway; see `--help`.
#![forbid(unsafe_code)]
// The start-up banner (endpoints, certificate fingerprint) is for the operator on stdout; logs go to stderr.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use portcullis::config::{parse_http_url, Config};
use portcullis::control::{self, ControlPlane};
use portcullis::follow::{FollowStatus, Follower};
use portcullis::gateway::Shared;
use portcullis::probe::ProbeLimits;
use portcullis::runtime::{self, CoreSetup};
use portcullis::served::{Published, Served};
use portcullis::upstream::ClientLimits;
use portcullis::{admin, error, info, tls};
use portcullis_storage::{DataDir, Registry, SigningKey};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
portcullis — MCP gateway appliance

USAGE:
    portcullis up [--config FILE] [--data-dir DIR] [--cores N]
                  [--control-plane URL --trust-key KEY --control-plane-token FILE
                   (--control-plane-fingerprint SHA256 | --control-plane-ca PEM)]
    portcullis check-config --config FILE
    portcullis version

`up` with no arguments starts on embedded defaults: data dir ./portcullis-data (created 0700), MCP over
HTTPS at https://127.0.0.1:8443/mcp with a self-signed certificate generated on first start, admin and
health on http://127.0.0.1:8444 (/healthz, /readyz, /metrics).

With --control-plane it is a data plane (hybrid mode): it serves the snapshots that control plane
activates, verified with KEY (the control plane's `portcullis signing-key`), and keeps serving the last
good one while the control plane is unreachable. The flags set the config file's `follow:` keys.
";

struct UpArgs {
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    cores: Option<usize>,
    control_plane: Option<String>,
    trust_key: Option<String>,
    token_file: Option<PathBuf>,
    fingerprint: Option<String>,
    ca_file: Option<PathBuf>,
}

fn main() {
    std::process::exit(match run() {
        Ok(()) => 0,
        Err(msg) => {
            error!("{msg}");
            1
        }
    });
}

fn run() -> Result<(), String> {
    use lexopt::prelude::*;
    let mut raw = std::env::args().skip(1);
    if let Some(cmd) = raw.next() {
        if portcullis::cli::run(&cmd, raw.collect())? {
            return Ok(());
        }
    }
    let mut parser = lexopt::Parser::from_env();
    let cmd = match parser.next().map_err(|e| e.to_string())? {
        Some(Value(v)) => v.string().map_err(|e| e.to_string())?,
        Some(Long("help")) | Some(Short('h')) | None => {
            eprint!("{USAGE}\n{}", portcullis::cli::USAGE);
            return Ok(());
        }
        Some(other) => return Err(other.unexpected().to_string()),
    };
    let mut args = UpArgs {
        config: None,
        data_dir: None,
        cores: None,
        control_plane: None,
        trust_key: None,
        token_file: None,
        fingerprint: None,
        ca_file: None,
    };
    let text = |p: &mut lexopt::Parser| -> Result<String, String> {
        p.value()
            .map_err(|e| e.to_string())?
            .into_string()
            .map_err(|_| "argument is not UTF-8".to_owned())
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("config") => args.config = Some(parser.value().map_err(|e| e.to_string())?.into()),
            Long("data-dir") => {
                args.data_dir = Some(parser.value().map_err(|e| e.to_string())?.into())
            }
            Long("cores") => {
                args.cores = Some(
                    parser
                        .value()
                        .map_err(|e| e.to_string())?
                        .parse()
                        .map_err(|e: lexopt::Error| e.to_string())?,
                )
            }
            Long("control-plane") => args.control_plane = Some(text(&mut parser)?),
            Long("trust-key") => args.trust_key = Some(text(&mut parser)?),
            Long("control-plane-token") => args.token_file = Some(text(&mut parser)?.into()),
            Long("control-plane-fingerprint") => args.fingerprint = Some(text(&mut parser)?),
            Long("control-plane-ca") => args.ca_file = Some(text(&mut parser)?.into()),
            Long("help") | Short('h') => {
                eprint!("{USAGE}");
                return Ok(());
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    match cmd.as_str() {
        "up" => up(args),
        "check-config" => {
            Config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
            eprintln!("config ok");
            Ok(())
        }
        "version" => {
            eprintln!("portcullis {}", portcullis::gateway::VERSION);
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    }
}

/// `up --control-plane ...` flags into the config's `follow:` section (flags win over the file).
fn apply_follow_flags(config: &mut Config, args: &UpArgs) -> Result<(), String> {
    let any = args.control_plane.is_some()
        || args.trust_key.is_some()
        || args.token_file.is_some()
        || args.fingerprint.is_some()
        || args.ca_file.is_some();
    if !any {
        return Ok(());
    }
    let mut f = match config.follow.take() {
        Some(f) => f,
        None => {
            let missing = |what: &str| format!("--control-plane needs {what}");
            portcullis::config::Follow {
                control_plane: args.control_plane.clone().ok_or_else(|| {
                    "--trust-key and the other --control-plane-* flags need --control-plane URL"
                        .to_owned()
                })?,
                trust_key: args
                    .trust_key
                    .clone()
                    .ok_or_else(|| missing("--trust-key KEY"))?,
                token_file: args
                    .token_file
                    .clone()
                    .ok_or_else(|| missing("--control-plane-token FILE"))?,
                tls_fingerprint: None,
                tls_ca_file: None,
                poll_wait: portcullis::config::Dur(Duration::from_secs(25)),
            }
        }
    };
    if let Some(v) = &args.control_plane {
        f.control_plane = v.clone();
    }
    if let Some(v) = &args.trust_key {
        f.trust_key = v.clone();
    }
    if let Some(v) = &args.token_file {
        f.token_file = v.clone();
    }
    if args.fingerprint.is_some() || args.ca_file.is_some() {
        f.tls_fingerprint = args.fingerprint.clone();
        f.tls_ca_file = args.ca_file.clone();
    }
    config.follow = Some(f);
    config.validate().map_err(|e| e.to_string())
}

/// This appliance's name towards a control plane: the host name and the start of its own key, so two
/// data planes on one host differ.
fn node_name(public_key_hex: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(40)
        .collect();
    let key = &public_key_hex[..public_key_hex.len().min(12)];
    if host.is_empty() {
        key.to_owned()
    } else {
        format!("{host}-{key}")
    }
}

fn up(args: UpArgs) -> Result<(), String> {
    let mut config = Config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(d) = args.data_dir.clone() {
        config.data_dir = d;
    }
    if let Some(c) = args.cores {
        config.cores = c;
    }
    apply_follow_flags(&mut config, &args)?;
    let available = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let n_cores = if config.cores == 0 {
        available
    } else {
        config.cores
    };
    let data = DataDir::open(&config.data_dir).map_err(|e| e.to_string())?;
    let _lock = data.lock().map_err(|e| e.to_string())?;
    let signing = SigningKey::load_or_create(&data).map_err(|e| e.to_string())?;
    let trust = config
        .follow
        .as_ref()
        .and_then(|f| portcullis_storage::signing::parse_public_key(&f.trust_key));
    let registry = Arc::new(
        Registry::open(
            &data.file("lmdb"),
            config.storage.lmdb_map_bytes,
            signing,
            trust,
        )
        .map_err(|e| e.to_string())?,
    );
    let broker = Arc::new(portcullis::broker::Broker::new(
        &config.secrets,
        registry.clone(),
    )?);
    match broker.embedded() {
        Ok((_, key)) => info!("embedded secret store on, key id {}", key.id_hex()),
        Err(why) => info!("{why}"),
    }
    broker.start()?;
    let ca = config
        .upstream_tls
        .ca_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(portcullis::config::SYSTEM_CA_BUNDLE));
    let _ = portcullis::upstream::TLS.set(portcullis::https::client_config(
        None,
        Some(&ca),
        "upstream_tls.ca_file",
    ));
    let audit_key = Arc::new(SigningKey::load_or_create(&data).map_err(|e| e.to_string())?);
    let audit = Arc::new(portcullis::audit::Trail::open(
        &data.file("audit"),
        n_cores,
        &config.audit,
        audit_key,
    )?);
    info!(
        "audit trail at {} mode={:?} ({} of {} bytes used)",
        data.file("audit").display(),
        config.audit.mode,
        audit.usage().0,
        audit.usage().1
    );
    let (admin_token, token_created) = control::load_or_create_token(&data)?;
    info!(
        "registry open at {} signing_key={}",
        data.file("lmdb").display(),
        registry.public_key_hex()
    );
    let node = node_name(&registry.public_key_hex());
    if let Some(sl) = &config.audit.syslog {
        portcullis::syslog::start(data.file("audit"), sl.clone(), node.clone())?;
        info!("audit trail streamed to syslog at {}", sl.address);
    }
    // Static `upstreams` in the config bypass the control plane (a lab mode); otherwise the data plane
    // serves the active approved snapshot and nothing before one is approved.
    let published = Arc::new(Published::new(config.upstreams.is_empty()));
    let mut control = ControlPlane::new(
        registry,
        &admin_token,
        published.clone(),
        ClientLimits::from_config(&config.limits),
        ProbeLimits::from_config(&config.limits),
    )
    .with_activation_check(config.pinning.activation_check_timeout.0);
    drop(admin_token);
    if config.listen.sync.is_some() {
        let (t, created) =
            control::load_or_create_secret(&data, portcullis::sync::TOKEN_FILE, "sync token")?;
        control = control.with_sync_token(&t);
        if created {
            info!(
                "sync token generated in {}",
                data.file(portcullis::sync::TOKEN_FILE).display()
            );
        }
    }
    let follower = match &config.follow {
        Some(f) => {
            let follower = Follower::new(
                f,
                config.limits.upstream_connect_timeout.0,
                config.storage.lmdb_map_bytes,
                node.clone(),
            )?;
            let status = Arc::new(FollowStatus::new(&f.control_plane));
            control = control.following(status.clone());
            Some((follower, status))
        }
        None => None,
    };

    let tls_material = if config.listen.mcp_tls.is_some()
        || config.listen.sync.is_some()
        || config.listen.admin_tls
    {
        let m = tls::load_or_generate(&data).map_err(|e| e.to_string())?;
        let verb = if m.created { "generated" } else { "loaded" };
        info!(
            "tls certificate {verb} in {} sha256={}",
            data.path().display(),
            m.fingerprint_sha256
        );
        println!(
            "TLS certificate SHA-256 fingerprint: {}",
            m.fingerprint_sha256
        );
        control = control
            .with_tls_fingerprint(&m.fingerprint_sha256)
            .with_tls_not_after(m.not_after());
        Some(m)
    } else {
        None
    };
    let identity = Arc::new(portcullis::identity::Providers::from_config(
        &config.identity,
    )?);
    if !identity.is_empty() || config.identity.mtls.is_some() {
        if !published.managed() {
            return Err("identity.jwt and identity.mtls need approved snapshots (agents are registered there); static upstreams govern nothing".into());
        }
        identity.start()?;
    }
    control = control
        .with_identity(identity.clone())
        .with_broker(broker.clone());
    let control = Arc::new(control);
    let (tls, h3_tls) = match (&tls_material, config.listen.mcp_tls) {
        (Some(m), Some(_)) => {
            let client_cas = match &config.identity.mtls {
                Some(mtls) => Some(portcullis::https::roots(
                    &mtls.ca_file,
                    "identity.mtls.ca_file",
                )?),
                None => None,
            };
            let h3 = if config.listen.h3 {
                let early = !config.listen.h3_early_data_methods.is_empty();
                Some(
                    m.h3_config(client_cas.clone(), early)
                        .map_err(|e| e.to_string())?,
                )
            } else {
                None
            };
            (
                Some(m.mcp_config(client_cas).map_err(|e| e.to_string())?),
                h3,
            )
        }
        _ => (None, None),
    };
    let admin_tls = match (&tls_material, config.listen.admin_tls) {
        (Some(m), true) => {
            let client_cas = match &config.listen.admin_client_ca {
                Some(path) => Some(portcullis::https::roots(path, "listen.admin_client_ca")?),
                None => None,
            };
            Some(m.admin_config(client_cas).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let tls_material = tls_material.map(|m| m.config);
    if let Some(addr) = config.listen.mcp_tls {
        println!("MCP endpoint: https://{addr}/mcp");
    }
    if let Some(addr) = config.listen.mcp_plain {
        println!("MCP endpoint (plain HTTP): http://{addr}/mcp");
    }
    let upstreams: Vec<_> = config
        .upstreams
        .iter()
        .map(|u| {
            let url = parse_http_url(&u.url)
                .unwrap_or_else(|_| unreachable!("validated by Config::load"));
            (u.name.clone(), url)
        })
        .collect();
    if published.managed() {
        // A data plane starts on the last good snapshot it followed, whether or not the control plane
        // is reachable now.
        control.serve_active();
        control.publish_keys();
    } else {
        for (name, url) in &upstreams {
            info!(
                "static upstream {name} at http://{}:{}{} (not governed by approved snapshots)",
                url.host, url.port, url.path
            );
        }
        published.publish(Served::static_upstreams(&upstreams, &published));
    }

    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }

    let admin_addr = config.listen.admin;
    let naming = match config.naming {
        portcullis::config::NamingMode::Prefixed => portcullis_pipeline::mcp::Naming::Prefixed,
        portcullis::config::NamingMode::Passthrough => {
            portcullis_pipeline::mcp::Naming::Passthrough {
                upstream: upstreams[0].0.clone(),
            }
        }
    };
    // Sessions kept across restarts: read back before the cores start, written by one thread after.
    let (persist, restored) = if config.sessions.persist {
        match portcullis_storage::sessions::SessionStore::open(
            &data.path().join("sessions"),
            portcullis_storage::sessions::DEFAULT_MAP_BYTES,
        ) {
            Ok(store) => {
                let restored = portcullis::persist::restore(&store, n_cores, config.node_id);
                let p = portcullis::persist::Persister::start(store).map_err(|e| e.to_string())?;
                (Some(p), restored)
            }
            // Sessions are served from memory either way; only surviving a restart is lost.
            Err(e) => {
                error!("sessions will not survive a restart: {e}");
                (None, portcullis::persist::Restored::default())
            }
        }
    } else {
        (None, portcullis::persist::Restored::default())
    };
    let alt_svc = match (&h3_tls, config.listen.mcp_tls) {
        (Some(_), Some(addr)) => Some(format!("h3=\":{}\"; ma=86400", addr.port())),
        _ => None,
    };
    let shared = Arc::new(Shared {
        h3: portcullis::h3srv::H3Stats::default(),
        alt_svc,
        persist,
        restored: std::sync::Mutex::new(restored),
        config,
        served: published,
        naming,
        draining: AtomicBool::new(false),
        ready_cores: std::sync::atomic::AtomicUsize::new(0),
        started: Instant::now(),
        identity,
        broker,
        audit,
        session_peers: std::sync::OnceLock::new(),
        revocations: std::sync::atomic::AtomicU64::new(0),
        replays: std::sync::Mutex::new(std::collections::HashMap::new()),
        followers: Default::default(),
        post_streams: std::sync::Mutex::default(),
    });

    let control_for_follower = control.clone();
    let core_list: admin::CoreList = Arc::new(OnceLock::new());
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    {
        let shared = shared.clone();
        let core_list = core_list.clone();
        std::thread::Builder::new()
            .name("portcullis-admin".into())
            .spawn(move || {
                admin::run(
                    admin_addr,
                    shared,
                    core_list,
                    n_cores,
                    control,
                    admin::Listeners {
                        sync: tls_material,
                        admin: admin_tls,
                    },
                    bound_tx,
                )
            })
            .map_err(|e| e.to_string())?;
    }
    bound_rx
        .recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("admin listener {admin_addr}: {e}"))?;
    if let Some(addr) = shared.config.listen.sync {
        println!(
            "Sync for data planes: https://{addr}{} (bearer token in {})",
            portcullis::sync::PATH,
            data.file(portcullis::sync::TOKEN_FILE).display()
        );
    }
    if let Some((follower, status)) = follower {
        println!(
            "Following control plane {} as node {node}",
            status.control_plane()
        );
        let stop = term.clone();
        let control = control_for_follower;
        std::thread::Builder::new()
            .name("portcullis-follow".into())
            .spawn(move || follower.run(control, status, stop))
            .map_err(|e| e.to_string())?;
    }
    let scheme = if shared.config.listen.admin_tls {
        "https"
    } else {
        "http"
    };
    println!("Admin and health: {scheme}://{admin_addr}/ (healthz, readyz, metrics, admin API under /admin/)");
    if shared.config.listen.admin_client_ca.is_some() {
        println!("Admin listener requires a client certificate (listen.admin_client_ca)");
    }
    if shared.config.console.enabled {
        println!("Console: {scheme}://{admin_addr}/console/ (log in with the admin token)");
    }
    println!(
        "Admin token {}: {}",
        if token_created { "generated in" } else { "in" },
        control::token_path(&data).display()
    );

    let (senders, receivers) = runtime::session_channels(n_cores);
    let _ = shared.session_peers.set(senders.clone());
    let (metrics_tx, metrics_rx) = std::sync::mpsc::channel();
    // HTTP/3: the cores' UDP sockets, bound here in core order (see `h3srv`), each served by a QUIC
    // thread that hands requests to its core.
    let mut h3_inboxes: Vec<Option<flume::Receiver<portcullis::h3srv::H3Request>>> =
        (0..n_cores).map(|_| None).collect();
    let mut h3_threads = Vec::new();
    if let (Some(h3_tls), Some(addr)) = (&h3_tls, shared.config.listen.mcp_tls) {
        let sockets = portcullis::h3srv::bind_sockets(addr, n_cores)
            .map_err(|e| format!("http/3 on udp {addr}: {e}"))?;
        for (index, socket) in sockets.into_iter().enumerate() {
            let (to_core, inbox) = flume::bounded(1024);
            h3_inboxes[index] = Some(inbox);
            h3_threads.push(
                portcullis::h3srv::spawn(portcullis::h3srv::H3Setup {
                    core: index,
                    cores: n_cores,
                    cpu: (n_cores <= available).then_some(index),
                    socket,
                    tls: h3_tls.clone(),
                    to_core,
                    shared: shared.clone(),
                })
                .map_err(|e| e.to_string())?,
            );
        }
        println!("MCP endpoint (HTTP/3): https://{addr}/mcp");
    }
    let mut threads = Vec::new();
    for ((index, inbox), h3) in receivers.into_iter().enumerate().zip(h3_inboxes) {
        let setup = CoreSetup {
            h3,
            index,
            cpu: (n_cores <= available).then_some(index),
            shared: shared.clone(),
            tls: tls.clone(),
            peers: senders.clone(),
            inbox,
            metrics_tx: metrics_tx.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("portcullis-core-{index}"))
            .spawn(move || runtime::run_core(setup))
            .map_err(|e| e.to_string())?;
        threads.push(h);
    }
    drop(metrics_tx);
    let mut list: Vec<_> = metrics_rx.iter().take(n_cores).collect();
    list.sort_by_key(|c| c.core);
    let drivers: Vec<&str> = list.iter().map(|c| c.driver).collect();
    let _ = core_list.set(list);
    info!("{n_cores} cores started drivers={drivers:?}");

    // Wait for a signal, or for a core to fail (its thread ends early, e.g. a port already in use).
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if term.load(Ordering::SeqCst) {
            info!("signal received: draining");
            break;
        }
        if threads.iter().any(|t| t.is_finished()) {
            shared.draining.store(true, Ordering::SeqCst);
            for t in threads {
                if let Ok(Err(e)) = t.join() {
                    return Err(format!("core failed: {e}"));
                }
            }
            return Err("a core stopped unexpectedly".into());
        }
    }
    shared.draining.store(true, Ordering::SeqCst);
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!("core ended with error: {e}"),
            Err(_) => error!("core panicked"),
        }
    }
    for t in h3_threads {
        let _ = t.join();
    }
    // Every served request's record is written; vouch for the tails with a signed checkpoint.
    shared.audit.close();
    if let Some(p) = &shared.persist {
        p.flush_blocking();
    }
    info!("stopped");
    Ok(())
}

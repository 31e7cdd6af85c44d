//! Streams the audit trail to the customer's SIEM as RFC 5424 syslog messages over TCP (optionally TLS),
//! framed by octet counting (RFC 6587 §3.4.1).
//!
//! The forwarder reads the segments as they grow (it does not sit on the request path) and remembers,
//! per core, the last record it handed to the connection in `DATA_DIR/audit/syslog.cursor`, so a
//! collector that is down, or a restart, resumes where it stopped. Syslog over TCP has no
//! acknowledgements (RFC 6587): records written into a connection the collector then drops are as lost
//! as with any syslog sender; the trail on disk keeps them, and `portcullis audit export` fills a gap.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use portcullis_pipeline::audit::Event;
use portcullis_storage::audit::{self, Kind};

use crate::config::SyslogConfig;

/// How often the forwarder looks for new records.
const POLL: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const CURSOR_FILE: &str = "syslog.cursor";

/// Start the forwarder thread for the trail under `root`.
pub fn start(root: PathBuf, cfg: SyslogConfig, hostname: String) -> Result<(), String> {
    let tls = match cfg.tls {
        true => Some(crate::https::client_config(
            cfg.tls_fingerprint.as_deref(),
            Some(
                cfg.tls_ca_file
                    .as_deref()
                    .unwrap_or(Path::new(crate::config::SYSTEM_CA_BUNDLE)),
            ),
            "audit.syslog",
        )?),
        false => None,
    };
    std::thread::Builder::new()
        .name("portcullis-syslog".into())
        .spawn(move || Forwarder::new(root, cfg, hostname, tls).run())
        .map(|_| ())
        .map_err(|e| format!("syslog thread: {e}"))
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Conn::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        }
    }
}

struct Forwarder {
    root: PathBuf,
    cfg: SyslogConfig,
    hostname: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Per core: the last sequence number the collector accepted.
    cursor: BTreeMap<u16, u64>,
    conn: Option<Conn>,
    backoff: Duration,
    failing: bool,
}

impl Forwarder {
    fn new(
        root: PathBuf,
        cfg: SyslogConfig,
        hostname: String,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Forwarder {
        let cursor = std::fs::read_to_string(root.join(CURSOR_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Forwarder {
            root,
            cfg,
            hostname,
            tls,
            cursor,
            conn: None,
            backoff: Duration::from_millis(100),
            failing: false,
        }
    }

    fn run(mut self) {
        loop {
            match self.pass() {
                Ok(()) => {
                    self.backoff = Duration::from_millis(100);
                    if self.failing {
                        self.failing = false;
                        crate::info!("audit syslog: delivering to {} again", self.cfg.address);
                    }
                    std::thread::sleep(POLL);
                }
                Err(e) => {
                    self.conn = None;
                    if !self.failing {
                        self.failing = true;
                        crate::warn!(
                            "audit syslog: {} unreachable ({e}); records wait on disk and are sent when it is back",
                            self.cfg.address
                        );
                    }
                    std::thread::sleep(self.backoff);
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Send every record past the cursors.
    fn pass(&mut self) -> Result<(), String> {
        let cores = audit::cores(&self.root).map_err(|e| e.to_string())?;
        for (core, dir) in cores {
            let done = self.cursor.get(&core).copied().unwrap_or(0);
            let segments = audit::segments(&dir).map_err(|e| e.to_string())?;
            // Skip segments that end before the cursor: the next one starts past it.
            let start = segments
                .iter()
                .rposition(|(first, _)| *first <= done + 1)
                .unwrap_or(0);
            for (_, path) in &segments[start..] {
                let (records, _, _) = audit::read_segment(path).map_err(|e| e.to_string())?;
                let mut sent = None;
                for r in records.iter().filter(|r| r.seq > done) {
                    if r.kind == Kind::Event {
                        if let Ok(e) = serde_json::from_slice::<Event>(&r.payload) {
                            let msg = self.message(&e);
                            self.connection()?.send(&msg).map_err(|e| e.to_string())?;
                        }
                    }
                    sent = Some(r.seq);
                }
                if let Some(seq) = sent {
                    self.cursor.insert(core, seq);
                    self.save();
                }
            }
        }
        Ok(())
    }

    fn save(&self) {
        let text = serde_json::to_string(&self.cursor).unwrap_or_default();
        let tmp = self.root.join(format!("{CURSOR_FILE}.tmp"));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, self.root.join(CURSOR_FILE));
        }
    }

    fn connection(&mut self) -> Result<&mut Conn, String> {
        if self.conn.is_none() {
            let addr = self
                .cfg
                .address
                .to_socket_addrs()
                .map_err(|e| e.to_string())?
                .next()
                .ok_or("no address")?;
            let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            tcp.set_write_timeout(Some(Duration::from_secs(10))).ok();
            let conn = match &self.tls {
                None => Conn::Plain(tcp),
                Some(tls) => {
                    let host = self
                        .cfg
                        .address
                        .rsplit_once(':')
                        .map_or(self.cfg.address.as_str(), |(h, _)| h)
                        .trim_matches(['[', ']'])
                        .to_owned();
                    let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
                    let c = ClientConnection::new(tls.clone(), name).map_err(|e| e.to_string())?;
                    Conn::Tls(Box::new(StreamOwned::new(c, tcp)))
                }
            };
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or_else(|| "no connection".to_owned())
    }

    /// One RFC 5424 message, octet-counted: facility 13 (log audit); severity informational for allowed,
    /// warning for denied, error for failed.
    fn message(&self, e: &Event) -> Vec<u8> {
        let severity = match e.decision.as_str() {
            "allowed" => 6,
            "denied" => 4,
            _ => 3,
        };
        let pri = 13 * 8 + severity;
        let body = if self.cfg.ocsf {
            e.to_ocsf().to_string()
        } else {
            serde_json::to_string(e).unwrap_or_default()
        };
        let msg = format!(
            "<{pri}>1 {} {} portcullis {} {} - {body}",
            rfc3339(e.at_ms),
            self.hostname,
            std::process::id(),
            e.method
                .as_deref()
                .map_or("-", |m| if m.is_empty() { "-" } else { "mcp" }),
        );
        format!("{} {msg}", msg.len()).into_bytes()
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the epoch (civil-from-days, proleptic Gregorian).
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_796_218_413_790), "2026-12-02T13:33:33.790Z");
    }

    #[test]
    fn messages_are_octet_counted_rfc5424() {
        let f = Forwarder::new(
            std::env::temp_dir().join("pc-syslog-none"),
            SyslogConfig {
                address: "127.0.0.1:1".into(),
                tls: false,
                tls_ca_file: None,
                tls_fingerprint: None,
                ocsf: false,
            },
            "gw1".into(),
            None,
        );
        let e = Event {
            decision: "denied".into(),
            method: Some("tools/call".into()),
            at_ms: 0,
            ..Event::default()
        };
        let m = String::from_utf8(f.message(&e)).unwrap();
        let (len, rest) = m.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rest.len());
        assert!(
            rest.starts_with("<108>1 1970-01-01T00:00:00.000Z gw1 portcullis "),
            "{rest}"
        );
        assert!(rest.contains(" mcp - {"), "{rest}");
    }
}

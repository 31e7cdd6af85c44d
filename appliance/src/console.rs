//! The operators' web console at `/console/` on the admin listener: static assets embedded in the binary
//! (no CDN; works offline), a login with the admin token that sets an HttpOnly, SameSite=Strict session
//! cookie, and the checks that let that cookie stand in for the token on the admin API.
//!
//! Cross-site request forgery is refused three ways: the cookie is SameSite=Strict (a browser does not
//! send it on another site's requests); every state-changing request made with it must carry the login's
//! CSRF token in `x-portcullis-csrf`, which only the console's own script can read; and such a request
//! whose `Origin` or `Sec-Fetch-Site` names another origin is refused whatever it carries. GETs are
//! reads (no admin GET changes anything), so the cookie alone authorizes them; that is what lets the
//! audit export be a plain download link. Pages are served under a strict CSP: scripts and styles only
//! from the console's own files, nothing inline, no framing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::control::ControlPlane;
use crate::http::{RequestHead, Response};

pub const COOKIE: &str = "portcullis_console";
pub const CSRF_HEADER: &str = "x-portcullis-csrf";
/// Who the audit trail names for what the console does.
pub const ACTOR: &str = "console";

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");
const ICON: &str = include_str!("../console/icon.svg");

struct Login {
    csrf: String,
    created: Instant,
    last: Instant,
}

/// How a request to the admin API proved itself.
#[derive(Debug, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer` with the admin token.
    Token,
    /// The console's cookie (and, for a change, its CSRF token).
    Console,
    /// Neither.
    None,
    /// The console's cookie on a change without its CSRF token, or from another origin.
    Forged(&'static str),
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the logins' tokens.
        f.debug_struct("Console")
            .field("logins", &self.lock().len())
            .finish()
    }
}

pub struct Console {
    logins: Mutex<HashMap<[u8; 32], Login>>,
    idle: Duration,
    max: Duration,
    logins_max: usize,
}

fn random_hex() -> Option<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn cookie_value(head: &RequestHead) -> Option<&str> {
    head.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Whether a browser says this request comes from another origin than the admin listener's.
fn cross_origin(head: &RequestHead) -> bool {
    if let Some(site) = head.header_str("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return true;
        }
    }
    match (head.header_str("origin"), head.header_str("host")) {
        (None, _) => false,
        (Some(origin), Some(host)) => {
            origin != format!("http://{host}") && origin != format!("https://{host}")
        }
        (Some(_), None) => true,
    }
}

fn page_headers(r: Response) -> Response {
    r.header("content-security-policy", CSP)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("x-frame-options", "DENY")
        .header("cross-origin-opener-policy", "same-origin")
}

fn json_answer(status: u16) -> Response {
    page_headers(Response::new(status))
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
}

impl Console {
    pub fn new(cfg: &crate::config::Console) -> Console {
        Console {
            logins: Mutex::new(HashMap::new()),
            idle: cfg.session_idle.0,
            max: cfg.session_max.0,
            logins_max: cfg.logins_max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Login>> {
        self.logins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The login a cookie names, if it is live (and mark it used); its CSRF token.
    fn login(&self, head: &RequestHead) -> Option<String> {
        let v = cookie_value(head)?;
        let key = *blake3::hash(v.as_bytes()).as_bytes();
        let mut map = self.lock();
        let now = Instant::now();
        let live = map
            .get(&key)
            .is_some_and(|l| now - l.last < self.idle && now - l.created < self.max);
        if !live {
            map.remove(&key);
            return None;
        }
        let l = map.get_mut(&key)?;
        l.last = now;
        Some(l.csrf.clone())
    }

    /// How an admin API request is authorized: the bearer token first, else the console's cookie.
    pub fn authenticate(&self, control: &ControlPlane, head: &RequestHead) -> Auth {
        if control.authorized(head.header_str("authorization")) {
            return Auth::Token;
        }
        let Some(csrf) = self.login(head) else {
            return Auth::None;
        };
        if matches!(head.method.as_str(), "GET" | "HEAD") {
            return Auth::Console;
        }
        if cross_origin(head) {
            return Auth::Forged("the request comes from another origin");
        }
        let sent = head.header_str(CSRF_HEADER).unwrap_or("");
        // Compared as digests: equality of blake3 hashes is constant-time.
        if blake3::hash(sent.as_bytes()) != blake3::hash(csrf.as_bytes()) {
            return Auth::Forged("the console's CSRF token is missing or wrong");
        }
        Auth::Console
    }

    /// Serve a `/console…` request.
    pub fn serve(
        &self,
        control: &ControlPlane,
        head: &RequestHead,
        path: &str,
        body: &[u8],
    ) -> Vec<u8> {
        let asset = |ct: &str, text: &str, cache: &str| {
            page_headers(Response::new(200))
                .header("content-type", ct.to_owned())
                .header("cache-control", cache.to_owned())
                .full(text.as_bytes(), false)
        };
        match (head.method.as_str(), path) {
            ("GET", "/console") => Response::new(308)
                .header("location", "/console/")
                .full(b"", false),
            ("GET", "/console/") => asset("text/html; charset=utf-8", INDEX, "no-store"),
            ("GET", "/console/console.js") => {
                asset("text/javascript; charset=utf-8", SCRIPT, "no-cache")
            }
            ("GET", "/console/console.css") => asset("text/css; charset=utf-8", STYLE, "no-cache"),
            ("GET", "/console/icon.svg") => asset("image/svg+xml", ICON, "no-cache"),
            ("GET", "/console/session") => match self.login(head) {
                Some(csrf) => self.answer(200, &json!({"csrf": csrf, "actor": ACTOR}), None),
                None => self.answer(401, &unauthenticated(), None),
            },
            ("POST", "/console/login") => self.log_in(control, head, body),
            ("POST", "/console/logout") => {
                if self.authenticate(control, head) != Auth::Console {
                    return self.answer(403, &forged("log out from the console itself"), None);
                }
                if let Some(v) = cookie_value(head) {
                    self.lock().remove(blake3::hash(v.as_bytes()).as_bytes());
                }
                self.answer(
                    200,
                    &json!({"logged_out": true}),
                    Some(format!(
                        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
                    )),
                )
            }
            (_, p)
                if p.starts_with("/console/") && head.method != "GET" && head.method != "POST" =>
            {
                Response::new(405)
                    .header("allow", "GET, POST")
                    .full(b"", false)
            }
            _ => page_headers(Response::new(404))
                .header("content-type", "text/plain")
                .full(b"not found\n", false),
        }
    }

    fn answer(&self, status: u16, v: &serde_json::Value, cookie: Option<String>) -> Vec<u8> {
        let mut r = json_answer(status);
        if let Some(c) = cookie {
            r = r.header("set-cookie", c);
        }
        r.full(v.to_string().as_bytes(), false)
    }

    fn log_in(&self, control: &ControlPlane, head: &RequestHead, body: &[u8]) -> Vec<u8> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct LoginRequest {
            token: String,
        }
        // JSON only: an HTML form on another site cannot send it without a CORS preflight, which
        // this listener never grants.
        let json_body = head.header_str("content-type").is_some_and(|c| {
            c.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
        if !json_body || cross_origin(head) {
            return self.answer(403, &forged("log in from the console's own page"), None);
        }
        let Ok(req) = serde_json::from_slice::<LoginRequest>(body) else {
            return self.answer(
                400,
                &json!({"error": {"code": "bad_request", "message": "body: {\"token\": \"<the admin token>\"}"}}),
                None,
            );
        };
        if req.token.is_empty()
            || req.token.len() > 512
            || !control.authorized(Some(&format!("Bearer {}", req.token.trim())))
        {
            crate::warn!("console login refused: wrong admin token");
            return self.answer(401, &unauthenticated(), None);
        }
        let (Some(cookie), Some(csrf)) = (random_hex(), random_hex()) else {
            return self.answer(
                503,
                &json!({"error": {"code": "overloaded", "message": "no randomness for a login"}}),
                None,
            );
        };
        let now = Instant::now();
        {
            let mut map = self.lock();
            map.retain(|_, l| now - l.last < self.idle && now - l.created < self.max);
            while map.len() >= self.logins_max {
                let Some(oldest) = map.iter().min_by_key(|(_, l)| l.created).map(|(k, _)| *k)
                else {
                    break;
                };
                map.remove(&oldest);
            }
            map.insert(
                *blake3::hash(cookie.as_bytes()).as_bytes(),
                Login {
                    csrf: csrf.clone(),
                    created: now,
                    last: now,
                },
            );
        }
        crate::info!("console login");
        self.answer(
            200,
            &json!({"csrf": csrf, "actor": ACTOR, "expires_in_s": self.max.as_secs()}),
            Some(format!(
                "{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                self.max.as_secs()
            )),
        )
    }
}

fn unauthenticated() -> serde_json::Value {
    json!({"error": {"code": "unauthenticated", "message": "log in with the admin token (DATA_DIR/admin.token)"}})
}

pub fn forged(message: &str) -> serde_json::Value {
    json!({"error": {"code": "csrf_failed", "message": message}})
}

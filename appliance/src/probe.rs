//! Lists an MCP server's tools as an agent would, in whichever revision it speaks: for pinning at approval
//! and for the drift watcher that compares live definitions with the pinned ones.

use portcullis_pipeline::control::{PinnedTool, TOOLS_PER_CAPABILITY_MAX};
use portcullis_pipeline::jsonrpc::{self, Id, Message, ParseLimits, Request};
use simd_json::prelude::*;
use simd_json::OwnedValue as Value;

use portcullis_pipeline::credential::{Binding, Inject, Secret, SecretRef};

use crate::broker::{Broker, Want};
use crate::config::UpstreamUrl;
use crate::gateway::{
    discover_request, initialize_request, initialized_notification, legacy_headers, modern_headers,
    modern_meta, offers_modern, params_with_meta, read_response,
};
use crate::upstream::Pool;

/// Pages of `tools/list` followed before giving up on an upstream whose cursor never ends.
const PAGES_MAX: usize = 1000;

#[derive(Clone, Copy, Debug)]
pub struct ProbeLimits {
    pub parse: ParseLimits,
    pub event_bytes_max: usize,
}

impl ProbeLimits {
    pub fn from_config(l: &crate::config::Limits) -> ProbeLimits {
        ProbeLimits {
            parse: ParseLimits {
                json_depth_max: l.json_depth_max,
            },
            event_bytes_max: l.upstream_body_bytes_max,
        }
    }
}

/// One capability's upstream, reached through a pool slot of the caller's.
#[derive(Debug)]
pub struct Target<'a> {
    pub pool: &'a Pool,
    pub slot: usize,
    pub capability: &'a str,
    pub url: &'a UpstreamUrl,
    pub limits: ProbeLimits,
    /// The capability's `service` credential, presented on every request of the listing.
    pub credential: Option<(Inject, Secret)>,
}

/// The `service` credential a capability binds, resolved for listing its tools (approval, drift checks).
/// Listing is the gateway's own act, not an agent's, so only the gateway's own credential may be used;
/// a capability binding only per-agent or delegated credentials is listed without one.
pub async fn service_credential(
    broker: &Broker,
    binding: Option<&Binding>,
) -> Result<Option<(Inject, Secret)>, String> {
    let Some(b) = binding else {
        return Ok(None);
    };
    let Some(r) = &b.service else {
        return Ok(None);
    };
    let r = SecretRef::parse(r).map_err(|e| format!("credential.service: {e}"))?;
    let got = broker.resolve(Want::Secret(r)).await?;
    Ok(Some((b.injection(None)?, got.secret)))
}

impl Target<'_> {
    /// One request to the upstream, with the service credential on it when there is one.
    async fn send(
        &self,
        method: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<crate::upstream::UpstreamResponse, crate::upstream::UpstreamError> {
        self.pool
            .send_with_credential(
                self.slot,
                self.url,
                method,
                headers,
                body,
                self.credential.as_ref().map(|(i, s)| (i, s)),
            )
            .await
    }

    async fn post(
        &self,
        headers: &[(&str, String)],
        req: Request,
    ) -> Result<(Option<String>, jsonrpc::Response), String> {
        let method = req.method.clone();
        let body = jsonrpc::encode(&Message::Request(req));
        let mut resp = self
            .send("POST", headers, &body)
            .await
            .map_err(|e| format!("{method}: {}", e.reason().message()))?;
        let status = resp.status;
        let session = resp.header("mcp-session-id").map(str::to_owned);
        if status != 200 {
            let _ = resp.read_all(self.pool).await;
            return Err(format!("{method}: HTTP {status}"));
        }
        let r = read_response(
            self.pool,
            &mut resp,
            &self.limits.parse,
            self.limits.event_bytes_max,
            None,
        )
        .await
        .map_err(|e| format!("{method}: {}", e.message()))?;
        Ok((session, r))
    }

    async fn speaks_modern(&self) -> bool {
        match self
            .post(&modern_headers("server/discover", None), discover_request())
            .await
        {
            Ok((_, r)) => r.outcome.ok().is_some_and(|v| offers_modern(&v)),
            Err(_) => false,
        }
    }

    /// Open a 2025-11-25 session; returns its id (if the server gave one).
    async fn initialize(&self) -> Result<Option<String>, String> {
        let (session, r) = self
            .post(&legacy_headers(None), initialize_request(None))
            .await?;
        r.outcome
            .map_err(|e| format!("initialize: error {}: {}", e.code, e.message))?;
        let note = initialized_notification();
        if let Ok(mut r) = self
            .send("POST", &legacy_headers(session.as_deref()), &note)
            .await
        {
            let _ = r.read_all(self.pool).await;
        }
        Ok(session)
    }

    async fn close(&self, session: &str) {
        if let Ok(mut r) = self
            .send("DELETE", &legacy_headers(Some(session)), b"")
            .await
        {
            let _ = r.read_all(self.pool).await;
        }
    }

    /// Every tool the upstream lists, in its order, read into pinnable definitions.
    pub async fn list_tools(&self) -> Result<Vec<PinnedTool>, String> {
        let modern = self.speaks_modern().await;
        let session = if modern {
            None
        } else {
            self.initialize().await?
        };
        let out = self.pages(modern, session.as_deref()).await;
        if let Some(s) = &session {
            self.close(s).await;
        }
        out
    }

    async fn pages(&self, modern: bool, session: Option<&str>) -> Result<Vec<PinnedTool>, String> {
        let mut tools = Vec::new();
        let mut cursor: Option<Value> = None;
        for page in 0..PAGES_MAX {
            let mut params = simd_json::owned::Object::new();
            if let Some(c) = cursor.take() {
                params.insert("cursor".into(), c);
            }
            let mut params = Value::from(params);
            let headers = if modern {
                params = params_with_meta(Some(params), modern_meta(&Value::object(), None));
                modern_headers("tools/list", None)
            } else {
                legacy_headers(session)
            };
            let req = Request {
                id: Id::Number(page as i64 + 1),
                method: "tools/list".into(),
                params: Some(params),
            };
            let (_, r) = self.post(&headers, req).await?;
            let result = r
                .outcome
                .map_err(|e| format!("tools/list: error {}: {}", e.code, e.message))?;
            let listed = result
                .get("tools")
                .and_then(|t| t.as_array())
                .ok_or("tools/list: the result has no `tools` array")?;
            for t in listed {
                let json = simd_json::to_vec(t).map_err(|e| e.to_string())?;
                let v: serde_json::Value =
                    serde_json::from_slice(&json).map_err(|e| e.to_string())?;
                tools.push(PinnedTool::from_listed(self.capability, &v)?);
                if tools.len() > TOOLS_PER_CAPABILITY_MAX {
                    return Err(format!("lists more than {TOOLS_PER_CAPABILITY_MAX} tools"));
                }
            }
            cursor = result.get("nextCursor").filter(|c| c.is_str()).cloned();
            if cursor.is_none() {
                let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
                names.sort_unstable();
                if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                    return Err(format!("lists two tools named `{}`", w[0]));
                }
                return Ok(tools);
            }
        }
        Err(format!("tools/list: still paging after {PAGES_MAX} pages"))
    }
}

/// Capabilities listed at once by an approval or a pin check: enough that a slow upstream does not hold up
/// the rest, few enough not to storm a shared backend.
pub const CONCURRENCY: usize = 16;

/// Run `futures` on this thread, at most `limit` at a time, and return their outputs in order.
pub async fn join_bounded<F: std::future::Future>(futures: Vec<F>, limit: usize) -> Vec<F::Output> {
    use std::task::Poll;
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut running = 0;
        for (slot, done) in pending.iter_mut().zip(out.iter_mut()) {
            if running >= limit {
                break;
            }
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *done = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => running += 1,
                }
            }
        }
        if running == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod join_tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::join_bounded;

    #[test]
    fn runs_at_most_limit_at_once_and_keeps_order() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let (now, peak) = (Cell::new(0), Cell::new(0));
        let out = rt.block_on(async {
            let futs = (0..10u64)
                .map(|i| {
                    let (now, peak) = (&now, &peak);
                    async move {
                        now.set(now.get() + 1);
                        peak.set(peak.get().max(now.get()));
                        monoio::time::sleep(Duration::from_millis(20 - 2 * i)).await;
                        now.set(now.get() - 1);
                        i
                    }
                })
                .collect();
            join_bounded(futs, 3).await
        });
        assert_eq!(out, (0..10).collect::<Vec<_>>());
        assert_eq!(peak.get(), 3);
    }
}

//! The drift watcher: lists every served capability's tools and withholds each pinned tool whose upstream
//! definition no longer matches the approved one (calls get `tool_definition_changed`), serving it again
//! when the upstream returns to the approved definition.
//!
//! It runs on the admin thread: at each activation, when an upstream says its tool list changed, and every
//! `pinning.recheck_interval`. An activation's snapshot is checked *before* it is published (each
//! upstream given `pinning.activation_check_timeout`), so a rollback or a restart never serves a pin for
//! the one round trip it would take to notice the change. An upstream that cannot be reached keeps its
//! tools' last verdicts (a fresh snapshot's: served); calls to it fail on their own with
//! `upstream_unavailable`.

use std::sync::Arc;
use std::time::Duration;

use crate::gateway::Shared;
use crate::probe::{join_bounded, ProbeLimits, Target, CONCURRENCY};
use crate::served::Served;
use crate::upstream::{ClientLimits, Pool};

pub async fn run(shared: Arc<Shared>, client: ClientLimits, probe: ProbeLimits) {
    let pool = Pool::new(client);
    let doorbell = shared.served.recheck_requests();
    let staged = shared.served.staged();
    let interval = shared.config.pinning.recheck_interval.0;
    let first = shared.config.pinning.activation_check_timeout.0;
    loop {
        // A snapshot to activate, a doorbell or the interval, whichever first.
        let next = monoio::select! {
            s = staged.recv_async() => s.ok(),
            _ = monoio::time::timeout(interval, doorbell.recv_async()) => None,
        };
        shared.served.collect_retired();
        match next {
            Some(s) => {
                check(&pool, &shared, &s.served, probe, Some(first)).await;
                shared.served.publish_checked(s);
            }
            None => {
                let served = shared.served.current();
                check(&pool, &shared, &served, probe, None).await;
            }
        }
    }
}

/// Compare one snapshot's pins with what its upstreams list now, giving each upstream at most `bound`.
async fn check(
    pool: &Pool,
    shared: &Shared,
    served: &Served,
    probe: ProbeLimits,
    bound: Option<Duration>,
) {
    let Some(pins) = &served.pins else {
        return;
    };
    if pins.is_empty() {
        return;
    }
    let slots = shared.served.slots_from(0);
    let checks = served
        .upstreams
        .iter()
        .filter_map(|u| slots.get(u.slot).map(|slot| (u, slot)))
        .map(|(u, slot)| async move {
            let credential =
                match crate::probe::service_credential(&shared.broker, u.credential.as_deref())
                    .await
                {
                    Ok(c) => c,
                    Err(e) => return (u, Err(format!("service credential: {e}"))),
                };
            let target = Target {
                pool,
                slot: u.slot,
                capability: &u.name,
                url: &slot.url,
                limits: probe,
                credential,
            };
            let listed = match bound {
                Some(d) => monoio::time::timeout(d, target.list_tools())
                    .await
                    .unwrap_or_else(|_| Err(format!("no tool list within {d:?}"))),
                None => target.list_tools().await,
            };
            (u, listed)
        })
        .collect();
    for (u, listed) in join_bounded(checks, CONCURRENCY).await {
        let live = match listed {
            Ok(l) => l,
            Err(e) => {
                crate::warn!("pin check capability={} skipped: {e}", u.name);
                continue;
            }
        };
        for (i, pinned) in pins.of_capability(&u.name) {
            let now = live.iter().find(|t| t.name == pinned.name);
            let drifted = now != Some(pinned);
            if pins.set_drifted(i, drifted) {
                if drifted {
                    crate::warn!(
                        "snapshot={} tool={}__{} {} upstream: withheld until a snapshot approves the change",
                        served.label,
                        u.name,
                        pinned.name,
                        if now.is_some() { "changed" } else { "removed" }
                    );
                } else {
                    crate::info!(
                        "snapshot={} tool={}__{} matches its approved definition again: served",
                        served.label,
                        u.name,
                        pinned.name
                    );
                }
            }
        }
    }
}

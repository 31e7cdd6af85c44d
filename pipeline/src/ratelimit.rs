//! Rate limits and quotas of agents, as their registration states them, and the arithmetic that
//! enforces them.
//!
//! A limit reads `[SCOPE=]COUNT/PERIOD`: `600/1m` (every request of the agent), `alpha=100/1h` (calls to
//! capability `alpha`'s tools, prompts and resources), `alpha__transfer=10/1d` (calls of one tool). A
//! quota is a limit with a long period. Each is a GCRA (generic cell rate algorithm): one integer, the
//! theoretical arrival time, per agent and limit; COUNT requests may come at once, then one per
//! PERIOD/COUNT. The caller keeps the integer (the appliance in an atomic, updated by compare-and-swap)
//! and passes the clock in.

use std::fmt;

/// Longest period a limit may have.
pub const PERIOD_MAX_NS: u64 = 31 * 86_400 * 1_000_000_000;
/// Most requests a limit may allow per period.
pub const COUNT_MAX: u64 = 1_000_000_000;
/// Limits one agent may carry.
pub const LIMITS_PER_AGENT_MAX: usize = 32;

/// What a limit counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every request the agent makes on `/mcp`.
    Agent,
    /// Calls to one capability's tools, prompts and resources.
    Capability(String),
    /// Calls of one tool, by its gateway name `capability__tool`.
    Tool(String),
}

/// One limit: `count` requests per `period_ns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub scope: Scope,
    pub count: u64,
    pub period_ns: u64,
}

impl Limit {
    /// Parse `[SCOPE=]COUNT/PERIOD` (PERIOD: `s`, `m`, `h`, `d`, optionally with a number: `10s`).
    pub fn parse(spec: &str) -> Result<Limit, String> {
        let (scope, rate) = match spec.split_once('=') {
            Some((s, r)) => (Some(s.trim()), r.trim()),
            None => (None, spec.trim()),
        };
        let scope = match scope {
            None => Scope::Agent,
            Some("") => return Err("the scope before `=` is empty".into()),
            Some(s)
                if !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                return Err(format!("`{s}` is not a capability or tool name"))
            }
            Some(s) if s.contains("__") => Scope::Tool(s.to_owned()),
            Some(s) => Scope::Capability(s.to_owned()),
        };
        let (count, period) = rate
            .split_once('/')
            .ok_or_else(|| format!("`{rate}`: write COUNT/PERIOD, e.g. 600/1m"))?;
        let count: u64 = count
            .trim()
            .parse()
            .ok()
            .filter(|c| (1..=COUNT_MAX).contains(c))
            .ok_or_else(|| format!("`{count}`: the count must be 1 to {COUNT_MAX}"))?;
        let period = period.trim();
        let split = period
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(period.len());
        let (n, unit) = period.split_at(split);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| format!("`{period}`: bad period"))?
        };
        let unit_ns: u64 = match unit {
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(format!("`{period}`: the period's unit is s, m, h or d")),
        };
        let period_ns = n
            .checked_mul(unit_ns)
            .filter(|p| (1..=PERIOD_MAX_NS).contains(p))
            .ok_or_else(|| format!("`{period}`: the period must be 1s to 31d"))?;
        Ok(Limit {
            scope,
            count,
            period_ns,
        })
    }

    /// Whether this limit counts a request: `None` for a request that is no call (lists, session
    /// traffic), else the called capability and, for `tools/call`, the tool's upstream name.
    pub fn applies(&self, call: Option<(&str, Option<&str>)>) -> bool {
        match (&self.scope, call) {
            (Scope::Agent, _) => false,
            (Scope::Capability(c), Some((cap, _))) => c == cap,
            (Scope::Tool(t), Some((cap, Some(tool)))) => {
                t.strip_prefix(cap).and_then(|rest| rest.strip_prefix("__")) == Some(tool)
            }
            _ => false,
        }
    }

    /// Nanoseconds between requests at the sustained rate (at least 1).
    fn interval(&self) -> u64 {
        (self.period_ns / self.count).max(1)
    }

    /// Admit one request at `now` (ns on the caller's monotonic clock) given the stored theoretical
    /// arrival time `tat`: the new `tat` to store, or how long until a request would be admitted.
    pub fn admit(&self, tat: u64, now: u64) -> Result<u64, u64> {
        let next = tat.max(now).saturating_add(self.interval());
        // A full bucket is `count` requests: `next` may run at most one period ahead of now.
        let ahead = next - now;
        if ahead <= self.period_ns {
            Ok(next)
        } else {
            Err(ahead - self.period_ns)
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Scope::Agent => {}
            Scope::Capability(s) | Scope::Tool(s) => write!(f, "{s}=")?,
        }
        let p = self.period_ns;
        let (n, unit) = [
            (86_400_000_000_000, "d"),
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
        ]
        .into_iter()
        .find(|(u, _)| p.is_multiple_of(*u))
        .map_or((p / 1_000_000_000, "s"), |(u, s)| (p / u, s));
        write!(f, "{}/{n}{unit}", self.count)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn specs_parse_and_print_back() {
        for (spec, scope, count, period) in [
            ("600/1m", Scope::Agent, 600, 60 * S),
            ("5/s", Scope::Agent, 5, S),
            (
                "alpha=100/1h",
                Scope::Capability("alpha".into()),
                100,
                3600 * S,
            ),
            (
                "alpha__add=10/1d",
                Scope::Tool("alpha__add".into()),
                10,
                86_400 * S,
            ),
            ("3/90s", Scope::Agent, 3, 90 * S),
        ] {
            let l = Limit::parse(spec).unwrap();
            assert_eq!(
                (l.scope.clone(), l.count, l.period_ns),
                (scope, count, period),
                "{spec}"
            );
            assert_eq!(Limit::parse(&l.to_string()).unwrap(), l);
        }
        assert_eq!(Limit::parse("5/s").unwrap().to_string(), "5/1s");
        for bad in [
            "", "10", "0/1m", "10/", "10/1w", "10/0s", "10/32d", "=5/s", "a b=5/s", "x/1m",
            "5/1m/2",
        ] {
            assert!(Limit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_match_calls() {
        let cap = Limit::parse("alpha=1/s").unwrap();
        let tool = Limit::parse("alpha__add=1/s").unwrap();
        assert!(cap.applies(Some(("alpha", Some("add")))));
        assert!(cap.applies(Some(("alpha", None))));
        assert!(!cap.applies(Some(("beta", Some("add")))));
        assert!(!cap.applies(None));
        assert!(tool.applies(Some(("alpha", Some("add")))));
        assert!(!tool.applies(Some(("alpha", Some("echo")))));
        assert!(!tool.applies(Some(("alpha", None))));
        assert!(!tool.applies(Some(("alph", Some("a__add")))));
        assert!(!Limit::parse("9/s")
            .unwrap()
            .applies(Some(("alpha", Some("add")))));
    }

    #[test]
    fn a_burst_of_count_then_the_sustained_rate() {
        let l = Limit::parse("3/1s").unwrap();
        let t0 = 1_000 * S;
        let mut tat = 0;
        for _ in 0..3 {
            tat = l.admit(tat, t0).unwrap();
        }
        let wait = l.admit(tat, t0).unwrap_err();
        // One interval (a third of a second), less the nanosecond the integer division dropped.
        assert!((S / 3 - 2..=S / 3).contains(&wait), "{wait}");
        // After one interval exactly one more fits.
        tat = l.admit(tat, t0 + wait).unwrap();
        assert!(l.admit(tat, t0 + wait).is_err());
        // After a whole period idle the full burst is back, and no more.
        let later = t0 + 10 * S;
        let mut n = 0;
        while let Ok(t) = l.admit(tat, later) {
            tat = t;
            n += 1;
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn over_a_long_run_the_rate_holds() {
        let l = Limit::parse("10/1s").unwrap();
        let (mut tat, mut admitted) = (0, 0u64);
        // A request every millisecond for 10 s: 10 at once, then 10 per second.
        for ms in 0..10_000u64 {
            if let Ok(t) = l.admit(tat, S + ms * 1_000_000) {
                tat = t;
                admitted += 1;
            }
        }
        assert!((100..=110).contains(&admitted), "{admitted}");
    }
}

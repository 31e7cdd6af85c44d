//! The MCP protocol revisions the gateway speaks, and how a request names its revision.

/// A protocol revision the gateway speaks on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Revision {
    /// Session-based: `initialize`, `Mcp-Session-Id`.
    V2025_11_25,
    /// Stateless: `_meta` on every request, `server/discover`, routing headers.
    V2026_07_28,
}

impl Revision {
    pub const ALL: [Revision; 2] = [Revision::V2025_11_25, Revision::V2026_07_28];
    pub const LATEST: Revision = Revision::V2026_07_28;

    pub const fn as_str(self) -> &'static str {
        match self {
            Revision::V2025_11_25 => "2025-11-25",
            Revision::V2026_07_28 => "2026-07-28",
        }
    }

    pub fn parse(s: &str) -> Option<Revision> {
        match s {
            "2025-11-25" => Some(Revision::V2025_11_25),
            "2026-07-28" => Some(Revision::V2026_07_28),
            _ => None,
        }
    }

    /// Session-era revisions older than 2025-11-25 that clients may still offer in `initialize`; the
    /// gateway answers them with its own session-era revision, as the lifecycle rules allow.
    pub fn is_legacy_session_revision(s: &str) -> bool {
        matches!(s, "2024-11-05" | "2025-03-26" | "2025-06-18")
    }

    pub const fn is_stateless(self) -> bool {
        matches!(self, Revision::V2026_07_28)
    }
}

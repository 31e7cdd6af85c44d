//! Snapshot blobs as rkyv archives: the body the registry seals, hashes and signs, which the data plane
//! then validates and reads in place in the LMDB memory map instead of parsing JSON into a copy.
//!
//! The archive format is fixed by the workspace's rkyv features (little-endian, unaligned, 32-bit
//! offsets), so a dependency enabling another rkyv default cannot change what is on disk, and an
//! unaligned archive can be read wherever LMDB happens to place the value. Bodies written before
//! archives (canonical JSON) are still read. Validation (bytecheck) runs on every access, after the
//! blob's hash and signature have been checked: a body is never trusted on its signature alone.

use rkyv::rancor::{Fallible, Source};
use rkyv::ser::Writer;
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::with::{ArchiveWith, DeserializeWith, SerializeWith};
use rkyv::{Place, SerializeUnsized};

use crate::control::{ArchivedSnapshot, Snapshot, SnapshotContent, SnapshotHeader};

/// What an archived body starts with; a JSON body starts with `{`.
pub const MAGIC: &[u8; 8] = b"PCARCH01";

/// Why a body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveError(pub String);

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArchiveError {}

/// The body to seal: `MAGIC` then the archive. Equal snapshots give equal bytes.
pub fn encode(snapshot: &Snapshot) -> Result<Vec<u8>, ArchiveError> {
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(snapshot)
        .map_err(|e| ArchiveError(format!("archiving the snapshot: {e}")))?;
    let mut body = Vec::with_capacity(MAGIC.len() + archive.len());
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&archive);
    Ok(body)
}

/// Whether `body` is an archive (else it is a JSON body from before archives).
pub fn is_archive(body: &[u8]) -> bool {
    body.starts_with(MAGIC)
}

/// Validate an archived body and view it where it lies, without copying.
pub fn access(body: &[u8]) -> Result<&ArchivedSnapshot, ArchiveError> {
    let archive = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ArchiveError("not a snapshot archive".into()))?;
    rkyv::access::<ArchivedSnapshot, rkyv::rancor::Error>(archive)
        .map_err(|e| ArchiveError(format!("the archive does not validate: {e}")))
}

/// Build an owned snapshot out of a validated archive.
pub fn to_owned(archived: &ArchivedSnapshot) -> Result<Snapshot, ArchiveError> {
    rkyv::deserialize::<Snapshot, rkyv::rancor::Error>(archived)
        .map_err(|e| ArchiveError(format!("decoding the archive: {e}")))
}

/// The header of a validated archive.
pub fn header(archived: &ArchivedSnapshot) -> Result<SnapshotHeader, ArchiveError> {
    rkyv::deserialize::<SnapshotHeader, rkyv::rancor::Error>(&archived.header)
        .map_err(|e| ArchiveError(format!("decoding the archive's header: {e}")))
}

/// The content of a validated archive, for compiling it: the schemas' text is parsed here, once.
pub fn content(archived: &ArchivedSnapshot) -> Result<SnapshotContent, ArchiveError> {
    rkyv::deserialize::<SnapshotContent, rkyv::rancor::Error>(&archived.content)
        .map_err(|e| ArchiveError(format!("decoding the archive: {e}")))
}

/// Decode a body of either kind into an owned snapshot.
pub fn decode(body: &[u8]) -> Result<Snapshot, ArchiveError> {
    if is_archive(body) {
        to_owned(access(body)?)
    } else {
        serde_json::from_slice(body).map_err(|e| ArchiveError(format!("JSON snapshot body: {e}")))
    }
}

/// Archives a JSON value (a pinned schema) as its compact text: the validators and the listed tool
/// objects need it as JSON again, and text keeps the archive simple and its bytes canonical (keys are
/// sorted, as `serde_json::Value` keeps them).
#[derive(Debug)]
pub struct JsonText;

impl ArchiveWith<serde_json::Value> for JsonText {
    type Archived = ArchivedString;
    type Resolver = StringResolver;

    fn resolve_with(
        field: &serde_json::Value,
        resolver: StringResolver,
        out: Place<ArchivedString>,
    ) {
        // The resolver only recorded where the text went; its length must be given again.
        ArchivedString::resolve_from_str(&field.to_string(), resolver, out);
    }
}

impl<S> SerializeWith<serde_json::Value, S> for JsonText
where
    S: Fallible + Writer + ?Sized,
    S::Error: Source,
    str: SerializeUnsized<S>,
{
    fn serialize_with(
        field: &serde_json::Value,
        serializer: &mut S,
    ) -> Result<StringResolver, S::Error> {
        ArchivedString::serialize_from_str(&field.to_string(), serializer)
    }
}

impl<D> DeserializeWith<ArchivedString, serde_json::Value, D> for JsonText
where
    D: Fallible + ?Sized,
    D::Error: Source,
{
    fn deserialize_with(field: &ArchivedString, _: &mut D) -> Result<serde_json::Value, D::Error> {
        serde_json::from_str(field.as_str()).map_err(D::Error::new)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::control::*;
    use crate::credential::{Binding, Exchange, Inject};
    use crate::openapi::{CallPlan, Location, ParamPlan};

    fn meta() -> RecordMeta {
        RecordMeta::first("alice", 1)
    }

    /// A snapshot using every kind of field the archive carries.
    fn sample() -> Snapshot {
        let capability = Capability {
            name: "crm".into(),
            kind: CapabilityKind::Openapi,
            owner: "sales".into(),
            risk: Risk::High,
            environment: "prod".into(),
            endpoint: "https://crm.internal/api".into(),
            tags: vec!["pii".into(), "ünïcode".into()],
            description: "CRM".into(),
            status: Status::Active,
            output_schema: OutputSchemaMode::Enforce,
            openapi: Some(OpenApiSource {
                document: "ab".repeat(32),
                select: vec!["GET /users/{id}".into()],
                redirects: 2,
            }),
            credential: Some(Binding {
                service: Some("embedded/crm#token".into()),
                agent_scoped: None,
                delegated: Some(Exchange {
                    token_endpoint: "https://idp/token".into(),
                    client_id: "gw".into(),
                    client_secret: None,
                    audience: Some("crm".into()),
                    resource: None,
                    scope: None,
                }),
                inject: Some(Inject::Header {
                    name: "X-Key".into(),
                    prefix: "Key ".into(),
                }),
            }),
            audit_arguments: Some(ArgumentAudit {
                redact: vec!["ssn".into()],
            }),
        };
        let agent = Agent {
            name: "bot".into(),
            owner: "ops".into(),
            surface: "service".into(),
            environment: "prod".into(),
            credential_mode: CredentialMode::AgentScoped,
            groups: vec!["g".into()],
            status: Status::Disabled,
            limits: vec!["600/1m".into()],
            sessions: Some(AgentSessions {
                idle: Some("30m".into()),
                duration_max: None,
                max: Some(3),
                streams_max: None,
            }),
        };
        let tool = PinnedTool {
            capability: "crm".into(),
            name: "get_user".into(),
            title: Some("Get a user".into()),
            description: "Reads one \"user\"\n".into(),
            input_schema: json!({"type": "object", "properties": {"id": {"type": "integer", "minimum": 1.5}}, "required": ["id"]}),
            output_schema: Some(json!({"type": "object", "x": [null, true, -3, "é"]})),
            annotations: Some(json!({"readOnlyHint": true})),
            call: Some(CallPlan {
                method: "GET".into(),
                path: "/users/{id}".into(),
                params: vec![ParamPlan {
                    name: "id".into(),
                    argument: "id".into(),
                    location: Location::Path,
                    required: true,
                    explode: true,
                }],
                body: None,
                body_required: false,
                structured: Some(crate::openapi::call::Structured::Object),
                security: Some(Inject::Bearer),
            }),
        };
        Snapshot {
            header: SnapshotHeader {
                version: 7,
                approved_by: "carol".into(),
                approved_at: 1_700_000_000_000,
                note: "n".into(),
                parent: Some(6),
                content_hash: "00".repeat(32),
                policy_ids: vec!["p".into()],
                capability_versions: vec!["crm@1".into()],
            },
            content: SnapshotContent {
                capabilities: vec![Record {
                    spec: capability,
                    meta: meta(),
                }],
                agents: vec![Record {
                    spec: agent,
                    meta: meta(),
                }],
                policies: vec![Record {
                    spec: Policy {
                        id: "p".into(),
                        description: String::new(),
                        text: "permit(principal, action, resource);".into(),
                    },
                    meta: meta(),
                }],
                tools: vec![tool],
                cedar_schema: "entity Agent;".into(),
            },
        }
    }

    #[test]
    fn an_archive_reads_in_place_and_decodes_to_what_was_encoded() {
        let s = sample();
        let body = encode(&s).unwrap();
        assert!(is_archive(&body));
        assert_eq!(encode(&s).unwrap(), body, "equal snapshots, equal bytes");
        let a = access(&body).unwrap();
        assert_eq!(a.header.version.to_native(), 7);
        assert_eq!(a.content.tools[0].name.as_str(), "get_user");
        let text = a.content.tools[0].input_schema.as_str();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(text).unwrap(),
            s.content.tools[0].input_schema
        );
        assert_eq!(header(a).unwrap(), s.header);
        assert_eq!(content(a).unwrap(), s.content);
        assert_eq!(decode(&body).unwrap(), s);
        // Before archives: JSON.
        assert_eq!(decode(&s.canonical_bytes()).unwrap(), s);
    }

    #[test]
    fn an_archive_is_read_at_any_address() {
        let body = encode(&sample()).unwrap();
        for shift in 1..8 {
            let mut moved = vec![0u8; shift];
            moved.extend_from_slice(&body);
            assert_eq!(decode(&moved[shift..]).unwrap(), sample(), "shift {shift}");
        }
    }

    #[test]
    fn a_damaged_archive_is_an_error_not_a_panic() {
        let body = encode(&sample()).unwrap();
        assert!(access(&body[..body.len() - 1]).is_err());
        assert!(access(&body[1..]).is_err(), "no magic");
        assert!(access(MAGIC).is_err());
        // Every single-byte change either fails validation or decodes to some snapshot: never UB, never
        // a panic (bytecheck checks every offset, length and discriminant).
        for i in MAGIC.len()..body.len() {
            let mut b = body.clone();
            b[i] ^= 0xff;
            let _ = decode(&b);
        }
    }
}

//! The audit trail on disk: per-core append-only segments of length-prefixed, CRC32C-checked records
//! chained by BLAKE3, with checkpoints signed by the data dir's signing key.
//!
//! Layout: `DATA_DIR/audit/core-N/<first seq, 20 digits>.seg`. A record is
//! `len u32 LE · crc32c u32 LE · kind u8 · seq u64 LE · prev [32] · payload [len]`; the CRC covers
//! everything after itself, and the record's hash is BLAKE3(prev · kind · seq · payload), which the next
//! record names as its `prev` (across segments too, so a removed or reordered segment breaks the chain).
//! A checkpoint record signs (core, seq, hash) of the record before it; a rewritten record before a
//! checkpoint fails that signature even if the rewriter recomputed every CRC and hash after it.
//!
//! Recovery (`Segments::open`) walks the newest segment, truncates a torn tail (a record cut short or
//! failing its CRC: an append the process died in), and reports what it cut. Appends are acknowledged only
//! after `fdatasync`, so an acknowledged record is never in a torn tail.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::signing::{self, SigningKey};

/// Bytes before a record's payload.
pub const HEAD_LEN: usize = 4 + 4 + 1 + 8 + 32;
/// Bytes of one record's payload, at most.
pub const PAYLOAD_MAX: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Event = 1,
    Checkpoint = 2,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Event),
            2 => Some(Kind::Checkpoint),
            _ => None,
        }
    }
}

/// Where a core's chain stands: the next sequence number and the hash of the last record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    pub next_seq: u64,
    pub last_hash: [u8; 32],
}

impl Chain {
    pub const GENESIS: Chain = Chain {
        next_seq: 1,
        last_hash: [0; 32],
    };
}

/// Append one record to `out`; returns its hash and advances `chain`.
pub fn encode(kind: Kind, payload: &[u8], chain: &mut Chain, out: &mut Vec<u8>) -> [u8; 32] {
    let seq = chain.next_seq;
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind as u8);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&chain.last_hash);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let hash = record_hash(&chain.last_hash, kind, seq, payload);
    chain.next_seq += 1;
    chain.last_hash = hash;
    hash
}

fn record_hash(prev: &[u8; 32], kind: Kind, seq: u64, payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(&[kind as u8]);
    h.update(&seq.to_le_bytes());
    h.update(payload);
    *h.finalize().as_bytes()
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub seq: u64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
    pub payload: Vec<u8>,
}

/// Why the bytes at an offset are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Fewer bytes than the record says it has: the end of an interrupted append.
    Short,
    Crc,
    Kind,
    TooLarge,
}

/// Decode the record at the start of `buf`: the record and its length in bytes.
pub fn decode(buf: &[u8]) -> Result<(Record, usize), Bad> {
    let (r, total) = decode_ref(buf)?;
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&buf[17..49]);
    let payload = r.payload.to_vec();
    let hash = record_hash(&prev, r.kind, r.seq, &payload);
    Ok((
        Record {
            kind: r.kind,
            seq: r.seq,
            prev,
            hash,
            payload,
        },
        total,
    ))
}

/// A record as it lies in a segment's bytes, borrowed: for readers that search rather than verify (its
/// CRC is checked, its place in the chain is not: that is `verify`'s job).
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub kind: Kind,
    pub seq: u64,
    pub payload: &'a [u8],
}

/// `decode` without copying the payload or hashing the record.
pub fn decode_ref(buf: &[u8]) -> Result<(RecordRef<'_>, usize), Bad> {
    if buf.len() < HEAD_LEN {
        return Err(Bad::Short);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > PAYLOAD_MAX {
        return Err(Bad::TooLarge);
    }
    let total = HEAD_LEN + len;
    if buf.len() < total {
        return Err(Bad::Short);
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if crc32c::crc32c(&buf[8..total]) != crc {
        return Err(Bad::Crc);
    }
    let kind = Kind::from_u8(buf[8]).ok_or(Bad::Kind)?;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[9..17]);
    Ok((
        RecordRef {
            kind,
            seq: u64::from_le_bytes(seq),
            payload: &buf[HEAD_LEN..total],
        },
        total,
    ))
}

/// The intact records at the start of a segment's bytes, in order.
pub fn records(bytes: &[u8]) -> Vec<RecordRef<'_>> {
    let mut out = Vec::with_capacity(bytes.len() / 512);
    let mut at = 0usize;
    while at < bytes.len() {
        match decode_ref(&bytes[at..]) {
            Ok((r, n)) => {
                out.push(r);
                at += n;
            }
            Err(_) => break,
        }
    }
    out
}

/// The payload of a segment's first record, reading only that record (`None`: the segment is empty
/// or its first record does not decode).
pub fn first_payload(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = File::open(path)?;
    let mut head = [0u8; HEAD_LEN];
    if f.read_exact(&mut head).is_err() {
        return Ok(None);
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > PAYLOAD_MAX {
        return Ok(None);
    }
    let mut buf = head.to_vec();
    buf.resize(HEAD_LEN + len, 0);
    if f.read_exact(&mut buf[HEAD_LEN..]).is_err() {
        return Ok(None);
    }
    Ok(decode_ref(&buf).ok().map(|(r, _)| r.payload.to_vec()))
}

/// A checkpoint's payload: the chain position it signs and the signature.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub core: u16,
    /// The record it vouches for (the one before the checkpoint) and that record's hash.
    pub seq: u64,
    pub hash: String,
    pub at_ms: u64,
    pub sig: String,
}

#[derive(Debug)]
pub enum AuditError {
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The disk budget (`audit.max_bytes`) would be exceeded.
    Budget { used: u64, max: u64 },
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditError::Io { path, error } => write!(f, "audit {}: {error}", path.display()),
            AuditError::Budget { used, max } => write!(
                f,
                "the audit trail is at its disk budget ({used} of {max} bytes); calls are refused until space is freed (export and remove old segments, or raise audit.max_bytes)"
            ),
        }
    }
}

impl std::error::Error for AuditError {}

fn io(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |error| AuditError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What recovery found in a core's newest segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    pub segment: Option<PathBuf>,
    /// Records found intact in it.
    pub records: u64,
    /// Bytes cut off its end (0: the tail was clean).
    pub truncated_bytes: u64,
}

/// The directory of core `core`'s segments under the audit root.
pub fn core_dir(root: &Path, core: u16) -> PathBuf {
    root.join(format!("core-{core}"))
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// A core directory's segments, oldest first (by the first sequence in their name).
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries.flatten() {
        let p = e.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((n, p));
        }
    }
    out.sort();
    Ok(out)
}

/// Core directories under the audit root: (core id, dir).
pub fn cores(root: &Path) -> std::io::Result<Vec<(u16, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries.flatten() {
        let p = e.path();
        if let Some(n) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("core-"))
            .and_then(|n| n.parse::<u16>().ok())
        {
            out.push((n, p));
        }
    }
    out.sort();
    Ok(out)
}

/// Every intact record of one segment file, and where the intact prefix ends (with why, if it ends before
/// the file does).
pub fn read_segment(path: &Path) -> std::io::Result<(Vec<Record>, u64, Option<Bad>)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        match decode(&bytes[at..]) {
            Ok((r, n)) => {
                out.push(r);
                at += n;
            }
            Err(bad) => return Ok((out, at as u64, Some(bad))),
        }
    }
    Ok((out, at as u64, None))
}

/// One core's appender: its open segment and chain. Used from one thread.
pub struct Segments {
    core: u16,
    dir: PathBuf,
    file: File,
    path: PathBuf,
    offset: u64,
    chain: Chain,
    segment_max: u64,
    key: std::sync::Arc<SigningKey>,
    /// Events since the last checkpoint, and how many between checkpoints.
    since_checkpoint: u64,
    checkpoint_every: u64,
    /// Bytes of all this core's segments.
    bytes: u64,
    /// The encode buffer, kept between batches: a fresh one per batch is fresh memory per batch, which
    /// the allocator maps and the kernel zeroes every time.
    scratch: Vec<u8>,
}

/// The most encode buffer a trail keeps between batches; a larger batch's buffer is freed after it.
const SCRATCH_KEEP: usize = 1 << 20;

impl fmt::Debug for Segments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segments")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .field("next_seq", &self.chain.next_seq)
            .finish()
    }
}

impl Segments {
    /// Open core `core`'s trail under `root`, recovering its newest segment.
    pub fn open(
        root: &Path,
        core: u16,
        segment_max: u64,
        checkpoint_every: u64,
        key: std::sync::Arc<SigningKey>,
    ) -> Result<(Segments, Recovery), AuditError> {
        let dir = core_dir(root, core);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let list = segments(&dir).map_err(io(&dir))?;
        let mut bytes = 0;
        for (_, p) in &list {
            bytes += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        }
        let mut recovery = Recovery::default();
        let (path, chain, offset) = match list.last() {
            None => {
                let path = dir.join(segment_name(1));
                (path, Chain::GENESIS, 0)
            }
            Some((first, path)) => {
                let (records, good, bad) = read_segment(path).map_err(io(path))?;
                let len = std::fs::metadata(path).map_err(io(path))?.len();
                recovery.segment = Some(path.clone());
                recovery.records = records.len() as u64;
                if bad.is_some() && good < len {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io(path))?;
                    f.set_len(good).map_err(io(path))?;
                    f.sync_all().map_err(io(path))?;
                    recovery.truncated_bytes = len - good;
                    bytes -= len - good;
                }
                let chain = match records.last() {
                    Some(r) => Chain {
                        next_seq: r.seq + 1,
                        last_hash: r.hash,
                    },
                    // An empty newest segment: the chain continues from the one before it.
                    None => match list.len().checked_sub(2).map(|i| &list[i].1) {
                        Some(prev) => {
                            let (rs, _, _) = read_segment(prev).map_err(io(prev))?;
                            rs.last().map_or(
                                Chain {
                                    next_seq: *first,
                                    last_hash: [0; 32],
                                },
                                |r| Chain {
                                    next_seq: r.seq + 1,
                                    last_hash: r.hash,
                                },
                            )
                        }
                        None => Chain {
                            next_seq: *first,
                            last_hash: [0; 32],
                        },
                    },
                };
                (path.clone(), chain, good)
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        sync_dir(&dir);
        Ok((
            Segments {
                core,
                dir,
                file,
                path,
                offset,
                chain,
                segment_max,
                key,
                since_checkpoint: 0,
                checkpoint_every: checkpoint_every.max(1),
                bytes,
                scratch: Vec::new(),
            },
            recovery,
        ))
    }

    pub fn chain(&self) -> Chain {
        self.chain
    }

    /// Bytes of this core's segments on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Encode `payloads` as event records (with checkpoints where they fall due), write them in one
    /// write and `fdatasync` when `sync`. Returns the sequence numbers the events got. On error nothing
    /// of the batch stays: the file is cut back to where it was, and the chain does not advance.
    pub fn append(
        &mut self,
        payloads: &[Vec<u8>],
        sync: bool,
        now_ms: u64,
    ) -> Result<Vec<u64>, AuditError> {
        let before = self.chain;
        let before_checkpoint = self.since_checkpoint;
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.reserve(payloads.iter().map(|p| p.len() + HEAD_LEN).sum());
        let mut seqs = Vec::with_capacity(payloads.len());
        for p in payloads {
            seqs.push(self.chain.next_seq);
            encode(Kind::Event, p, &mut self.chain, &mut buf);
            self.since_checkpoint += 1;
            if self.since_checkpoint >= self.checkpoint_every {
                self.checkpoint_into(&mut buf, now_ms);
            }
        }
        let written = self.write(&buf, sync);
        if buf.capacity() <= SCRATCH_KEEP {
            self.scratch = buf;
        }
        if let Err(e) = written {
            self.chain = before;
            self.since_checkpoint = before_checkpoint;
            return Err(e);
        }
        if self.offset >= self.segment_max {
            // Best effort: a failed roll leaves the current segment growing, which loses nothing.
            let _ = self.roll(now_ms);
        }
        Ok(seqs)
    }

    /// Write a checkpoint now (on shutdown, so the whole tail is vouched for) and sync.
    pub fn checkpoint(&mut self, now_ms: u64) -> Result<(), AuditError> {
        if self.chain.next_seq == 1 || self.since_checkpoint == 0 {
            return Ok(());
        }
        let before = (self.chain, self.since_checkpoint);
        let mut buf = Vec::new();
        self.checkpoint_into(&mut buf, now_ms);
        self.write(&buf, true).inspect_err(|_| {
            (self.chain, self.since_checkpoint) = before;
        })
    }

    /// `fdatasync` what was written without sync.
    pub fn sync(&mut self) -> Result<(), AuditError> {
        self.file.sync_data().map_err(io(&self.path))
    }

    fn checkpoint_into(&mut self, buf: &mut Vec<u8>, now_ms: u64) {
        let seq = self.chain.next_seq - 1;
        let hash = self.chain.last_hash;
        let sig = self.key.sign_audit_checkpoint(self.core, seq, &hash);
        let c = Checkpoint {
            core: self.core,
            seq,
            hash: signing::hex(&hash),
            at_ms: now_ms,
            sig: signing::hex(&sig),
        };
        let payload = serde_json::to_vec(&c).unwrap_or_default();
        encode(Kind::Checkpoint, &payload, &mut self.chain, buf);
        self.since_checkpoint = 0;
    }

    fn write(&mut self, buf: &[u8], sync: bool) -> Result<(), AuditError> {
        let r =
            self.file
                .write_all(buf)
                .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        match r {
            Ok(()) => {
                self.offset += buf.len() as u64;
                self.bytes += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut back whatever part of the batch reached the file, so the next append starts on a
                // record boundary (and recovery never has to).
                let _ = self.file.set_len(self.offset);
                let _ = self.file.seek(SeekFrom::End(0));
                Err(io(&self.path)(e))
            }
        }
    }

    /// Close the current segment with a checkpoint and start the next one.
    fn roll(&mut self, now_ms: u64) -> Result<(), AuditError> {
        self.checkpoint(now_ms)?;
        let path = self.dir.join(segment_name(self.chain.next_seq));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        sync_dir(&self.dir);
        self.file = file;
        self.path = path;
        self.offset = 0;
        Ok(())
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Written (signed) before the oldest segments of a core are deleted: the chain position they ended at,
/// so `verify` can tell pruning by the appliance from segments an intruder removed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pruned {
    pub core: u16,
    /// The last record deleted, and its hash.
    pub upto_seq: u64,
    pub hash: String,
    pub at_ms: u64,
    pub sig: String,
}

const PRUNED_FILE: &str = "pruned.json";

fn read_pruned(dir: &Path) -> Option<Pruned> {
    let text = std::fs::read_to_string(dir.join(PRUNED_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Delete core `core`'s oldest segments (in `dir`) whose records all have sequence numbers up to
/// `exported` (delivered elsewhere), never the newest one (the open one), recording a signed
/// `pruned.json` first. Returns the bytes freed. Closed segments are never written again, so any thread
/// may do this; callers serialise pruning of one directory.
pub fn prune_exported(
    dir: &Path,
    core: u16,
    exported: u64,
    key: &SigningKey,
    now_ms: u64,
) -> Result<u64, AuditError> {
    let list = segments(dir).map_err(io(dir))?;
    let mut doomed = Vec::new();
    for w in list.windows(2) {
        let (_, path) = &w[0];
        let (next_first, _) = &w[1];
        if next_first.saturating_sub(1) > exported {
            break;
        }
        doomed.push(path.clone());
    }
    let Some(last) = doomed.last() else {
        return Ok(0);
    };
    let (records, _, _) = read_segment(last).map_err(io(last))?;
    let Some(end) = records.last() else {
        return Ok(0);
    };
    let sig = key.sign_audit_checkpoint(core, end.seq, &end.hash);
    let manifest = Pruned {
        core,
        upto_seq: end.seq,
        hash: signing::hex(&end.hash),
        at_ms: now_ms,
        sig: signing::hex(&sig),
    };
    let tmp = dir.join(format!("{PRUNED_FILE}.tmp"));
    let body = serde_json::to_vec(&manifest).unwrap_or_default();
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(PRUNED_FILE))
    };
    write().map_err(io(&tmp))?;
    sync_dir(dir);
    let mut freed = 0;
    for p in &doomed {
        let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(p).map_err(io(p))?;
        freed += len;
    }
    sync_dir(dir);
    Ok(freed)
}

/// One break `verify` found: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    pub core: u16,
    pub segment: String,
    /// Byte offset in the segment, or the sequence number, whichever places it.
    pub offset: u64,
    pub seq: Option<u64>,
    pub problem: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub cores: usize,
    pub segments: usize,
    pub events: u64,
    pub checkpoints: u64,
    /// Events after the last checkpoint of their core (vouched for by the chain only).
    pub unanchored: u64,
    pub breaks: Vec<Break>,
}

/// Check every core's trail: each record's CRC, the chain from record to record and segment to segment,
/// sequence numbers without gaps, segment names, and every checkpoint's signature under `public_key`.
pub fn verify(root: &Path, public_key: &[u8; 32]) -> std::io::Result<Verified> {
    let mut v = Verified::default();
    for (core, dir) in cores(root)? {
        v.cores += 1;
        let mut chain = Chain::GENESIS;
        let mut unanchored = 0u64;
        let list = segments(&dir)?;
        if let Some(p) = read_pruned(&dir) {
            let hash = signing::parse_hex::<32>(&p.hash);
            let sig = signing::unhex_vec(&p.sig).unwrap_or_default();
            match hash {
                Some(h)
                    if p.core == core
                        && signing::verify_audit_checkpoint(
                            core, p.upto_seq, &h, &sig, public_key,
                        )
                        .is_ok() =>
                {
                    chain = Chain {
                        next_seq: p.upto_seq + 1,
                        last_hash: h,
                    };
                }
                _ => v.breaks.push(Break {
                    core,
                    segment: PRUNED_FILE.into(),
                    offset: 0,
                    seq: None,
                    problem: "the pruning record's signature does not verify".into(),
                }),
            }
        }
        for (i, (first, path)) in list.iter().enumerate() {
            v.segments += 1;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut brk = |offset: u64, seq: Option<u64>, problem: String| {
                v.breaks.push(Break {
                    core,
                    segment: name.clone(),
                    offset,
                    seq,
                    problem,
                })
            };
            let (records, good, bad) = read_segment(path)?;
            if *first != chain.next_seq && !(i == 0 && records.is_empty()) {
                brk(
                    0,
                    Some(chain.next_seq),
                    format!(
                        "segment starts at record {first}, but the chain continues at {}: a segment is missing or out of order",
                        chain.next_seq
                    ),
                );
            }
            let mut offset = 0u64;
            for r in &records {
                if r.seq != chain.next_seq {
                    brk(
                        offset,
                        Some(r.seq),
                        format!(
                            "record {} where {} was expected: records are missing or reordered",
                            r.seq, chain.next_seq
                        ),
                    );
                } else if r.prev != chain.last_hash {
                    brk(
                        offset,
                        Some(r.seq),
                        "does not chain to the record before it: a record was removed, replaced or reordered".into(),
                    );
                }
                match r.kind {
                    Kind::Event => {
                        v.events += 1;
                        unanchored += 1;
                    }
                    Kind::Checkpoint => {
                        v.checkpoints += 1;
                        match serde_json::from_slice::<Checkpoint>(&r.payload) {
                            Ok(c) => {
                                let hash = signing::parse_hex::<32>(&c.hash);
                                let sig = signing::unhex_vec(&c.sig).unwrap_or_default();
                                let ok = c.core == core
                                    && c.seq + 1 == r.seq
                                    && hash == Some(r.prev)
                                    && hash.is_some_and(|h| {
                                        signing::verify_audit_checkpoint(
                                            core, c.seq, &h, &sig, public_key,
                                        )
                                        .is_ok()
                                    });
                                if ok {
                                    unanchored = 0;
                                } else {
                                    brk(
                                        offset,
                                        Some(r.seq),
                                        "checkpoint signature does not verify for the chain it follows: records before it were rewritten".into(),
                                    );
                                }
                            }
                            Err(_) => brk(offset, Some(r.seq), "checkpoint does not decode".into()),
                        }
                    }
                }
                chain = Chain {
                    next_seq: r.seq + 1,
                    last_hash: r.hash,
                };
                offset += (HEAD_LEN + r.payload.len()) as u64;
            }
            if let Some(bad) = bad {
                let last = i + 1 == list.len();
                let problem = match (bad, last) {
                    (Bad::Short, true) => {
                        "torn tail (an interrupted append; the gateway cuts it at start)".to_owned()
                    }
                    (Bad::Short, false) => "truncated: the segment ends inside a record".to_owned(),
                    (Bad::Crc, _) => "CRC mismatch: the record's bytes were changed".to_owned(),
                    (Bad::Kind, _) => {
                        "unknown record kind: the record's bytes were changed".to_owned()
                    }
                    (Bad::TooLarge, _) => {
                        "impossible record length: the bytes were changed".to_owned()
                    }
                };
                brk(good, Some(chain.next_seq), problem);
            }
        }
        v.unanchored += unanchored;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataDir;
    use std::sync::Arc;

    fn setup(tag: &str) -> (PathBuf, Arc<SigningKey>) {
        let root = std::env::temp_dir().join(format!("pc-audit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dd = DataDir::open(&root).unwrap();
        let key = Arc::new(SigningKey::load_or_create(&dd).unwrap());
        (root, key)
    }

    fn events(n: usize, from: usize) -> Vec<Vec<u8>> {
        (from..from + n)
            .map(|i| format!("{{\"event\":{i}}}").into_bytes())
            .collect()
    }

    #[test]
    fn appends_chain_recover_and_verify() {
        let (root, key) = setup("chain");
        let audit = root.join("audit");
        let (mut s, rec) = Segments::open(&audit, 0, 4096, 10, key.clone()).unwrap();
        assert_eq!(rec, Recovery::default());
        for i in 0..20 {
            s.append(&events(5, i * 5), true, 1).unwrap();
        }
        s.checkpoint(2).unwrap();
        let v = verify(&audit, &key.public()).unwrap();
        assert!(v.breaks.is_empty(), "{v:?}");
        assert_eq!(v.events, 100);
        assert!(v.segments > 1, "rolled: {v:?}");
        assert_eq!(v.unanchored, 0);
        drop(s);

        // A torn tail: half a record appended by a process that died.
        let (_, last) = segments(&core_dir(&audit, 0)).unwrap().pop().unwrap();
        let mut half = Vec::new();
        let mut c = Chain::GENESIS;
        encode(Kind::Event, b"{\"torn\":true}", &mut c, &mut half);
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&half[..half.len() / 2]).unwrap();
        drop(f);
        let (mut s, rec) = Segments::open(&audit, 0, 4096, 10, key.clone()).unwrap();
        assert_eq!(rec.truncated_bytes, (half.len() / 2) as u64);
        s.append(&events(3, 100), true, 3).unwrap();
        s.checkpoint(4).unwrap();
        let v = verify(&audit, &key.public()).unwrap();
        assert!(v.breaks.is_empty(), "{v:?}");
        assert_eq!(v.events, 103);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn pruning_exported_segments_is_told_apart_from_removal() {
        let (root, key) = setup("prune");
        let audit = root.join("audit");
        let (mut s, _) = Segments::open(&audit, 0, 2048, 8, key.clone()).unwrap();
        for i in 0..20 {
            s.append(&events(4, i * 4), true, 1).unwrap();
        }
        let before = segments(&core_dir(&audit, 0)).unwrap();
        assert!(before.len() > 3);
        // Nothing exported: nothing goes.
        let dir = core_dir(&audit, 0);
        assert_eq!(prune_exported(&dir, 0, 0, &key, 2).unwrap(), 0);
        let upto = before[2].0 - 1;
        let freed = prune_exported(&dir, 0, upto, &key, 2).unwrap();
        assert!(freed > 0);
        let after = segments(&core_dir(&audit, 0)).unwrap();
        assert_eq!(after.len(), before.len() - 2);
        s.append(&events(2, 100), true, 3).unwrap();
        let v = verify(&audit, &key.public()).unwrap();
        assert!(v.breaks.is_empty(), "{v:?}");
        // Removing one more by hand is a break.
        std::fs::remove_file(&after[0].1).unwrap();
        let v = verify(&audit, &key.public()).unwrap();
        assert!(!v.breaks.is_empty(), "{v:?}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn verify_finds_flipped_removed_truncated_and_reordered() {
        let (root, key) = setup("tamper");
        let audit = root.join("audit");
        let build = || {
            let _ = std::fs::remove_dir_all(&audit);
            let (mut s, _) = Segments::open(&audit, 0, 2048, 8, key.clone()).unwrap();
            for i in 0..10 {
                s.append(&events(4, i * 4), true, 1).unwrap();
            }
            s.checkpoint(2).unwrap();
            segments(&core_dir(&audit, 0)).unwrap()
        };
        let problems = |v: &Verified| {
            v.breaks
                .iter()
                .map(|b| b.problem.clone())
                .collect::<Vec<_>>()
                .join("; ")
        };
        // A flipped byte.
        let segs = build();
        let mut b = std::fs::read(&segs[0].1).unwrap();
        b[HEAD_LEN + 3] ^= 1;
        std::fs::write(&segs[0].1, &b).unwrap();
        let v = verify(&audit, &key.public()).unwrap();
        assert!(problems(&v).contains("CRC"), "{v:?}");
        // A record cut out of the middle.
        let segs = build();
        let b = std::fs::read(&segs[0].1).unwrap();
        let (_, n) = decode(&b).unwrap();
        let (_, n2) = decode(&b[n..]).unwrap();
        let mut cut = b[..n].to_vec();
        cut.extend_from_slice(&b[n + n2..]);
        std::fs::write(&segs[0].1, &cut).unwrap();
        let v = verify(&audit, &key.public()).unwrap();
        assert!(problems(&v).contains("missing or reordered"), "{v:?}");
        // A segment truncated inside a record (not the newest one).
        let segs = build();
        let b = std::fs::read(&segs[0].1).unwrap();
        std::fs::write(&segs[0].1, &b[..b.len() - 5]).unwrap();
        let v = verify(&audit, &key.public()).unwrap();
        assert!(problems(&v).contains("truncated"), "{v:?}");
        // Two segments swapped (renamed into each other's place).
        let segs = build();
        let tmp = audit.join("swap");
        std::fs::rename(&segs[0].1, &tmp).unwrap();
        std::fs::rename(&segs[1].1, &segs[0].1).unwrap();
        std::fs::rename(&tmp, &segs[1].1).unwrap();
        let v = verify(&audit, &key.public()).unwrap();
        assert!(!v.breaks.is_empty(), "{v:?}");
        // A record rewritten with every CRC and hash after it recomputed: only the signature catches it.
        let segs = build();
        let mut all = Vec::new();
        for (_, p) in &segs {
            let (rs, _, _) = read_segment(p).unwrap();
            all.push(rs);
        }
        all[0][0].payload = b"{\"event\":\"forged\"}".to_vec();
        let mut chain = Chain::GENESIS;
        for ((_, p), rs) in segs.iter().zip(&all) {
            let mut out = Vec::new();
            for r in rs {
                encode(r.kind, &r.payload, &mut chain, &mut out);
            }
            std::fs::write(p, out).unwrap();
        }
        let v = verify(&audit, &key.public()).unwrap();
        assert!(problems(&v).contains("checkpoint signature"), "{v:?}");
        let _ = std::fs::remove_dir_all(&root);
    }
}

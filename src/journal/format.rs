//! The journal's bytes on disk, and reading them back.
//!
//! ```text
//! file  = magic (8 bytes, "FWJRNL01") entry* zeros*
//! entry = length: u32 LE | crc32: u32 LE | kind: u8 | payload (length - 1 bytes)
//! ```
//!
//! The CRC covers kind and payload. Kinds: 1 a put (a task's record as
//! JSON), 2 a delete (the task id), 3 a commit marker (the group's number,
//! u64 LE) that ends every group the writer commits. The file is grown in
//! zeroed chunks, so the log ends where an all-zero header is followed by
//! nothing but zeros.
//!
//! **Torn tail or damage.** A crash can leave the last group half written:
//! its write was not synced, so none of its changes was acknowledged. Every
//! acknowledged change is followed, somewhere after it, by a commit marker
//! that reached the disk with it. So an unreadable stretch is
//! - a *torn tail* when no commit marker follows it: it is dropped (its
//!   bytes are saved aside), and the log goes on from there;
//! - *damage* when a commit marker follows it: acknowledged changes may be
//!   in it, and [`scan`] reports it rather than guess. Logs written before
//!   commit markers existed count any readable entry after an unreadable
//!   stretch as proof of damage.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt as _;

pub const MAGIC: &[u8; 8] = b"FWJRNL01";
pub const PUT: u8 = 1;
pub const DELETE: u8 = 2;
pub const COMMIT: u8 = 3;
/// Length and CRC.
pub const HEADER: usize = 8;
/// An entry longer than this is taken for garbage (records are bounded by
/// the largest message the control plane reads).
pub const MAX_ENTRY: usize = 256 << 20;

/// How much is read at a time while scanning.
const WINDOW: usize = 1 << 20;

/// Appends one entry to `buf`.
pub fn encode(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

/// The bytes an entry with a payload of `payload` bytes takes.
pub fn entry_len(payload: usize) -> u64 {
    (HEADER + 1 + payload) as u64
}

/// Where an entry lies in the file: `len` bytes from `offset`, header included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
}

impl Span {
    pub fn end(self) -> u64 {
        self.offset + self.len
    }
}

/// What reading a log found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Each live task's latest put.
    pub live: HashMap<String, Span>,
    /// Where the readable log ends: the next entry goes here.
    pub end: u64,
    /// Entries read (puts, deletes and commit markers).
    pub entries: u64,
    /// The highest commit marker's group number.
    pub last_group: u64,
    /// A half-written last group, dropped.
    pub torn: Option<Span>,
    /// Unreadable stretches with acknowledged changes after them.
    pub damaged: Vec<Span>,
    /// Puts whose payload names no task id: where, and why.
    pub nameless: Vec<(Span, String)>,
}

/// Random access to the log with a read-ahead window, so that a scan reads
/// the file in large pieces and holds at most one window and one entry.
#[derive(Debug)]
pub struct Source<'f> {
    file: &'f File,
    size: u64,
    start: u64,
    window: Vec<u8>,
}

impl<'f> Source<'f> {
    pub fn new(file: &'f File) -> std::io::Result<Source<'f>> {
        Ok(Source {
            file,
            size: file.metadata()?.len(),
            start: 0,
            window: Vec::new(),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Up to `len` bytes at `at` (fewer at the end of the file).
    pub fn get(&mut self, at: u64, len: usize) -> std::io::Result<&[u8]> {
        if at >= self.size {
            return Ok(&[]);
        }
        let len = len.min(usize::try_from(self.size.saturating_sub(at)).unwrap_or(usize::MAX));
        let inside = at >= self.start && at + len as u64 <= self.start + self.window.len() as u64;
        if !inside {
            let want = len
                .max(WINDOW)
                .min(usize::try_from(self.size - at).unwrap_or(usize::MAX));
            self.window.resize(want, 0);
            self.file.read_exact_at(&mut self.window, at)?;
            self.start = at;
        }
        let from = usize::try_from(at - self.start).unwrap_or(0);
        Ok(&self.window[from..from + len])
    }

    /// Whether every byte from `at` to the end of the file is zero.
    fn zeros_from(&mut self, mut at: u64) -> std::io::Result<bool> {
        while at < self.size {
            let chunk = self.get(at, WINDOW)?;
            if chunk.iter().any(|b| *b != 0) {
                return Ok(false);
            }
            at += chunk.len() as u64;
        }
        Ok(true)
    }

    /// Where the data from `at` ends: just past its last byte that is not
    /// zero (the file's zero padding is not data).
    fn data_end(&mut self, mut at: u64) -> std::io::Result<u64> {
        let mut end = at;
        while at < self.size {
            let chunk = self.get(at, WINDOW)?;
            if let Some(last) = chunk.iter().rposition(|b| *b != 0) {
                end = at + last as u64 + 1;
            }
            at += chunk.len() as u64;
        }
        Ok(end)
    }

    /// The entry at `at` (kind and payload), if it is whole and its CRC holds.
    pub fn entry(&mut self, at: u64) -> std::io::Result<Option<&[u8]>> {
        let header = self.get(at, HEADER)?;
        if header.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if !plausible(len, at, self.size) {
            return Ok(None);
        }
        let whole = self.get(at, HEADER + len)?;
        let body = &whole[HEADER..];
        Ok((crc32fast::hash(body) == crc).then_some(body))
    }

    /// The first offset after `from` where a whole entry starts, if any.
    fn resync(&mut self, from: u64) -> std::io::Result<Option<u64>> {
        let mut at = from;
        while at + (HEADER as u64) < self.size {
            // A cheap look first: most offsets fail on the length or the kind.
            let probe = self.get(at, HEADER + 2)?;
            if probe.len() == HEADER + 2 {
                let len = u32::from_le_bytes([probe[0], probe[1], probe[2], probe[3]]) as usize;
                let likely = match probe[HEADER] {
                    PUT => probe[HEADER + 1] == b'{',
                    DELETE => true,
                    COMMIT => len == 9,
                    _ => false,
                };
                if likely && plausible(len, at, self.size) && self.entry(at)?.is_some() {
                    return Ok(Some(at));
                }
            }
            at += 1;
        }
        Ok(None)
    }
}

fn plausible(len: usize, at: u64, size: u64) -> bool {
    (1..=MAX_ENTRY).contains(&len) && at + (HEADER + len) as u64 <= size
}

/// Reads the whole log in `file`: where each live record is, where the log
/// ends, and what could not be read (see the module doc).
pub fn scan(file: &File) -> Result<Scan, String> {
    let mut source = Source::new(file).map_err(|e| e.to_string())?;
    let mut scan = Scan::default();
    if source.size() == 0 {
        return Ok(scan);
    }
    let magic = source.get(0, MAGIC.len()).map_err(|e| e.to_string())?;
    if magic != MAGIC {
        return Err(
            "it does not start like a fastworker journal (wrong magic); move it away to start afresh"
                .to_owned(),
        );
    }
    let io = |e: std::io::Error| e.to_string();
    let mut at = MAGIC.len() as u64;
    // Unreadable stretches seen since the last commit marker.
    let mut unconfirmed: Vec<Span> = Vec::new();
    let mut markers = false;
    loop {
        if at >= source.size() {
            break;
        }
        let header = source.get(at, HEADER).map_err(io)?;
        let zero_header = header.len() == HEADER && header.iter().all(|b| *b == 0);
        if zero_header && source.zeros_from(at).map_err(io)? {
            break; // the end: the zeros the file was grown with
        }
        let Some(body) = source.entry(at).map_err(io)? else {
            match source.resync(at + 1).map_err(io)? {
                Some(next) => {
                    unconfirmed.push(Span {
                        offset: at,
                        len: next - at,
                    });
                    at = next;
                    continue;
                }
                None => {
                    let end = source.data_end(at).map_err(io)?.max(at + 1);
                    scan.torn = Some(Span {
                        offset: at,
                        len: end - at,
                    });
                    break;
                }
            }
        };
        let span = Span {
            offset: at,
            len: (HEADER + body.len()) as u64,
        };
        let (kind, payload) = (body[0], &body[1..]);
        match kind {
            PUT => match task_id_of(payload) {
                Ok(id) => {
                    scan.live.insert(id, span);
                }
                Err(why) => scan.nameless.push((span, why)),
            },
            DELETE => {
                scan.live.remove(String::from_utf8_lossy(payload).as_ref());
            }
            COMMIT => {
                markers = true;
                let group = payload
                    .try_into()
                    .map(u64::from_le_bytes)
                    .unwrap_or_default();
                scan.last_group = scan.last_group.max(group);
                // What was unreadable before this marker held acknowledged changes.
                scan.damaged.append(&mut unconfirmed);
            }
            // Not written by any build: an entry that passes its CRC with
            // another kind is damage too.
            _ => unconfirmed.push(span),
        }
        scan.entries += 1;
        at = span.end();
        scan.end = at;
    }
    if !unconfirmed.is_empty() {
        if markers {
            // In the last, unfinished group: never acknowledged.
            let first = unconfirmed[0].offset;
            let torn_end = scan.torn.map_or(scan.end, Span::end).max(first + 1);
            scan.torn = Some(Span {
                offset: first,
                len: torn_end - first,
            });
        } else {
            // A log from before commit markers: readable entries after an
            // unreadable stretch may have been acknowledged.
            scan.damaged.append(&mut unconfirmed);
        }
    }
    if scan.end == 0 {
        scan.end = MAGIC.len() as u64;
    }
    Ok(scan)
}

/// The `task_id` of a record stored as JSON.
fn task_id_of(json: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Id {
        task_id: String,
    }
    // Other fields are skipped, however deep they nest.
    let mut de = serde_json::Deserializer::from_slice(json);
    de.disable_recursion_limit();
    let de = serde_stacker::Deserializer::new(&mut de);
    serde::Deserialize::deserialize(de)
        .map(|id: Id| id.task_id)
        .map_err(|e| e.to_string())
}

/// Decodes a stored record. As permissive as encoding: JSON nests as deep
/// as it likes (the stack grows as needed), so whatever was written can be
/// read back.
pub fn decode_record<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(json);
    de.disable_recursion_limit();
    let value =
        T::deserialize(serde_stacker::Deserializer::new(&mut de)).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

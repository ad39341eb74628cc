//! FastWorker's client can send Python pickles (`FASTWORKER_SERIALIZATION_FORMAT=PICKLE`).
//! fastworker never unpickles (a pickle from a socket can run any code);
//! it recognizes one by its first bytes and answers with a pickle of its
//! own, written here by hand from plain strings and booleans, that the
//! client unpickles into a failure naming the fix.

/// Whether `bytes` is a pickle (protocol 2 or later starts with PROTO,
/// 0x80, and its version; no JSON text starts with 0x80).
pub fn is_pickle(bytes: &[u8]) -> bool {
    matches!(bytes, [0x80, 2..=5, ..])
}

/// The refusal: a dict that reads as a failed `TaskResult`, a result that
/// was not found, a cancel that did not happen and a batch not accepted,
/// whichever the client asked for. `task_id` is the id of the pickled task
/// when it can be read without unpickling it.
pub fn refusal(bytes: &[u8]) -> Vec<u8> {
    let task_id = task_id(bytes).unwrap_or_else(|| "unknown".to_owned());
    let error = "this control plane speaks JSON only: set FASTWORKER_SERIALIZATION_FORMAT=JSON \
                 (or leave it unset) in the client's environment. fastworker does not unpickle \
                 messages: a pickle read from a socket can run any code";
    dict(&[
        ("task_id", Item::Str(&task_id)),
        ("status", Item::Str("failure")),
        ("error", Item::Str(error)),
        ("found", Item::Bool(false)),
        ("cancelled", Item::Bool(false)),
        ("batch_accepted", Item::Bool(false)),
        ("accepted", Item::Bool(false)),
    ])
}

enum Item<'a> {
    Str(&'a str),
    Bool(bool),
}

/// A protocol-2 pickle of a dict of strings and booleans.
fn dict(items: &[(&str, Item<'_>)]) -> Vec<u8> {
    let mut out = vec![0x80, 2, b'}', b'('];
    let string = |out: &mut Vec<u8>, s: &str| {
        out.push(b'X'); // BINUNICODE: u32 length, then UTF-8
        out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    for (key, value) in items {
        string(&mut out, key);
        match value {
            Item::Str(s) => string(&mut out, s),
            Item::Bool(true) => out.push(0x88),
            Item::Bool(false) => out.push(0x89),
        }
    }
    out.extend_from_slice(b"u."); // SETITEMS, STOP
    out
}

/// The task id of a pickled `Task.model_dump()`, read from the bytes (the
/// key `id` and the short string after it), not by unpickling.
fn task_id(bytes: &[u8]) -> Option<String> {
    // SHORT_BINUNICODE "id" (0x8c 0x02 'i' 'd'), an optional MEMOIZE (0x94),
    // then SHORT_BINUNICODE: 0x8c, a length byte, the text.
    let at = bytes.windows(4).position(|w| w == [0x8c, 2, b'i', b'd'])? + 4;
    let rest = bytes.get(at..)?;
    let rest = rest.strip_prefix(&[0x94]).unwrap_or(rest);
    let [0x8c, len, text @ ..] = rest else {
        return None;
    };
    let id = std::str::from_utf8(text.get(..usize::from(*len))?).ok()?;
    super::check_task_id(id).ok()?;
    Some(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pickle_is_told_from_json_and_its_task_id_read() {
        assert!(is_pickle(b"\x80\x04\x95\x10\x00"));
        assert!(!is_pickle(br#"{"id": "x"}"#));
        assert!(!is_pickle(b""));
        // pickle.dumps({"id": "abc-1", "name": "add"}) with protocol 4.
        let pickled = b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x02id\x94\x8c\x05abc-1\x94\x8c\x04name\x94\x8c\x03add\x94u.";
        assert_eq!(task_id(pickled).as_deref(), Some("abc-1"));
        let reply = refusal(pickled);
        assert!(reply.starts_with(&[0x80, 2, b'}', b'(']));
        assert!(reply.ends_with(b"u."));
        assert!(reply.windows(5).any(|w| w == b"abc-1"));
    }
}

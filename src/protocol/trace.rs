//! A task's place in a distributed trace (W3C Trace Context).
//!
//! Every task gets a trace id and a span id of its own when it is
//! accepted: a client's `traceparent` (a fastworker extension field of a
//! submit) makes the task's span its child; without one the task starts a
//! trace. Each attempt's span id is derived from the task's span and the
//! attempt's number, so that the process running attempt 3 gets, in
//! `TRACEPARENT`, the parent its own spans need, and the control plane
//! exports the attempt's span under the same id once the task ends
//! (see `crate::telemetry`). The context is kept in the task's record, so it
//! survives a restart.

use serde::{Deserialize, Serialize};

/// A task's trace context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The task's own span: 16 lowercase hex digits.
    pub span_id: String,
    /// The client's span the task's is a child of, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// The sampled flag, as the client sent it (set when the task starts
    /// the trace).
    #[serde(default = "yes")]
    pub sampled: bool,
    /// The client's `tracestate`, passed on unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

fn yes() -> bool {
    true
}

/// A parsed `traceparent`: trace id, parent span id, sampled.
pub fn parse_traceparent(text: &str) -> Option<(u128, u64, bool)> {
    let parts: Vec<&str> = text.trim().split('-').collect();
    let [version, trace, span, flags, ..] = parts[..] else {
        return None;
    };
    // Version 00 has exactly four fields; a later version may add more.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.len() != 4) {
        return None;
    }
    fn hex(s: &str, len: usize) -> Option<&str> {
        (s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then_some(s)
    }
    let trace = u128::from_str_radix(hex(trace, 32)?, 16).ok()?;
    let span = u64::from_str_radix(hex(span, 16)?, 16).ok()?;
    let flags = u8::from_str_radix(hex(flags, 2)?, 16).ok()?;
    (trace != 0 && span != 0).then_some((trace, span, flags & 1 == 1))
}

impl TraceContext {
    /// A task's context: a child of the client's `traceparent` when it is
    /// valid (an invalid one is ignored, as W3C says), else a new trace.
    pub fn new(traceparent: Option<&str>, tracestate: Option<&str>) -> TraceContext {
        let span_id = nonzero64();
        match traceparent.and_then(parse_traceparent) {
            Some((trace, parent, sampled)) => TraceContext {
                trace_id: format!("{trace:032x}"),
                span_id: format!("{span_id:016x}"),
                parent_span_id: Some(format!("{parent:016x}")),
                sampled,
                tracestate: tracestate
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.len() <= 512)
                    .map(str::to_owned),
            },
            None => TraceContext {
                trace_id: format!("{:032x}", nonzero128()),
                span_id: format!("{span_id:016x}"),
                parent_span_id: None,
                sampled: true,
                tracestate: None,
            },
        }
    }

    /// The span id of attempt `n` (deterministic: its process and the
    /// exported span agree).
    pub fn attempt_span_id(&self, n: u32) -> String {
        let base = u64::from_str_radix(&self.span_id, 16).unwrap_or(1);
        let mut x = base ^ (u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // splitmix64's finalizer: a different id per attempt, never 0.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        format!("{:016x}", x.max(1))
    }

    /// The `traceparent` a process running attempt `n` gets.
    pub fn traceparent_for_attempt(&self, n: u32) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace_id,
            self.attempt_span_id(n),
            if self.sampled { "01" } else { "00" }
        )
    }
}

fn nonzero64() -> u64 {
    loop {
        let n = fastrand::u64(..);
        if n != 0 {
            return n;
        }
    }
}

fn nonzero128() -> u128 {
    loop {
        let n = fastrand::u128(..);
        if n != 0 {
            return n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_an_invalid_one_ignored() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = TraceContext::new(Some(parent), Some("congo=t61rcWkgMzE"));
        assert_eq!(cx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(cx.sampled);
        assert_eq!(cx.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_ne!(cx.span_id, "00f067aa0ba902b7");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let cx = TraceContext::new(Some(bad), None);
            assert_eq!(cx.parent_span_id, None, "{bad}");
            assert_eq!(cx.trace_id.len(), 32);
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        assert_eq!(
            parse_traceparent(later),
            Some((
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7,
                false
            ))
        );
    }

    #[test]
    fn each_attempt_has_its_own_stable_span() {
        let cx = TraceContext::new(None, None);
        let ids: std::collections::BTreeSet<String> =
            (1..=50).map(|n| cx.attempt_span_id(n)).collect();
        assert_eq!(ids.len(), 50);
        assert!(!ids.contains(&cx.span_id));
        assert_eq!(cx.attempt_span_id(3), cx.attempt_span_id(3));
        let tp = cx.traceparent_for_attempt(2);
        assert_eq!(
            parse_traceparent(&tp).map(|p| p.1),
            u64::from_str_radix(&cx.attempt_span_id(2), 16).ok()
        );
    }
}

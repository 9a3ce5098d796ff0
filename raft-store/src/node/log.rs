//! raft-rs logs through slog; this drain hands its records to `tracing`,
//! never with an entry's payload.
//!
//! Entries carry the state machine's commands, and those hold secrets (a
//! Shoal store's commands carry CA keys and gossip keys). raft-rs 0.7 logs
//! them at debug and trace level under the keys `msg` (a whole
//! `eraftpb::Message`: entries, snapshot, context) and `ents` (the entries
//! appended to the unstable log); the format arguments of its messages are
//! ids, terms and indexes only. Those keys, and a few more names a later
//! raft-rs could use for the same things, are printed as `<redacted>`; so is
//! any other value (or message) whose rendering shows a protobuf `data` or
//! `context` field, the fields that hold payloads.

/// Bridges raft-rs's slog records into `tracing`, one level quieter (raft's
/// "info" is chatty: every election and probe).
pub(super) struct TracingDrain {
    pub(super) id: u64,
}

/// What a redacted value is printed as.
const REDACTED: &str = "<redacted>";

/// Keys whose values carry entries, snapshots or their payloads.
const PAYLOAD_KEYS: &[&str] = &[
    "msg", "m", "message", "ents", "entries", "entry", "ent", "snapshot", "snap", "data",
    "context", "ctx",
];

/// Whether a rendered value shows a payload field: protobuf's text format
/// (the `Debug` of raft-rs's messages) prints them as `data: "..."` and
/// `context: "..."`.
fn shows_payload(text: &str) -> bool {
    text.contains("data:") || text.contains("context:")
}

/// The record's key-values as ` key=value` pairs, payloads redacted.
pub(super) struct KvString(String);

impl slog::Serializer for KvString {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        use std::fmt::Write;
        let name: &str = key;
        if PAYLOAD_KEYS.contains(&name) {
            let _ = write!(self.0, " {name}={REDACTED}");
            return Ok(());
        }
        let text = val.to_string();
        let shown = if shows_payload(&text) {
            REDACTED
        } else {
            &text
        };
        let _ = write!(self.0, " {name}={shown}");
        Ok(())
    }
}

/// The text a record is logged with: its message and key-values (the
/// record's, then the logger's), payloads redacted.
pub(super) fn render(record: &slog::Record, values: &slog::OwnedKVList) -> String {
    use slog::KV;
    let mut kv = KvString(String::new());
    let _ = record.kv().serialize(record, &mut kv);
    let _ = values.serialize(record, &mut kv);
    let msg = record.msg().to_string();
    let msg = if shows_payload(&msg) { REDACTED } else { &msg };
    format!("{msg}{}", kv.0)
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let enabled = match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::enabled!(tracing::Level::WARN),
            slog::Level::Warning | slog::Level::Info => tracing::enabled!(tracing::Level::DEBUG),
            _ => tracing::enabled!(tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let text = render(record, values);
        let id = self.id;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::warn!(raft_id = id, "raft: {text}")
            }
            slog::Level::Warning | slog::Level::Info => {
                tracing::debug!(raft_id = id, "raft: {text}")
            }
            _ => tracing::trace!(raft_id = id, "raft: {text}"),
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use raft::eraftpb::{Entry, Message, MessageType, Snapshot};

    use super::*;

    const SECRET: &[u8] = b"-----BEGIN PRIVATE KEY----- ca-key-bytes";

    /// A drain keeping what `render` makes of each record.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl slog::Drain for Capture {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, r: &slog::Record, v: &slog::OwnedKVList) -> Result<(), slog::Never> {
            self.0.lock().unwrap().push(render(r, v));
            Ok(())
        }
    }

    fn entry() -> Entry {
        Entry {
            index: 7,
            term: 2,
            data: SECRET.to_vec().into(),
            context: b"peer-context".to_vec().into(),
            ..Entry::default()
        }
    }

    fn logged(f: impl FnOnce(&slog::Logger)) -> String {
        let capture = Capture::default();
        let logger = slog::Logger::root(capture.clone(), slog::o!("raft_id" => 3));
        f(&logger);
        let lines = capture.0.lock().unwrap().join("\n");
        lines
    }

    fn assert_no_payload(out: &str) {
        assert!(!out.contains("ca-key-bytes"), "payload leaked: {out}");
        assert!(!out.contains("PRIVATE KEY"), "leaked: {out}");
        assert!(!out.contains("peer-context"), "context leaked: {out}");
    }

    /// What raft-rs 0.7 logs: `RaftCore::send` (debug) with "msg" => ?m,
    /// and `RaftLog::append` (trace) with "ents" => ?ents.
    #[test]
    fn raft_message_and_entries_are_redacted() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.entries = vec![entry()].into();
        m.set_snapshot(Snapshot {
            data: SECRET.to_vec().into(),
            ..Snapshot::default()
        });
        let ents = vec![entry()];
        let out = logged(|l| {
            slog::debug!(l, "Sending from {from} to {to}", from = 1, to = m.to; "msg" => ?m);
            // raft-rs logs this one at trace, which slog compiles out
            // unless a `max_level_trace` feature is on: logged at debug
            // here so that the test sees it.
            slog::debug!(l, "Entries being appended to unstable list"; "ents" => ?ents);
        });
        assert_no_payload(&out);
        assert!(out.contains("Sending from 1 to 2"), "{out}");
        assert!(out.contains("msg=<redacted>"), "{out}");
        assert!(out.contains("ents=<redacted>"), "{out}");
        // What is not a payload is still there.
        assert!(out.contains("raft_id=3"), "{out}");
    }

    /// A payload under a key this drain does not know, or formatted into
    /// the message, is redacted too; plain values are not.
    #[test]
    fn payloads_under_other_keys_or_in_the_message_are_redacted() {
        let e = entry();
        let out = logged(|l| {
            slog::debug!(l, "appending"; "first" => ?e, "term" => 2, "index" => 7);
            slog::debug!(l, "dropped {:?}", e);
        });
        assert_no_payload(&out);
        assert!(out.contains("first=<redacted>"), "{out}");
        assert!(out.contains("term=2") && out.contains("index=7"), "{out}");
        assert!(out.contains("<redacted> raft_id=3"), "{out}");
    }
}

//! raft-rs logs through slog; this drain hands its records to `tracing`.

/// Bridges raft-rs's slog records into `tracing`, one level quieter (raft's
/// "info" is chatty: every election and probe).
pub(super) struct TracingDrain {
    pub(super) id: u64,
}

pub(super) struct KvString(String);

impl slog::Serializer for KvString {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        use std::fmt::Write;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        use slog::KV;
        let enabled = match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::enabled!(tracing::Level::WARN),
            slog::Level::Warning | slog::Level::Info => tracing::enabled!(tracing::Level::DEBUG),
            _ => tracing::enabled!(tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvString(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let id = self.id;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::warn!(raft_id = id, "raft: {}{}", record.msg(), kv.0)
            }
            slog::Level::Warning | slog::Level::Info => {
                tracing::debug!(raft_id = id, "raft: {}{}", record.msg(), kv.0)
            }
            _ => tracing::trace!(raft_id = id, "raft: {}{}", record.msg(), kv.0),
        }
        Ok(())
    }
}

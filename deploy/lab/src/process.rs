//! Processes by PID, never by name: reading /proc/<pid>/stat to tell a
//! live process from a zombie, a stopped one, or a stranger that reused
//! the PID; and signalling only after that check.

use std::fs;

use crate::state::ProcessRecord;

/// What /proc says about a PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Process state letter (R, S, D, T, t, Z, ...).
    pub state: char,
    /// Start time in clock ticks after boot.
    pub start_time: u64,
}

/// Parses the text of /proc/<pid>/stat. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after the last ')'.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3) comes field 4; starttime is field 22.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
}

pub(crate) fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The record of a PID as it is now, to remember a process we just started.
pub(crate) fn record(pid: i32) -> Option<ProcessRecord> {
    read_stat(pid).map(|s| ProcessRecord {
        pid,
        start_time: s.start_time,
    })
}

/// The record of this process.
pub(crate) fn me() -> Option<ProcessRecord> {
    i32::try_from(std::process::id()).ok().and_then(record)
}

/// How a recorded process is doing, judged from /proc only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Same PID and start time, running or sleeping.
    Running,
    /// Same process, stopped (SIGSTOP).
    Stopped,
    /// Gone, a zombie, or the PID now belongs to another process.
    Gone,
}

pub(crate) fn liveness(rec: &ProcessRecord) -> Liveness {
    match read_stat(rec.pid) {
        Some(s) if s.start_time == rec.start_time => match s.state {
            'Z' | 'X' | 'x' => Liveness::Gone,
            'T' | 't' => Liveness::Stopped,
            _ => Liveness::Running,
        },
        _ => Liveness::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let text = "4242 (shoal (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 9 0 777123 1000 10 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                state: 'S',
                start_time: 777123
            })
        );
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("1 (x) R 1 2"), None);
        assert_eq!(parse_stat("1 (x"), None);
    }

    #[test]
    fn this_process_is_running_and_a_changed_start_time_is_not_it() {
        let rec = me().unwrap();
        assert_eq!(liveness(&rec), Liveness::Running);
        let stranger = ProcessRecord {
            start_time: rec.start_time + 1,
            ..rec
        };
        assert_eq!(liveness(&stranger), Liveness::Gone);
    }
}

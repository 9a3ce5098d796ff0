//! A workload's log: what it wrote to stdout and stderr, one record per
//! line in docker's `json-file` format
//! (`{"log":"…\n","stream":"stdout","time":"…Z"}`), with the time it was
//! read.
//!
//! The writer is [`run_logger`]: the logging binary containerd's shim
//! starts for a container (`binary://` stdio, so it lives with the shim
//! and outlives a daemon restart), or the daemon starts beside a host
//! process. Times are strictly increasing within a log, so a reader's
//! cursor is the time of the last record it saw ([`read`] with `after`).
//! A log is bounded: past [`MAX_FILE`] the file moves to `<path>.1` (the
//! previous `.1` goes) and a new one starts.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Size at which a log file is rotated (two files are kept).
pub const MAX_FILE: u64 = 8 << 20;
/// Longest line kept as one record; longer output is split (as docker's
/// 16 KiB partial messages).
const MAX_LINE: usize = 16 << 10;

/// One line a workload wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Nanoseconds since the Unix epoch when the line was read.
    pub time: i64,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub line: String,
}

/// The file format: docker's `json-file`.
#[derive(Serialize, Deserialize)]
struct JsonLine {
    log: String,
    stream: String,
    time: String,
}

/// RFC 3339 with nine fractional digits (docker's `--timestamps`):
/// `2026-12-01T13:51:30.000000042Z`.
fn format_time(nanos: i64) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(nanos.into()) else {
        return nanos.to_string();
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

fn parse_time(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos()).ok())
}

impl Record {
    /// The time as docker's `--timestamps` shows it.
    pub fn stamp(&self) -> String {
        format_time(self.time)
    }

    fn encode(&self) -> String {
        let j = JsonLine {
            log: format!("{}\n", self.line),
            stream: self.stream.clone(),
            time: format_time(self.time),
        };
        // A struct of strings always serializes.
        serde_json::to_string(&j).unwrap_or_default()
    }

    /// A line of a log file; anything that is not a record (a torn write
    /// at a crash) is `None`, and skipped by [`read`].
    pub fn decode(text: &str) -> Option<Record> {
        let j: JsonLine = serde_json::from_str(text).ok()?;
        Some(Record {
            time: parse_time(&j.time)?,
            stream: j.stream,
            line: j.log.strip_suffix('\n').unwrap_or(&j.log).to_string(),
        })
    }
}

/// Appends records with strictly increasing times and rotates the file.
struct Writer {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    last: i64,
}

impl Writer {
    fn open(path: &Path) -> std::io::Result<Writer> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        // A log that existed (a restarted logger): continue after its
        // last record, so times stay increasing.
        let last = read(path, None, Some(1))
            .last()
            .map_or(0, |r: &Record| r.time);
        Ok(Writer {
            path: path.to_path_buf(),
            file,
            size,
            last,
        })
    }

    fn write(&mut self, stream: &str, line: &str) -> std::io::Result<()> {
        let now =
            i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX);
        self.last = now.max(self.last + 1);
        let mut text = Record {
            time: self.last,
            stream: stream.into(),
            line: line.into(),
        }
        .encode();
        text.push('\n');
        if self.size > 0 && self.size + text.len() as u64 > MAX_FILE {
            std::fs::rename(&self.path, rotated(&self.path))?;
            self.file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(text.as_bytes())?;
        self.size += text.len() as u64;
        Ok(())
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Copies `input` to the log as records of `stream` until it ends.
fn copy(input: impl Read, stream: &str, out: &Mutex<Writer>) -> std::io::Result<()> {
    let mut input = BufReader::new(input);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut input)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let line = String::from_utf8_lossy(buf.strip_suffix(b"\n").unwrap_or(&buf));
        let mut w = out.lock().map_err(|_| std::io::Error::other("log lock"))?;
        w.write(stream, &line)?;
    }
}

/// The logging process: records what arrives on its inputs in `path`
/// until they end. As containerd's logging binary (`CONTAINER_ID` set),
/// stdout is fd 3 and stderr fd 4, and a byte on fd 5 says it is ready;
/// beside a host process, stdin carries stdout and stderr together.
pub fn run_logger(path: &Path) -> std::io::Result<()> {
    let out = Arc::new(Mutex::new(Writer::open(path)?));
    if std::env::var_os("CONTAINER_ID").is_none() {
        return copy(std::io::stdin().lock(), "stdout", &out);
    }
    // The descriptors the shim passed, opened again through /proc (no
    // unsafe adoption of raw descriptors).
    let fd = |n: u8, write: bool| {
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open(format!("/proc/self/fd/{n}"))
    };
    let (stdout, stderr) = (fd(3, false)?, fd(4, false)?);
    fd(5, true)?.write_all(b"r")?;
    let o = out.clone();
    let errs = std::thread::spawn(move || copy(stderr, "stderr", &o));
    let r = copy(stdout, "stdout", &out);
    let e = errs
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("stderr copier panicked")));
    r.and(e)
}

/// The records of a log (its rotated part first) after time `after`, the
/// last `tail` of them if given. A missing log has none.
pub fn read(path: &Path, after: Option<i64>, tail: Option<usize>) -> Vec<Record> {
    let mut out = Vec::new();
    for p in [rotated(path), path.to_path_buf()] {
        let Ok(f) = std::fs::File::open(&p) else {
            continue;
        };
        let mut f = BufReader::new(f);
        if tail.is_some() && after.is_none() {
            // Only the end is needed: skip what cannot be in the tail.
            if let (Some(n), Ok(len)) = (tail, f.get_ref().metadata().map(|m| m.len())) {
                // A record is at most MAX_LINE escaped (up to 6 bytes a
                // character) plus its frame.
                let need = (n as u64 + 1).saturating_mul(MAX_LINE as u64 * 7);
                if len > need && f.seek(SeekFrom::Start(len - need)).is_ok() {
                    let mut partial = Vec::new();
                    let _ = f.read_until(b'\n', &mut partial);
                }
            }
        }
        for line in f.lines() {
            let Ok(line) = line else { break };
            if let Some(r) = Record::decode(&line) {
                if after.is_none_or(|a| r.time > a) {
                    out.push(r);
                }
            }
        }
    }
    if let Some(n) = tail {
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
    }
    out
}

/// Removes a log and its rotated part.
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(rotated(path));
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_docker_json_file_lines() {
        let r = Record {
            time: 1_764_597_090_000_000_042,
            stream: "stderr".into(),
            line: "he said \"hi\"".into(),
        };
        let text = r.encode();
        assert_eq!(
            text,
            r#"{"log":"he said \"hi\"\n","stream":"stderr","time":"2025-12-01T13:51:30.000000042Z"}"#
        );
        assert_eq!(Record::decode(&text), Some(r));
        assert_eq!(Record::decode("{\"log\":\"torn"), None);
    }

    #[test]
    fn times_increase_and_reads_resume_after_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.log");
        let out = Mutex::new(Writer::open(&p).unwrap());
        copy(&b"one\ntwo\nthree"[..], "stdout", &out).unwrap();
        let all = read(&p, None, None);
        let lines: Vec<_> = all.iter().map(|r| r.line.as_str()).collect();
        assert_eq!(lines, ["one", "two", "three"]);
        assert!(all.windows(2).all(|w| w[0].time < w[1].time));
        let after = read(&p, Some(all[0].time), None);
        assert_eq!(after.len(), 2);
        assert_eq!(read(&p, None, Some(1))[0].line, "three");
        // A restarted writer continues after the last time.
        assert_eq!(Writer::open(&p).unwrap().last, all[2].time);
    }

    #[test]
    fn a_full_file_rotates_and_both_parts_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.log");
        let mut w = Writer::open(&p).unwrap();
        let line = "x".repeat(1000);
        let n = (MAX_FILE / 1000) as usize + 10;
        for _ in 0..n {
            w.write("stdout", &line).unwrap();
        }
        assert!(rotated(&p).exists());
        assert!(std::fs::metadata(&p).unwrap().len() < MAX_FILE);
        let all = read(&p, None, None);
        assert_eq!(all.len(), n);
        assert_eq!(read(&p, None, Some(3)).len(), 3);
        // Another rotation drops the oldest part: the log stays bounded.
        for _ in 0..n {
            w.write("stdout", &line).unwrap();
        }
        assert!(read(&p, None, None).len() < 2 * n);
        remove(&p);
        assert!(read(&p, None, None).is_empty());
    }

    #[test]
    fn long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.log");
        let out = Mutex::new(Writer::open(&p).unwrap());
        let long = "y".repeat(MAX_LINE + 5);
        copy(long.as_bytes(), "stdout", &out).unwrap();
        let all = read(&p, None, None);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].line.len(), MAX_LINE);
        assert_eq!(all[1].line.len(), 5);
    }
}

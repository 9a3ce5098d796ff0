//! `shoal logs` and `shoal service logs`: print what workloads wrote
//! (stdout lines to stdout, stderr lines to stderr, as docker does), with
//! `--timestamps`, and `--follow` by calling again with the cursors the
//! daemon returned until interrupted (or, for `logs`, until the workload
//! is gone).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use shoal_api::client::{self, ClientError};
use shoal_api::{ErrorCode, LogLine, Request, Response};

use super::LogArgs;

/// How often `--follow` asks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// One line as docker prints it: `[TIME ][CONTEXT    | ]LINE`.
fn format(l: &LogLine, timestamps: bool) -> String {
    let mut s = String::new();
    if timestamps {
        s.push_str(&l.stamp);
        s.push(' ');
    }
    if !l.context.is_empty() {
        s.push_str(&l.context);
        s.push_str("    | ");
    }
    s.push_str(&l.line);
    s.push('\n');
    s
}

/// Prints the lines `request` (given the cursors so far) returns; with
/// `--follow`, keeps asking.
pub async fn print(
    host: &Path,
    opts: &LogArgs,
    request: impl Fn(&BTreeMap<String, i64>) -> Request,
) -> Result<(), ClientError> {
    let mut cursors = BTreeMap::new();
    let mut reported = BTreeSet::new();
    let mut first = true;
    loop {
        let answer = client::call(host, request(&cursors)).await;
        let (lines, next, errors) = match answer {
            Ok(Response::Logs {
                lines,
                cursors,
                errors,
            }) => (lines, cursors, errors),
            Ok(other) => return Err(ClientError::Unexpected(format!("{other:?}"))),
            // The workload ended while followed: done, as `docker logs -f`.
            Err(ClientError::Api(e)) if !first && e.code == ErrorCode::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for l in &lines {
            let text = format(l, opts.timestamps);
            let written = if l.stream == "stderr" {
                std::io::stderr().write_all(text.as_bytes())
            } else {
                std::io::stdout().write_all(text.as_bytes())
            };
            if written.is_err() {
                return Ok(()); // the reader went away (a closed pipe)
            }
        }
        let _ = std::io::stdout().flush();
        for e in errors {
            if reported.insert(e.clone()) {
                eprintln!("error from daemon in stream: {e}");
            }
        }
        if !opts.follow {
            return Ok(());
        }
        cursors.extend(next);
        first = false;
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_print_as_docker_prints_them() {
        let l = LogLine {
            context: "web.1.abc@node1".into(),
            time: 1,
            stamp: "2026-12-01T13:51:30.000000001Z".into(),
            stream: "stdout".into(),
            line: "hello".into(),
        };
        assert_eq!(format(&l, false), "web.1.abc@node1    | hello\n");
        assert_eq!(
            format(&l, true),
            "2026-12-01T13:51:30.000000001Z web.1.abc@node1    | hello\n"
        );
        let plain = LogLine {
            context: String::new(),
            ..l
        };
        assert_eq!(
            format(&plain, true),
            "2026-12-01T13:51:30.000000001Z hello\n"
        );
    }
}

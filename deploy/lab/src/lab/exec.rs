//! Running things inside a host: a command in the host's namespace with
//! `SHOAL_HOST` and PATH set for its daemon, the shoal CLI there, and the
//! small command helpers (`run` feeds a script to `ip`/`nft` and turns a
//! failure into a [`LabError`]) the rest of the lab builds on.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::LabError;
use crate::names::HostId;

use super::Lab;

impl Lab {
    /// A command that runs `argv` inside the host's namespace, with
    /// `SHOAL_HOST` set to the host's daemon socket and the shoal binary's
    /// directory first in PATH. The caller picks stdio and runs it.
    pub fn command<S: AsRef<OsStr>>(
        &self,
        host: impl Into<HostId>,
        argv: &[S],
    ) -> Result<Command, LabError> {
        let g = self.lock();
        let h = g.host(host.into())?;
        let mut cmd = Command::new(&g.ip);
        cmd.arg("netns").arg("exec").arg(&h.ns).args(argv);
        cmd.env("SHOAL_HOST", &h.socket)
            .env("PATH", path_with(&g.state.shoal_bin));
        Ok(cmd)
    }

    /// Runs `argv` in the host's namespace (see [`Lab::command`]) and
    /// collects its output. A non-zero exit is not an error here: look at
    /// `output.status`.
    pub fn exec<S: AsRef<OsStr>>(
        &self,
        host: impl Into<HostId>,
        argv: &[S],
    ) -> Result<Output, LabError> {
        let mut cmd = self.command(host, argv)?;
        cmd.stdin(Stdio::null())
            .output()
            .map_err(|e| LabError::io(format!("running {}", show(&cmd)), e))
    }

    /// Runs the shoal CLI with `args` in the host's namespace, talking to
    /// that host's daemon: `lab.shoal(1, &["--format", "json", "info"])`.
    pub fn shoal<S: AsRef<OsStr>>(
        &self,
        host: impl Into<HostId>,
        args: &[S],
    ) -> Result<Output, LabError> {
        let mut argv: Vec<OsString> = vec![self.shoal_bin().into_os_string()];
        argv.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        self.exec(host, &argv)
    }
}

/// PATH with the shoal binary's directory first.
pub(super) fn path_with(shoal_bin: &Path) -> OsString {
    let mut dirs: Vec<PathBuf> = shoal_bin
        .parent()
        .map(Path::to_path_buf)
        .into_iter()
        .collect();
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

pub(super) fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with `stdin` fed in; a non-zero exit becomes an error.
pub(super) fn run(cmd: &mut Command, what: &str, stdin: &str) -> Result<(), LabError> {
    let line = show(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::io(format!("{what}: running {line}"), e))?;
    if let Some(mut input) = child.stdin.take() {
        // A failed write shows up as the command's own error below.
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io(format!("{what}: waiting for {line}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(LabError::Command {
        what: what.to_string(),
        cmd: line,
        stderr: if err.is_empty() {
            out.status.to_string()
        } else {
            err
        },
    })
}

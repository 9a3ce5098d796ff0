//! `shoal exec [-i] [-t] WORKLOAD -- CMD…`: runs a command in a container
//! on this node and relays its stdio over the daemon connection
//! ([`ExecFrame`]s): output as it comes (stdout and stderr apart), stdin
//! with `-i`, and with `-t` a terminal — the local one in raw mode, its
//! size sent at the start and on every SIGWINCH. Exits with the
//! command's status (126 when it could not be started, as docker).

use std::io::{IsTerminal, Write};
use std::path::Path;

use rustix::termios::{tcgetattr, tcgetwinsize, tcsetattr, OptionalActions, Termios};
use shoal_api::client::{self, ClientError};
use shoal_api::{self as api, ErrorCode, ExecFrame, Request, Response};
use tokio::io::AsyncReadExt;

/// The local terminal in raw mode until dropped.
struct RawMode(Termios);

impl RawMode {
    fn enter() -> std::io::Result<RawMode> {
        let stdin = std::io::stdin();
        let orig = tcgetattr(&stdin)?;
        let mut raw = orig.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(RawMode(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.0);
    }
}

/// The local terminal's size, if stdout is one.
fn size() -> Option<ExecFrame> {
    let w = tcgetwinsize(std::io::stdout()).ok()?;
    (w.ws_col > 0).then_some(ExecFrame::Resize {
        width: w.ws_col,
        height: w.ws_row,
    })
}

/// Runs the exec: the process exit code.
pub async fn run(
    host: &Path,
    workload: &str,
    argv: &[String],
    interactive: bool,
    tty: bool,
) -> i32 {
    if tty && interactive && !std::io::stdin().is_terminal() {
        eprintln!("Error: the input device is not a TTY");
        return 1;
    }
    match relay(host, workload, argv, interactive, tty).await {
        Ok(code) => code,
        Err((code, e)) => {
            eprintln!("Error: {e}");
            code
        }
    }
}

async fn relay(
    host: &Path,
    workload: &str,
    argv: &[String],
    interactive: bool,
    tty: bool,
) -> Result<i32, (i32, String)> {
    let broken = |e: api::FrameError| {
        (
            1,
            format!("talking to shoal daemon at {}: {e}", host.display()),
        )
    };
    let request = Request::Exec {
        workload: workload.into(),
        argv: argv.to_vec(),
        interactive,
        tty,
    };
    let stream = match client::open(host, request).await {
        Ok((Response::ExecStarted, stream)) => stream,
        Ok((other, _)) => return Err((1, format!("unexpected response from daemon: {other:?}"))),
        Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => return Err((1, e.message)),
        Err(ClientError::Api(e)) => return Err((126, e.message)),
        Err(e) => return Err((1, e.to_string())),
    };
    let (mut rd, mut wr) = stream.into_split();
    let raw = if tty && std::io::stdin().is_terminal() {
        Some(RawMode::enter().map_err(|e| (1, format!("terminal: {e}")))?)
    } else {
        None
    };
    // One writer for the frames we send: stdin and resizes. It keeps the
    // connection's write half open to the end (dropping it would shut the
    // connection down for writing).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ExecFrame>(16);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if api::write_frame(&mut wr, &f).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
        drop(wr);
    });
    if tty {
        if let Some(s) = size() {
            let _ = tx.send(s).await;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(s) = size() {
                    if tx.send(s).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    if interactive {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(ExecFrame::StdinEnd).await;
                        return;
                    }
                    Ok(n) => {
                        if tx.send(ExecFrame::Stdin(buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    drop(tx);
    let code = loop {
        match api::read_frame::<_, ExecFrame>(&mut rd).await {
            Ok(ExecFrame::Stdout(b)) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&b).and_then(|_| out.flush());
            }
            Ok(ExecFrame::Stderr(b)) => {
                let _ = std::io::stderr().write_all(&b);
            }
            Ok(ExecFrame::Exit(code)) => break Ok(code),
            Ok(_) => {}
            Err(e) => break Err(broken(e)),
        }
    };
    drop(raw);
    code
}

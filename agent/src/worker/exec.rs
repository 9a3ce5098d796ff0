//! `shoal exec`: a command in a workload's container, its stdio relayed
//! over the CLI's connection. The daemon makes a FIFO per stream in the
//! run dir, holds their other ends, and has containerd start the exec on
//! them (`-t`: a terminal, one output stream); then [`Exec::relay`] turns
//! output into [`ExecFrame`]s, frames from the client into stdin and
//! terminal resizes, and ends with the exit status. A client that goes
//! away (output cannot reach it) takes its command with it (SIGKILL).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_api::{self as api, ApiError, ErrorCode, ExecFrame};
use shoal_runtime::{ExecIo, Runtime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tracing::debug;

/// A started exec and our ends of its FIFOs.
pub struct Exec {
    rt: Arc<Runtime>,
    container: String,
    id: String,
    dir: PathBuf,
    stdin: Option<pipe::Sender>,
    stdout: pipe::Receiver,
    stderr: Option<pipe::Receiver>,
}

fn fifo(dir: &Path, name: &str) -> Result<PathBuf, ApiError> {
    let p = dir.join(name);
    nix::unistd::mkfifo(
        &p,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .map_err(|e| ApiError::internal(format!("exec: cannot make {}: {e}", p.display())))?;
    Ok(p)
}

fn internal(what: &str) -> impl Fn(std::io::Error) -> ApiError + '_ {
    move |e| ApiError::internal(format!("exec: {what}: {e}"))
}

impl Exec {
    /// Makes the FIFOs in `dir`, opens our ends and starts `argv` in
    /// `container`.
    pub async fn start(
        rt: Arc<Runtime>,
        container: String,
        argv: &[String],
        dir: PathBuf,
        interactive: bool,
        tty: bool,
    ) -> Result<Exec, ApiError> {
        std::fs::create_dir(&dir).map_err(internal("run dir"))?;
        let opened = async {
            let mut io = ExecIo {
                terminal: tty,
                ..Default::default()
            };
            let stdin = if interactive {
                let p = fifo(&dir, "in")?;
                io.stdin = p.display().to_string();
                // Read-write: opening does not wait for the shim's end.
                Some(
                    pipe::OpenOptions::new()
                        .read_write(true)
                        .open_sender(&p)
                        .map_err(internal("stdin"))?,
                )
            } else {
                None
            };
            let p = fifo(&dir, "out")?;
            io.stdout = p.display().to_string();
            let stdout = pipe::OpenOptions::new()
                .open_receiver(&p)
                .map_err(internal("stdout"))?;
            let stderr = if tty {
                None
            } else {
                let p = fifo(&dir, "err")?;
                io.stderr = p.display().to_string();
                Some(
                    pipe::OpenOptions::new()
                        .open_receiver(&p)
                        .map_err(internal("stderr"))?,
                )
            };
            let id = rt.exec_start(&container, argv, &io).await.map_err(|e| {
                let code = match e {
                    shoal_runtime::RuntimeError::NoSuchContainer(_) => ErrorCode::NotFound,
                    _ => ErrorCode::Invalid,
                };
                ApiError::new(code, e.to_string())
            })?;
            Ok::<_, ApiError>((id, stdin, stdout, stderr))
        }
        .await;
        match opened {
            Ok((id, stdin, stdout, stderr)) => Ok(Exec {
                rt,
                container,
                id,
                dir,
                stdin,
                stdout,
                stderr,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The client went away before the relay began: the command goes.
    pub async fn abandon(self) {
        self.rt.exec_kill(&self.container, &self.id).await;
        let _ = self.rt.exec_wait(&self.container, &self.id).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Relays until the command ends: its output to `wr`, the client's
    /// frames from `rd` to it; the last frame is its exit status.
    pub async fn relay<R, W>(self, mut rd: R, mut wr: W)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin,
    {
        let Exec {
            rt,
            container,
            id,
            dir,
            stdin,
            stdout,
            stderr,
        } = self;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ExecFrame>(16);
        tokio::spawn(pump(stdout, tx.clone(), ExecFrame::Stdout));
        if let Some(e) = stderr {
            tokio::spawn(pump(e, tx.clone(), ExecFrame::Stderr));
        }
        drop(tx);
        let waiter = {
            let (rt, c, id) = (rt.clone(), container.clone(), id.clone());
            tokio::spawn(async move { rt.exec_wait(&c, &id).await })
        };
        // The client's frames: stdin, its end, resizes. The end of them
        // ends stdin only (a client gone for good shows when writing to
        // it fails).
        let input = {
            let (rt, c, id) = (rt.clone(), container.clone(), id.clone());
            tokio::spawn(async move {
                let mut stdin = stdin;
                loop {
                    match api::read_frame::<_, ExecFrame>(&mut rd).await {
                        Ok(ExecFrame::Stdin(b)) => {
                            if let Some(s) = stdin.as_mut() {
                                if s.write_all(&b).await.is_err() {
                                    stdin = None;
                                }
                            }
                        }
                        Ok(ExecFrame::StdinEnd) => {
                            // What was written is in the FIFO before the close.
                            if let Some(mut s) = stdin.take() {
                                let _ = s.flush().await;
                            }
                            let _ = rt.exec_close_stdin(&c, &id).await;
                        }
                        Ok(ExecFrame::Resize { width, height }) => {
                            let _ = rt.exec_resize(&c, &id, width.into(), height.into()).await;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            if stdin.take().is_some() {
                                let _ = rt.exec_close_stdin(&c, &id).await;
                            }
                            return;
                        }
                    }
                }
            })
        };
        let mut client_gone = false;
        while let Some(f) = rx.recv().await {
            if api::write_frame(&mut wr, &f).await.is_err() {
                client_gone = true;
                break;
            }
        }
        if client_gone {
            debug!(exec = %id, "the exec's client went away: killing it");
            rt.exec_kill(&container, &id).await;
        }
        let code = match waiter.await {
            Ok(Ok(code)) => code,
            Ok(Err(e)) => {
                debug!(exec = %id, "waiting for the exec: {e}");
                -1
            }
            Err(_) => -1,
        };
        input.abort();
        if !client_gone {
            let _ = api::write_frame(&mut wr, &ExecFrame::Exit(code)).await;
            let _ = wr.flush().await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Copies a FIFO's bytes into frames until it ends.
async fn pump(
    mut from: pipe::Receiver,
    to: tokio::sync::mpsc::Sender<ExecFrame>,
    frame: fn(Vec<u8>) -> ExecFrame,
) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.send(frame(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

//! The CLI side of the local API: one connection per command.

use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

use crate::{
    self as api, ApiError, Request, RequestFrame, Response, ResponseFrame, PROTOCOL_VERSION,
};

/// Why a command could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("cannot reach shoal daemon at {}: is `shoal daemon` running?", .0.display())]
    Unreachable(PathBuf),
    /// The daemon answered with an error.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// The connection broke or carried garbage.
    #[error("talking to shoal daemon at {}: {source}", path.display())]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// What broke.
        source: api::FrameError,
    },
    /// The daemon answered with a response of another kind.
    #[error("unexpected response from daemon: {0}")]
    Unexpected(String),
}

/// Send one request to the daemon at `socket` and wait for its answer.
pub async fn call(socket: &Path, request: Request) -> Result<Response, ClientError> {
    open(socket, request).await.map(|(response, _)| response)
}

/// [`call`], keeping the connection: `exec` goes on on it.
pub async fn open(socket: &Path, request: Request) -> Result<(Response, UnixStream), ClientError> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|_| ClientError::Unreachable(socket.to_owned()))?;
    let proto = |source| ClientError::Protocol {
        path: socket.to_owned(),
        source,
    };
    api::write_frame(
        &mut stream,
        &RequestFrame {
            version: PROTOCOL_VERSION,
            request,
        },
    )
    .await
    .map_err(proto)?;
    let frame: ResponseFrame = api::read_frame(&mut stream).await.map_err(proto)?;
    Ok((frame.result?, stream))
}

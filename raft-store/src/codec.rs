//! Frames on raft peer streams.
//!
//! A frame is a `u32` big-endian payload length followed by the payload:
//!
//! ```text
//! u8 version (1) | u64 from | u8 addr_len | addr (UTF-8 "ip:port") |
//! u32 count | count x (u32 len | protobuf raft Message)
//! ```
//!
//! One frame carries a whole batch of messages (everything the Ready loop
//! queued for that peer), so a busy leader makes one write per peer per
//! Ready. The sender's id and advertised address ride in the header so a
//! manager that has just joined (and knows no addresses yet) can answer the
//! leader. Frames come from the network: every length is checked against
//! the bytes actually present before anything is allocated, and frames
//! above [`MAX_FRAME`] are refused.

use std::net::SocketAddr;

use protobuf::Message as PbMessage;
use raft::eraftpb::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::FrameError;

/// Largest accepted frame payload: snapshots travel as one message, and
/// 64 MiB bounds what a peer can make us allocate.
pub const MAX_FRAME: usize = 64 << 20;

const VERSION: u8 = 1;

/// A batch of raft messages from one peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Raft id of the sender.
    pub from: u64,
    /// The sender's raft address, when it knows it: lets the receiver reply
    /// before it has learned the membership.
    pub from_addr: Option<SocketAddr>,
    /// The messages, in send order.
    pub msgs: Vec<Message>,
}

/// Encodes a batch as a complete frame (length prefix included).
pub fn encode_batch(batch: &Batch) -> Result<Vec<u8>, FrameError> {
    let addr = batch.from_addr.map(|a| a.to_string()).unwrap_or_default();
    let mut out = Vec::with_capacity(64 + batch.msgs.len() * 64);
    out.extend_from_slice(&[0u8; 4]);
    out.push(VERSION);
    out.extend_from_slice(&batch.from.to_be_bytes());
    // A socket address is at most 47 bytes as text.
    out.push(u8::try_from(addr.len()).map_err(|_| FrameError::BadAddr)?);
    out.extend_from_slice(addr.as_bytes());
    let count = u32::try_from(batch.msgs.len()).map_err(|_| FrameError::TooLarge {
        len: batch.msgs.len() as u64,
        max: MAX_FRAME,
    })?;
    out.extend_from_slice(&count.to_be_bytes());
    for m in &batch.msgs {
        let bytes = m.write_to_bytes()?;
        let len = u32::try_from(bytes.len()).map_err(|_| FrameError::TooLarge {
            len: bytes.len() as u64,
            max: MAX_FRAME,
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    let payload = out.len() - 4;
    if payload > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: payload as u64,
            max: MAX_FRAME,
        });
    }
    let len = (payload as u32).to_be_bytes();
    out[..4].copy_from_slice(&len);
    Ok(out)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(b))
    }
}

/// Decodes a frame payload (without its length prefix).
pub fn decode_batch(payload: &[u8]) -> Result<Batch, FrameError> {
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: payload.len() as u64,
            max: MAX_FRAME,
        });
    }
    let mut r = Reader { buf: payload };
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let from = r.u64("sender id")?;
    let addr_len = r.u8("address length")? as usize;
    let addr = r.take(addr_len, "address")?;
    let from_addr = if addr.is_empty() {
        None
    } else {
        let s = std::str::from_utf8(addr).map_err(|_| FrameError::BadAddr)?;
        Some(s.parse().map_err(|_| FrameError::BadAddr)?)
    };
    let count = r.u32("message count")? as usize;
    // Each message needs at least its 4-byte length: do not trust `count`
    // for the allocation.
    if count > r.buf.len() / 4 {
        return Err(FrameError::Truncated("message count larger than the frame"));
    }
    let mut msgs = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.u32("message length")? as usize;
        let bytes = r.take(len, "message")?;
        msgs.push(Message::parse_from_bytes(bytes)?);
    }
    if !r.buf.is_empty() {
        return Err(FrameError::Trailing(r.buf.len()));
    }
    Ok(Batch {
        from,
        from_addr,
        msgs,
    })
}

/// Decodes one frame from the front of `buf` (length prefix included).
/// `Ok(None)` means more bytes are needed; on success also returns the number
/// of bytes consumed.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Batch, usize)>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let mut b = [0u8; 4];
    b.copy_from_slice(prefix);
    let len = u32::from_be_bytes(b) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME,
        });
    }
    let Some(payload) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((decode_batch(payload)?, 4 + len)))
}

/// Reads one frame from a stream. `Ok(None)` on a clean end of stream
/// between frames; a stream cut inside a frame is an error.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Batch>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated("length prefix"));
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME,
        });
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated("payload")
        } else {
            FrameError::Io(e)
        }
    })?;
    decode_batch(&payload).map(Some)
}

/// Writes one encoded frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)] // protobuf structs, built step by step
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, MessageType};

    fn sample() -> Batch {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = 1;
        m.to = 2;
        m.term = 7;
        let mut e = Entry::default();
        e.index = 3;
        e.term = 7;
        e.data = b"hello".to_vec().into();
        m.mut_entries().push(e);
        let mut h = Message::default();
        h.set_msg_type(MessageType::MsgHeartbeat);
        h.from = 1;
        h.to = 2;
        Batch {
            from: 1,
            from_addr: Some("127.0.0.1:2377".parse().unwrap()),
            msgs: vec![m, h],
        }
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let f = encode_batch(&b).unwrap();
        let (d, used) = decode_frame(&f).unwrap().unwrap();
        assert_eq!(used, f.len());
        assert_eq!(d, b);
        let empty = Batch::default();
        let f = encode_batch(&empty).unwrap();
        assert_eq!(decode_frame(&f).unwrap().unwrap().0, empty);
    }

    #[test]
    fn every_truncation_is_incomplete_or_an_error() {
        let f = encode_batch(&sample()).unwrap();
        for cut in 0..f.len() {
            assert!(matches!(decode_frame(&f[..cut]), Ok(None)), "cut {cut}");
            // A payload cut short (length prefix rewritten to match) must error.
            if cut > 4 {
                assert!(decode_batch(&f[4..cut]).is_err(), "payload cut {cut}");
            }
        }
    }

    #[test]
    fn oversized_frame_is_refused_without_allocating() {
        let mut f = vec![0xff, 0xff, 0xff, 0xff];
        f.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(decode_frame(&f), Err(FrameError::TooLarge { .. })));
        let len = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            decode_frame(&len),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn hostile_counts_and_lengths() {
        // count claims 2^32-1 messages in a tiny frame
        let mut p = vec![VERSION];
        p.extend_from_slice(&1u64.to_be_bytes());
        p.push(0);
        p.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_batch(&p).is_err());
        // one message claiming 4 GiB
        let mut p = vec![VERSION];
        p.extend_from_slice(&1u64.to_be_bytes());
        p.push(0);
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_batch(&p).is_err());
        // bad version, bad address, trailing bytes
        assert!(matches!(decode_batch(&[9]), Err(FrameError::Version(9))));
        let mut p = vec![VERSION];
        p.extend_from_slice(&1u64.to_be_bytes());
        p.push(3);
        p.extend_from_slice(b"x:y");
        p.extend_from_slice(&0u32.to_be_bytes());
        assert!(matches!(decode_batch(&p), Err(FrameError::BadAddr)));
        let mut f = encode_batch(&Batch::default()).unwrap();
        f.push(0);
        let len = ((f.len() - 4) as u32).to_be_bytes();
        f[..4].copy_from_slice(&len);
        assert!(matches!(decode_frame(&f), Err(FrameError::Trailing(1))));
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic pseudo-random garbage, plus bit flips of a valid frame.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 200) as usize;
            let buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode_batch(&buf);
            let _ = decode_frame(&buf);
            let mut p = vec![VERSION];
            p.extend_from_slice(&buf);
            let _ = decode_batch(&p);
        }
        let f = encode_batch(&sample()).unwrap();
        for i in 4..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[i] ^= 1 << bit;
                let _ = decode_frame(&g);
            }
        }
    }

    #[tokio::test]
    async fn stream_reader_handles_eof_and_truncation() {
        let f = encode_batch(&sample()).unwrap();
        let mut two = f.clone();
        two.extend_from_slice(&f);
        let mut r = &two[..];
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap(), sample());
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap(), sample());
        assert!(read_frame(&mut r).await.unwrap().is_none());
        let mut r = &f[..f.len() - 1];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::Truncated(_))
        ));
        let mut r = &f[..2];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::Truncated(_))
        ));
        let huge = [0xffu8; 4];
        let mut r = &huge[..];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::TooLarge { .. })
        ));
    }
}

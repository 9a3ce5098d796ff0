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
//!
//! A batch larger than one frame (a big snapshot) travels as consecutive
//! chunk frames, each `u8 version (2) | u64 total | u64 offset | bytes`,
//! whose bytes concatenate to the batch's version-1 payload; the receiver
//! grows its buffer only as chunks arrive, up to [`MAX_BATCH`].

use std::net::SocketAddr;

use protobuf::Message as PbMessage;
use raft::eraftpb::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::FrameError;

/// Largest accepted frame payload: snapshots travel as one message, and
/// 64 MiB bounds what a peer can make us allocate.
pub const MAX_FRAME: usize = 64 << 20;

const VERSION: u8 = 1;
/// Version byte of a chunk frame.
const CHUNK: u8 = 2;
/// Header of a chunk frame: version, total, offset.
const CHUNK_HEADER: usize = 1 + 8 + 8;
/// Largest batch (a snapshot) accepted in chunks.
pub const MAX_BATCH: usize = 1 << 30;

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

/// Encodes a batch as a complete frame (length prefix included); an error
/// when it does not fit one frame (see [`encode_frames`]).
pub fn encode_batch(batch: &Batch) -> Result<Vec<u8>, FrameError> {
    let payload = encode_payload(batch)?;
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: payload.len() as u64,
            max: MAX_FRAME,
        });
    }
    Ok(prefixed(&payload))
}

/// Encodes a batch as the frames to write, in order: one frame, or chunk
/// frames when it is larger than [`MAX_FRAME`].
pub fn encode_frames(batch: &Batch) -> Result<Vec<Vec<u8>>, FrameError> {
    encode_frames_max(batch, MAX_FRAME)
}

fn encode_frames_max(batch: &Batch, max_frame: usize) -> Result<Vec<Vec<u8>>, FrameError> {
    let payload = encode_payload(batch)?;
    if payload.len() <= max_frame {
        return Ok(vec![prefixed(&payload)]);
    }
    if payload.len() > MAX_BATCH {
        return Err(FrameError::TooLarge {
            len: payload.len() as u64,
            max: MAX_BATCH,
        });
    }
    let room = max_frame.saturating_sub(CHUNK_HEADER).max(1);
    let total = payload.len() as u64;
    Ok(payload
        .chunks(room)
        .enumerate()
        .map(|(i, part)| {
            let mut f = Vec::with_capacity(CHUNK_HEADER + part.len());
            f.push(CHUNK);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&((i * room) as u64).to_be_bytes());
            f.extend_from_slice(part);
            prefixed(&f)
        })
        .collect())
}

fn prefixed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The version-1 payload of a batch (no length prefix).
fn encode_payload(batch: &Batch) -> Result<Vec<u8>, FrameError> {
    let addr = batch.from_addr.map(|a| a.to_string()).unwrap_or_default();
    let mut out = Vec::with_capacity(64 + batch.msgs.len() * 64);
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
    if payload.len() > MAX_BATCH {
        return Err(FrameError::TooLarge {
            len: payload.len() as u64,
            max: MAX_BATCH,
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

/// Reads one batch from a stream (one frame, or the chunk frames of a
/// large one). `Ok(None)` on a clean end of stream between batches; a
/// stream cut inside one is an error.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Batch>, FrameError> {
    let mut assembling: Option<(usize, Vec<u8>)> = None;
    loop {
        let Some(payload) = read_payload(r, assembling.is_none()).await? else {
            return Ok(None);
        };
        if payload.first() != Some(&CHUNK) {
            if assembling.is_some() {
                return Err(FrameError::Chunk("a frame inside a chunked batch"));
            }
            return decode_batch(&payload).map(Some);
        }
        let mut h = Reader {
            buf: payload.get(1..).unwrap_or_default(),
        };
        let total = h.u64("chunk total")?;
        let offset = h.u64("chunk offset")?;
        let part = h.buf;
        if total > MAX_BATCH as u64 {
            return Err(FrameError::TooLarge {
                len: total,
                max: MAX_BATCH,
            });
        }
        let (want, buf) = assembling.get_or_insert_with(|| (total as usize, Vec::new()));
        if *want as u64 != total || buf.len() as u64 != offset || part.is_empty() {
            return Err(FrameError::Chunk("wrong total or offset"));
        }
        if buf.len() + part.len() > *want {
            return Err(FrameError::Chunk("more bytes than announced"));
        }
        buf.extend_from_slice(part);
        if buf.len() == *want {
            let (_, whole) = assembling.take().unwrap_or_default();
            return decode_batch(&whole).map(Some);
        }
    }
}

/// One frame's payload; `Ok(None)` on a clean end of stream before its
/// first byte when `may_end`.
async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    may_end: bool,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 && may_end {
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
    Ok(Some(payload))
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

    /// A batch carrying `n` bytes of snapshot data.
    fn big(n: usize) -> Batch {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.from = 1;
        m.to = 2;
        m.mut_snapshot().data = vec![0xab; n].into();
        Batch {
            from: 1,
            from_addr: None,
            msgs: vec![m],
        }
    }

    async fn read_all(frames: &[Vec<u8>]) -> Result<Option<Batch>, FrameError> {
        let bytes: Vec<u8> = frames.concat();
        let mut r = &bytes[..];
        read_frame(&mut r).await
    }

    #[tokio::test]
    async fn a_batch_larger_than_a_frame_travels_in_chunks() {
        let b = big(10_000);
        let frames = encode_frames_max(&b, 1_000).unwrap();
        assert!(frames.len() >= 10, "{} frames", frames.len());
        assert!(frames.iter().all(|f| f.len() <= 1_004));
        assert_eq!(read_all(&frames).await.unwrap().unwrap(), b);
        // A small batch is one ordinary frame.
        assert_eq!(
            encode_frames(&sample()).unwrap(),
            vec![encode_batch(&sample()).unwrap()]
        );
        // And batches follow each other on one stream.
        let mut two = encode_frames_max(&b, 1_000).unwrap();
        two.push(encode_batch(&sample()).unwrap());
        let bytes = two.concat();
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap(), b);
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap(), sample());
        assert!(read_frame(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn chunks_out_of_order_or_cut_short_are_errors() {
        let frames = encode_frames_max(&big(5_000), 1_000).unwrap();
        let mut swapped = frames.clone();
        swapped.swap(1, 2);
        assert!(matches!(
            read_all(&swapped).await,
            Err(FrameError::Chunk(_))
        ));
        let mut mixed = frames.clone();
        mixed.insert(1, encode_batch(&sample()).unwrap());
        assert!(matches!(read_all(&mixed).await, Err(FrameError::Chunk(_))));
        let cut = &frames[..frames.len() - 1];
        assert!(matches!(read_all(cut).await, Err(FrameError::Truncated(_))));
    }

    #[tokio::test]
    async fn a_chunk_announcing_a_huge_batch_is_refused_without_allocating() {
        let mut f = vec![CHUNK];
        f.extend_from_slice(&(u64::MAX).to_be_bytes());
        f.extend_from_slice(&0u64.to_be_bytes());
        f.extend_from_slice(b"x");
        let frame = prefixed(&f);
        assert!(matches!(
            read_all(&[frame]).await,
            Err(FrameError::TooLarge { .. })
        ));
    }
}

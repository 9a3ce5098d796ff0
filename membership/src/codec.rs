//! Bounded encoders/decoders for table updates (UDP broadcast items) and
//! anti-entropy frames (TCP). Decoders never trust a length: every count is
//! checked against the bytes actually left, and nothing is preallocated from
//! a number read off the wire.

use crate::types::{MAX_KEY_LEN, MAX_NODE_ID_LEN, MAX_TABLE_LEN, MAX_VALUE_LEN};

/// Why bytes from the network were rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Input ended in the middle of a field.
    #[error("truncated input")]
    Truncated,
    /// A varint longer than 10 bytes or overflowing u64.
    #[error("bad varint")]
    Varint,
    /// A string or byte field over its cap.
    #[error("{0} too long")]
    TooLong(&'static str),
    /// Not UTF-8 where a name was expected.
    #[error("{0} is not utf-8")]
    Utf8(&'static str),
    /// Unknown message or item tag.
    #[error("unknown tag {0}")]
    Tag(u8),
    /// Bytes left over after a complete message.
    #[error("trailing bytes")]
    Trailing,
    /// A structural rule was broken (e.g. bucket count not a power of two).
    #[error("invalid: {0}")]
    Invalid(&'static str),
    /// A compressed frame inflates past the limit (or is corrupt).
    #[error("bad compressed frame")]
    Inflate,
}

/// Append-only encoder.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
}

/// Cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        let (&v, rest) = self.b.split_first().ok_or(CodecError::Truncated)?;
        self.b = rest;
        Ok(v)
    }
    pub(crate) fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let byte = self.u8()?;
            let part = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(CodecError::Varint);
            }
            v |= part << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Varint)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.b.len() {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    pub(crate) fn u64(&mut self) -> Result<u64, CodecError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, CodecError> {
        let s = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(s);
        Ok(u32::from_le_bytes(a))
    }
    pub(crate) fn bytes(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        let n = self.varint()?;
        if n > max as u64 {
            return Err(CodecError::TooLong(what));
        }
        self.take(n as usize)
    }
    pub(crate) fn string(&mut self, max: usize, what: &'static str) -> Result<String, CodecError> {
        let b = self.bytes(max, what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| CodecError::Utf8(what))
    }
    /// A count of items each at least `min_item` bytes long: refuses counts
    /// the remaining input cannot possibly hold.
    pub(crate) fn count(&mut self, min_item: usize) -> Result<usize, CodecError> {
        let n = self.varint()?;
        if n.saturating_mul(min_item.max(1) as u64) > self.b.len() as u64 {
            return Err(CodecError::Truncated);
        }
        Ok(n as usize)
    }
    pub(crate) fn finish(&self) -> Result<(), CodecError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Trailing)
        }
    }
}

/// One table entry as it travels: a broadcast item or part of a sync frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WireEntry {
    pub(crate) table: String,
    pub(crate) key: String,
    pub(crate) owner: String,
    /// Generation of the owner's identity when it wrote the entry.
    pub(crate) gen: u64,
    pub(crate) version: u64,
    pub(crate) deleted: bool,
    pub(crate) value: Vec<u8>,
    /// The owner's signature over [`WireEntry::signed_bytes`] (empty when
    /// the cluster runs without entry authentication).
    pub(crate) sig: Vec<u8>,
}

const ITEM_ENTRY: u8 = 1;
/// Longest signature accepted (Ed25519: 64 bytes).
pub(crate) const MAX_SIG_LEN: usize = 64;
/// Domain of entry signatures.
const SIG_DOMAIN: &[u8] = b"shoal-gossip-entry/1";

impl WireEntry {
    pub(crate) fn write(&self, w: &mut Writer) {
        w.bytes(self.table.as_bytes());
        w.bytes(self.key.as_bytes());
        w.bytes(self.owner.as_bytes());
        w.varint(self.gen);
        w.varint(self.version);
        w.u8(u8::from(self.deleted));
        w.bytes(&self.value);
        w.bytes(&self.sig);
    }

    /// What the owner signs: every field but the signature, after a
    /// domain tag (so no other signed message of the node can pass as one).
    pub(crate) fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(SIG_DOMAIN);
        w.bytes(self.table.as_bytes());
        w.bytes(self.key.as_bytes());
        w.bytes(self.owner.as_bytes());
        w.varint(self.gen);
        w.varint(self.version);
        w.u8(u8::from(self.deleted));
        w.bytes(&self.value);
        w.buf
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let table = r.string(MAX_TABLE_LEN, "table")?;
        let key = r.string(MAX_KEY_LEN, "key")?;
        let owner = r.string(MAX_NODE_ID_LEN, "owner")?;
        let gen = r.varint()?;
        let version = r.varint()?;
        let deleted = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(CodecError::Invalid("deleted flag")),
        };
        let value = r.bytes(MAX_VALUE_LEN, "value")?.to_vec();
        if deleted && !value.is_empty() {
            return Err(CodecError::Invalid("tombstone with a value"));
        }
        let sig = r.bytes(MAX_SIG_LEN, "signature")?.to_vec();
        Ok(WireEntry {
            table,
            key,
            owner,
            gen,
            version,
            deleted,
            value,
            sig,
        })
    }

    /// Encodes as a foca custom broadcast item.
    pub(crate) fn to_item(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(ITEM_ENTRY);
        self.write(&mut w);
        w.buf
    }

    /// Decodes a foca custom broadcast item.
    pub(crate) fn from_item(data: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(data);
        match r.u8()? {
            ITEM_ENTRY => {}
            t => return Err(CodecError::Tag(t)),
        }
        let e = WireEntry::read(&mut r)?;
        r.finish()?;
        Ok(e)
    }
}

/// Short description of an entry's version for anti-entropy digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Digest {
    /// Hash of (table, key).
    pub(crate) hash: u64,
    pub(crate) version: u64,
    /// Hash of (owner, generation, deleted): tells equal-version twins apart.
    pub(crate) tag: u32,
}

/// Most buckets a summary may have.
pub(crate) const MAX_BUCKETS: usize = 4096;

/// One anti-entropy message. See `store` for the exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Initiator's opening: per bucket (xor of entry fingerprints, count).
    Summary { buckets: Vec<(u64, u32)> },
    /// Entries the other side lacks or has older.
    Entries(Vec<WireEntry>),
    /// Per differing bucket, the sender's digests.
    Digests(Vec<(u32, Vec<Digest>)>),
    /// Buckets the sender has nothing of: send all you have there.
    WantBuckets(Vec<u32>),
    /// Entries (by key hash) the sender wants.
    Want(Vec<u64>),
    /// End of this side's turn.
    End,
}

const F_SUMMARY: u8 = 1;
const F_ENTRIES: u8 = 2;
const F_DIGESTS: u8 = 3;
const F_WANT_BUCKETS: u8 = 4;
const F_WANT: u8 = 5;
const F_END: u8 = 6;

impl Frame {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Frame::Summary { buckets } => {
                w.u8(F_SUMMARY);
                w.varint(buckets.len() as u64);
                for (fp, count) in buckets {
                    w.u64(*fp);
                    w.varint(u64::from(*count));
                }
            }
            Frame::Entries(es) => {
                w.u8(F_ENTRIES);
                write_columns(&mut w, es);
            }
            Frame::Digests(bs) => {
                w.u8(F_DIGESTS);
                w.varint(bs.len() as u64);
                for (b, ds) in bs {
                    w.varint(u64::from(*b));
                    w.varint(ds.len() as u64);
                    for d in ds {
                        w.u64(d.hash);
                        w.varint(d.version);
                        w.u32(d.tag);
                    }
                }
            }
            Frame::WantBuckets(bs) => {
                w.u8(F_WANT_BUCKETS);
                w.varint(bs.len() as u64);
                for b in bs {
                    w.varint(u64::from(*b));
                }
            }
            Frame::Want(hs) => {
                w.u8(F_WANT);
                w.varint(hs.len() as u64);
                for h in hs {
                    w.u64(*h);
                }
            }
            Frame::End => w.u8(F_END),
        }
        w.buf
    }

    pub(crate) fn decode(data: &[u8]) -> Result<Frame, CodecError> {
        let mut r = Reader::new(data);
        let f = match r.u8()? {
            F_SUMMARY => {
                let n = r.count(9)?;
                if n == 0 || n > MAX_BUCKETS || !n.is_power_of_two() {
                    return Err(CodecError::Invalid("bucket count"));
                }
                let mut buckets = Vec::new();
                for _ in 0..n {
                    let fp = r.u64()?;
                    let c = u32::try_from(r.varint()?).map_err(|_| CodecError::Invalid("count"))?;
                    buckets.push((fp, c));
                }
                Frame::Summary { buckets }
            }
            F_ENTRIES => Frame::Entries(read_columns(&mut r)?),
            F_DIGESTS => {
                let n = r.count(2)?;
                let mut bs = Vec::new();
                for _ in 0..n {
                    let b = bucket(&mut r)?;
                    let m = r.count(13)?;
                    let mut ds = Vec::new();
                    for _ in 0..m {
                        ds.push(Digest {
                            hash: r.u64()?,
                            version: r.varint()?,
                            tag: r.u32()?,
                        });
                    }
                    bs.push((b, ds));
                }
                Frame::Digests(bs)
            }
            F_WANT_BUCKETS => {
                let n = r.count(1)?;
                let mut bs = Vec::new();
                for _ in 0..n {
                    bs.push(bucket(&mut r)?);
                }
                Frame::WantBuckets(bs)
            }
            F_WANT => {
                let n = r.count(8)?;
                let mut hs = Vec::new();
                for _ in 0..n {
                    hs.push(r.u64()?);
                }
                Frame::Want(hs)
            }
            F_END => Frame::End,
            t => return Err(CodecError::Tag(t)),
        };
        r.finish()?;
        Ok(f)
    }
}

/// Entries grouped by (table, owner, generation), each group stored column
/// by column (keys, version deltas, flags, values): names are sent once per
/// group and similar bytes sit together, which is what makes a compressed
/// full sync small.
fn write_columns(w: &mut Writer, es: &[WireEntry]) {
    let mut sorted: Vec<&WireEntry> = es.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.table, &a.owner, a.gen, a.version).cmp(&(&b.table, &b.owner, b.gen, b.version))
    });
    let groups: Vec<&[&WireEntry]> = sorted
        .chunk_by(|a, b| a.table == b.table && a.owner == b.owner && a.gen == b.gen)
        .collect();
    w.varint(groups.len() as u64);
    for g in groups {
        let Some(first) = g.first() else { continue };
        w.bytes(first.table.as_bytes());
        w.bytes(first.owner.as_bytes());
        w.varint(first.gen);
        w.varint(g.len() as u64);
        for e in g {
            w.bytes(e.key.as_bytes());
        }
        let mut prev = 0u64;
        for e in g {
            w.varint(e.version - prev);
            prev = e.version;
        }
        for e in g {
            w.u8(u8::from(e.deleted));
        }
        for e in g {
            w.bytes(&e.value);
        }
        for e in g {
            w.bytes(&e.sig);
        }
    }
}

fn read_columns(r: &mut Reader<'_>) -> Result<Vec<WireEntry>, CodecError> {
    let ngroups = r.count(5)?;
    let mut out = Vec::new();
    for _ in 0..ngroups {
        let table = r.string(MAX_TABLE_LEN, "table")?;
        let owner = r.string(MAX_NODE_ID_LEN, "owner")?;
        let gen = r.varint()?;
        // Each entry takes at least 5 bytes (key len, version, flag, value
        // len, signature len).
        let n = r.count(5)?;
        let start = out.len();
        for _ in 0..n {
            out.push(WireEntry {
                table: table.clone(),
                key: r.string(MAX_KEY_LEN, "key")?,
                owner: owner.clone(),
                gen,
                version: 0,
                deleted: false,
                value: Vec::new(),
                sig: Vec::new(),
            });
        }
        let mut prev = 0u64;
        for e in &mut out[start..] {
            prev = prev
                .checked_add(r.varint()?)
                .ok_or(CodecError::Invalid("version"))?;
            e.version = prev;
        }
        for e in &mut out[start..] {
            e.deleted = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(CodecError::Invalid("deleted flag")),
            };
        }
        for e in &mut out[start..] {
            e.value = r.bytes(MAX_VALUE_LEN, "value")?.to_vec();
            if e.deleted && !e.value.is_empty() {
                return Err(CodecError::Invalid("tombstone with a value"));
            }
        }
        for e in &mut out[start..] {
            e.sig = r.bytes(MAX_SIG_LEN, "signature")?.to_vec();
        }
    }
    Ok(out)
}

fn bucket(r: &mut Reader<'_>) -> Result<u32, CodecError> {
    let b = r.varint()?;
    if b >= MAX_BUCKETS as u64 {
        return Err(CodecError::Invalid("bucket index"));
    }
    Ok(b as u32)
}

/// Largest frame body inflated from the wire.
pub(crate) const MAX_INFLATED: usize = 4 << 20;

/// Frame body on TCP: flag byte (0 = raw, 1 = deflate) then the payload.
pub(crate) fn pack(raw: &[u8]) -> Vec<u8> {
    if raw.len() < 256 {
        let mut out = Vec::with_capacity(raw.len() + 1);
        out.push(0);
        out.extend_from_slice(raw);
        return out;
    }
    let mut out = vec![1u8];
    out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(raw, 6));
    out
}

/// Inverse of [`pack`], refusing to inflate past [`MAX_INFLATED`].
pub(crate) fn unpack(body: &[u8]) -> Result<Vec<u8>, CodecError> {
    let (&flag, rest) = body.split_first().ok_or(CodecError::Truncated)?;
    match flag {
        0 => Ok(rest.to_vec()),
        1 => miniz_oxide::inflate::decompress_to_vec_with_limit(rest, MAX_INFLATED)
            .map_err(|_| CodecError::Inflate),
        t => Err(CodecError::Tag(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand10::{Rng, RngExt, SeedableRng};

    fn entry(i: u32) -> WireEntry {
        WireEntry {
            table: "ep/net1".into(),
            key: format!("k{i}"),
            owner: "node-a".into(),
            gen: 3,
            version: 1_700_000_000_000 + u64::from(i),
            deleted: false,
            value: vec![i as u8; 20],
            sig: vec![(i % 7) as u8; 64],
        }
    }

    #[test]
    fn item_round_trip() {
        let e = entry(1);
        assert_eq!(WireEntry::from_item(&e.to_item()).unwrap(), e);
        let t = WireEntry {
            deleted: true,
            value: vec![],
            ..entry(2)
        };
        assert_eq!(WireEntry::from_item(&t.to_item()).unwrap(), t);
    }

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            Frame::Summary {
                buckets: vec![(1, 2), (u64::MAX, 0)],
            },
            Frame::Entries((0..50).map(entry).collect()),
            Frame::Digests(vec![(
                3,
                vec![Digest {
                    hash: 9,
                    version: 10,
                    tag: 11,
                }],
            )]),
            Frame::WantBuckets(vec![0, 4095]),
            Frame::Want(vec![1, 2, 3]),
            Frame::End,
        ];
        for f in frames {
            let raw = f.encode();
            assert_eq!(Frame::decode(&raw).unwrap(), f);
            assert_eq!(Frame::decode(&unpack(&pack(&raw)).unwrap()).unwrap(), f);
        }
    }

    #[test]
    fn hostile_frames_and_items_never_panic() {
        let mut rng = rand10::rngs::SmallRng::seed_from_u64(7);
        let good: Vec<Vec<u8>> = vec![
            entry(5).to_item(),
            Frame::Entries((0..20).map(entry).collect()).encode(),
            Frame::Summary {
                buckets: vec![(5, 5); 16],
            }
            .encode(),
            Frame::Want(vec![7; 10]).encode(),
        ];
        for i in 0..20_000 {
            let mut p = good[i % good.len()].clone();
            match (i / good.len()) % 4 {
                0 => p.truncate(rng.random_range(0..p.len())),
                1 => {
                    for _ in 0..rng.random_range(1..4) {
                        let bit = rng.random_range(0..p.len() * 8);
                        p[bit / 8] ^= 1 << (bit % 8);
                    }
                }
                2 => {
                    p = (0..rng.random_range(0..1500))
                        .map(|_| rng.next_u32() as u8)
                        .collect()
                }
                _ => {
                    // Huge claimed lengths / counts.
                    p.truncate(1);
                    p.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
                }
            }
            let _ = WireEntry::from_item(&p);
            let _ = Frame::decode(&p);
            let _ = unpack(&p);
        }
    }

    #[test]
    fn inflate_is_bounded() {
        let bomb = pack(&vec![0u8; MAX_INFLATED + 1]);
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(unpack(&bomb), Err(CodecError::Inflate));
    }
}

//! How snapshots ([`crate::state::State`]) and Raft commands
//! ([`crate::state::Command`]) are written: CBOR, which names every field,
//! behind the CBOR self-describe tag (`D9 D9 F7`). A field added later with
//! `#[serde(default)]` reads from older bytes, so the model can grow
//! without a frozen copy of each layout.
//!
//! Bytes without the tag come from releases that wrote bincode; the
//! callers read those through the layouts kept in [`crate::legacy`].

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The CBOR self-describe tag (55799) every encoding starts with. No
/// bincode layout of a snapshot or command starts with these bytes (the
/// first is an `Option` tag or a small enum index there).
pub const MAGIC: [u8; 3] = [0xd9, 0xd9, 0xf7];

/// Deepest nesting a decoded value may have (input from disk and peers).
const RECURSION_LIMIT: usize = 128;

/// `MAGIC` followed by the CBOR of `v`.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    let mut out = MAGIC.to_vec();
    ciborium::into_writer(v, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// `None` when `data` is not in this format (an older bincode layout);
/// else the value, or why it does not decode. The decoder allocates in
/// step with the bytes it reads, never with lengths the input claims.
pub fn decode<T: DeserializeOwned>(data: &[u8]) -> Option<Result<T, String>> {
    let body = data.strip_prefix(&MAGIC)?;
    let mut rest = body;
    let r = ciborium::de::from_reader_with_recursion_limit(&mut rest, RECURSION_LIMIT)
        .map_err(|e: ciborium::de::Error<std::io::Error>| e.to_string())
        .and_then(|v| match rest.len() {
            0 => Ok(v),
            n => Err(format!("{n} trailing bytes")),
        });
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Old {
        a: u32,
        name: String,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct New {
        a: u32,
        name: String,
        #[serde(default)]
        added: Vec<String>,
    }

    #[test]
    fn a_field_added_later_reads_from_older_bytes() {
        let old = encode(&Old {
            a: 7,
            name: "web".into(),
        })
        .unwrap();
        let new: New = decode(&old).unwrap().unwrap();
        assert_eq!(
            new,
            New {
                a: 7,
                name: "web".into(),
                added: vec![]
            }
        );
    }

    #[test]
    fn bytes_without_the_tag_are_not_this_format() {
        assert!(decode::<Old>(&[0, 1, 2]).is_none());
        assert!(decode::<Old>(&[]).is_none());
    }

    #[test]
    fn truncated_trailing_and_hostile_input_is_an_error() {
        let mut b = encode(&Old {
            a: 1,
            name: "x".into(),
        })
        .unwrap();
        assert!(decode::<Old>(&b[..b.len() - 1]).unwrap().is_err());
        b.push(0);
        assert!(decode::<Old>(&b).unwrap().unwrap_err().contains("trailing"));
        // A text string claiming 2^63 bytes: an error, not an allocation.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[0xa2, 0x61, b'a', 0x01, 0x64, b'n', b'a', b'm', b'e']);
        huge.extend_from_slice(&[0x7b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode::<Old>(&huge).unwrap().is_err());
        // Nesting past the limit.
        let mut deep = MAGIC.to_vec();
        deep.extend(std::iter::repeat_n(0x81u8, 10_000));
        assert!(decode::<Vec<serde_json::Value>>(&deep).unwrap().is_err());
    }
}

//! Replay protection for gossip. Every member holds the ring key, so a
//! sealed datagram or sync frame recorded on the wire would open again if
//! sent again (an old "dead" rumour, an old sync). Each message therefore
//! carries, inside the seal, who sent it, the sender's epoch (one per
//! start, persisted: `GossipConfig::epoch`) and a counter; a receiver
//! keeps one window per (sender, channel) and refuses a message it has
//! seen, one behind the window, or one from an older epoch.
//!
//! ```text
//! sealed plaintext: | id len (1) | sender id | epoch (4) | counter (8) | message |
//! ```
//!
//! Data flow: driver send -> [`Freshness::stamp`] -> `KeyRing::seal`;
//! receive -> `KeyRing::open` (authenticated) -> [`Freshness::accept`] ->
//! the node. Only authenticated messages reach the window, so a forged
//! one cannot move it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use shoal_replay::{Refusal, Replay};

use crate::crypto::Channel;

/// Senders remembered per channel; past this, the one heard from least
/// recently is forgotten.
const MAX_SENDERS: usize = 4096;
/// Longest sender id carried (node ids are 25 characters).
const MAX_ID: usize = 64;
/// Most bytes a stamp adds to a message.
pub const STAMP_MAX: usize = 1 + MAX_ID + 12;

/// Why [`Freshness::accept`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    /// Seen already, or behind the window.
    #[error("replayed message from {0}")]
    Replay(String),
    /// From an epoch older than one already heard: the sender restarted.
    #[error("message from {0} from an earlier start")]
    OldEpoch(String),
    /// No room for the stamp.
    #[error("message without a sender stamp")]
    Malformed,
}

struct Window {
    replay: Replay,
    last_used: u64,
}

/// This member's stamp and the windows of the senders it hears.
pub struct Freshness {
    me: String,
    epoch: u32,
    counter: AtomicU64,
    windows: Mutex<HashMap<(String, bool), Window>>,
    uses: AtomicU64,
}

impl std::fmt::Debug for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freshness")
            .field("me", &self.me)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Freshness {
    /// For member `me` in start `epoch`.
    pub fn new(me: &str, epoch: u32) -> Freshness {
        let mut me = me.to_string();
        while me.len() > MAX_ID {
            me.pop();
        }
        Freshness {
            me,
            epoch,
            counter: AtomicU64::new(0),
            windows: Mutex::new(HashMap::new()),
            uses: AtomicU64::new(0),
        }
    }

    /// `message` with this member's next stamp in front (to be sealed).
    pub fn stamp(&self, message: &[u8]) -> Vec<u8> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(1 + self.me.len() + 12 + message.len());
        out.push(self.me.len() as u8);
        out.extend_from_slice(self.me.as_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// The message of an opened (authenticated) `plain`, unless its stamp
    /// was seen already or is from an older start of its sender.
    pub fn accept<'a>(&self, channel: Channel, plain: &'a [u8]) -> Result<&'a [u8], Stale> {
        let (&len, rest) = plain.split_first().ok_or(Stale::Malformed)?;
        let len = usize::from(len);
        if rest.len() < len + 12 {
            return Err(Stale::Malformed);
        }
        let (id, rest) = rest.split_at(len);
        let id = String::from_utf8_lossy(id).into_owned();
        let epoch = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&rest[4..12]);
        let counter = u64::from_be_bytes(c);
        let key = (id, channel == Channel::Tcp);
        let Ok(mut w) = self.windows.lock() else {
            return Err(Stale::Malformed);
        };
        let used = self.uses.fetch_add(1, Ordering::Relaxed);
        if !w.contains_key(&key) && w.len() >= MAX_SENDERS {
            if let Some(oldest) = w
                .iter()
                .min_by_key(|(_, v)| v.last_used)
                .map(|(k, _)| k.clone())
            {
                w.remove(&oldest);
            }
        }
        let entry = w.entry(key.clone()).or_insert_with(|| Window {
            replay: Replay::default(),
            last_used: used,
        });
        match entry.replay.commit(epoch, counter) {
            Ok(()) => {
                entry.last_used = used;
                Ok(&rest[12..])
            }
            Err(Refusal::Replay) => Err(Stale::Replay(key.0)),
            Err(Refusal::StaleEpoch) => Err(Stale::OldEpoch(key.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_accepted_once_and_an_old_start_is_refused() {
        let (a1, a2, b) = (
            Freshness::new("a", 1),
            Freshness::new("a", 2),
            Freshness::new("b", 1),
        );
        let m1 = a1.stamp(b"hello");
        let m2 = a1.stamp(b"world");
        assert_eq!(b.accept(Channel::Udp, &m2), Ok(&b"world"[..]));
        assert_eq!(b.accept(Channel::Udp, &m1), Ok(&b"hello"[..]), "reordered");
        assert_eq!(b.accept(Channel::Udp, &m1), Err(Stale::Replay("a".into())));
        // The other channel has its own window.
        assert_eq!(b.accept(Channel::Tcp, &m1), Ok(&b"hello"[..]));
        // a restarted: its new start is heard, the old one refused.
        let n1 = a2.stamp(b"again");
        assert_eq!(b.accept(Channel::Udp, &n1), Ok(&b"again"[..]));
        let m3 = a1.stamp(b"late");
        assert_eq!(
            b.accept(Channel::Udp, &m3),
            Err(Stale::OldEpoch("a".into()))
        );
        assert_eq!(b.accept(Channel::Udp, &[5, b'x']), Err(Stale::Malformed));
        assert_eq!(b.accept(Channel::Udp, &[]), Err(Stale::Malformed));
    }

    #[test]
    fn the_sender_table_is_bounded() {
        let me = Freshness::new("me", 1);
        for i in 0..MAX_SENDERS + 10 {
            let s = Freshness::new(&format!("n{i}"), 1);
            assert!(me.accept(Channel::Udp, &s.stamp(b"x")).is_ok());
        }
        assert_eq!(me.windows.lock().unwrap().len(), MAX_SENDERS);
    }
}

//! Replay protection for what Shoal seals with a shared key: the encrypted
//! data path (`shoal-dataplane`) and gossip (`shoal-membership`). A sender
//! takes a fresh epoch per start ([`next_epoch`], persisted, never reused)
//! and numbers what it sends; a receiver keeps one [`Replay`] window per
//! sender and refuses what it has seen, what fell behind the window, and
//! anything from an older epoch.

pub mod epoch;
pub mod window;

pub use epoch::{next_epoch, EpochError};
pub use window::{Refusal, Replay, WINDOW};

//! Replay protection, per (peer, ring key): the sender's epoch and a
//! sliding window of the last [`WINDOW`] counters (RFC 6479's bitmap).
//! [`Replay::check`] runs before decryption (cheap rejection) and
//! [`Replay::commit`] only after the datagram authenticated, so a forged
//! datagram can never advance the window or the epoch. Pure.

/// Counters accepted behind the highest one seen.
pub const WINDOW: u64 = 8192 - 64;

const WORDS: usize = 8192 / 64;

/// Why [`Replay::check`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Counter already seen, or too far behind the window.
    Replay,
    /// From an epoch older than one already authenticated: the sender
    /// restarted since, so this is old traffic.
    StaleEpoch,
}

/// One sender's window under one key.
#[derive(Debug, Clone)]
pub struct Replay {
    epoch: u32,
    top: u64,
    bits: Box<[u64; WORDS]>,
    seen: bool,
}

impl Default for Replay {
    fn default() -> Self {
        Replay {
            epoch: 0,
            top: 0,
            bits: Box::new([0; WORDS]),
            seen: false,
        }
    }
}

impl Replay {
    /// Whether `(epoch, counter)` may be new. Changes nothing.
    pub fn check(&self, epoch: u32, counter: u64) -> Result<(), Refusal> {
        if !self.seen || epoch > self.epoch {
            return Ok(());
        }
        if epoch < self.epoch {
            return Err(Refusal::StaleEpoch);
        }
        if counter > self.top {
            return Ok(());
        }
        if self.top - counter >= WINDOW {
            return Err(Refusal::Replay);
        }
        let (w, b) = slot(counter);
        if self.bits[w] & (1 << b) != 0 {
            Err(Refusal::Replay)
        } else {
            Ok(())
        }
    }

    /// Record an authenticated `(epoch, counter)`; refuses (and changes
    /// nothing) what [`Replay::check`] refuses, so two receivers racing on
    /// the same datagram accept it once.
    pub fn commit(&mut self, epoch: u32, counter: u64) -> Result<(), Refusal> {
        self.check(epoch, counter)?;
        if !self.seen || epoch > self.epoch {
            self.epoch = epoch;
            self.top = counter;
            self.bits.fill(0);
            self.seen = true;
        } else if counter > self.top {
            // Clear the words the window slides over.
            let (cur, _) = slot(self.top);
            let steps = ((counter / 64) - (self.top / 64)).min(WORDS as u64) as usize;
            for i in 1..=steps {
                self.bits[(cur + i) % WORDS] = 0;
            }
            self.top = counter;
        }
        let (w, b) = slot(counter);
        self.bits[w] |= 1 << b;
        Ok(())
    }
}

fn slot(counter: u64) -> (usize, u32) {
    (
        ((counter / 64) % WORDS as u64) as usize,
        (counter % 64) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(r: &mut Replay, e: u32, c: u64) -> Result<(), Refusal> {
        r.check(e, c)?;
        r.commit(e, c)
    }

    #[test]
    fn in_order_and_reordered_counters_are_accepted_once() {
        let mut r = Replay::default();
        for c in [0, 1, 2, 5, 4, 3, 100, 50] {
            assert_eq!(accept(&mut r, 1, c), Ok(()), "counter {c}");
        }
        for c in [0, 1, 2, 3, 4, 5, 50, 100] {
            assert_eq!(accept(&mut r, 1, c), Err(Refusal::Replay), "counter {c}");
        }
    }

    #[test]
    fn counters_behind_the_window_are_refused() {
        let mut r = Replay::default();
        accept(&mut r, 1, 10_000).unwrap();
        assert_eq!(r.check(1, 10_000 - WINDOW), Err(Refusal::Replay));
        assert_eq!(r.check(1, 10_000 - WINDOW + 1), Ok(()));
    }

    #[test]
    fn a_big_jump_clears_the_whole_window() {
        let mut r = Replay::default();
        for c in 0..200 {
            accept(&mut r, 1, c).unwrap();
        }
        accept(&mut r, 1, 1_000_000).unwrap();
        // Everything in the new window that was not seen is fresh.
        for c in (1_000_000 - WINDOW + 1)..1_000_000 {
            assert_eq!(r.check(1, c), Ok(()), "counter {c}");
        }
    }

    #[test]
    fn sliding_word_by_word_forgets_nothing_inside_the_window() {
        let mut r = Replay::default();
        for c in (0..100_000).step_by(3) {
            accept(&mut r, 1, c).unwrap();
            let back = c.saturating_sub(WINDOW - 1);
            if back % 3 == 0 && back != c {
                assert_eq!(r.check(1, back), Err(Refusal::Replay), "at {c}: {back}");
            }
        }
    }

    #[test]
    fn a_new_epoch_resets_and_the_old_one_is_stale() {
        let mut r = Replay::default();
        accept(&mut r, 4, 500).unwrap();
        assert_eq!(accept(&mut r, 5, 0), Ok(()));
        assert_eq!(r.check(4, 501), Err(Refusal::StaleEpoch));
        assert_eq!(accept(&mut r, 5, 0), Err(Refusal::Replay));
        assert_eq!(accept(&mut r, 5, 1), Ok(()));
    }

    #[test]
    fn check_alone_changes_nothing() {
        let mut r = Replay::default();
        assert_eq!(r.check(9, 9), Ok(()));
        assert_eq!(r.check(9, 9), Ok(()));
        accept(&mut r, 1, 3).unwrap();
        assert_eq!(r.check(1, 3), Err(Refusal::Replay));
    }
}

//! A moment in 8 bytes: the relay keeps two per client (when its request
//! and its transaction began), and an `Instant` takes 16, which every idle
//! client would pay for.

use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process first took a stamp, plus one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(NonZeroU64);

impl Stamp {
    pub fn at(t: Instant) -> Self {
        let base = *BASE.get_or_init(|| t);
        let n = t.saturating_duration_since(base).as_nanos();
        Self(
            NonZeroU64::new(u64::try_from(n).unwrap_or(u64::MAX - 1) + 1)
                .unwrap_or(NonZeroU64::MIN),
        )
    }

    pub fn instant(self) -> Instant {
        let base = *BASE.get_or_init(Instant::now);
        base + Duration::from_nanos(self.0.get() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_its_instant() {
        let t = Instant::now();
        assert_eq!(Stamp::at(t).instant(), t);
        let later = t + Duration::from_millis(5);
        assert_eq!(
            Stamp::at(later).instant() - Stamp::at(t).instant(),
            Duration::from_millis(5)
        );
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 8);
    }
}

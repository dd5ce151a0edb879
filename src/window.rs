//! Minute and day arithmetic: fixed windows aligned to UTC epoch boundaries.
//!
//! A window is named by its index: minute = floor(t / 60 s), day =
//! floor(t / 86 400 s). The slot keeps the day index and the minute *within*
//! that day, which is enough to tell whether a stored count is current.

pub const MS_PER_MINUTE: u64 = 60_000;
pub const MS_PER_DAY: u64 = 86_400_000;
pub const MINUTES_PER_DAY: u32 = 1_440;

/// Days fit in 24 bits of the slot state (until the year 47 000), so `now`
/// past that is rejected rather than wrapped.
pub const MAX_DAY: u32 = (1 << 24) - 1;
pub const MAX_NOW_MS: u64 = (MAX_DAY as u64) * MS_PER_DAY - 1;

/// A point in window terms: the UTC day and the minute inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    /// Days since 1970-01-01, UTC.
    pub day: u32,
    /// Minutes since the start of that day.
    pub minute: u32,
}

impl Instant {
    /// `None` when `now_ms` is beyond what the state can hold.
    #[inline]
    pub fn from_ms(now_ms: u64) -> Option<Instant> {
        if now_ms > MAX_NOW_MS {
            return None;
        }
        let day = (now_ms / MS_PER_DAY) as u32;
        let minute = ((now_ms % MS_PER_DAY) / MS_PER_MINUTE) as u32;
        Some(Instant { day, minute })
    }

    /// Epoch second at which this minute window ends.
    #[inline]
    pub fn minute_reset(self) -> u64 {
        (self.day as u64 * MINUTES_PER_DAY as u64 + self.minute as u64 + 1) * 60
    }

    /// Epoch second at which this day window ends.
    #[inline]
    pub fn day_reset(self) -> u64 {
        (self.day as u64 + 1) * 86_400
    }
}

/// Whole seconds from `now_ms` until `reset_s`, rounded up, at least 1: a
/// client that waits this long finds the window reset, never earlier.
#[inline]
pub fn seconds_until(now_ms: u64, reset_s: u64) -> u32 {
    let reset_ms = reset_s * 1000;
    let wait = reset_ms.saturating_sub(now_ms);
    (wait.div_ceil(1000)).clamp(1, u32::MAX as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_utc() {
        // 2026-11-27T21:37:59.999Z
        let t = 1_764_279_479_999u64;
        let i = Instant::from_ms(t).unwrap();
        assert_eq!(i.day as u64, t / 86_400_000);
        assert_eq!(i.minute_reset(), (t / 60_000 + 1) * 60);
        assert_eq!(i.day_reset(), (t / 86_400_000 + 1) * 86_400);
        assert_eq!(Instant::from_ms(0).unwrap(), Instant { day: 0, minute: 0 });
        let last = Instant::from_ms(MS_PER_DAY - 1).unwrap();
        assert_eq!(last.minute, 1439);
        assert_eq!(last.minute_reset(), 86_400);
        assert!(Instant::from_ms(MAX_NOW_MS + 1).is_none());
    }

    #[test]
    fn retry_rounds_up_and_is_positive() {
        assert_eq!(seconds_until(59_001, 60), 1);
        assert_eq!(seconds_until(0, 60), 60);
        assert_eq!(seconds_until(1_500, 60), 59);
        assert_eq!(seconds_until(60_000, 60), 1);
    }
}

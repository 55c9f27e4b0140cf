//! The invocation's deadline, as the Lambda runtime API hands it (`Lambda-Runtime-Deadline-Ms`: milliseconds since
//! the epoch), as a point on the monotonic clock the work is bounded with.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// When the invocation whose deadline is `deadline_ms` must be over, less `margin` (to answer, log and flush).
/// `None` when that is not in the future: Lambda never hands out a deadline that has passed, but local runtimes do
/// (`cargo lambda watch` sends 600 000, a moment in 1970); then the configured bounds apply alone.
pub fn of_invocation(deadline_ms: u64, margin: Duration) -> Option<Instant> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis();
    remaining(deadline_ms, u64::try_from(now_ms).ok()?, margin).map(|d| Instant::now() + d)
}

fn remaining(deadline_ms: u64, now_ms: u64, margin: Duration) -> Option<Duration> {
    Duration::from_millis(deadline_ms.checked_sub(now_ms)?)
        .checked_sub(margin)
        .filter(|d| !d.is_zero())
}

/// The earlier of `bound` and `deadline` (when there is one).
pub fn earliest(bound: Instant, deadline: Option<Instant>) -> Instant {
    deadline.map_or(bound, |d| d.min(bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_left_of_the_invocation_less_the_margin() {
        let s = Duration::from_secs;
        assert_eq!(remaining(1_029_000, 1_000_000, s(1)), Some(s(28)));
        assert_eq!(remaining(1_001_000, 1_000_000, s(1)), None);
        assert_eq!(remaining(600_000, 1_764_900_000_000, s(1)), None);
        assert!(of_invocation(600_000, s(0)).is_none());
        let in_a_minute = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + s(60);
        let at = of_invocation(in_a_minute.as_millis() as u64, s(10)).unwrap();
        let left = at - Instant::now();
        assert!(left > s(48) && left <= s(50), "{left:?}");
    }

    #[test]
    fn the_earliest_bound_wins() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        assert_eq!(earliest(later, Some(now)), now);
        assert_eq!(earliest(now, Some(later)), now);
        assert_eq!(earliest(later, None), later);
    }
}

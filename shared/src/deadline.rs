//! The invocation's deadline, as the Lambda runtime API hands it (`Lambda-Runtime-Deadline-Ms`: milliseconds since
//! the epoch), as a point on the monotonic clock the work is bounded with.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Deadlines before this (2001-09-09, in epoch milliseconds) are no deadline: local runtimes hand out such
/// placeholders (`cargo lambda watch` sends 600 000, a moment in 1970); Lambda never does.
const PLACEHOLDER_BELOW_MS: u64 = 1_000_000_000_000;

/// When the invocation whose deadline is `deadline_ms` must be over, less `margin` (to answer, log and flush);
/// now, when less than the margin is left. `None` for a placeholder deadline: then the configured bounds apply
/// alone.
pub fn of_invocation(deadline_ms: u64, margin: Duration) -> Option<Instant> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis();
    remaining(deadline_ms, u64::try_from(now_ms).ok()?, margin).map(|d| Instant::now() + d)
}

fn remaining(deadline_ms: u64, now_ms: u64, margin: Duration) -> Option<Duration> {
    if deadline_ms < PLACEHOLDER_BELOW_MS {
        return None;
    }
    Some(Duration::from_millis(deadline_ms.saturating_sub(now_ms)).saturating_sub(margin))
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
        let now = 1_764_900_000_000;
        assert_eq!(remaining(now + 29_000, now, s(1)), Some(s(28)));
        // Almost over, or over: no time left, not an unbounded invocation.
        assert_eq!(remaining(now + 500, now, s(1)), Some(s(0)));
        assert_eq!(remaining(now - 5_000, now, s(1)), Some(s(0)));
        assert_eq!(remaining(600_000, now, s(1)), None);
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

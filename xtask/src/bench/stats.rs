//! Order statistics of a figure's samples: the median and the spread reported for every figure.

use serde::{Deserialize, Serialize};

/// A figure's samples summarised: median, p95, and the spread (min, p25, p75, max).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p95: f64,
    pub min: f64,
    pub p25: f64,
    pub p75: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no samples: a figure that was not produced must not look like a zero.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Summary {
            n: s.len(),
            median: quantile(&s, 0.5),
            p95: quantile(&s, 0.95),
            min: s[0],
            p25: quantile(&s, 0.25),
            p75: quantile(&s, 0.75),
            max: s[s.len() - 1],
        })
    }
}

/// Linear interpolation between closest ranks, on sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Milliseconds of a duration, as the report's unit.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub const MIB: f64 = 1024.0 * 1024.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_and_ignore_order() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.n, 4);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 4.0);
        assert_eq!(s.median, 2.5);
        assert!((s.p95 - 3.85).abs() < 1e-9);
        assert_eq!(Summary::of(&[7.0]).unwrap().median, 7.0);
        assert!(Summary::of(&[]).is_none());
    }
}

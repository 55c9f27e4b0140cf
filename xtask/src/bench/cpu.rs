//! CPU accounting of a measured phase, from /proc: how many cores the machine, the bench process and the stack's
//! S3 emulator (moto) and fal emulator kept busy. On a 2-core machine these three share the cores, so a transfer
//! figure is only readable next to this profile.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::procfs;

/// Cores kept busy during a phase (1.0 = one core all the time).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuUse {
    pub wall_ms: f64,
    pub machine_cores: f64,
    pub by_process: BTreeMap<String, f64>,
}

pub struct Snapshot {
    at: Instant,
    machine_busy: u64,
    by_process: Vec<(String, u64)>,
}

/// The processes worth watching: this one, and the stack's moto and fal emulator.
pub fn watched() -> Vec<(String, i32)> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut out = vec![("bench".to_owned(), me)];
    out.extend(
        crate::stack::emulator_pids()
            .into_iter()
            .map(|(name, pid)| (name.to_owned(), pid)),
    );
    // The bench's second S3 store, when it runs.
    out.extend(
        procfs::pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "s3s-fs")
            })
            .map(|pid| ("s3s-fs".to_owned(), pid)),
    );
    out
}

pub fn snapshot(procs: &[(String, i32)]) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        machine_busy: procfs::machine_busy_ticks().unwrap_or(0),
        by_process: procs
            .iter()
            .map(|(name, pid)| {
                let ticks = procfs::stat(*pid).map_or(0, |s| s.cpu_ticks);
                (name.clone(), ticks)
            })
            .collect(),
    }
}

impl Snapshot {
    /// What was used since `self`.
    pub fn until(&self, later: &Snapshot) -> CpuUse {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let cores = |ticks: u64| {
            if wall > 0.0 {
                ticks as f64 / procfs::TICKS_PER_SECOND / wall
            } else {
                0.0
            }
        };
        CpuUse {
            wall_ms: wall * 1000.0,
            machine_cores: cores(later.machine_busy.saturating_sub(self.machine_busy)),
            by_process: self
                .by_process
                .iter()
                .zip(&later.by_process)
                .map(|((name, a), (_, b))| (name.clone(), cores(b.saturating_sub(*a))))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_shows_as_about_one_core_of_this_process() {
        let me = vec![(
            "bench".to_owned(),
            i32::try_from(std::process::id()).unwrap(),
        )];
        let before = snapshot(&me);
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let used = before.until(&snapshot(&me));
        assert!(used.by_process["bench"] > 0.3, "{used:?}");
        assert!(used.machine_cores > 0.3, "{used:?}");
    }
}

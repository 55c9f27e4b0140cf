//! CPU accounting of a measured phase, from /proc: how many cores the machine, the bench process and the stack's
//! S3 emulator (moto) and fal emulator kept busy. On a 2-core machine these three share the cores, so a transfer
//! figure is only readable next to this profile.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

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

/// The processes worth watching: this one, and the stack's moto and fal emulator (from its state file).
pub fn watched() -> Vec<(String, u32)> {
    let mut out = vec![("bench".to_owned(), std::process::id())];
    let state = crate::stack::Paths::new().state;
    let state: serde_json::Value = std::fs::read(&state)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for p in state["processes"].as_array().into_iter().flatten() {
        if let (Some(name), Some(pid)) = (p["name"].as_str(), p["pid"].as_u64())
            && matches!(name, "moto" | "fal-emulator")
        {
            out.push((name.to_owned(), pid as u32));
        }
    }
    out
}

pub fn snapshot(procs: &[(String, u32)]) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        machine_busy: machine_busy_ticks().unwrap_or(0),
        by_process: procs
            .iter()
            .map(|(name, pid)| (name.clone(), process_ticks(*pid).unwrap_or(0)))
            .collect(),
    }
}

impl Snapshot {
    /// What was used since `self`.
    pub fn until(&self, later: &Snapshot) -> CpuUse {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let cores = |ticks: u64| {
            if wall > 0.0 {
                ticks as f64 / TICKS_PER_SECOND / wall
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

/// Busy ticks of all CPUs (`/proc/stat`: everything but idle and iowait).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4)?)
}

/// utime + stime of a process (all its threads).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// USER_HZ: the unit of /proc's CPU times, fixed at 100 by the kernel ABI on the architectures this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_shows_as_about_one_core_of_this_process() {
        let me = vec![("bench".to_owned(), std::process::id())];
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

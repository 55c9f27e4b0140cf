//! Background processes of the stack: started detached in their own process group with a log file, found again
//! by pid plus start time (so a reused pid is never mistaken for ours), and stopped group by group.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::procfs;

/// A process the stack started: enough to find it again and to stop it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcRecord {
    pub name: String,
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22); 0 when it could not be read.
    pub start_ticks: u64,
    pub port: u16,
    pub log: String,
}

/// True when `pid` runs (not a zombie) and is the process that was recorded (same start time).
pub fn is_ours(pid: i32, start_ticks: u64) -> bool {
    match procfs::stat(pid) {
        Some(s) => s.running() && (start_ticks == 0 || s.start_ticks == start_ticks),
        None => false,
    }
}

/// Running members of process group `pgid` started no earlier than the group's leader was.
pub fn group_members(pgid: i32, since_ticks: u64) -> Vec<(i32, u64)> {
    procfs::pids()
        .into_iter()
        .filter_map(|pid| {
            let s = procfs::stat(pid)?;
            (s.pgrp == pgid && s.running() && s.start_ticks >= since_ticks)
                .then_some((pid, s.start_ticks))
        })
        .collect()
}

/// Running descendants of `pid` (children, grandchildren, …).
pub fn descendants(pid: i32) -> Vec<(i32, u64)> {
    let table: Vec<(i32, procfs::Stat)> = procfs::pids()
        .into_iter()
        .filter_map(|p| Some((p, procfs::stat(p)?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, s) in &table {
            if s.ppid == parent && s.running() && !found.iter().any(|(q, _)| q == p) {
                found.push((*p, s.start_ticks));
                frontier.push(*p);
            }
        }
    }
    found
}

/// Starts `cmd` in its own process group with stdin from /dev/null and stdout+stderr appended to `log`; the
/// process outlives xtask.
pub fn spawn_background(
    name: &str,
    port: u16,
    cmd: &mut Command,
    log: &Path,
) -> anyhow::Result<ProcRecord> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open log {}", log.display()))?;
    writeln!(
        file,
        "=== {} starting {}: {:?} {:?}",
        chrono::Utc::now().to_rfc3339(),
        name,
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>()
    )?;
    let err = file.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err));
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // The Child handle is dropped without waiting: the process belongs to the stack, not to this run of xtask.
    drop(child);
    let start_ticks = procfs::stat(pid).map(|s| s.start_ticks).unwrap_or(0);
    Ok(ProcRecord {
        name: name.to_string(),
        pid,
        start_ticks,
        port,
        log: log.display().to_string(),
    })
}

/// Runs `cmd` to its end with no input and its output appended to `log`; `what` names it in errors.
pub async fn run_logged(
    cmd: impl Into<tokio::process::Command>,
    log: &Path,
    what: &str,
) -> anyhow::Result<()> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let status = cmd
        .into()
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .await
        .with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); see {}", log.display());
    }
    Ok(())
}

/// Collects any of `pids` that are our own exited children, so they do not linger as zombies.
fn reap(pids: &BTreeSet<(i32, u64)>) {
    for (pid, _) in pids {
        let _ = waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG));
    }
}

fn alive(pids: &BTreeSet<(i32, u64)>) -> BTreeSet<(i32, u64)> {
    reap(pids);
    pids.iter()
        .copied()
        .filter(|(pid, ticks)| is_ours(*pid, *ticks))
        .collect()
}

fn wait_gone(pids: &BTreeSet<(i32, u64)>, timeout: Duration) -> BTreeSet<(i32, u64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = alive(pids);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every live process that belongs to the recorded ones: the leader, its process group, its descendants.
pub fn tracked(records: &[ProcRecord]) -> BTreeSet<(i32, u64)> {
    let mut set = BTreeSet::new();
    for r in records {
        if is_ours(r.pid, r.start_ticks) {
            set.insert((r.pid, r.start_ticks));
            set.extend(descendants(r.pid));
        }
        set.extend(group_members(r.pid, r.start_ticks));
    }
    set
}

/// Stops the recorded processes: SIGTERM to each process group (and any descendant that left it), up to
/// `grace` to exit, then SIGKILL. Returns the pids still alive afterwards (empty on success).
pub fn stop(records: &[ProcRecord], grace: Duration) -> Vec<i32> {
    let targets = tracked(records);
    if targets.is_empty() {
        return Vec::new();
    }
    let signal_all = |sig: Signal, targets: &BTreeSet<(i32, u64)>| {
        for r in records {
            if is_ours(r.pid, r.start_ticks) || !group_members(r.pid, r.start_ticks).is_empty() {
                let _ = killpg(Pid::from_raw(r.pid), sig);
            }
        }
        for (pid, ticks) in targets {
            if is_ours(*pid, *ticks) {
                let _ = kill(Pid::from_raw(*pid), sig);
            }
        }
    };
    signal_all(Signal::SIGTERM, &targets);
    let left = wait_gone(&targets, grace);
    if left.is_empty() {
        return Vec::new();
    }
    signal_all(Signal::SIGKILL, &left);
    wait_gone(&left, Duration::from_secs(5))
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

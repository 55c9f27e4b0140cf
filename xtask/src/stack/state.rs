//! `target/stack/state.json`: what a running stack is made of, written as each part starts so that `down` can
//! stop exactly those processes, even after a failed or interrupted `up`.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::procs::ProcRecord;

/// A Postgres cluster the stack created (and so must stop and delete).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PgCluster {
    /// Directory holding the cluster (data dir, socket dir); deleted on `down`.
    pub base_dir: String,
    pub data_dir: String,
    pub socket_dir: String,
    pub bin_dir: String,
    pub port: u16,
    /// initdb/pg_ctl run as the `postgres` user (xtask runs as root).
    pub run_as_postgres: bool,
    /// The postmaster, once started.
    pub postmaster_pid: Option<i32>,
    pub postmaster_start_ticks: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub started_at: String,
    /// Background processes in start order.
    pub processes: Vec<ProcRecord>,
    /// Our own cluster; `None` when the stack uses the DATABASE_URL it was given.
    pub postgres: Option<PgCluster>,
}

impl State {
    pub fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let state = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid", path.display()))?;
                Ok(Some(state))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Adds a process that has just started and saves the state at once, so `down` finds it whatever happens next.
    pub fn record(&mut self, proc: ProcRecord, path: &Path) -> anyhow::Result<()> {
        self.processes.push(proc);
        self.save(path)
    }

    pub fn process(&self, name: &str) -> Option<&ProcRecord> {
        self.processes.iter().find(|p| p.name == name)
    }
}

//! The measuring process: started by `cargo xtask bench` as `xtask bench --plan <file>` (the release build of
//! xtask in a full run, so the in-process figures are measured on optimised code), with the stack's environment
//! and `FAL_WEBHOOK_URL` naming the capture listener. Measures figures 1–5 and writes them to the plan's `out`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::ctx::Ctx;
use super::deliveries::{self, DeliveryResult};
use super::init::{self, InitSamples};
use super::links::{self, LinkSamples};
use super::memory::{self, MemorySamples};
use super::plan::Plan;
use super::submit::{self, SubmitSamples};
use super::transfer::{self, TransferSamples};
use crate::stack::functions::FAL_WEBHOOK;

/// Figures 1–5, raw samples; a figure that failed is absent and its error is in `errors`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Measured {
    pub init: Option<BTreeMap<String, InitSamples>>,
    pub submit: Option<SubmitSamples>,
    pub transfer: Option<TransferSamples>,
    pub memory: Option<MemorySamples>,
    pub deliveries: Option<DeliveryResult>,
    pub links: Option<LinkSamples>,
    pub seconds: BTreeMap<String, f64>,
    pub errors: BTreeMap<String, String>,
}

pub async fn run(plan_path: &Path) -> anyhow::Result<()> {
    let plan: Plan = serde_json::from_slice(
        &std::fs::read(plan_path)
            .with_context(|| format!("cannot read {}", plan_path.display()))?,
    )?;
    let ctx = Ctx::from_env(plan).await?;
    let m = measure(&ctx).await;
    std::fs::write(&ctx.plan.out, serde_json::to_vec_pretty(&m)?)
        .with_context(|| format!("cannot write {}", ctx.plan.out.display()))?;
    Ok(())
}

/// Figures 1–5 in turn. A size of 0 skips a figure (for profiling one figure with a hand-written plan).
async fn measure(ctx: &Ctx) -> Measured {
    let s = ctx.plan.sizes.clone();
    let mut run = Run {
        m: Measured::default(),
        started: Instant::now(),
    };
    let what = format!("cold init: {} starts of each function", s.init_starts);
    let figure = init::measure(&ctx.plan, s.init_starts);
    run.m.init = run.figure("init", s.init_starts > 0, what, figure).await;

    let what = format!(
        "submit overhead: {} use-case/floor pairs",
        s.submit_iterations
    );
    let figure = submit::measure(ctx, s.submit_iterations);
    run.m.submit = run
        .figure("submit", s.submit_iterations > 0, what, figure)
        .await;

    let mib = s.transfer_bytes >> 20;
    let what = format!("transfer: {mib} MiB x {} repetitions", s.transfer_reps);
    let figure = transfer::measure(ctx, s.transfer_bytes, s.transfer_reps);
    run.m.transfer = run
        .figure("transfer", s.transfer_reps > 0, what, figure)
        .await;

    let mib = s.memory_bytes >> 20;
    let what = format!(
        "memory: {FAL_WEBHOOK} moving {mib} MiB, {} processes",
        s.memory_reps
    );
    let webhook_bin = ctx.plan.bin_dir.join(FAL_WEBHOOK);
    let figure = memory::measure(ctx, &webhook_bin, s.memory_bytes, s.memory_reps);
    run.m.memory = run.figure("memory", s.memory_reps > 0, what, figure).await;

    let (jobs, per_job, in_flight) = (s.jobs, s.deliveries_per_job, s.in_flight);
    let what = format!("deliveries: {jobs} jobs x {per_job} deliveries, {in_flight} in flight");
    let figure = deliveries::measure(ctx, jobs, per_job, in_flight);
    let enabled = jobs > 0 && per_job > 0 && in_flight > 0;
    run.m.deliveries = run.figure("deliveries", enabled, what, figure).await;

    let (verifications, signs) = (s.auth_verifications, s.sign_links);
    let what =
        format!("links: {verifications} token verifications per algorithm, {signs} signed links");
    let figure = links::measure(ctx, verifications, signs);
    run.m.links = run
        .figure("links", verifications > 0 && signs > 0, what, figure)
        .await;

    run.say("measurements done");
    run.m
}

/// The figures measured so far, and the clock of their progress lines.
struct Run {
    m: Measured,
    started: Instant,
}

impl Run {
    fn say(&self, msg: impl std::fmt::Display) {
        println!(
            "[bench {:>6.1}s] {msg}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Runs one figure when `enabled`, saying `what` and timing it; a failure is recorded (and printed) instead of
    /// ending the run.
    async fn figure<T>(
        &mut self,
        name: &str,
        enabled: bool,
        what: String,
        figure: impl Future<Output = anyhow::Result<T>>,
    ) -> Option<T> {
        if !enabled {
            return None;
        }
        self.say(what);
        let started = Instant::now();
        let result = figure.await;
        let m = &mut self.m;
        m.seconds
            .insert(name.to_owned(), started.elapsed().as_secs_f64());
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("bench: {name} failed: {e:#}");
                m.errors.insert(name.to_owned(), format!("{e:#}"));
                None
            }
        }
    }
}

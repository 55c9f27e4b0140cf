//! `target/bench/report.json` and the table printed from it: one key per figure (named after it), its target,
//! the summaries (median and spread) and the raw samples.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::child::Measured;
use super::init::{HELLO, InitSamples};
use super::memory::MemorySamples;
use super::plan::Plan;
use super::stats::{MIB, Summary};
use super::submit::SubmitSamples;
use super::transfer::{PhaseCpu, StoreSamples};
use crate::stack::functions::HTTP as FUNCTIONS;
use crate::stack::moto::NAME as MOTO;

/// The S3 implementations every run measures the transfer on (`bench/s3s.rs` for the second).
const STORES: [&str; 2] = [MOTO, super::s3s::NAME];

/// A function's release zip.
#[derive(Debug, Clone)]
pub struct Zip {
    pub function: String,
    pub bytes: u64,
    pub arch: String,
}

/// A figure's target: a bound it must stay within.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    /// `report.json`'s form: `{"max": t}` or `{"min": t}`.
    fn json(self) -> Value {
        match self {
            Target::AtMost(t) => json!({ "max": t }),
            Target::AtLeast(t) => json!({ "min": t }),
        }
    }

    /// Read back from `report.json`'s `targets`.
    fn from_json(v: &Value) -> Option<Target> {
        v["max"]
            .as_f64()
            .map(Target::AtMost)
            .or_else(|| v["min"].as_f64().map(Target::AtLeast))
    }

    fn met(self, value: f64) -> bool {
        match self {
            Target::AtMost(t) => value <= t,
            Target::AtLeast(t) => value >= t,
        }
    }

    fn label(self) -> String {
        match self {
            Target::AtMost(t) => format!("≤ {t}"),
            Target::AtLeast(t) => format!("≥ {t}"),
        }
    }
}

/// Each figure's target, or `None` where the brief sets none.
fn target(key: &str) -> Option<Target> {
    use Target::{AtLeast, AtMost};
    Some(match key {
        "submit_overhead_ratio" => AtMost(1.10),
        k if k.starts_with("transfer_ratio_to_floor_") => AtMost(1.10),
        k if k.starts_with("init_ratio_vs_hello_") => AtMost(1.3),
        "webhook_peak_rss_mib_1gib" => AtMost(40.0),
        "deliveries_per_s" => AtLeast(200.0),
        "duplicates" => AtMost(0.0),
        "init_foreign_sockets_fal_image" | "init_foreign_sockets_fal_webhook" => AtMost(0.0),
        _ => return None,
    })
}

/// The figure keys every run must produce (the smoke run's only assertion, with `duplicates == 0`).
pub fn required_keys(smoke: bool) -> Vec<String> {
    let mut keys: Vec<String> = FUNCTIONS
        .iter()
        .flat_map(|f| {
            let f = f.replace('-', "_");
            [
                format!("init_ms_p50_{f}"),
                format!("init_peak_rss_mib_{f}"),
                format!("init_ratio_vs_hello_{f}"),
            ]
        })
        .collect();
    keys.extend(
        [
            "submit_overhead_ratio",
            "webhook_peak_rss_mib_1gib",
            "deliveries_per_s",
            "duplicates",
            "incomplete_jobs",
            "original_transfer_ms_256mib",
            "original_peak_rss_mib_256mib",
            "speedup_vs_original_256mib",
            "auth_verify_us_p50_es256",
            "auth_verify_us_p50_rs256",
            "storage_sign_ms_p50",
        ]
        .map(String::from),
    );
    for store in STORES {
        keys.extend([
            format!("transfer_ratio_to_floor_{store}"),
            format!("transfer_ratio_to_single_put_floor_{store}"),
            format!("transfer_single_put_vs_multipart_{store}"),
            format!("transfer_half_failure_cost_ms_single_put_{store}"),
            format!("transfer_half_failure_cost_ms_multipart_{store}"),
            format!("speedup_vs_original_256mib_{store}"),
        ]);
    }
    if !smoke {
        keys.extend(
            FUNCTIONS
                .iter()
                .map(|f| format!("zip_mib_{}", f.replace('-', "_"))),
        );
    }
    keys
}

pub fn build(m: &Measured, zips: &[Zip], plan: &Plan, started_at: &str, seconds: f64) -> Value {
    let mut s = Sections::default();
    if let Some(init) = &m.init {
        for (function, samples) in init {
            s.init(function, samples);
        }
        if let Some(hello) = init.get(HELLO) {
            for f in FUNCTIONS {
                if let Some(ours) = init.get(f) {
                    s.init_ratio(f, &ours.ms, &hello.ms);
                }
            }
        }
    }
    if let Some(submit) = &m.submit {
        s.submit(submit);
    }
    if let Some(t) = &m.transfer {
        for (store, samples) in &t.stores {
            s.transfer(store, samples);
            s.profile.insert(
                format!("transfer_cores_busy_median_{store}"),
                json!(cores_busy_median(&samples.cpu)),
            );
        }
    }
    if let Some(mem) = &m.memory {
        s.memory(mem);
    }
    if let Some(d) = &m.deliveries {
        s.figure("deliveries_per_s", d.deliveries_per_s);
        s.figure("duplicates", d.duplicates);
        s.figure("incomplete_jobs", d.incomplete_jobs);
        s.summary("delivery_latency_ms", &d.latency_ms);
    }
    if let Some(l) = &m.links {
        for (alg, samples) in &l.auth_verify_us {
            if let Some(x) = s.summary(format!("auth_verify_us_{alg}"), samples) {
                s.figure(format!("auth_verify_us_p50_{alg}"), x.median);
            }
        }
        if let Some(x) = s.summary("storage_sign_ms", &l.storage_sign_ms) {
            s.figure("storage_sign_ms_p50", x.median);
        }
    }
    for z in zips {
        let f = z.function.replace('-', "_");
        s.figure(format!("zip_mib_{f}"), z.bytes as f64 / MIB);
    }
    s.into_report(m, zips, plan, started_at, seconds)
}

/// The report's parts as they are filled, figure by figure.
#[derive(Default)]
struct Sections {
    figures: Map<String, Value>,
    summaries: Map<String, Value>,
    profile: Map<String, Value>,
}

impl Sections {
    fn figure(&mut self, key: impl Into<String>, value: impl serde::Serialize) {
        self.figures.insert(key.into(), json!(value));
    }

    /// Records the summary of `samples` as `name` and returns it, for the figures taken from it.
    fn summary(&mut self, name: impl Into<String>, samples: &[f64]) -> Option<Summary> {
        let summary = Summary::of(samples);
        if let Some(s) = &summary {
            self.summaries.insert(name.into(), json!(s));
        }
        summary
    }

    fn init(&mut self, function: &str, s: &InitSamples) {
        let f = function.replace('-', "_");
        if let Some(ms) = self.summary(format!("init_ms_{f}"), &s.ms) {
            self.figure(format!("init_ms_p50_{f}"), ms.median);
            self.figure(format!("init_ms_p95_{f}"), ms.p95);
        }
        if let Some(rss) = self.summary(format!("init_peak_rss_mib_{f}"), &s.peak_rss_mib) {
            self.figure(format!("init_peak_rss_mib_{f}"), rss.median);
        }
        let foreign = s.foreign_sockets.iter().max().copied().unwrap_or(0);
        self.figure(format!("init_foreign_sockets_{f}"), foreign);
    }

    /// Our init ÷ the minimal function's, start by start (they alternate, so each pair saw the same machine).
    fn init_ratio(&mut self, function: &str, ours: &[f64], hello: &[f64]) {
        let key = format!("init_ratio_vs_hello_{}", function.replace('-', "_"));
        let ratios: Vec<f64> = ours
            .iter()
            .zip(hello)
            .filter(|(_, h)| **h > 0.0)
            .map(|(o, h)| o / h)
            .collect();
        if let Some(r) = self.summary(&key, &ratios) {
            self.figure(key, r.median);
        }
    }

    fn submit(&mut self, s: &SubmitSamples) {
        if let Some(r) = self.summary("submit_overhead_ratio", &s.ratio) {
            self.figure("submit_overhead_ratio", r.median);
        }
        self.summary("submit_use_case_ms", &s.use_case_ms);
        self.summary("submit_floor_ms", &s.floor_ms);
    }

    /// The transfer figures of one store; those of the stack's own S3 (moto) also without the store's suffix.
    fn transfer(&mut self, store: &str, t: &StoreSamples) {
        let floor = format!("transfer_ratio_to_floor_{store}");
        if let Some(r) = self.summary(&floor, &t.ratio_to_floor) {
            self.figure(&floor, r.median);
        }
        let single_floor = format!("transfer_ratio_to_single_put_floor_{store}");
        if let Some(r) = self.summary(&single_floor, &t.ratio_to_single_put_floor) {
            self.figure(&single_floor, r.median);
        }
        let vs = format!("transfer_single_put_vs_multipart_{store}");
        if let Some(r) = self.summary(&vs, &t.single_put_vs_multipart) {
            self.figure(&vs, r.median);
        }
        let media_rate = t.media_rate_bytes_per_s as f64 / 1e6;
        self.figure(format!("transfer_media_rate_mb_per_s_{store}"), media_rate);
        for (name, samples) in [
            ("download_ms", &t.download_ms),
            ("webhook_ms", &t.webhook_ms),
            ("parts_ms", &t.parts_ms),
            ("complete_ms", &t.complete_ms),
            ("single_put_ms", &t.single_put_ms),
            ("single_put_half_failure_ms", &t.single_put_half_failure_ms),
            ("part_retry_ms", &t.part_retry_ms),
        ] {
            self.summary(format!("transfer_{store}_{name}"), samples);
        }
        // What a failure of the store half way adds: a single PUT loses what it sent (fed by the media, as the
        // webhook's is) and the provider's redelivery makes the whole transfer again (the same repetition's
        // webhook); a multipart upload sends one part again (the resent part's time: its summary is this figure's).
        let single_cost: Vec<f64> = (t.single_put_half_failure_ms.iter())
            .zip(&t.webhook_ms)
            .map(|(failed, whole)| failed + whole)
            .collect();
        for (way, samples) in [
            ("single_put", &single_cost),
            ("multipart", &t.part_retry_ms),
        ] {
            let key = format!("transfer_half_failure_cost_ms_{way}_{store}");
            if let Some(r) = self.summary(&key, samples) {
                self.figure(&key, r.median);
            }
        }
        let mib = |b: u64| b as f64 / MIB;
        let ways = [("original", &t.original), ("ours_process", &t.ours)];
        let mut figures = Vec::new();
        for (way, runs) in ways {
            let ms: Vec<f64> = runs.iter().map(|r| r.ms).collect();
            let peak: Vec<f64> = runs.iter().map(|r| mib(r.peak_rss_bytes)).collect();
            if let Some(x) = self.summary(format!("{way}_transfer_ms_256mib_{store}"), &ms) {
                figures.push((format!("{way}_transfer_ms_256mib"), x.median));
            }
            // The worst process, as for the webhook's own figure.
            if let Some(x) = self.summary(format!("{way}_peak_rss_mib_256mib_{store}"), &peak) {
                figures.push((format!("{way}_peak_rss_mib_256mib"), x.max));
            }
        }
        if let Some(x) = self.summary(
            format!("speedup_vs_original_256mib_{store}"),
            &t.speedup_vs_original,
        ) {
            figures.push(("speedup_vs_original_256mib".to_owned(), x.median));
        }
        for (key, value) in figures {
            if store == MOTO {
                self.figure(&key, value);
            }
            self.figure(format!("{key}_{store}"), value);
        }
    }

    fn memory(&mut self, mem: &MemorySamples) {
        if let Some(r) = self.summary("webhook_peak_rss_mib", &mem.peak_rss_mib) {
            // The worst process: a Lambda's memory limit applies to each one.
            self.figure("webhook_peak_rss_mib_1gib", r.max);
        }
        self.summary("webhook_invocation_ms", &mem.invocation_ms);
    }

    /// The figures with the run's targets, parameters, summaries, profile, errors and raw samples.
    fn into_report(
        self,
        m: &Measured,
        zips: &[Zip],
        plan: &Plan,
        started_at: &str,
        seconds: f64,
    ) -> Value {
        let targets: Map<String, Value> = self
            .figures
            .keys()
            .filter_map(|k| target(k).map(|t| (k.clone(), t.json())))
            .collect();
        let mut report = self.figures;
        report.insert(
            "mode".into(),
            json!(if plan.smoke { "smoke" } else { "full" }),
        );
        // The cargo profile the measured host binaries were built with (`Cargo.toml`).
        report.insert(
            "build_profile".into(),
            json!(if plan.smoke { "dev" } else { "measure" }),
        );
        report.insert("started_at".into(), json!(started_at));
        report.insert("bench_seconds".into(), json!(seconds));
        report.insert(
            "machine".into(),
            json!({
                "arch": std::env::consts::ARCH,
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            }),
        );
        report.insert(
            "params".into(),
            json!({
                "sizes": plan.sizes,
                "binaries": plan.bin_dir,
                "zips": zips.iter().map(|z| json!({"function": z.function, "bytes": z.bytes, "arch": z.arch})).collect::<Vec<_>>(),
                "figure_seconds": m.seconds,
            }),
        );
        report.insert("targets".into(), Value::Object(targets));
        report.insert("summaries".into(), Value::Object(self.summaries));
        report.insert("profile".into(), Value::Object(self.profile));
        report.insert("errors".into(), json!(m.errors));
        report.insert("samples".into(), json!(m));
        Value::Object(report)
    }
}

/// The profile of the transfer figure: median cores busy per phase, machine-wide and per process.
fn cores_busy_median(cpu: &[PhaseCpu]) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut cores: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for p in cpu {
        let phase = cores.entry(p.phase.clone()).or_default();
        phase
            .entry("machine".into())
            .or_default()
            .push(p.used.machine_cores);
        for (name, c) in &p.used.by_process {
            phase.entry(name.clone()).or_default().push(*c);
        }
    }
    cores
        .into_iter()
        .map(|(phase, by)| {
            let by = by
                .into_iter()
                .filter_map(|(k, v)| Some((k, Summary::of(&v)?.median)))
                .collect();
            (phase, by)
        })
        .collect()
}

/// Keys that are missing or not numbers, and the `duplicates` and `incomplete_jobs` checks (both must be 0).
pub fn problems(report: &Value, smoke: bool) -> Vec<String> {
    let mut out: Vec<String> = required_keys(smoke)
        .into_iter()
        .filter(|k| !report[k.as_str()].is_number())
        .map(|k| format!("figure {k} was not produced"))
        .collect();
    for key in ["duplicates", "incomplete_jobs"] {
        if let Some(n) = report[key].as_u64()
            && n != 0
        {
            out.push(format!("{key} = {n}, must be 0"));
        }
    }
    out
}

/// One row per figure: value, spread, target and whether it is met; then the transfer profile and the errors.
pub fn print_table(report: &Value) {
    let rows = rows(report);
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    println!();
    println!(
        "{:<width$}  {:>10}  {:<10}  {:<4}  spread",
        "figure", "value", "target", "met"
    );
    let targets = &report["targets"];
    for (key, value, spread) in rows {
        let (target, met) = match Target::from_json(&targets[&key]) {
            Some(t) => {
                let met = match report[&key].as_f64() {
                    Some(v) if t.met(v) => "yes",
                    Some(_) => "NO",
                    None => "",
                };
                (t.label(), met)
            }
            None => (String::new(), ""),
        };
        println!("{key:<width$}  {value:>10}  {target:<10}  {met:<4}  {spread}");
    }
    let profiles = report["profile"].as_object().into_iter().flatten();
    for (key, phases) in profiles {
        let (Some(store), Some(phases)) = (
            key.strip_prefix("transfer_cores_busy_median_"),
            phases.as_object(),
        ) else {
            continue;
        };
        println!(
            "\ntransfer phases on {store}, median cores busy (of {}):",
            report["machine"]["cpus"]
        );
        for (phase, by) in phases {
            let by: Vec<String> = by
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k} {:.2}", v.as_f64().unwrap_or(0.0)))
                .collect();
            println!("  {phase:<10}  {}", by.join(", "));
        }
    }
    if let Some(errors) = report["errors"].as_object()
        && !errors.is_empty()
    {
        println!();
        for (figure, e) in errors {
            println!("{figure} failed: {e}");
        }
    }
    let mode = report["mode"].as_str().unwrap_or("?");
    let seconds = report["bench_seconds"].as_f64().unwrap_or(0.0);
    println!("\n({mode} run, {seconds:.0} s)");
}

/// The table's rows: (figure, value, spread of the summary it comes from).
fn rows(report: &Value) -> Vec<(String, String, String)> {
    let s = &report["summaries"];
    let spread = |name: &str, digits: usize| -> String {
        serde_json::from_value::<Summary>(s[name].clone())
            .map(|x| {
                format!(
                    "IQR {:.d$}–{:.d$}, min {:.d$}, max {:.d$}, n={}",
                    x.p25,
                    x.p75,
                    x.min,
                    x.max,
                    x.n,
                    d = digits
                )
            })
            .unwrap_or_default()
    };
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |key: &str, digits: usize, spread_of: Option<&str>| {
        let value = match report[key].as_f64() {
            Some(v) => format!("{v:.digits$}"),
            None => "—".to_owned(),
        };
        rows.push((
            key.to_owned(),
            value,
            spread_of.map(|n| spread(n, digits)).unwrap_or_default(),
        ));
    };
    for f in FUNCTIONS {
        let f = f.replace('-', "_");
        row(
            &format!("init_ms_p50_{f}"),
            2,
            Some(&format!("init_ms_{f}")),
        );
        row(&format!("init_ms_p95_{f}"), 2, None);
        row(
            &format!("init_peak_rss_mib_{f}"),
            1,
            Some(&format!("init_peak_rss_mib_{f}")),
        );
        row(&format!("init_foreign_sockets_{f}"), 0, None);
        let ratio = format!("init_ratio_vs_hello_{f}");
        row(&ratio, 2, Some(&ratio));
    }
    let hello = HELLO.replace('-', "_");
    row(
        &format!("init_ms_p50_{hello}"),
        2,
        Some(&format!("init_ms_{hello}")),
    );
    row(&format!("init_peak_rss_mib_{hello}"), 1, None);
    row("submit_overhead_ratio", 3, Some("submit_overhead_ratio"));
    for store in STORES {
        let floor = format!("transfer_ratio_to_floor_{store}");
        row(&floor, 3, Some(&floor));
        let single_floor = format!("transfer_ratio_to_single_put_floor_{store}");
        row(&single_floor, 3, Some(&single_floor));
        let vs = format!("transfer_single_put_vs_multipart_{store}");
        row(&vs, 3, Some(&vs));
        for way in ["single_put", "multipart"] {
            let cost = format!("transfer_half_failure_cost_ms_{way}_{store}");
            row(&cost, 0, Some(&cost));
        }
        row(&format!("transfer_media_rate_mb_per_s_{store}"), 1, None);
        for way in ["original", "ours_process"] {
            let ms = format!("{way}_transfer_ms_256mib_{store}");
            row(&ms, 0, Some(&ms));
            let rss = format!("{way}_peak_rss_mib_256mib_{store}");
            row(&rss, 1, Some(&rss));
        }
        let speedup = format!("speedup_vs_original_256mib_{store}");
        row(&speedup, 2, Some(&speedup));
    }
    row("webhook_peak_rss_mib_1gib", 1, Some("webhook_peak_rss_mib"));
    row("deliveries_per_s", 1, None);
    for alg in ["es256", "rs256"] {
        let key = format!("auth_verify_us_p50_{alg}");
        row(&key, 1, Some(&format!("auth_verify_us_{alg}")));
    }
    row("storage_sign_ms_p50", 2, Some("storage_sign_ms"));
    row("duplicates", 0, None);
    row("incomplete_jobs", 0, None);
    for f in FUNCTIONS {
        row(&format!("zip_mib_{}", f.replace('-', "_")), 2, None);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_target_is_met_at_or_above_it_and_a_ceiling_at_or_below_it() {
        let deliveries = target("deliveries_per_s").expect("deliveries have a target");
        assert_eq!(Target::from_json(&deliveries.json()), Some(deliveries));
        assert_eq!(deliveries.label(), "≥ 200");
        assert!(deliveries.met(200.0) && deliveries.met(405.1));
        assert!(!deliveries.met(199.9));

        let submit = target("submit_overhead_ratio").expect("submit has a target");
        assert_eq!(Target::from_json(&submit.json()), Some(submit));
        assert_eq!(submit.label(), "≤ 1.1");
        assert!(submit.met(1.1) && !submit.met(1.11));

        assert_eq!(target("zip_mib_fal_image"), None);
        assert_eq!(Target::from_json(&json!({})), None);
    }
}

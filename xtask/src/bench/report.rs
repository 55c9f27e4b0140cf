//! `target/bench/report.json` and the table printed from it: one key per figure (named after it), its target,
//! the summaries (median and spread) and the raw samples.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::child::{Measured, Plan};
use super::init::FUNCTIONS;
use super::stats::Summary;

/// A function's release zip.
#[derive(Debug, Clone)]
pub struct Zip {
    pub function: String,
    pub bytes: u64,
    pub arch: String,
}

/// What each figure must stay within (`max`), or `None` where the brief sets no target.
fn target(key: &str) -> Option<f64> {
    Some(match key {
        "init_ms_p50_fal_image" | "init_ms_p50_fal_webhook" => 15.0,
        "submit_overhead_ratio" => 1.2,
        "transfer_ratio_256mib" => 1.2,
        "webhook_peak_rss_mib_1gib" => 64.0,
        "duplicates" => 0.0,
        "init_foreign_sockets_fal_image" | "init_foreign_sockets_fal_webhook" => 0.0,
        _ => return None,
    })
}

/// The figure keys every run must produce (the smoke run's only assertion, with `duplicates == 0`).
pub fn required_keys(smoke: bool) -> Vec<String> {
    let mut keys: Vec<String> = FUNCTIONS
        .iter()
        .flat_map(|f| {
            let f = f.replace('-', "_");
            [format!("init_ms_p50_{f}"), format!("init_peak_rss_mib_{f}")]
        })
        .collect();
    keys.extend(
        [
            "submit_overhead_ratio",
            "transfer_ratio_256mib",
            "webhook_peak_rss_mib_1gib",
            "deliveries_per_s",
            "duplicates",
        ]
        .map(String::from),
    );
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
    let mut figures = Map::new();
    let mut summaries = Map::new();
    let mut profile = Map::new();
    let mut put_summary = |name: String, s: Option<Summary>| {
        if let Some(s) = s {
            summaries.insert(name, json!(s));
        }
    };
    if let Some(init) = &m.init {
        for (function, s) in init {
            let f = function.replace('-', "_");
            let ms = Summary::of(&s.ms);
            let rss = Summary::of(&s.peak_rss_mib);
            if let Some(ms) = &ms {
                figures.insert(format!("init_ms_p50_{f}"), json!(ms.median));
                figures.insert(format!("init_ms_p95_{f}"), json!(ms.p95));
            }
            if let Some(rss) = &rss {
                figures.insert(format!("init_peak_rss_mib_{f}"), json!(rss.median));
            }
            figures.insert(
                format!("init_foreign_sockets_{f}"),
                json!(s.foreign_sockets.iter().max().copied().unwrap_or(0)),
            );
            put_summary(format!("init_ms_{f}"), ms);
            put_summary(format!("init_peak_rss_mib_{f}"), rss);
        }
    }
    if let Some(s) = &m.submit {
        let ratio = Summary::of(&s.ratio);
        if let Some(r) = &ratio {
            figures.insert("submit_overhead_ratio".into(), json!(r.median));
        }
        put_summary("submit_overhead_ratio".into(), ratio);
        put_summary("submit_use_case_ms".into(), Summary::of(&s.use_case_ms));
        put_summary("submit_floor_ms".into(), Summary::of(&s.floor_ms));
    }
    if let Some(t) = &m.transfer {
        let ratio = Summary::of(&t.ratio);
        if let Some(r) = &ratio {
            figures.insert("transfer_ratio_256mib".into(), json!(r.median));
        }
        figures.insert(
            "transfer_media_rate_mb_per_s".into(),
            json!(t.media_rate_bytes_per_s as f64 / 1e6),
        );
        put_summary("transfer_ratio".into(), ratio);
        put_summary("transfer_upload_ms".into(), Summary::of(&t.upload_ms));
        put_summary("transfer_download_ms".into(), Summary::of(&t.download_ms));
        put_summary("transfer_webhook_ms".into(), Summary::of(&t.webhook_ms));
        put_summary(
            "transfer_concurrent_ms".into(),
            Summary::of(&t.concurrent_ms),
        );
        put_summary("transfer_sdk_parts_ms".into(), Summary::of(&t.sdk_parts_ms));
        put_summary(
            "transfer_sdk_complete_ms".into(),
            Summary::of(&t.sdk_complete_ms),
        );
        let floor_ratio = Summary::of(&t.ratio_to_streaming_floor);
        if let Some(r) = &floor_ratio {
            figures.insert("transfer_ratio_to_streaming_floor".into(), json!(r.median));
        }
        put_summary("transfer_ratio_to_streaming_floor".into(), floor_ratio);
        // The profile: median cores busy per phase, machine-wide and per process.
        let mut cores: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
        for p in &t.cpu {
            let phase = cores.entry(p.phase.clone()).or_default();
            phase
                .entry("machine".into())
                .or_default()
                .push(p.used.machine_cores);
            for (name, c) in &p.used.by_process {
                phase.entry(name.clone()).or_default().push(*c);
            }
        }
        let medians: BTreeMap<String, BTreeMap<String, f64>> = cores
            .into_iter()
            .map(|(phase, by)| {
                let by = by
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, Summary::of(&v)?.median)))
                    .collect();
                (phase, by)
            })
            .collect();
        profile.insert("transfer_cores_busy_median".into(), json!(medians));
    }
    if let Some(mem) = &m.memory {
        let rss = Summary::of(&mem.peak_rss_mib);
        if let Some(r) = &rss {
            // The worst process: a Lambda's memory limit applies to each one.
            figures.insert("webhook_peak_rss_mib_1gib".into(), json!(r.max));
        }
        put_summary("webhook_peak_rss_mib".into(), rss);
        put_summary(
            "webhook_invocation_ms".into(),
            Summary::of(&mem.invocation_ms),
        );
    }
    if let Some(d) = &m.deliveries {
        figures.insert("deliveries_per_s".into(), json!(d.deliveries_per_s));
        figures.insert("duplicates".into(), json!(d.duplicates));
        figures.insert("incomplete_jobs".into(), json!(d.incomplete_jobs));
        put_summary("delivery_latency_ms".into(), Summary::of(&d.latency_ms));
    }
    for z in zips {
        figures.insert(
            format!("zip_mib_{}", z.function.replace('-', "_")),
            json!(z.bytes as f64 / (1024.0 * 1024.0)),
        );
    }
    let targets: Map<String, Value> = figures
        .keys()
        .filter_map(|k| target(k).map(|t| (k.clone(), json!({ "max": t }))))
        .collect();
    let mut report = figures;
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
    report.insert("summaries".into(), Value::Object(summaries));
    report.insert("profile".into(), Value::Object(profile));
    report.insert("errors".into(), json!(m.errors));
    report.insert("samples".into(), json!(m));
    Value::Object(report)
}

/// Keys that are missing or not numbers, and the `duplicates` check.
pub fn problems(report: &Value, smoke: bool) -> Vec<String> {
    let mut out: Vec<String> = required_keys(smoke)
        .into_iter()
        .filter(|k| !report[k.as_str()].is_number())
        .map(|k| format!("figure {k} was not produced"))
        .collect();
    if let Some(d) = report["duplicates"].as_u64()
        && d != 0
    {
        out.push(format!("duplicates = {d}, must be 0"));
    }
    out
}

/// One row per figure: value, spread, target and whether it is met.
pub fn print_table(report: &Value) {
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
    }
    row("submit_overhead_ratio", 3, Some("submit_overhead_ratio"));
    row("transfer_ratio_256mib", 3, Some("transfer_ratio"));
    row(
        "transfer_ratio_to_streaming_floor",
        3,
        Some("transfer_ratio_to_streaming_floor"),
    );
    row("transfer_media_rate_mb_per_s", 1, None);
    row("webhook_peak_rss_mib_1gib", 1, Some("webhook_peak_rss_mib"));
    row("deliveries_per_s", 1, None);
    row("duplicates", 0, None);
    row("incomplete_jobs", 0, None);
    for f in FUNCTIONS {
        row(&format!("zip_mib_{}", f.replace('-', "_")), 2, None);
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    println!();
    println!(
        "{:<width$}  {:>10}  {:<10}  {:<4}  spread",
        "figure", "value", "target", "met"
    );
    let targets = &report["targets"];
    for (key, value, spread) in rows {
        let (target, met) = match targets[&key]["max"].as_f64() {
            Some(t) => {
                let met = match report[&key].as_f64() {
                    Some(v) if v <= t => "yes",
                    Some(_) => "NO",
                    None => "",
                };
                (format!("≤ {t}"), met)
            }
            None => (String::new(), ""),
        };
        println!("{key:<width$}  {value:>10}  {target:<10}  {met:<4}  {spread}");
    }
    if let Some(phases) = report["profile"]["transfer_cores_busy_median"].as_object() {
        println!(
            "\ntransfer phases, median cores busy (of {}):",
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

//! `cargo xtask package`: release zips of the functions for Lambda, built by the stack's pinned cargo-lambda
//! with zig; arm64 as `template.yaml` deploys them, x86_64 only when the arm64 target cannot be had.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::cargo::{bin_args, without_cargo_vars};
use crate::clock::Clock;
use crate::paths::Paths;
use crate::stack::functions::ALL as FUNCTIONS;
use crate::stack::tools;

const ARM64_TARGET: &str = "aarch64-unknown-linux-gnu";
/// Release and cross builds stay out of `target/debug`, so they never invalidate the test loop's artifacts.
const TARGET_DIR: &str = "target/lambda-build";

#[derive(Clone, Copy)]
enum Arch {
    Arm64,
    X86_64,
}

impl Arch {
    fn flag(self) -> &'static str {
        match self {
            Arch::Arm64 => "--arm64",
            Arch::X86_64 => "--x86-64",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::X86_64 => "x86_64",
        }
    }
}

/// Builds the zips of `only` (every function when empty).
pub async fn run(only: Vec<String>) -> anyhow::Result<()> {
    if let Some(unknown) = only.iter().find(|f| !FUNCTIONS.contains(&f.as_str())) {
        bail!(
            "no function {unknown:?}; the functions are {}",
            FUNCTIONS.join(", ")
        );
    }
    let functions: Vec<&str> = FUNCTIONS
        .into_iter()
        .filter(|f| only.is_empty() || only.iter().any(|o| o == f))
        .collect();
    let paths = Paths::new();
    let clock = Clock::new();
    std::fs::create_dir_all(&paths.logs)
        .with_context(|| format!("cannot create {}", paths.logs.display()))?;
    tools::ensure(&paths, &clock).await?;
    tools::ensure_ziglang(&paths, &clock).await?;
    let arch = arch(&clock);

    let target_dir = paths.root.join(TARGET_DIR);
    let path_var = tools::path_with_venv(&paths)?;

    let step = clock.step();
    clock.say(format!(
        "cargo lambda build --release {} --output-format zip ({}) into {TARGET_DIR}",
        arch.flag(),
        functions.join(", ")
    ));
    let mut cmd = without_cargo_vars(Command::new(paths.venv.join("bin").join("cargo-lambda")));
    cmd.args(["lambda", "build", "--release", arch.flag()])
        .args(["--output-format", "zip"])
        .args(bin_args(&functions))
        .current_dir(&paths.root)
        // cargo-lambda's own --target-dir is broken with this cargo; the variable works.
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("PATH", &path_var)
        .stdin(Stdio::null());
    let status = tokio::process::Command::from(cmd)
        .status()
        .await
        .context("cannot run cargo-lambda")?;
    if !status.success() {
        bail!("cargo lambda build failed ({status})");
    }
    clock.done(
        step,
        format!("built {} for {}", functions.join(", "), arch.name()),
    );

    for function in functions {
        let zip = zip_path(&target_dir, function);
        let bytes = std::fs::metadata(&zip)
            .with_context(|| format!("cargo-lambda did not write {}", zip.display()))?
            .len();
        println!(
            "{}  {:.2} MiB  ({})",
            zip.display(),
            bytes as f64 / (1024.0 * 1024.0),
            arch.name()
        );
    }
    Ok(())
}

fn zip_path(target_dir: &Path, function: &str) -> PathBuf {
    target_dir
        .join("lambda")
        .join(function)
        .join("bootstrap.zip")
}

/// arm64 when its Rust target is installed or can be added; x86_64 otherwise, said out loud.
fn arch(clock: &Clock) -> Arch {
    if arm64_target_installed() {
        return Arch::Arm64;
    }
    clock.say(format!("rustup target add {ARM64_TARGET}"));
    let added = Command::new("rustup")
        .args(["target", "add", ARM64_TARGET])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if added {
        return Arch::Arm64;
    }
    clock.say(format!(
        "WARNING: the Rust target {ARM64_TARGET} is missing and could not be added: building x86_64 zips \
         instead. template.yaml deploys arm64; use these only with `Architectures: [x86_64]`."
    ));
    Arch::X86_64
}

/// Whether the active toolchain has the arm64 standard library (asked of rustup, else of rustc's sysroot).
fn arm64_target_installed() -> bool {
    let rustup = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = rustup
        && out.status.success()
    {
        return String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == ARM64_TARGET);
    }
    Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|sysroot| sysroot.join("lib/rustlib").join(ARM64_TARGET).is_dir())
}

//! Running cargo (and xtask itself) from inside `cargo xtask` without rebuilding the world.

use std::ffi::OsString;
use std::process::Command;

/// The cargo that runs xtask.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Variables `cargo run` sets for xtask itself. Build scripts (ring's, through `cc`) track some of them with
/// `rerun-if-env-changed`, so passing them on to a nested cargo would rebuild half the dependency tree and make
/// every later plain `cargo build` rebuild it again.
fn inherited_cargo_vars() -> Vec<OsString> {
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            k.to_str().is_some_and(|k| {
                k.starts_with("CARGO_PKG_")
                    || matches!(
                        k,
                        "CARGO_MANIFEST_DIR"
                            | "CARGO_MANIFEST_PATH"
                            | "CARGO_MANIFEST_LINKS"
                            | "CARGO_CRATE_NAME"
                            | "CARGO_BIN_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                    )
            })
        })
        .collect()
}

/// `cmd` without the variables of [`inherited_cargo_vars`].
pub fn without_cargo_vars(mut cmd: Command) -> Command {
    for k in inherited_cargo_vars() {
        cmd.env_remove(k);
    }
    cmd
}

/// `--bin <f>` for each of `functions`.
pub fn bin_args<'a>(functions: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
    functions.iter().flat_map(|f| ["--bin", f])
}

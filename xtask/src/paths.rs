//! Where xtask keeps what it writes: all under `target/`, which `cargo lambda watch` does not watch.

use std::path::{Path, PathBuf};

/// The workspace root and the stack's files under `target/stack/`.
pub struct Paths {
    pub root: PathBuf,
    pub stack: PathBuf,
    pub logs: PathBuf,
    pub venv: PathBuf,
    pub state: PathBuf,
    pub env_file: PathBuf,
}

impl Paths {
    pub fn new() -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest.parent().unwrap_or(manifest).to_path_buf();
        let stack = root.join("target").join("stack");
        Self {
            logs: stack.join("logs"),
            venv: stack.join("venv"),
            state: stack.join("state.json"),
            env_file: stack.join("stack.env"),
            stack,
            root,
        }
    }
}

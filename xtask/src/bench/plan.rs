//! The plan: what `cargo xtask bench` hands the measuring process (`xtask bench --plan <file>`) in a JSON file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the orchestrating process hands the measuring one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub smoke: bool,
    /// Where the function binaries are (release or debug).
    pub bin_dir: PathBuf,
    pub out: PathBuf,
    pub logs: PathBuf,
    /// The functions' settings from the stack (AWS endpoint, credentials, secret id, buckets, media policy).
    pub function_env: Vec<(String, String)>,
    /// The S3 implementations the transfer figure runs on.
    pub stores: Vec<StoreSpec>,
    pub sizes: Sizes,
}

/// An S3 implementation: its name in the report, and its endpoint (`None`: the stack's, moto).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreSpec {
    pub name: String,
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sizes {
    pub init_starts: usize,
    pub submit_iterations: usize,
    pub transfer_bytes: u64,
    pub transfer_reps: usize,
    pub memory_bytes: u64,
    pub memory_reps: usize,
    pub jobs: usize,
    pub deliveries_per_job: usize,
    pub in_flight: usize,
    pub auth_verifications: usize,
    pub sign_links: usize,
}

impl Sizes {
    pub fn full() -> Self {
        Sizes {
            init_starts: 25,
            submit_iterations: 200,
            transfer_bytes: 256 << 20,
            transfer_reps: 3,
            memory_bytes: 1 << 30,
            memory_reps: 3,
            jobs: 200,
            deliveries_per_job: 5,
            in_flight: 50,
            auth_verifications: 2000,
            sign_links: 200,
        }
    }

    pub fn smoke() -> Self {
        Sizes {
            init_starts: 3,
            submit_iterations: 10,
            transfer_bytes: 8 << 20,
            transfer_reps: 1,
            memory_bytes: 16 << 20,
            memory_reps: 1,
            jobs: 10,
            deliveries_per_job: 2,
            in_flight: 5,
            auth_verifications: 20,
            sign_links: 5,
        }
    }
}

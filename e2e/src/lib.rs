//! End-to-end tests live in `tests/e2e/`: they drive both functions under `cargo lambda watch` over HTTP.

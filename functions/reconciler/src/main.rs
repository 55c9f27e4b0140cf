//! reconciler: cold-start wiring only; each scheduled event runs one bounded pass.

use std::sync::Arc;
use std::time::Duration;

use gen_pipeline::reconcile::{PassTime, ReconcileReport, reconcile_stale_jobs};
use gen_pipeline::{AppState, deadline};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

/// Kept free at the end of an invocation: the report, its log line, the runtime's answer.
const MARGIN: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), Error> {
    gen_pipeline::telemetry::init();
    let state = Arc::new(AppState::from_env().await?);
    // Bad settings stop the function here, with the variable named, not at the first scheduled run.
    let options = state.config.reconcile;
    run(service_fn(move |event: LambdaEvent<Value>| {
        let state = state.clone();
        async move {
            let settings = state.settings().await?;
            let until = deadline::of_invocation(event.context.deadline, MARGIN);
            let report =
                reconcile_stale_jobs(&state, &settings, options, PassTime::new(&settings, until))
                    .await;
            answer(report)
        }
    }))
    .await
}

/// The invocation's answer: the pass's report, or an error when a phase could not read its rows (so that the
/// invocation counts in Lambda's `Errors` metric, which the template's alarm watches).
fn answer(report: ReconcileReport) -> Result<Value, Error> {
    if report.unread > 0 {
        return Err(format!(
            "{} phase(s) of the pass could not read their rows: {report:?}",
            report.unread
        )
        .into());
    }
    Ok(serde_json::to_value(report)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_that_could_not_read_its_rows_fails_the_invocation() {
        let worked = ReconcileReport {
            examined: 2,
            errors: 1,
            ..ReconcileReport::default()
        };
        // A job's own error is the next pass's to retry: the invocation succeeds with its report.
        assert_eq!(answer(worked).unwrap()["errors"], 1);
        let unread = ReconcileReport {
            errors: 3,
            unread: 3,
            ..ReconcileReport::default()
        };
        let err = answer(unread).unwrap_err().to_string();
        assert!(
            err.starts_with("3 phase(s) of the pass could not read"),
            "{err}"
        );
    }
}

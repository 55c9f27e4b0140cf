//! One tracing subscriber for every binary: JSON lines when Lambda's log format is JSON, text otherwise.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The project's crates: the only ones that may log at `trace`.
const OWN_CRATES: [&str; 4] = ["gen_pipeline", "fal_image", "fal_webhook", "reconciler"];

/// An error with its causes, as `a: b: c`, for a log line (the pool's and tokio-postgres' messages leave out the
/// cause, such as why a TLS handshake failed); a cause its error already ends with is not repeated.
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

/// Installs the global subscriber once; later calls are no-ops.
pub fn init() {
    let filter = filter(
        std::env::var("RUST_LOG").ok().as_deref(),
        std::env::var("AWS_LAMBDA_LOG_LEVEL").ok().as_deref(),
    );
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let _ = if json {
        builder
            .json()
            .with_current_span(false)
            .without_time()
            .finish()
            .with(dependency_cap())
            .try_init()
    } else {
        builder.finish().with(dependency_cap()).try_init()
    };
}

/// Other crates log at most at `debug`, whatever the level asked for: at `trace`, lambda_runtime logs every raw
/// invocation event, whose query string carries a webhook's token or secret and whose headers a caller's bearer
/// token. Built without parsing, so it costs the cold start nothing measurable.
fn dependency_cap() -> Targets {
    Targets::new()
        .with_targets(OWN_CRATES.map(|c| (c, LevelFilter::TRACE)))
        .with_default(LevelFilter::DEBUG)
}

/// The filter from `RUST_LOG` (any `EnvFilter` directives), else Lambda's `AWS_LAMBDA_LOG_LEVEL` (`TRACE` …
/// `FATAL`), else `info`; an empty variable counts as unset, and directives that do not parse give `info`.
///
/// A bare level — what Lambda's setting always is — becomes the filter as it is: the directive parser compiles
/// its regular expressions on first use, which every cold start would pay for one word.
fn filter(rust_log: Option<&str>, lambda_level: Option<&str>) -> EnvFilter {
    let spec = [rust_log, lambda_level]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or("info");
    match level(spec) {
        Some(level) => EnvFilter::default().add_directive(level.into()),
        None => EnvFilter::try_new(spec)
            .unwrap_or_else(|_| EnvFilter::default().add_directive(LevelFilter::INFO.into())),
    }
}

/// A level name in any case, or Lambda's `FATAL` (tracing's nearest is `error`).
fn level(spec: &str) -> Option<LevelFilter> {
    if spec.eq_ignore_ascii_case("fatal") {
        return Some(LevelFilter::ERROR);
    }
    spec.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max(rust_log: Option<&str>, lambda_level: Option<&str>) -> Option<LevelFilter> {
        filter(rust_log, lambda_level).max_level_hint()
    }

    #[test]
    fn lambda_levels_in_any_case_with_fatal_as_error() {
        assert_eq!(max(None, Some("DEBUG")), Some(LevelFilter::DEBUG));
        assert_eq!(max(None, Some("warn")), Some(LevelFilter::WARN));
        assert_eq!(max(None, Some("FATAL")), Some(LevelFilter::ERROR));
    }

    #[test]
    fn rust_log_wins_and_keeps_its_directives() {
        assert_eq!(max(Some("warn"), Some("DEBUG")), Some(LevelFilter::WARN));
        assert_eq!(
            max(Some("info,gen_pipeline=trace"), None),
            Some(LevelFilter::TRACE)
        );
    }

    #[test]
    fn at_trace_only_our_crates_log_it() {
        let cap = dependency_cap();
        for own in OWN_CRATES {
            assert!(cap.would_enable(&format!("{own}::webhook"), &tracing::Level::TRACE));
        }
        // lambda_runtime's raw event (a webhook URL's token, a bearer token) is logged at trace.
        let raw_event = "lambda_runtime::layers::api_response";
        assert!(!cap.would_enable(raw_event, &tracing::Level::TRACE));
        assert!(cap.would_enable(raw_event, &tracing::Level::DEBUG));
        assert!(!cap.would_enable("lambda_http", &tracing::Level::TRACE));
        assert!(!cap.would_enable("hyper_util::client", &tracing::Level::TRACE));
    }

    #[test]
    fn unset_empty_or_unparsable_gives_info() {
        assert_eq!(max(None, None), Some(LevelFilter::INFO));
        assert_eq!(max(Some(" "), None), Some(LevelFilter::INFO));
        assert_eq!(max(Some(""), Some("ERROR")), Some(LevelFilter::ERROR));
        assert_eq!(
            max(Some("gen_pipeline=loud"), None),
            Some(LevelFilter::INFO)
        );
    }
}

//! The fal.ai emulator: a real HTTP server playing `fal.run`, `queue.fal.run`, fal's JWKS and its media CDN,
//! with per-request faults scripted by `#directives` in the prompt (see `shared/spec/port-contract.md`); for the
//! local stack it also serves Supabase Auth's JWKS (`supabase_auth`). It plays Replicate as well (`replicate`).

mod calls;
mod directives;
mod media;
mod outputs;
mod queue;
mod replicate;
mod replies;
mod run;
mod state;
mod supabase_auth;
mod webhook;

#[cfg(test)]
mod tests;

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gen_pipeline::fal::signature::{Jwk, Jwks};
use serde_json::{Value, json};

pub use state::Settings;

use replies::json_status;
use state::AppState;

/// Runs the emulator in the foreground with settings from the environment (`FAL_EMULATOR_*`), serving
/// `supabase_jwks` as Supabase Auth's public keys when given.
/// Prints exactly one stdout line, `fal-emulator listening on http://<addr>`, then serves forever.
pub async fn serve(listen: SocketAddr, supabase_jwks: Option<PathBuf>) -> anyhow::Result<()> {
    // Logs go to stderr so stdout carries only the address line the stack waits for.
    // Plain text when logging to a file (the stack's logs), colours only on a terminal.
    let colours = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colours)
        .try_init();
    let settings = Settings {
        supabase_jwks,
        ..Settings::from_env()?
    };
    let running = start(listen, settings).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "fal-emulator listening on http://{}", running.addr)?;
    stdout.flush()?;
    drop(stdout);
    running.server.await.context("fal emulator task")?
}

/// A started emulator: its bound address and the task serving it.
pub struct Running {
    pub addr: SocketAddr,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds `listen` (port 0 picks one) and serves in a background task; used by [`serve`] and by tests.
pub async fn start(listen: SocketAddr, settings: Settings) -> anyhow::Result<Running> {
    if let Some(path) = &settings.supabase_jwks {
        // Served as read at each request; refuse to start without a key set to begin with.
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the Supabase JWKS {}", path.display()))?;
        serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&text)
            .with_context(|| format!("{} is not a JWK set", path.display()))?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the fal emulator to {listen}"))?;
    let addr = listener.local_addr()?;
    let public_base = match &settings.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => format!("http://{addr}"),
    };
    let state = Arc::new(AppState::new(settings, public_base)?);
    let app = router(state);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .context("serving the fal emulator")
    });
    Ok(Running { addr, server })
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/run/{*model_id}", post(run::run))
        .route(
            "/queue/{*rest}",
            get(queue::queue_get)
                .post(queue::queue_post)
                .put(queue::queue_put),
        )
        .route("/media/{request_id}/{file_name}", get(media::serve_media))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/auth/v1/.well-known/jwks.json", get(supabase_auth::jwks))
        .route("/_emulator/requests/{request_id}", get(inspect))
        .route("/_emulator/requests", get(requests_for_job))
        .route(
            "/_emulator/auth/jwks-status",
            post(supabase_auth::set_jwks_status),
        )
        .route("/_emulator/health", get(|| async { "ok" }))
        .merge(replicate::routes())
        .with_state(state)
        .layer(middleware::from_fn(log_request))
}

/// One line per request. Only the path: query strings (`fal_webhook=…`) carry secrets.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    tracing::info!(%method, %path, status = resp.status().as_u16(), "request");
    resp
}

async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    let set = Jwks {
        keys: vec![Jwk::from_verifying_key(&state.signing_key.verifying_key())],
    };
    axum::Json(set).into_response()
}

#[derive(serde::Deserialize)]
struct ForJob {
    job_id: String,
}

/// `?job_id=…`: the queued requests whose webhook URL names that job, for a request the job never recorded (one
/// its submitter gave up on).
async fn requests_for_job(State(state): State<Arc<AppState>>, Query(q): Query<ForJob>) -> Response {
    json_status(
        StatusCode::OK,
        Value::from(state.requests_for_job(&q.job_id)),
    )
}

async fn inspect(State(state): State<Arc<AppState>>, Path(request_id): Path<String>) -> Response {
    match state.inspect(&request_id) {
        Some(view) => json_status(StatusCode::OK, view),
        None => json_status(
            StatusCode::NOT_FOUND,
            json!({"detail": "Request not found"}),
        ),
    }
}

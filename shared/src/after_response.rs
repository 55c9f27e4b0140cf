//! Work that runs after the HTTP answer, inside the same invocation. [`AfterResponse`] is a layer over the Lambda
//! runtime's own services, the innermost of which posts the handler's answer to the runtime API: once the answer
//! is posted (and so on its way to the caller), the layer runs what the handler left, and only then does the
//! runtime ask for its next event. Lambda freezes the environment at that request, not at the answer, so the work
//! is never frozen half-way, and the answer is never held up by it. This is the runtime API's own order for a
//! custom runtime (answer, then `next`), with the work between the two; no extension is registered, so a cold
//! start makes no registration round trip before the runtime's first `next`.
//!
//! The runtime runs one invocation at a time (`Runtime::run`), so what is left when an answer is posted is that
//! invocation's, and all of it runs before the next invocation starts.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use lambda_http::{Adapter, Body, Request, Response};
use lambda_runtime::layers::TracingLayer;
use lambda_runtime::tower::Layer;
use lambda_runtime::{LambdaInvocation, Runtime, Service};

use crate::http_event::BuildableUri;

pub type Work = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Upper bound of one invocation's background work.
const WORK_TIMEOUT: Duration = Duration::from_secs(120);
/// The work stops this long before the invocation's deadline: Lambda counts it in the function's timeout, and
/// past that kills the environment without a word.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// Handed to the handler: what it leaves runs once its answer is posted.
#[derive(Clone, Default)]
pub struct Background {
    left: Arc<Mutex<Vec<Work>>>,
}

impl Background {
    /// Leaves `work` to run after the answer of the invocation under way. Called by the handler before it returns
    /// its answer: what is left is taken once that answer is posted, so work left later (from a task the handler
    /// spawned, or from deferred work itself) would wait for the next invocation's answer instead.
    pub fn defer(&self, work: Work) {
        self.left
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(work);
    }

    /// The layer that runs what is left after each answer; `Runtime::layer` puts it outside the services that
    /// post the answer.
    pub fn layer(&self) -> AfterResponseLayer {
        AfterResponseLayer(self.clone())
    }

    /// Runs what is left, together, until [`WORK_TIMEOUT`] or `deadline`, whichever comes first. A piece of work
    /// that panics ends there (the hook has printed why); the others go on, and the runtime is not taken down.
    async fn run_left(&self, deadline: Option<tokio::time::Instant>) {
        let left = std::mem::take(&mut *self.left.lock().unwrap_or_else(PoisonError::into_inner));
        if left.is_empty() {
            return;
        }
        let until = crate::deadline::earliest(tokio::time::Instant::now() + WORK_TIMEOUT, deadline);
        let guarded = left
            .into_iter()
            .map(|work| AssertUnwindSafe(work).catch_unwind());
        match tokio::time::timeout_at(until, futures::future::join_all(guarded)).await {
            Err(_) => tracing::error!("after-response work cut off by its time bound"),
            Ok(ended) => {
                let panicked = ended.iter().filter(|e| e.is_err()).count();
                if panicked > 0 {
                    tracing::error!(panicked, "after-response work panicked");
                }
            }
        }
    }
}

/// `lambda_http::run` for a handler that may leave work for after its answer: the same services (the request built
/// from the event, [`BuildableUri`] first, and the runtime's tracing span around each invocation, its work
/// included), with [`AfterResponse`] between the posted answer and the runtime's next event.
pub async fn run_http<H, F>(handle: H) -> Result<(), lambda_http::Error>
where
    H: Fn(Request, Background) -> F + Send + 'static,
    F: Future<Output = Result<Response<Body>, lambda_http::Error>> + Send + 'static,
{
    let background = Background::default();
    let after_answer = background.layer();
    let handler = lambda_http::service_fn(move |req| handle(req, background.clone()));
    Runtime::new(BuildableUri(Adapter::from(handler)))
        .layer(after_answer)
        .layer(TracingLayer::new())
        .run()
        .await
}

pub struct AfterResponseLayer(Background);

impl<S> Layer<S> for AfterResponseLayer {
    type Service = AfterResponse<S>;

    fn layer(&self, inner: S) -> AfterResponse<S> {
        AfterResponse {
            inner,
            background: self.0.clone(),
        }
    }
}

/// The runtime's service (`inner`, which answers the invocation) followed by the work its handler left.
pub struct AfterResponse<S> {
    inner: S,
    background: Background,
}

impl<S> Service<LambdaInvocation> for AfterResponse<S>
where
    S: Service<LambdaInvocation, Response = ()>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = ();
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<(), S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, invocation: LambdaInvocation) -> Self::Future {
        let deadline = crate::deadline::of_invocation(invocation.context.deadline, DEADLINE_MARGIN);
        let answering = self.inner.call(invocation);
        let background = self.background.clone();
        Box::pin(async move {
            // Whether or not the answer could be posted, the work was left by a handler that ran: it runs (if the
            // post failed, the runtime then ends the process; post-processing skips the steps already recorded, so
            // a retried delivery that leaves the same work does not do them twice).
            let answered = answering.await;
            background.run_left(deadline).await;
            answered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::{Notify, oneshot};

    fn invocation(deadline_ms: u64) -> LambdaInvocation {
        let mut context = lambda_runtime::Context::default();
        context.deadline = deadline_ms;
        LambdaInvocation {
            parts: lambda_http::http::Response::new(()).into_parts().0,
            body: Default::default(),
            context,
        }
    }

    fn epoch_ms_in(after: Duration) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        u64::try_from((now + after).as_millis()).unwrap()
    }

    /// A stand-in for the runtime's services: leaves `works` as the handler does, then "posts" its answer, which it
    /// reports on `answered`.
    fn answering(
        background: &Background,
        works: Vec<Work>,
        answered: oneshot::Sender<()>,
    ) -> AfterResponse<
        impl Service<LambdaInvocation, Response = (), Error = String, Future: Send> + use<>,
    > {
        let handler = background.clone();
        let mut once = Some((works, answered));
        let inner = lambda_runtime::service_fn(move |_invocation: LambdaInvocation| {
            let once = once.take();
            let handler = handler.clone();
            async move {
                if let Some((works, answered)) = once {
                    for work in works {
                        handler.defer(work);
                    }
                    let _ = answered.send(());
                }
                Ok::<(), String>(())
            }
        });
        background.layer().layer(inner)
    }

    #[tokio::test]
    async fn the_work_runs_after_the_answer_and_before_the_invocation_ends() {
        let background = Background::default();
        let (done, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let (tx, answered) = oneshot::channel();
        let (d, g) = (done.clone(), gate.clone());
        let work: Work = Box::pin(async move {
            g.notified().await;
            d.fetch_add(1, Ordering::SeqCst);
        });
        let mut service = answering(&background, vec![work], tx);
        let invocation = tokio::spawn(service.call(invocation(0)));
        answered.await.expect("the answer was posted");
        // The answer is out and the work has not run: the invocation is not over.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !invocation.is_finished(),
            "the invocation ended before its work"
        );
        assert_eq!(done.load(Ordering::SeqCst), 0);
        gate.notify_one();
        tokio::time::timeout(Duration::from_secs(5), invocation)
            .await
            .expect("the invocation ends once its work is done")
            .unwrap()
            .unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 1);
        // Nothing is left for the next invocation.
        assert!(background.left.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_work_stops_at_the_invocations_deadline() {
        let background = Background::default();
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, _answered) = oneshot::channel();
        let d = done.clone();
        let work: Work = Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            d.fetch_add(1, Ordering::SeqCst);
        });
        let mut service = answering(&background, vec![work], tx);
        let started = tokio::time::Instant::now();
        // The deadline 700 ms away, less the 500 ms margin.
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            service.call(invocation(epoch_ms_in(Duration::from_millis(700)))),
        )
        .await
        .expect("the invocation ends at its deadline");
        let took = started.elapsed();
        assert!(ended.is_ok());
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert_eq!(done.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn work_that_panics_ends_there_and_the_rest_runs() {
        let background = Background::default();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let works: Vec<Work> = vec![
            Box::pin(async { panic!("a step fails") }),
            Box::pin(async move {
                d.fetch_add(1, Ordering::SeqCst);
            }),
        ];
        let (tx, _answered) = oneshot::channel();
        let mut service = answering(&background, works, tx);
        let ended = tokio::time::timeout(Duration::from_secs(5), service.call(invocation(0)))
            .await
            .expect("the invocation ends");
        assert_eq!(ended, Ok(()));
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_invocation_that_left_nothing_ends_with_its_answer() {
        let background = Background::default();
        let inner = lambda_runtime::service_fn(|_invocation: LambdaInvocation| async {
            Err::<(), String>("the answer could not be posted".to_owned())
        });
        let mut service = background.layer().layer(inner);
        let ended = tokio::time::timeout(Duration::from_secs(5), service.call(invocation(0)))
            .await
            .expect("nothing to wait for");
        assert_eq!(ended, Err("the answer could not be posted".to_owned()));
    }
}

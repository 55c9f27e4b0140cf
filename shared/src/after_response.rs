//! Work that runs after the HTTP answer, inside the same invocation: the Lambda runtime's internal-extension
//! pattern. The extension subscribes to INVOKE events; for each one it waits for what the handler left to do
//! (possibly nothing) and runs it. Lambda does not freeze the environment until every extension has asked for
//! its next event, so the work is never frozen half-way, and the answer is never held up by it.

use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;
use lambda_extension::{Extension, LambdaEvent, NextEvent, service_fn};
use lambda_runtime::{LambdaEvent as Invocation, Service};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{Mutex, mpsc};

pub type Work = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Upper bound of one invocation's background work.
const WORK_TIMEOUT: Duration = Duration::from_secs(120);
/// The work stops this long before the invocation's deadline: Lambda counts it in the function's timeout, and
/// past that kills the environment without a word.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// Handed to the handler: exactly one [`Background::finish`] per invocation (a [`Ticket`] makes sure of it).
#[derive(Clone)]
pub struct Background {
    tx: mpsc::UnboundedSender<Option<Work>>,
}

/// The extension's side.
#[derive(Clone)]
pub struct Runner {
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Option<Work>>>>,
}

pub fn channel() -> (Background, Runner) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Background { tx },
        Runner {
            rx: Arc::new(Mutex::new(rx)),
        },
    )
}

impl Background {
    /// A ticket for one invocation: whatever happens in the handler, dropping it reports "nothing to do", so
    /// the extension never waits for an invocation that ended without a message.
    pub fn ticket(&self) -> Ticket {
        Ticket {
            tx: Some(self.tx.clone()),
        }
    }
}

/// The function's service for the runtime, taking any JSON event. The runtime answers an event it cannot read as
/// the handler's type (`T`: an HTTP request) without calling the handler, so that invocation would leave the
/// extension no word, and it would wait for one until the function's timeout. Here an event of type `T` goes to
/// the handler, and any other is answered with an error and reports nothing to do.
pub struct EveryInvocation<T, S> {
    inner: S,
    background: Background,
    event: PhantomData<fn() -> T>,
}

impl Background {
    /// `inner` (the handler, as the runtime would call it) wrapped so that every invocation leaves a word.
    pub fn every_invocation<T, S>(&self, inner: S) -> EveryInvocation<T, S> {
        EveryInvocation {
            inner,
            background: self.clone(),
            event: PhantomData,
        }
    }
}

impl<T, S> Service<Invocation<Value>> for EveryInvocation<T, S>
where
    T: DeserializeOwned,
    S: Service<Invocation<T>>,
    S::Error: From<String>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, invocation: Invocation<Value>) -> Self::Future {
        let Invocation { payload, context } = invocation;
        match serde_json::from_value::<T>(payload) {
            Ok(event) => Either::Left(self.inner.call(Invocation::new(event, context))),
            Err(e) => {
                drop(self.background.ticket());
                // serde's message names the expected shape, not the event's values.
                tracing::warn!(error = %e, "an event the function does not handle");
                Either::Right(ready(Err(S::Error::from(format!(
                    "unsupported event: {e}"
                )))))
            }
        }
    }
}

pub struct Ticket {
    tx: Option<mpsc::UnboundedSender<Option<Work>>>,
}

impl Ticket {
    /// Leaves `work` (or nothing) to run after the answer.
    pub fn finish(mut self, work: Option<Work>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(work);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(None);
        }
    }
}

impl Runner {
    /// Runs the next invocation's work, if any, until [`WORK_TIMEOUT`] or the invocation's `deadline`, whichever
    /// comes first.
    pub async fn run_next(&self, deadline: Option<tokio::time::Instant>) {
        let next = self.rx.lock().await.recv().await;
        let until = crate::deadline::earliest(tokio::time::Instant::now() + WORK_TIMEOUT, deadline);
        if let Some(Some(work)) = next
            && tokio::time::timeout_at(until, work).await.is_err()
        {
            tracing::error!("after-response work cut off by its time bound");
        }
    }

    /// Registers the internal extension (before the runtime starts) and returns its event loop.
    pub async fn register(
        self,
    ) -> Result<impl Future<Output = Result<(), lambda_extension::Error>>, lambda_extension::Error>
    {
        let runner = self;
        let extension = Extension::new()
            .with_events(&["INVOKE"])
            .with_events_processor(service_fn(move |event: LambdaEvent| {
                let runner = runner.clone();
                async move {
                    if let NextEvent::Invoke(invoke) = event.next {
                        let deadline =
                            crate::deadline::of_invocation(invoke.deadline_ms, DEADLINE_MARGIN);
                        runner.run_next(deadline).await;
                    }
                    Ok::<(), lambda_extension::Error>(())
                }
            }))
            .with_extension_name("after-response")
            .register()
            .await?;
        Ok(extension.run())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn work_left_by_an_invocation_runs_and_a_dropped_ticket_counts_as_nothing() {
        let (bg, runner) = channel();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        bg.ticket().finish(Some(Box::pin(async move {
            d.fetch_add(1, Ordering::SeqCst);
        })));
        drop(bg.ticket());
        bg.ticket().finish(None);
        for _ in 0..3 {
            runner.run_next(None).await;
        }
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn work_stops_at_the_invocations_deadline() {
        let (bg, runner) = channel();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        bg.ticket().finish(Some(Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            d.fetch_add(1, Ordering::SeqCst);
        })));
        let started = tokio::time::Instant::now();
        runner
            .run_next(Some(started + Duration::from_millis(200)))
            .await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert_eq!(done.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_event_the_handler_cannot_take_leaves_a_word_and_one_it_can_is_the_handlers() {
        let (bg, runner) = channel();
        let handler = lambda_runtime::service_fn(|event: Invocation<u32>| async move {
            Ok::<_, String>(event.payload + 1)
        });
        let mut service = bg.every_invocation(handler);
        let not_a_number = Invocation::new(serde_json::json!({"not": "http"}), Default::default());
        let answer = service.call(not_a_number).await;
        assert!(answer.is_err_and(|e| e.starts_with("unsupported event")));
        // The invocation's word is there: the extension does not wait.
        tokio::time::timeout(Duration::from_secs(5), runner.run_next(None))
            .await
            .expect("no word for an invocation the handler never saw");

        let answer = service
            .call(Invocation::new(serde_json::json!(41), Default::default()))
            .await;
        assert_eq!(answer, Ok(42));
        // The handler's own ticket (none in this stand-in) is its only word: the wrapper adds none.
        let waited = tokio::time::timeout(Duration::from_millis(200), runner.run_next(None)).await;
        assert!(waited.is_err(), "the wrapper left a word of its own");
    }
}

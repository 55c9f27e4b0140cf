//! Work that runs after the HTTP answer, inside the same invocation: the Lambda runtime's internal-extension
//! pattern. The extension subscribes to INVOKE events; for each one it waits for what the handler left to do
//! (possibly nothing) and runs it. Lambda does not freeze the environment until every extension has asked for
//! its next event, so the work is never frozen half-way, and the answer is never held up by it.

use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Tickets handed out so far: whether the handler took one for an invocation that panicked.
    issued: Arc<AtomicU64>,
}

/// The extension's side.
#[derive(Clone)]
pub struct Runner {
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Option<Work>>>>,
}

pub fn channel() -> (Background, Runner) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Background {
            tx,
            issued: Arc::default(),
        },
        Runner {
            rx: Arc::new(Mutex::new(rx)),
        },
    )
}

impl Background {
    /// A ticket for one invocation: whatever happens in the handler, dropping it reports "nothing to do", so
    /// the extension never waits for an invocation that ended without a message.
    pub fn ticket(&self) -> Ticket {
        self.issued.fetch_add(1, Ordering::SeqCst);
        Ticket {
            tx: Some(self.tx.clone()),
        }
    }
}

/// The function's service for the runtime, taking any JSON event. The runtime answers an event it cannot read as
/// the handler's type (`T`: an HTTP request) without calling the handler, so that invocation would leave the
/// extension no word, and it would wait for one until the function's timeout. Here an event of type `T` goes to
/// the handler, and any other is answered with an error and reports nothing to do.
///
/// The same holds for an event of type `T` that panics before the handler takes its ticket: lambda_http builds
/// the request from the event before calling the handler, and panics on one it cannot build (the causes known,
/// a query or an `x-forwarded-proto` it cannot parse, `http_event::BuildableUri` mends first). That invocation is
/// answered with an error and reports nothing to do; the panic's message is printed once, by the panic hook.
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
            Ok(event) => {
                let issued = self.background.issued.load(Ordering::SeqCst);
                let inner = &mut self.inner;
                match catch_unwind(AssertUnwindSafe(|| {
                    inner.call(Invocation::new(event, context))
                })) {
                    Ok(answer) => Either::Left(answer),
                    Err(_) => {
                        // A ticket the handler took was dropped by the unwinding, and that was its word.
                        if self.background.issued.load(Ordering::SeqCst) == issued {
                            drop(self.background.ticket());
                        }
                        Either::Right(ready(Err(S::Error::from(
                            "the event could not be read as a request".to_owned(),
                        ))))
                    }
                }
            }
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
    use crate::http_event::tests::function_url_event;
    use serde_json::json;
    use std::sync::atomic::AtomicUsize;

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

    /// The one word an invocation left, if any: `true` when there was one and no other follows it.
    async fn exactly_one_word(runner: &Runner) -> bool {
        let first = tokio::time::timeout(Duration::from_secs(5), runner.run_next(None)).await;
        let second = tokio::time::timeout(Duration::from_millis(200), runner.run_next(None)).await;
        first.is_ok() && second.is_err()
    }

    #[tokio::test]
    async fn a_request_lambda_http_cannot_build_is_answered_and_leaves_one_word() {
        let (bg, runner) = channel();
        let called = Arc::new(AtomicUsize::new(0));
        let tickets = bg.clone();
        let seen = called.clone();
        // As the functions' mains: the handler takes its ticket when it is called.
        let handler = lambda_http::service_fn(move |_req: lambda_http::Request| {
            let ticket = tickets.ticket();
            seen.fetch_add(1, Ordering::SeqCst);
            async move {
                ticket.finish(None);
                Ok::<_, lambda_http::Error>("ok")
            }
        });
        let mut service = bg.every_invocation(lambda_http::Adapter::from(handler));

        // `<` is not allowed in an `http::Uri` query: lambda_http's conversion panics before the handler runs.
        let unbuildable = Invocation::new(
            function_url_event("token=a<b", json!({})),
            Default::default(),
        );
        let answer = service.call(unbuildable).await;
        assert!(
            answer.is_err_and(|e| e.to_string() == "the event could not be read as a request"),
            "the invocation is answered with an error"
        );
        assert_eq!(called.load(Ordering::SeqCst), 0);
        assert!(
            exactly_one_word(&runner).await,
            "one word for the unbuilt request"
        );

        let fine = Invocation::new(
            function_url_event("token=ab", json!({})),
            Default::default(),
        );
        assert!(service.call(fine).await.is_ok());
        assert_eq!(called.load(Ordering::SeqCst), 1);
        assert!(
            exactly_one_word(&runner).await,
            "the handler's ticket is the only word"
        );
    }

    #[tokio::test]
    async fn a_handler_that_panics_after_taking_its_ticket_leaves_only_that_word() {
        let (bg, runner) = channel();
        let tickets = bg.clone();
        let handler = lambda_runtime::service_fn(move |_event: Invocation<u32>| {
            let _ticket = tickets.ticket();
            if true {
                panic!("the handler fails after taking its ticket");
            }
            async { Ok::<u32, String>(0) }
        });
        let mut service = bg.every_invocation(handler);
        let answer = service
            .call(Invocation::new(serde_json::json!(1), Default::default()))
            .await;
        assert!(answer.is_err());
        assert!(
            exactly_one_word(&runner).await,
            "the dropped ticket is the only word"
        );
    }
}

//! Work that runs after the HTTP answer, inside the same invocation: the Lambda runtime's internal-extension
//! pattern. The extension subscribes to INVOKE events; for each one it waits for what the handler left to do
//! (possibly nothing) and runs it. Lambda does not freeze the environment until every extension has asked for
//! its next event, so the work is never frozen half-way, and the answer is never held up by it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lambda_extension::{Extension, LambdaEvent, NextEvent, service_fn};
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
}

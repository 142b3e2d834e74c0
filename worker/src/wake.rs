//! Waking an idle job loop the moment a job is pushed, instead of at its
//! next heartbeat.
//!
//! apalis-redis puts every push in the queue's scheduled set and an idle
//! worker looks there only when its heartbeat fires; its own pub/sub wake-up
//! is never sent for such pushes. So [`provision_queue::RedisQueue`] publishes
//! on the queue's wake channel after each push that is due at once, and every
//! worker process listens on its namespace's channels: a message wakes that
//! queue's job loop, which then fetches. Pub/sub is fire-and-forget; a wake
//! lost (listener reconnecting, say) costs one heartbeat of delay, never a
//! job, since the heartbeat still polls.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::ext::poll_strategy::{PollWith, StreamStrategy};
use apalis_redis::RedisStorage;
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use provision_queue::RedisQueue;
use provision_queue::layout::{heartbeat, queue_config_beating, wake_channel};
use provision_shared::jobs::JobKind;
use serde_json::Value;
use tokio::sync::watch;

/// The storage a job loop of `kind` fetches from: polled at its heartbeat
/// (`beat`, or the kind's own), and whenever `wakers` says a job of `kind`
/// was pushed.
pub fn woken_storage(
    queue: &RedisQueue,
    kind: JobKind,
    beat: Option<Duration>,
    wakers: &Wakers,
) -> PollWith<RedisStorage<Value>, StreamStrategy<WakeSignal>> {
    let config = queue_config_beating(queue.namespace(), kind, beat.unwrap_or_else(|| heartbeat(kind)));
    PollWith::new(
        RedisStorage::new(queue.connection()).with_config(config),
        StreamStrategy::new(wakers.signal(kind)),
    )
}

#[derive(Debug, Default)]
struct Flag {
    waker: AtomicWaker,
    raised: AtomicBool,
    /// A later look is already scheduled.
    looking_again: AtomicBool,
}

/// When to look again after a wake-up: a wake-up that arrives while a fetch
/// is on its way to Redis is taken by that fetch, which may have read the
/// queue just before the job landed. Looking again a little later catches
/// it without waiting for the heartbeat.
pub const LOOK_AGAIN_AFTER: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(500)];

/// A stream that yields once per wake-up (wake-ups that arrive before it
/// is polled collapse into one): the poll strategy of one queue's job loop.
#[derive(Debug, Clone, Default)]
pub struct WakeSignal(Arc<Flag>);

impl WakeSignal {
    /// Wakes the job loop polling this signal (or the next one to poll it).
    pub fn raise(&self) {
        self.0.raised.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    /// [`Self::raise`] now, and again after each of [`LOOK_AGAIN_AFTER`]
    /// (once for a burst of wake-ups).
    pub fn raise_and_look_again(&self) {
        self.raise();
        if self.0.looking_again.swap(true, Ordering::AcqRel) {
            return;
        }
        let signal = self.clone();
        tokio::spawn(async move {
            let mut waited = Duration::ZERO;
            for after in LOOK_AGAIN_AFTER {
                tokio::time::sleep(after - waited).await;
                waited = after;
                if after == LOOK_AGAIN_AFTER[LOOK_AGAIN_AFTER.len() - 1] {
                    signal.0.looking_again.store(false, Ordering::Release);
                }
                signal.raise();
            }
        });
    }
}

impl Stream for WakeSignal {
    type Item = ();

    /// Registers the caller's waker on every poll, `Ready` included: apalis'
    /// `PollWith` ignores what its strategy returns and polls it only on its
    /// way to a fetch, which an idle loop makes only when its task is woken.
    /// A wake-up taken without registering would leave the next raise waking
    /// nobody, and the idle loop asleep until its heartbeat.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let flag = &self.0;
        // Register before looking, so a raise in between is not lost.
        flag.waker.register(cx.waker());
        if flag.raised.swap(false, Ordering::AcqRel) {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

/// One [`WakeSignal`] per job kind of this process.
#[derive(Debug, Clone, Default)]
pub struct Wakers {
    by_kind: HashMap<&'static str, WakeSignal>,
}

impl Wakers {
    /// A signal for every job kind.
    pub fn new() -> Self {
        Self {
            by_kind: JobKind::ALL
                .into_iter()
                .map(|kind| (kind.name(), WakeSignal::default()))
                .collect(),
        }
    }

    /// The signal of `kind`'s job loop.
    pub fn signal(&self, kind: JobKind) -> WakeSignal {
        self.by_kind[kind.name()].clone()
    }

    fn raise_all(&self) {
        self.by_kind.values().for_each(WakeSignal::raise_and_look_again);
    }
}

/// Listens on the namespace's wake channels until `stop`, raising the
/// signal of the queue named by each message. Reconnects after an error;
/// raises every signal after each (re)subscription, as pushes made while
/// it was away announced nothing.
pub async fn listen(redis_url: String, namespace: String, wakers: Wakers, mut stop: watch::Receiver<bool>) {
    let channels: HashMap<String, JobKind> = JobKind::ALL
        .into_iter()
        .map(|kind| (wake_channel(&namespace, kind), kind))
        .collect();
    let mut failures = 0u32;
    while !*stop.borrow() {
        let subscribed = async {
            let client = redis::Client::open(redis_url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            for name in channels.keys() {
                pubsub.subscribe(name).await?;
            }
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            result = tokio::time::timeout(Duration::from_secs(5), subscribed) => result,
        };
        match pubsub {
            Ok(Ok(pubsub)) => {
                failures = 0;
                wakers.raise_all();
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        message = messages.next() => match message {
                            Some(message) => {
                                if let Some(kind) = channels.get(message.get_channel_name()) {
                                    wakers.signal(*kind).raise_and_look_again();
                                }
                            }
                            None => {
                                tracing::debug!("wake channel closed; subscribing again");
                                break;
                            }
                        },
                    }
                }
            }
            Ok(Err(e)) => {
                failures += 1;
                tracing::debug!(error = %e, "could not subscribe to the wake channels");
            }
            Err(_) => {
                failures += 1;
                tracing::debug!("timed out subscribing to the wake channels");
            }
        }
        let pause = Duration::from_millis(200 * u64::from(failures.min(10)).max(1));
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn raises_collapse_and_are_not_lost_before_the_first_poll() {
        let mut signal = WakeSignal::default();
        assert!(signal.next().now_or_never().is_none());
        signal.raise();
        signal.raise();
        assert_eq!(signal.next().now_or_never(), Some(Some(())));
        assert!(signal.next().now_or_never().is_none());
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_raise_after_a_ready_poll_still_wakes_the_poller() {
        let counter = Arc::new(CountingWaker::default());
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut signal = WakeSignal::default();
        // A raise already pending: the first poll is Ready at once.
        signal.raise();
        assert_eq!(Pin::new(&mut signal).poll_next(&mut cx), Poll::Ready(Some(())));
        // The poller is not polled again until woken: the next raise must wake it.
        signal.raise();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(Pin::new(&mut signal).poll_next(&mut cx), Poll::Ready(Some(())));
        assert_eq!(Pin::new(&mut signal).poll_next(&mut cx), Poll::Pending);
        signal.raise();
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }
}

//! Coarse deadlines for the requests of one proxy thread: the response timeout of every
//! request, checked on a tick of the thread instead of with a tokio timer per request (a
//! timer-wheel insert and removal under the driver's lock and a clock read, for a timeout
//! that almost never fires). A thread runs [`tick`] once; a request's deadline is then a
//! slot in a thread-local list, taken and given back without a lock or a clock read. On
//! a thread that does not tick, [`within`] falls back to `tokio::time::timeout`.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The longest tick (timeouts above 32 of these fire within 1/16 of their length).
const MAX_TICK: Duration = Duration::from_secs(1);
/// The shortest tick.
const MIN_TICK: Duration = Duration::from_millis(5);

/// The time ran out.
#[derive(Debug)]
pub(super) struct Elapsed;

struct Slot {
    /// The tick at which it fires.
    at: u64,
    waker: Option<Waker>,
    fired: bool,
    live: bool,
}

struct Deadlines {
    /// Ticks so far; `None` while no [`tick`] runs on this thread.
    now: Option<u64>,
    /// How long a tick is.
    every: Duration,
    slots: Vec<Slot>,
    free: Vec<usize>,
}

thread_local! {
    static DEADLINES: RefCell<Deadlines> = const {
        RefCell::new(Deadlines {
            now: None,
            every: MAX_TICK,
            slots: Vec::new(),
            free: Vec::new(),
        })
    };
}

/// The tick for timeouts of about `timeout`: 1/32 of it, within 5 ms..1 s.
pub(super) fn tick_for(timeout: Duration) -> Duration {
    (timeout / 32).clamp(MIN_TICK, MAX_TICK)
}

/// Runs this thread's deadlines forever, one tick every `every`.
pub(super) async fn tick(every: Duration) {
    DEADLINES.with_borrow_mut(|d| {
        d.now = Some(0);
        d.every = every;
    });
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let mut due = Vec::new();
    loop {
        interval.tick().await;
        DEADLINES.with_borrow_mut(|d| {
            let now = d.now.map_or(1, |n| n + 1);
            d.now = Some(now);
            for slot in d.slots.iter_mut().filter(|s| s.live && !s.fired) {
                if slot.at <= now {
                    slot.fired = true;
                    due.extend(slot.waker.take());
                }
            }
        });
        // Woken outside the borrow: a wake may poll nothing here, but stays clear of it.
        for waker in due.drain(..) {
            waker.wake();
        }
    }
}

/// `future`, or [`Elapsed`] once `timeout` has passed (up to two ticks later).
pub(super) async fn within<F: Future + Unpin>(
    timeout: Duration,
    future: F,
) -> Result<F::Output, Elapsed> {
    if DEADLINES.with_borrow(|d| d.now.is_none()) {
        return tokio::time::timeout(timeout, future)
            .await
            .map_err(|_| Elapsed);
    }
    Within {
        future,
        timeout,
        slot: None,
    }
    .await
}

struct Within<F> {
    future: F,
    timeout: Duration,
    /// Taken at the first poll that found the future not ready.
    slot: Option<usize>,
}

impl<F: Future + Unpin> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(output) = Pin::new(&mut this.future).poll(cx) {
            return Poll::Ready(Ok(output));
        }
        DEADLINES.with_borrow_mut(|d| match this.slot {
            None => {
                // Rounded up, plus the tick in progress: never early.
                let ticks = this.timeout.as_nanos().div_ceil(d.every.as_nanos().max(1)) as u64;
                let slot = Slot {
                    at: d.now.unwrap_or_default() + ticks + 1,
                    waker: Some(cx.waker().clone()),
                    fired: false,
                    live: true,
                };
                let at = match d.free.pop() {
                    Some(at) => {
                        d.slots[at] = slot;
                        at
                    }
                    None => {
                        d.slots.push(slot);
                        d.slots.len() - 1
                    }
                };
                this.slot = Some(at);
                Poll::Pending
            }
            Some(at) => {
                let slot = &mut d.slots[at];
                if slot.fired {
                    return Poll::Ready(Err(Elapsed));
                }
                match &slot.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        })
    }
}

impl<F> Drop for Within<F> {
    fn drop(&mut self) {
        if let Some(at) = self.slot {
            // Not during the thread's teardown.
            let _ = DEADLINES.try_with(|d| {
                let mut d = d.borrow_mut();
                d.slots[at].live = false;
                d.slots[at].waker = None;
                d.free.push(at);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_fires_for_a_future_that_does_not_end_and_slots_are_given_back() {
        tokio::spawn(tick(Duration::from_millis(5)));
        tokio::task::yield_now().await;
        let never = std::future::pending::<()>();
        let out = within(Duration::from_millis(50), never).await;
        assert!(out.is_err(), "a future that never ends ran out of time");
        // A ready future passes at once; one that ends in time passes too.
        assert_eq!(
            within(Duration::from_millis(50), std::future::ready(7))
                .await
                .unwrap(),
            7
        );
        let soon = Box::pin(tokio::time::sleep(Duration::from_millis(5)));
        assert!(within(Duration::from_secs(30), soon).await.is_ok());
        let slots = DEADLINES.with_borrow(|d| (d.slots.len(), d.free.len()));
        assert_eq!(slots.0, slots.1, "every slot was given back: {slots:?}");
    }

    #[tokio::test]
    async fn without_a_tick_the_tokio_timer_decides() {
        let out = within(Duration::from_millis(20), std::future::pending::<()>()).await;
        assert!(out.is_err());
    }
}

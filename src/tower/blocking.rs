//! Decisions that wait for the quota store, made off the async runtime.
//!
//! The layer decides every request on the no-wait path first
//! ([`Limiter::try_answer`](crate::Limiter::try_answer)); only one that
//! needs a round trip to the store comes back pending (nothing charged) and
//! is decided again here, on a thread that may block, for at most the
//! store's deadline. The layer brings no async runtime of its own (tower
//! services run on any executor), so these threads are its own: one pool
//! per process that starts a thread when every one it has is busy and lets
//! a thread go after [`KEEP_ALIVE`] without work. Each job is bounded by the
//! store's deadline, so the threads alive are about the rate of pending
//! decisions times that deadline, and none once they stop.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How long a pool thread waits for another job before it exits.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// Runs `f` on a pool thread. The future is its result, or `None` if `f`
/// panicked. Dropping the future does not stop `f`.
pub(super) fn run<T, F>(f: F) -> Done<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        closed: false,
        waker: None,
    }));
    let tx = Sender(slot.clone());
    pool().submit(Box::new(move || tx.send(f())));
    Done(slot)
}

struct Pool {
    state: Mutex<State>,
    work: Condvar,
}

struct State {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job (or woken and not yet looking).
    idle: usize,
    threads: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(State {
            jobs: VecDeque::new(),
            idle: 0,
            threads: 0,
        }),
        work: Condvar::new(),
    })
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code runs a job or panics while holding the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn submit(&'static self, job: Job) {
        let mut s = self.lock();
        s.jobs.push_back(job);
        if s.idle >= s.jobs.len() {
            drop(s);
            self.work.notify_one();
            return;
        }
        s.threads += 1;
        drop(s);
        let started = std::thread::Builder::new()
            .name("tollgate-tower".into())
            .spawn(move || self.work());
        if started.is_err() {
            // No thread to be had: a thread of the pool takes the job when
            // it is done with its own; with none, it is decided here.
            let mut s = self.lock();
            s.threads -= 1;
            while s.threads == 0 {
                let Some(job) = s.jobs.pop_front() else { break };
                drop(s);
                let _ = catch_unwind(AssertUnwindSafe(job));
                s = self.lock();
            }
        }
    }

    fn work(&self) {
        let mut s = self.lock();
        loop {
            if let Some(job) = s.jobs.pop_front() {
                drop(s);
                // A job that panics has dropped its sender: its future is
                // `None`, and this thread serves on.
                let _ = catch_unwind(AssertUnwindSafe(job));
                s = self.lock();
                continue;
            }
            s.idle += 1;
            let (g, waited) = self
                .work
                .wait_timeout(s, KEEP_ALIVE)
                .unwrap_or_else(PoisonError::into_inner);
            s = g;
            s.idle -= 1;
            if waited.timed_out() && s.jobs.is_empty() {
                s.threads -= 1;
                return;
            }
        }
    }
}

struct Slot<T> {
    value: Option<T>,
    /// The sender is gone (after sending, or panicking).
    closed: bool,
    waker: Option<Waker>,
}

fn lock<T>(slot: &Mutex<Slot<T>>) -> MutexGuard<'_, Slot<T>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Sender<T>(Arc<Mutex<Slot<T>>>);

impl<T> Sender<T> {
    fn send(self, value: T) {
        lock(&self.0).value = Some(value);
        // Dropping `self` wakes the future.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut s = lock(&self.0);
            s.closed = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The result of a job given to [`run`].
pub(super) struct Done<T>(Arc<Mutex<Slot<T>>>);

impl<T> Future for Done<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = lock(&self.0);
        if let Some(v) = s.value.take() {
            return Poll::Ready(Some(v));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::task::Wake;
    use std::thread::Thread;

    struct Unpark(Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    #[test]
    fn jobs_run_off_the_caller_and_answer() {
        let (go, wait) = mpsc::channel::<()>();
        let caller = std::thread::current().id();
        let mut done = std::pin::pin!(run(move || {
            wait.recv().unwrap();
            std::thread::current().id()
        }));
        // Not done while the job waits, and the caller is free meanwhile.
        let w = Waker::noop();
        assert!(done.as_mut().poll(&mut Context::from_waker(w)).is_pending());
        go.send(()).unwrap();
        let ran_on = block_on(done).unwrap();
        assert_ne!(ran_on, caller);
        assert_eq!(block_on(run(|| 6 * 7)), Some(42));
    }

    #[test]
    fn a_job_that_panics_is_none_and_the_pool_serves_on() {
        assert_eq!(block_on(run(|| -> u32 { panic!("a job's bug") })), None);
        assert_eq!(block_on(run(|| 1)), Some(1));
    }

    #[test]
    fn jobs_waiting_together_each_get_a_thread() {
        // Eight jobs that each wait until all eight are running: done only
        // if none waits for another's thread.
        let (tx, rx) = mpsc::channel();
        let all = Arc::new(std::sync::Barrier::new(8));
        let done: Vec<_> = (0..8)
            .map(|i| {
                let (all, tx) = (all.clone(), tx.clone());
                run(move || {
                    all.wait();
                    tx.send(i).unwrap();
                    i
                })
            })
            .collect();
        let got: Vec<_> = done.into_iter().map(|d| block_on(d).unwrap()).collect();
        assert_eq!(got, (0..8).collect::<Vec<_>>());
        drop(tx);
        assert_eq!(rx.iter().count(), 8);
        // Idle threads are kept for the next jobs (other tests share the
        // pool, so only a bound).
        let before = pool().lock().threads;
        for i in 0..32 {
            assert_eq!(block_on(run(move || i)), Some(i));
        }
        assert!(pool().lock().threads <= before.max(8) + 4);
    }
}

//! A shared, append-only event log with bounded waits (sync and async).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{wait_until, wait_until_blocking};

/// Thread-safe log of events recorded by a test peer. Cloning shares the same log.
pub struct EventLog<T> {
    inner: Arc<Mutex<Vec<T>>>,
}

impl<T> Clone for EventLog<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> Default for EventLog<T> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl<T: Clone> EventLog<T> {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        // A panicking peer task must not hide the events from the test.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append one event.
    pub fn push(&self, event: T) {
        self.lock().push(event);
    }

    /// Snapshot of every event so far, in order.
    pub fn snapshot(&self) -> Vec<T> {
        self.lock().clone()
    }

    /// Number of events so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Forget every event recorded so far.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Run `f` on the current events without copying them.
    pub fn with<R>(&self, f: impl FnOnce(&[T]) -> R) -> R {
        f(&self.lock())
    }

    /// Number of events matching `matcher`.
    pub fn count(&self, matcher: impl Fn(&T) -> bool) -> usize {
        self.lock().iter().filter(|e| matcher(e)).count()
    }

    /// First event matching `matcher`, if any (no waiting).
    pub fn find(&self, matcher: impl Fn(&T) -> bool) -> Option<T> {
        self.lock().iter().find(|e| matcher(e)).cloned()
    }

    /// Async: wait until `pred(events)` holds, polling; false on timeout.
    pub async fn wait_for(&self, pred: impl Fn(&[T]) -> bool, timeout: Duration) -> bool {
        wait_until(timeout, || pred(&self.lock())).await
    }

    /// Async: wait for the first event matching `matcher`; None on timeout.
    pub async fn wait_event(&self, matcher: impl Fn(&T) -> bool, timeout: Duration) -> Option<T> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.find(&matcher);
            found.is_some()
        })
        .await;
        found
    }

    /// Async: wait until at least `n` events match `matcher`; false on timeout.
    pub async fn wait_count(
        &self,
        matcher: impl Fn(&T) -> bool,
        n: usize,
        timeout: Duration,
    ) -> bool {
        wait_until(timeout, || self.count(&matcher) >= n).await
    }

    /// Blocking twin of [`EventLog::wait_for`] (not for use inside an async test).
    pub fn wait_for_blocking(&self, pred: impl Fn(&[T]) -> bool, timeout: Duration) -> bool {
        wait_until_blocking(timeout, || pred(&self.lock()))
    }

    /// Blocking twin of [`EventLog::wait_event`] (not for use inside an async test).
    pub fn wait_event_blocking(
        &self,
        matcher: impl Fn(&T) -> bool,
        timeout: Duration,
    ) -> Option<T> {
        let mut found = None;
        wait_until_blocking(timeout, || {
            found = self.find(&matcher);
            found.is_some()
        });
        found
    }

    /// Blocking twin of [`EventLog::wait_count`] (not for use inside an async test).
    pub fn wait_count_blocking(
        &self,
        matcher: impl Fn(&T) -> bool,
        n: usize,
        timeout: Duration,
    ) -> bool {
        wait_until_blocking(timeout, || self.count(&matcher) >= n)
    }
}

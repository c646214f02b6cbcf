//! The one signal that stops the host's tasks (mini-redis's `Shutdown`):
//! the host keeps the [`Trigger`], every task a cheap clone of
//! [`Shutdown`], and stopping is one call.

use std::future::Future;

use tokio::sync::watch;

/// Makes a trigger and the signal it sets.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

/// Starts the shutdown of every task holding its [`Shutdown`]; dropping
/// it does too.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    /// Tells every holder of the signal to stop.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Another signal set by this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

/// Whether the host is stopping; cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// True once the shutdown has started.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Completes once the shutdown has started (or its trigger is gone).
    /// Make one and keep it pinned across a loop's turns: each new one
    /// registers with the signal anew.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_on_trigger_and_on_drop() {
        let (trigger, signal) = channel();
        assert!(!signal.is_stopping());
        let waiting = tokio::spawn(signal.wait());
        trigger.trigger();
        waiting.await.unwrap();
        assert!(signal.is_stopping());

        let (trigger, signal) = channel();
        drop(trigger);
        assert!(signal.is_stopping());
        signal.wait().await;
    }
}

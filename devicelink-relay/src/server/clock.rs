//! Where the relay's `now` comes from: the system clock in production, a
//! clock moved by hand in tests. The core takes `now` as an argument; this
//! is the one place the shell reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use devicelink::Timestamp;

/// A source of `now` for the core's calls.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now_from_system()
    }
}

/// A clock that moves only when told to (tests, simulations).
#[derive(Debug)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            millis: AtomicU64::new(start.as_unix_millis()),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        // Saturating add in a CAS loop.
        let _ = self
            .millis
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                Some(m.saturating_add(ms))
            });
    }

    /// Sets the clock to `to` (backwards too: the core must cope).
    pub fn set(&self, to: Timestamp) {
        self.millis.store(to.as_unix_millis(), Ordering::Release);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.millis.load(Ordering::Acquire))
    }
}

//! Progress lines stamped with the time since the command started.

use std::time::Instant;

pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    pub fn say(&self, msg: impl std::fmt::Display) {
        println!("[{:>6.1}s] {msg}", self.start.elapsed().as_secs_f64());
    }

    pub fn step(&self) -> Instant {
        Instant::now()
    }

    /// Reports a finished step with its own duration.
    pub fn done(&self, step: Instant, msg: impl std::fmt::Display) {
        self.say(format!("{msg} ({:.1}s)", step.elapsed().as_secs_f64()));
    }

    /// Seconds since the command started.
    pub fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

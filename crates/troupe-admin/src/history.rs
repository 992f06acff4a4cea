//! The sampler's memory: the snapshots of the last window, so top-N ranks what happened
//! within it (the way recon's `proc_window` does). A pure type, unit-tested without sockets.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use troupe_transport::EndpointSnapshot;

/// Most samples kept, whatever the window and interval: bounds the memory a long window with
/// a short interval could take (each sample holds a whole tree).
pub const MAX_SAMPLES: usize = 120;

/// One sample: every endpoint's tree at one moment.
pub type Sample = Arc<Vec<EndpointSnapshot>>;

/// Samples no older than a window, oldest first.
#[derive(Debug)]
pub struct History {
    window: Duration,
    samples: VecDeque<(Instant, Sample)>,
}

impl History {
    /// Keeps samples for `window`.
    pub fn new(window: Duration) -> History {
        History {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Adds the sample taken `at` (samples come in time order), forgetting those that left the
    /// window and, past [`MAX_SAMPLES`], the oldest. The oldest sample still inside the window
    /// is kept, so the baseline spans as much of the window as was sampled.
    pub fn push(&mut self, at: Instant, sample: Sample) {
        self.samples.push_back((at, sample));
        while let Some(&(t, _)) = self.samples.front() {
            let too_old = at.saturating_duration_since(t) > self.window;
            if (too_old && self.samples.len() > 1) || self.samples.len() > MAX_SAMPLES {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// The oldest sample within the window at `now`, and its age: what top-N subtracts.
    pub fn baseline(&self, now: Instant) -> Option<(Duration, &Sample)> {
        self.samples
            .iter()
            .find(|(t, _)| now.saturating_duration_since(*t) <= self.window)
            .map(|(t, s)| (now.saturating_duration_since(*t), s))
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back().map(|(_, s)| s)
    }

    /// Samples kept.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether nothing was sampled yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Sample {
        Arc::new(Vec::new())
    }

    #[test]
    fn an_empty_history_has_no_baseline() {
        let h = History::new(Duration::from_secs(10));
        assert!(h.is_empty());
        assert!(h.baseline(Instant::now()).is_none());
        assert!(h.latest().is_none());
    }

    #[test]
    fn one_sample_is_both_baseline_and_latest() {
        let mut h = History::new(Duration::from_secs(10));
        let t = Instant::now();
        h.push(t, s());
        let (age, _) = h.baseline(t + Duration::from_secs(3)).unwrap();
        assert_eq!(age, Duration::from_secs(3));
        assert!(h.latest().is_some());
        // Out of the window: no baseline (top-N then ranks cumulative figures).
        assert!(h.baseline(t + Duration::from_secs(11)).is_none());
    }

    #[test]
    fn several_samples_slide_with_the_window() {
        let mut h = History::new(Duration::from_secs(10));
        let t = Instant::now();
        for i in 0..15 {
            h.push(t + Duration::from_secs(i), s());
        }
        // Pushed at 0..=14 s; at 14 s the window reaches back to 4 s.
        assert_eq!(h.len(), 11);
        let (age, _) = h.baseline(t + Duration::from_secs(14)).unwrap();
        assert_eq!(age, Duration::from_secs(10));
        let (age, _) = h.baseline(t + Duration::from_secs(16)).unwrap();
        assert_eq!(age, Duration::from_secs(10));
    }

    #[test]
    fn samples_are_capped_at_the_maximum() {
        let mut h = History::new(Duration::from_secs(3600));
        let t = Instant::now();
        for i in 0..(MAX_SAMPLES as u64 * 2) {
            h.push(t + Duration::from_millis(i), s());
        }
        assert_eq!(h.len(), MAX_SAMPLES);
        let now = t + Duration::from_millis(MAX_SAMPLES as u64 * 2);
        let (age, _) = h.baseline(now).unwrap();
        assert_eq!(age, Duration::from_millis(MAX_SAMPLES as u64));
    }
}

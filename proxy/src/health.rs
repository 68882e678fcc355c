//! The health state machine of one server: rise/fall hysteresis, kept apart from the probes so it
//! can be tested without I/O.
//!
//! A server starts *assumed up* (as in HAProxy, so a restart or reload of setgate is not a
//! blackout) but *unchecked*. From the first check on, the state flips only after `rise`
//! consecutive successes (down -> up) or `fall` consecutive failures (up -> down): a first check
//! that happens to time out (a busy broker, a loaded machine) does not take a healthy server out,
//! which would leave it down until `rise` checks in a row succeed. A server that is really dead
//! at start is down after `fall` checks; until then a client sent to it is retried on another.

use crate::config::CheckConfig;
use std::time::Duration;

/// The health of one server as its checks see it. Admin state (ready/drain/maint) is separate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    up: bool,
    checked: bool,
    /// Consecutive results that disagree with `up`.
    streak: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// Assumed up, not yet checked.
    pub const fn new() -> Self {
        Health {
            up: true,
            checked: false,
            streak: 0,
        }
    }

    /// True while the server takes new connections as far as health goes.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// True once at least one check has completed.
    pub fn is_checked(&self) -> bool {
        self.checked
    }

    /// Records one check result; returns the new state when it changed.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        self.checked = true;
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak >= needed.max(1) {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }

    /// True while some results disagree with the state but not yet enough to flip it.
    pub fn is_changing(&self) -> bool {
        self.streak > 0
    }

    /// How long to wait before the next check: `fastinter` while changing, `downinter` while down,
    /// `inter` otherwise.
    pub fn next_interval(&self, check: &CheckConfig) -> Duration {
        if self.is_changing() {
            check.fastinter()
        } else if !self.up {
            check.downinter()
        } else {
            check.inter
        }
    }

    /// `"up"`, `"down"`, `"going down"`, `"going up"`, or `"unchecked"` for the API and logs.
    pub fn describe(&self) -> &'static str {
        match (self.checked, self.up, self.is_changing()) {
            (false, _, _) => "unchecked",
            (true, true, false) => "up",
            (true, true, true) => "going down",
            (true, false, false) => "down",
            (true, false, true) => "going up",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failed_first_check_does_not_take_a_server_out() {
        let mut h = Health::new();
        assert!(h.is_up() && !h.is_checked());
        assert_eq!(h.record(false, 2, 3), None);
        assert!(h.is_up() && h.is_checked());
        assert_eq!(h.describe(), "going down");
        // A busy broker answers the next check: still up, never flapped.
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.describe(), "up");

        let mut h = Health::new();
        assert_eq!(h.record(true, 2, 3), None);
        assert!(h.is_up() && h.is_checked());
    }

    #[test]
    fn a_server_dead_at_start_is_down_after_fall_checks() {
        let mut h = Health::new();
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), Some(false));
        assert!(!h.is_up());
    }

    #[test]
    fn flips_only_after_fall_consecutive_failures() {
        let mut h = Health::new();
        h.record(true, 2, 3);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.describe(), "going down");
        assert_eq!(h.record(false, 2, 3), Some(false));
        assert_eq!(h.describe(), "down");
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut h = Health::new();
        h.record(true, 2, 3);
        h.record(false, 2, 3);
        h.record(false, 2, 3);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert!(h.is_up());
    }

    #[test]
    fn rises_after_rise_consecutive_successes() {
        let mut h = Health::new();
        for _ in 0..3 {
            h.record(false, 2, 3);
        }
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.describe(), "going up");
        assert_eq!(h.record(true, 2, 3), Some(true));
    }

    #[test]
    fn intervals_follow_the_state() {
        let check = CheckConfig {
            inter: Duration::from_secs(2),
            fastinter: Some(Duration::from_millis(200)),
            downinter: Some(Duration::from_secs(5)),
            ..CheckConfig::default()
        };
        let mut h = Health::new();
        h.record(true, 2, 3);
        assert_eq!(h.next_interval(&check), Duration::from_secs(2));
        h.record(false, 2, 3);
        assert_eq!(h.next_interval(&check), Duration::from_millis(200));
        h.record(false, 2, 3);
        h.record(false, 2, 3);
        assert_eq!(h.next_interval(&check), Duration::from_secs(5));
    }
}

//! The VRRPv3 Backup/Master state machine (RFC 5798 §6.4 with RFC 9568's corrections) plus
//! Keepalived's FAULT state, as pure logic: no clock, no sockets. The caller passes the current instant into every call and performs
//! the [`Action`]s that come back; [`Machine::next_deadline`] says when to call
//! [`Machine::on_timer`] next. Tests drive it with made-up instants.
//!
//! Timers (all from the master's advert interval the backup learned from the last advert):
//! `Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256` and
//! `Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time`, with this router's effective
//! priority, as Keepalived computes them.
//!
//! FAULT is not in the RFCs; it is what Keepalived does when an instance cannot serve (its
//! interface or a tracked one is down, or, here, the proxy has been not ready too long): a master
//! steps down with a priority-0 advert, then the instance neither advertises nor holds the VIPs
//! nor listens to adverts. When the fault clears it starts over as Backup, so it becomes master
//! again only as the protocol says (after Master_Down_Interval, or by preempting a lower master).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Where the router stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started, or stopped.
    Initialize,
    /// Watching the master's adverts; takes over when they stop.
    Backup,
    /// Holding the virtual IPs and advertising.
    Master,
    /// Cannot serve: silent, without the virtual IPs, until the fault clears.
    Fault,
}

impl State {
    /// Keepalived's name of the state, also given to the notify command (`STOP` for Initialize).
    pub fn name(self) -> &'static str {
        match self {
            State::Initialize => "STOP",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        }
    }

    /// Gauge value for `setgate_vrrp_state`: 0 stopped, 1 backup, 2 master, 3 fault.
    pub fn gauge(self) -> f64 {
        match self {
            State::Initialize => 0.0,
            State::Backup => 1.0,
            State::Master => 2.0,
            State::Fault => 3.0,
        }
    }
}

/// What the caller must do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send an advert with this priority (0: stepping down).
    SendAdvert(u8),
    /// The state changed to this one (Master: add the VIPs and send gratuitous ARPs; Backup,
    /// Fault or Initialize: remove them).
    Transition(State),
}

/// The fixed parameters of one virtual router.
#[derive(Debug, Clone)]
pub struct Params {
    /// Configured priority, 1-254.
    pub priority: u8,
    /// Our own advert interval.
    pub advert_int: Duration,
    /// Take over from a lower-priority master.
    pub preempt: bool,
    /// How long a lower-priority master is tolerated before preempting.
    pub preempt_delay: Duration,
    /// Our primary address: the source of our adverts and the tie-breaker on equal priority.
    pub primary: Ipv4Addr,
}

impl Params {
    /// The parameters `cfg` sets, with `primary` as our address.
    pub fn from_config(cfg: &crate::InstanceConfig, primary: Ipv4Addr) -> Params {
        Params {
            priority: cfg.priority,
            advert_int: cfg.advert_int,
            preempt: cfg.preempt,
            preempt_delay: cfg.preempt_delay,
            primary,
        }
    }
}

/// The current master as last heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasterInfo {
    /// Its primary address.
    pub addr: Ipv4Addr,
    /// The priority it advertised.
    pub priority: u8,
}

/// One virtual router's state machine.
#[derive(Debug, Clone)]
pub struct Machine {
    params: Params,
    state: State,
    effective_priority: u8,
    master_adver_int: Duration,
    /// Backup: when to take over unless an acceptable advert arrives first.
    master_down_at: Option<Instant>,
    /// Master: when to send the next advert.
    advert_at: Option<Instant>,
    /// Backup with a preempt delay: since when a lower-priority master has been tolerated.
    lower_master_since: Option<Instant>,
    master: Option<MasterInfo>,
    /// Whether a fault is present (kept in every state, so a fault set before `start` starts the
    /// machine in Fault).
    fault: bool,
}

impl Machine {
    /// A machine in Initialize; call [`Machine::start`].
    pub fn new(params: Params) -> Machine {
        Machine {
            effective_priority: params.priority,
            master_adver_int: params.advert_int,
            state: State::Initialize,
            master_down_at: None,
            advert_at: None,
            lower_master_since: None,
            master: None,
            fault: false,
            params,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The priority we advertise now (configured, less `track` while not ready).
    pub fn effective_priority(&self) -> u8 {
        self.effective_priority
    }

    /// The master we last accepted an advert from (ourselves while master).
    pub fn master(&self) -> Option<MasterInfo> {
        match self.state {
            State::Master => Some(MasterInfo {
                addr: self.params.primary,
                priority: self.effective_priority,
            }),
            _ => self.master,
        }
    }

    /// The master's advert interval as learned from its adverts (ours while master).
    pub fn master_adver_int(&self) -> Duration {
        self.master_adver_int
    }

    /// `((256 - priority) * Master_Adver_Interval) / 256`.
    pub fn skew_time(&self) -> Duration {
        self.master_adver_int * (256 - u32::from(self.effective_priority)) / 256
    }

    /// `3 * Master_Adver_Interval + Skew_Time`.
    pub fn master_down_interval(&self) -> Duration {
        self.master_adver_int * 3 + self.skew_time()
    }

    /// When [`Machine::on_timer`] must be called next, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Initialize | State::Fault => None,
            State::Backup => self.master_down_at,
            State::Master => self.advert_at,
        }
    }

    /// Initialize → Backup, with the Master_Down_Timer running; → Fault when a fault is already
    /// present.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.master_adver_int = self.params.advert_int;
        if self.fault {
            self.state = State::Fault;
            return vec![Action::Transition(State::Fault)];
        }
        self.become_backup(now)
    }

    /// A fault appeared (`true`) or cleared (`false`). Entering FAULT, a master first sends a
    /// priority-0 advert so a backup takes over after Skew_Time; leaving it, the router starts
    /// over as Backup. Before `start`, only remembered.
    pub fn set_fault(&mut self, now: Instant, fault: bool) -> Vec<Action> {
        if fault == self.fault {
            return Vec::new();
        }
        self.fault = fault;
        match (self.state, fault) {
            (State::Initialize, _) => Vec::new(),
            (State::Fault, false) => {
                self.master_adver_int = self.params.advert_int;
                self.become_backup(now)
            }
            (State::Master, true) => {
                let mut actions = vec![Action::SendAdvert(0)];
                actions.extend(self.become_fault());
                actions
            }
            (State::Backup, true) => self.become_fault(),
            // Unreachable: Fault with fault = false was handled, and set_fault(true) in
            // Fault means self.fault was already true.
            (State::Fault, true) | (State::Master | State::Backup, false) => Vec::new(),
        }
    }

    /// Fires whichever timer is due.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        match self.state {
            State::Backup if self.master_down_at.is_some_and(|t| t <= now) => {
                self.become_master(now)
            }
            State::Master if self.advert_at.is_some_and(|t| t <= now) => {
                self.advert_at = Some(now + self.params.advert_int);
                vec![Action::SendAdvert(self.effective_priority)]
            }
            _ => Vec::new(),
        }
    }

    /// A valid advert for our VRID from another router (the caller has dropped bad ones and our
    /// own).
    pub fn on_advert(
        &mut self,
        now: Instant,
        src: Ipv4Addr,
        priority: u8,
        max_advert_int: Duration,
    ) -> Vec<Action> {
        match self.state {
            State::Initialize | State::Fault => Vec::new(),
            State::Backup => {
                if priority == 0 {
                    // The master is stepping down: take over after Skew_Time only.
                    self.master_down_at = Some(now + self.skew_time());
                    self.master = None;
                    return Vec::new();
                }
                let lower = priority < self.effective_priority;
                let tolerated = !self.params.preempt
                    || !lower
                    || (!self.params.preempt_delay.is_zero()
                        && self
                            .lower_master_since
                            .is_none_or(|t| now < t + self.params.preempt_delay));
                if !tolerated {
                    // Ignore it: the Master_Down_Timer fires and we preempt.
                    return Vec::new();
                }
                if !self.params.preempt_delay.is_zero() {
                    self.lower_master_since = match lower {
                        false => None,
                        true => Some(self.lower_master_since.unwrap_or(now)),
                    };
                }
                self.master_adver_int = max_advert_int;
                self.master_down_at = Some(now + self.master_down_interval());
                self.master = Some(MasterInfo {
                    addr: src,
                    priority,
                });
                Vec::new()
            }
            State::Master => {
                if priority == 0 {
                    self.advert_at = Some(now + self.params.advert_int);
                    return vec![Action::SendAdvert(self.effective_priority)];
                }
                let wins = priority > self.effective_priority
                    || (priority == self.effective_priority && src > self.params.primary);
                if wins {
                    self.master_adver_int = max_advert_int;
                    self.master = Some(MasterInfo {
                        addr: src,
                        priority,
                    });
                    self.become_backup(now)
                } else {
                    // A lower master: answer at once so it steps down now rather than at our next
                    // advert (Keepalived does the same).
                    vec![Action::SendAdvert(self.effective_priority)]
                }
            }
        }
    }

    /// Sets the priority drop (0 when the proxy is ready, `track` when not). A master advertises
    /// its new priority at once so backups can preempt without waiting for the next interval.
    pub fn set_priority_drop(&mut self, now: Instant, drop: u8) -> Vec<Action> {
        let effective = self.params.priority.saturating_sub(drop).max(1);
        if effective == self.effective_priority {
            return Vec::new();
        }
        self.effective_priority = effective;
        match self.state {
            State::Master => {
                self.advert_at = Some(now + self.params.advert_int);
                vec![Action::SendAdvert(effective)]
            }
            _ => Vec::new(),
        }
    }

    /// New settings without a restart (priority, advert interval, preemption; the primary
    /// address stays), with the current track `drop`. A master advertises them at once.
    pub fn reconfigure(&mut self, now: Instant, params: Params, drop: u8) -> Vec<Action> {
        self.params = Params {
            primary: self.params.primary,
            ..params
        };
        self.effective_priority = self.params.priority.saturating_sub(drop).max(1);
        if self.params.preempt_delay.is_zero() {
            self.lower_master_since = None;
        }
        match self.state {
            State::Master => {
                self.master_adver_int = self.params.advert_int;
                self.advert_at = Some(now + self.params.advert_int);
                vec![Action::SendAdvert(self.effective_priority)]
            }
            _ => Vec::new(),
        }
    }

    /// Stops: a master sends priority 0 so a backup takes over after Skew_Time.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.state {
            State::Initialize => return actions,
            State::Master => actions.push(Action::SendAdvert(0)),
            State::Backup | State::Fault => {}
        }
        self.state = State::Initialize;
        self.master_down_at = None;
        self.advert_at = None;
        self.master = None;
        actions.push(Action::Transition(State::Initialize));
        actions
    }

    fn become_backup(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Backup;
        self.advert_at = None;
        self.lower_master_since = None;
        self.master_down_at = Some(now + self.master_down_interval());
        vec![Action::Transition(State::Backup)]
    }

    fn become_fault(&mut self) -> Vec<Action> {
        self.state = State::Fault;
        self.master_down_at = None;
        self.advert_at = None;
        self.lower_master_since = None;
        self.master = None;
        vec![Action::Transition(State::Fault)]
    }

    fn become_master(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Master;
        self.master_down_at = None;
        self.lower_master_since = None;
        self.master = None;
        self.master_adver_int = self.params.advert_int;
        self.advert_at = Some(now + self.params.advert_int);
        vec![
            Action::Transition(State::Master),
            Action::SendAdvert(self.effective_priority),
        ]
    }
}

#[cfg(test)]
mod tests;

//! Deterministic timer tests of the state machine: every instant is made up.

use super::*;
use Action::*;

const ME: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const LOW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const HIGH: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn machine(priority: u8, preempt: bool, preempt_delay: Duration) -> (Machine, Instant) {
    let m = Machine::new(Params {
        priority,
        advert_int: ms(100),
        preempt,
        preempt_delay,
        primary: ME,
    });
    (m, Instant::now())
}

/// Starts and lets the Master_Down_Timer fire with nobody else around.
fn master(priority: u8) -> (Machine, Instant) {
    let (mut m, t0) = machine(priority, true, Duration::ZERO);
    m.start(t0);
    let t = m.next_deadline().unwrap();
    assert_eq!(
        m.on_timer(t),
        vec![Transition(State::Master), SendAdvert(priority)]
    );
    (m, t)
}

#[test]
fn timers_follow_rfc_5798() {
    let (mut m, t0) = machine(100, true, Duration::ZERO);
    assert_eq!(m.start(t0), vec![Transition(State::Backup)]);
    // Skew = (256 - 100) * 100ms / 256 = 60.9375ms; MDI = 300ms + Skew.
    assert_eq!(
        m.skew_time(),
        Duration::from_micros(60_937) + Duration::from_nanos(500)
    );
    assert_eq!(m.next_deadline(), Some(t0 + ms(300) + m.skew_time()));
    assert!(m.on_timer(t0 + ms(360)).is_empty(), "not yet");
    assert_eq!(
        m.on_timer(t0 + ms(361)),
        vec![Transition(State::Master), SendAdvert(100)]
    );
    assert_eq!(m.next_deadline(), Some(t0 + ms(461)));
    assert_eq!(m.on_timer(t0 + ms(461)), vec![SendAdvert(100)]);
    assert_eq!(m.next_deadline(), Some(t0 + ms(561)));
}

#[test]
fn backup_learns_the_masters_interval() {
    let (mut m, t0) = machine(100, true, Duration::ZERO);
    m.start(t0);
    m.on_advert(t0 + ms(10), HIGH, 150, Duration::from_secs(1));
    assert_eq!(m.master_adver_int(), Duration::from_secs(1));
    assert_eq!(
        m.master(),
        Some(MasterInfo {
            addr: HIGH,
            priority: 150
        })
    );
    // 3 s + (156 * 1 s / 256) after the advert.
    assert_eq!(
        m.next_deadline(),
        Some(t0 + ms(10) + ms(3000) + ms(609) + Duration::from_micros(375))
    );
}

#[test]
fn adverts_from_a_higher_master_keep_the_backup_down() {
    let (mut m, t0) = machine(100, true, Duration::ZERO);
    m.start(t0);
    for i in 1..=20 {
        let t = t0 + ms(100 * i);
        assert!(m.on_advert(t, HIGH, 150, ms(100)).is_empty());
        assert!(m.on_timer(t).is_empty());
    }
    assert_eq!(m.state(), State::Backup);
    // The master dies after the advert at 2.0 s: takeover exactly one MDI later.
    let mdi = m.master_down_interval();
    assert!(m.on_timer(t0 + ms(2000) + mdi - ms(1)).is_empty());
    assert_eq!(
        m.on_timer(t0 + ms(2000) + mdi)[0],
        Transition(State::Master)
    );
}

#[test]
fn priority_zero_means_takeover_after_skew_time() {
    let (mut m, t0) = machine(100, true, Duration::ZERO);
    m.start(t0);
    m.on_advert(t0, HIGH, 150, ms(100));
    assert!(m.on_advert(t0 + ms(50), HIGH, 0, ms(100)).is_empty());
    assert_eq!(m.next_deadline(), Some(t0 + ms(50) + m.skew_time()));
    assert_eq!(m.on_timer(t0 + ms(111))[0], Transition(State::Master));
}

#[test]
fn master_answers_priority_zero_with_an_advert() {
    let (mut m, t) = master(100);
    assert_eq!(
        m.on_advert(t + ms(5), HIGH, 0, ms(100)),
        vec![SendAdvert(100)]
    );
    assert_eq!(m.next_deadline(), Some(t + ms(105)));
}

#[test]
fn preempt_takes_over_from_a_lower_master() {
    let (mut m, t0) = machine(150, true, Duration::ZERO);
    m.start(t0);
    // The lower master's adverts are ignored, so the down timer set at start fires.
    let deadline = m.next_deadline().unwrap();
    for i in 0..3 {
        assert!(m.on_advert(t0 + ms(100 * i), LOW, 100, ms(100)).is_empty());
    }
    assert_eq!(m.next_deadline(), Some(deadline));
    assert_eq!(m.on_timer(deadline)[0], Transition(State::Master));
    // The old master hears us and steps down (tested below from its side).
}

#[test]
fn without_preempt_a_lower_master_keeps_the_vip() {
    let (mut m, t0) = machine(150, false, Duration::ZERO);
    m.start(t0);
    for i in 0..50 {
        let t = t0 + ms(100 * i);
        assert!(m.on_advert(t, LOW, 100, ms(100)).is_empty());
        assert!(m.on_timer(t).is_empty());
    }
    assert_eq!(m.state(), State::Backup);
    assert_eq!(m.master().unwrap().addr, LOW);
}

#[test]
fn preempt_delay_tolerates_a_lower_master_for_a_while() {
    let (mut m, t0) = machine(150, true, Duration::from_secs(2));
    m.start(t0);
    let mut t = t0;
    while m.state() == State::Backup {
        t += ms(100);
        m.on_advert(t, LOW, 100, ms(100));
        m.on_timer(t);
        assert!(t < t0 + ms(3000), "never preempted");
    }
    // Tolerated for 2 s from the first advert (at 100 ms), then one Master_Down_Interval.
    let mdi = ms(300) + ms(100) * (256 - 150) / 256;
    assert!(
        t >= t0 + ms(2100) + mdi - ms(100) && t <= t0 + ms(2100) + mdi + ms(100),
        "{:?}",
        t - t0
    );
}

#[test]
fn master_steps_down_for_a_higher_priority() {
    let (mut m, t) = master(100);
    assert_eq!(
        m.on_advert(t + ms(1), LOW, 150, ms(200)),
        vec![Transition(State::Backup)]
    );
    assert_eq!(
        m.master(),
        Some(MasterInfo {
            addr: LOW,
            priority: 150
        })
    );
    assert_eq!(m.master_adver_int(), ms(200));
    assert_eq!(
        m.next_deadline(),
        Some(t + ms(1) + m.master_down_interval())
    );
}

#[test]
fn equal_priority_is_decided_by_the_higher_address() {
    let (mut m, t) = master(100);
    assert_eq!(
        m.on_advert(t, LOW, 100, ms(100)),
        vec![SendAdvert(100)],
        "we win against a lower address"
    );
    assert_eq!(m.state(), State::Master);
    assert_eq!(
        m.on_advert(t, HIGH, 100, ms(100)),
        vec![Transition(State::Backup)]
    );
}

#[test]
fn master_answers_a_lower_master_at_once() {
    let (mut m, t) = master(150);
    assert_eq!(
        m.on_advert(t + ms(3), LOW, 100, ms(100)),
        vec![SendAdvert(150)]
    );
    assert_eq!(m.state(), State::Master);
}

#[test]
fn track_drop_is_advertised_at_once_and_floors_at_one() {
    let (mut m, t) = master(150);
    assert_eq!(m.set_priority_drop(t + ms(10), 254), vec![SendAdvert(1)]);
    assert_eq!(m.effective_priority(), 1);
    assert!(
        m.set_priority_drop(t + ms(20), 254).is_empty(),
        "no change, no advert"
    );
    // Now a ready backup at 100 preempts: from our side, its advert wins.
    assert_eq!(
        m.on_advert(t + ms(30), LOW, 100, ms(100)),
        vec![Transition(State::Backup)]
    );
    // Ready again: back to 150; as a preempting backup we ignore the 100 master's adverts.
    assert!(m.set_priority_drop(t + ms(40), 0).is_empty());
    assert_eq!(m.effective_priority(), 150);
    assert!(m.on_advert(t + ms(50), LOW, 100, ms(100)).is_empty());
    let deadline = m.next_deadline().unwrap();
    assert_eq!(
        deadline,
        t + ms(30) + ms(300) + ms(100) * (256 - 1) / 256,
        "timer from the last accepted advert"
    );
    assert_eq!(m.on_timer(deadline)[0], Transition(State::Master));
}

#[test]
fn shutdown_sends_priority_zero_only_as_master() {
    let (mut m, _) = master(150);
    assert_eq!(
        m.shutdown(),
        vec![SendAdvert(0), Transition(State::Initialize)]
    );
    assert_eq!(m.next_deadline(), None);
    assert!(m.shutdown().is_empty());
    let (mut b, t0) = machine(100, true, Duration::ZERO);
    b.start(t0);
    assert_eq!(b.shutdown(), vec![Transition(State::Initialize)]);
}

#[test]
fn reconfigure_lowers_a_masters_priority_and_says_so_at_once() {
    let (mut m, t) = master(150);
    let params = Params {
        priority: 90,
        advert_int: ms(200),
        preempt: true,
        preempt_delay: Duration::ZERO,
        primary: Ipv4Addr::new(10, 9, 9, 9),
    };
    assert_eq!(m.reconfigure(t + ms(5), params, 0), vec![SendAdvert(90)]);
    assert_eq!(m.next_deadline(), Some(t + ms(205)));
    assert_eq!(
        m.master().unwrap().addr,
        ME,
        "the primary address never changes"
    );
    // A backup at 100 now wins.
    assert_eq!(
        m.on_advert(t + ms(10), LOW, 100, ms(100)),
        vec![Transition(State::Backup)]
    );
}

#[test]
fn a_master_in_fault_steps_down_with_priority_zero_then_stays_silent() {
    let (mut m, t) = master(150);
    assert_eq!(
        m.set_fault(t + ms(5), true),
        vec![SendAdvert(0), Transition(State::Fault)]
    );
    assert_eq!(m.state(), State::Fault);
    assert_eq!(
        m.next_deadline(),
        None,
        "no advert timer, no master-down timer"
    );
    assert_eq!(m.master(), None);
    // Nothing it hears or waits for moves it, and it never advertises.
    assert!(m.on_timer(t + ms(10_000)).is_empty());
    assert!(m.on_advert(t + ms(20), HIGH, 200, ms(100)).is_empty());
    assert!(m.on_advert(t + ms(30), LOW, 0, ms(100)).is_empty());
    assert!(m.set_priority_drop(t + ms(40), 100).is_empty());
    assert_eq!(m.effective_priority(), 50, "the drop is still recorded");
    assert!(m.set_fault(t + ms(50), true).is_empty(), "already in fault");
}

#[test]
fn leaving_fault_starts_over_as_backup_and_takes_over_as_the_protocol_says() {
    let (mut m, t) = master(150);
    m.set_fault(t, true);
    let t1 = t + ms(1000);
    assert_eq!(m.set_fault(t1, false), vec![Transition(State::Backup)]);
    // Master_Down_Interval with our own advert interval: 300 ms + (106 * 100 ms / 256).
    assert_eq!(m.next_deadline(), Some(t1 + m.master_down_interval()));
    // A higher master keeps it down...
    assert!(m.on_advert(t1 + ms(100), HIGH, 200, ms(100)).is_empty());
    assert_eq!(m.state(), State::Backup);
    // ...and when it goes quiet, the timer makes this one master.
    let due = m.next_deadline().unwrap();
    assert_eq!(
        m.on_timer(due),
        vec![Transition(State::Master), SendAdvert(150)]
    );
}

#[test]
fn leaving_fault_preempts_a_lower_master() {
    let (mut m, t0) = machine(150, true, Duration::ZERO);
    m.start(t0);
    m.set_fault(t0, true);
    m.set_fault(t0 + ms(10), false);
    // The lower master's adverts are ignored, so Master_Down_Interval after leaving FAULT it
    // preempts.
    assert!(m.on_advert(t0 + ms(50), LOW, 100, ms(100)).is_empty());
    assert_eq!(
        m.next_deadline(),
        Some(t0 + ms(10) + m.master_down_interval())
    );
}

#[test]
fn a_backup_in_fault_sends_nothing() {
    let (mut m, t0) = machine(100, true, Duration::ZERO);
    m.start(t0);
    assert_eq!(
        m.set_fault(t0 + ms(1), true),
        vec![Transition(State::Fault)]
    );
    assert_eq!(m.shutdown(), vec![Transition(State::Initialize)]);
}

#[test]
fn a_fault_present_at_start_starts_in_fault() {
    let (mut m, t0) = machine(100, true, Duration::ZERO);
    assert!(
        m.set_fault(t0, true).is_empty(),
        "before start: remembered only"
    );
    assert_eq!(m.start(t0), vec![Transition(State::Fault)]);
    assert_eq!(m.next_deadline(), None);
    assert_eq!(
        m.set_fault(t0 + ms(5), false),
        vec![Transition(State::Backup)]
    );
}

#[test]
fn reconfigure_in_fault_sends_nothing() {
    let (mut m, t) = master(150);
    m.set_fault(t, true);
    let params = Params {
        priority: 200,
        advert_int: ms(100),
        preempt: true,
        preempt_delay: Duration::ZERO,
        primary: ME,
    };
    assert!(m.reconfigure(t + ms(5), params, 0).is_empty());
    assert_eq!(m.state(), State::Fault);
}

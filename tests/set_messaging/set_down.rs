//! A SET whose broker is killed (kill -9) in the middle of a paced stream: the other SET keeps
//! receiving at once; with `on_set_down = "hold"` the dead SET's messages are parked on the source
//! and all arrive once it is back, with `"failover"` they go to its failover SET meanwhile; none
//! is lost either way.

use super::*;

/// The paced stream: 100 messages a second for 10 s.
const STREAM: u64 = 1_000;
const RATE: f64 = 100.0;

/// What each kill test runs: a shovel from the center's `{name}.orders` to the SETs, a sink per
/// cluster, and a paced publisher for SET users only (none of the center's).
struct Stream {
    sg: Setgate,
    sinks: BTreeMap<String, Collector>,
    routes: BTreeMap<String, String>,
    users: Vec<String>,
    publisher: tokio::task::JoinHandle<anyhow::Result<BTreeSet<u64>>>,
}

async fn start_stream(c: &Clusters, name: &str, on_set_down: &str) -> anyhow::Result<Stream> {
    start_stream_with(c, name, on_set_down, None).await
}

/// [`start_stream`] with the shovel's `prefetch_count` when given.
async fn start_stream_with(
    c: &Clusters,
    name: &str,
    on_set_down: &str,
    prefetch: Option<u32>,
) -> anyhow::Result<Stream> {
    let (source_x, dest_x) = (format!("{name}.orders"), format!("{name}.deliver"));
    declare_exchange(&c.center.amqp_uri(), &source_x, "topic").await?;
    let sinks = sinks(c, &dest_x, &format!("{name}.sink")).await?;
    let mut shovel = Shovel::new(
        name,
        Source::exchange(&[c.center.amqp_uri()], &source_x),
        to_sets(&dest_x).on_set_down(on_set_down),
    );
    if let Some(n) = prefetch {
        shovel = shovel.with("prefetch_count", n as i64);
    }
    let cfg = base_config(c).shovel(shovel);
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_shovel_state(&sg, name, "running").await?;
    let routes = routes(&sg, &users());
    let users: Vec<String> = routes
        .iter()
        .filter(|(_, c)| c.as_str() != "center")
        .map(|(u, _)| u.clone())
        .collect();
    let publisher = paced_publisher(&c.center, &source_x, 0..STREAM, RATE, users.clone());
    for set in ["set-a", "set-b"] {
        let sink = &sinks[set];
        wait_until(
            &format!("the stream reaching {set} (100 messages)"),
            Duration::from_secs(60),
            || async { (sink.count() >= 100).then_some(()) },
        )
        .await
        .map_err(|e| e.context(format!("setgate log:\n{}", log_tail(&sg, 40))))?;
    }
    Ok(Stream {
        sg,
        sinks,
        routes,
        users,
        publisher,
    })
}

/// Waits until set-a's sink received 100 more messages than `before` (about 2 s of its share
/// of the stream): the live SET is not held back by the dead one.
async fn live_set_keeps_receiving(st: &Stream, before: usize) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let sink = &st.sinks["set-a"];
    wait_until(
        "set-a to receive 100 more messages while set-b's broker is dead",
        Duration::from_secs(10),
        || async { (sink.count() >= before + 100).then_some(()) },
    )
    .await
    .map_err(|e| {
        e.context(format!(
            "set-a received only {} messages after set-b died: a dead SET held back a live one\n\
             setgate log:\n{}",
            sink.count() - before,
            log_tail(&st.sg, 40)
        ))
    })?;
    Ok(t0.elapsed())
}

/// Waits until the status shows SET `set` in `state`; returns the status.
async fn wait_set_state(
    sg: &Setgate,
    name: &str,
    set: &str,
    state: &str,
) -> anyhow::Result<serde_json::Value> {
    let last = std::sync::Mutex::new(serde_json::Value::Null);
    wait_until(
        &format!("shovel {name} to show {set} {state}"),
        Duration::from_secs(30),
        || async {
            let s = shovel_status(sg, name).await.ok()?;
            let ok = s["sets"][set]["state"] == state;
            *last.lock().unwrap() = s.clone();
            ok.then_some(s)
        },
    )
    .await
    .map_err(|e| e.context(format!("last status: {}", last.lock().unwrap())))
}

/// After the outage: waits for the stream's end and set-b's return, then publishes 200 more
/// messages for the same users (unpaced); returns the ids of both phases.
async fn after_restart(
    c: &Clusters,
    name: &str,
    st: &mut Stream,
) -> anyhow::Result<(BTreeSet<u64>, BTreeSet<u64>)> {
    let phase1 = (&mut st.publisher).await??;
    wait_set_state(&st.sg, name, "set-b", "up").await?;
    let opts = keyed(&format!("{name}.orders"), st.users.clone());
    let phase2 = publish(&c.center.amqp_uri(), 10_000..10_200, &opts).await?;
    assert_eq!(
        phase2.len(),
        200,
        "the center confirmed every publish after the outage"
    );
    Ok((phase1, phase2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_a_dead_sets_messages_wait_on_the_source_and_all_arrive_after_it_restarts(
) -> anyhow::Result<()> {
    let mut c = faulty().await;
    let name = "t2h";
    let mut st = start_stream(&c, name, "hold").await?;

    c.b.kill9();
    let killed = Instant::now();
    let took = live_set_keeps_receiving(&st, st.sinks["set-a"].count()).await?;
    println!("hold: set-a received 100 more messages {took:?} after set-b died");
    let status = wait_until(
        "set-b down with messages held",
        Duration::from_secs(20),
        || async {
            let s = shovel_status(&st.sg, name).await.ok()?;
            let held = set_count(&s, "set-b", "held").unwrap_or(0);
            (s["sets"]["set-b"]["state"] == "down" && held > 0).then_some(s)
        },
    )
    .await
    .map_err(|e| {
        e.context(
            "while set-b is down its messages should be held (`sets.set-b.held` > 0, state down)",
        )
    })?;
    println!("hold: status while set-b is down: {}", status["sets"]);
    let held = metric(
        &st.sg,
        "setgate_flow_held_total",
        &[("flow", name), ("set", "set-b")],
    )
    .await?;
    assert!(
        held > 0.0,
        "setgate_flow_held_total{{flow=\"{name}\",set=\"set-b\"}} should count the held messages"
    );
    let hold_queue = format!("setgate hold: {name} -> set-b");
    assert!(
        queue_info(&c.center, &hold_queue).await?.is_some(),
        "set-b's messages should be parked in the durable queue {hold_queue:?} on the source cluster"
    );
    let restart_at = Instant::now();
    let gap = longest_gap(&st.sinks["set-a"], killed, restart_at);
    println!("hold: set-a's longest wait for a message while set-b was dead: {gap:?}");
    assert!(
        gap < Duration::from_secs(5),
        "set-a went {gap:?} without a message while set-b was dead: the live SET stalled"
    );

    c.b.restart().await?;
    let (phase1, phase2) = after_restart(&c, name, &mut st).await?;
    let all: BTreeSet<u64> = phase1.union(&phase2).copied().collect();
    let key = KeyHeader::new(KEY_HEADER, st.users.clone());
    let expected = expected_by_cluster(&all, &key, &st.routes);
    assert_routed("hold", &st.sinks, &expected, Duration::from_secs(90)).await;
    // Everything held was delivered: the hold queue is empty again.
    wait_until(
        "the hold queue drained",
        Duration::from_secs(30),
        || async { (queue_messages(&c.center, &hold_queue).await.ok()?? == 0).then_some(()) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_a_dead_sets_messages_go_to_its_failover_set_and_none_is_lost(
) -> anyhow::Result<()> {
    let mut c = faulty().await;
    let name = "t2f";
    let mut st = start_stream(&c, name, "failover").await?;
    let is_b = |r: &Received, routes: &BTreeMap<String, String>| {
        user_header(r)
            .and_then(|u| routes.get(&u).cloned())
            .as_deref()
            == Some("set-b")
    };

    c.b.kill9();
    let killed = Instant::now();
    let took = live_set_keeps_receiving(&st, st.sinks["set-a"].count()).await?;
    println!("failover: set-a received 100 more messages {took:?} after set-b died");
    let failed_over = wait_until(
        "messages for set-b's users arriving at set-a (set-b's failover) while set-b is down",
        Duration::from_secs(20),
        || async {
            let n = st.sinks["set-a"]
                .received()
                .iter()
                .filter(|r| is_b(r, &st.routes))
                .count();
            (n >= 20).then_some(n)
        },
    )
    .await
    .map_err(|e| e.context(format!("setgate log:\n{}", log_tail(&st.sg, 40))))?;
    let status = shovel_status(&st.sg, name).await?;
    println!(
        "failover: {failed_over} of set-b's messages at set-a so far; status {}",
        status["sets"]
    );
    assert!(
        set_count(&status, "set-b", "failed_over").unwrap_or(0) > 0,
        "the status should count set-b's messages sent to its failover SET: {status}"
    );
    let restart_at = Instant::now();
    let gap = longest_gap(&st.sinks["set-a"], killed, restart_at);
    println!("failover: set-a's longest wait for a message while set-b was dead: {gap:?}");
    assert!(
        gap < Duration::from_secs(5),
        "set-a went {gap:?} without a message while set-b was dead: the live SET stalled"
    );

    c.b.restart().await?;
    let (phase1, phase2) = after_restart(&c, name, &mut st).await?;
    let key = KeyHeader::new(KEY_HEADER, st.users.clone());
    let all: BTreeSet<u64> = phase1.union(&phase2).copied().collect();
    let expected = expected_by_cluster(&all, &key, &st.routes);
    // Wait for everything: set-b's phase-1 messages at set-b or at set-a, the rest where routed.
    let (a, b) = (&st.sinks["set-a"], &st.sinks["set-b"]);
    let _ = wait_until(
        "every message delivered",
        Duration::from_secs(90),
        || async {
            let (ha, hb) = (a.ids(), b.ids());
            let done = expected["set-a"].is_subset(&ha)
                && expected["set-b"]
                    .iter()
                    .all(|id| hb.contains(id) || (phase1.contains(id) && ha.contains(id)));
            done.then_some(())
        },
    )
    .await;
    let (ha, hb) = (a.ids(), b.ids());
    let lost: Vec<u64> = all
        .iter()
        .filter(|id| !ha.contains(id) && !hb.contains(id))
        .copied()
        .collect();
    let a_at_b: Vec<u64> = expected["set-a"].intersection(&hb).copied().collect();
    let b_missing: Vec<u64> = expected["set-b"]
        .iter()
        .filter(|id| {
            let failed_over = phase1.contains(id) && ha.contains(id);
            !hb.contains(id) && !failed_over
        })
        .copied()
        .collect();
    let after_at_a: Vec<u64> = expected["set-b"]
        .iter()
        .filter(|id| phase2.contains(id) && ha.contains(id))
        .copied()
        .collect();
    let center = st.sinks["center"].count();
    println!(
        "failover: {} messages published, set-a received {}, set-b {}, center {center}; lost {}",
        all.len(),
        a.count(),
        b.count(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "lost {} messages, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        b_missing.is_empty(),
        "set-b's messages must arrive at set-b, or at set-a if published while set-b was down: \
         missing {:?}",
        &b_missing[..b_missing.len().min(10)]
    );
    assert!(
        a_at_b.is_empty(),
        "set-a's messages arrived at set-b: {a_at_b:?}"
    );
    assert!(
        after_at_a.is_empty(),
        "set-b was back (status up) but messages published after went to set-a: {after_at_a:?}"
    );
    assert_eq!(center, 0, "no message of a SET user belongs on the center");
    Ok(())
}

/// A SET whose broker raises a resource alarm (memory here; disk is the same to a publisher)
/// blocks the connections that publish to it, for as long as the alarm lasts: to the other SETs
/// that is a SET down, never a reason to wait. Its messages are held meanwhile, and the SET is
/// up again when its broker lifts the alarm (Connection.Unblocked on the connection kept open).
/// Before: the blocked SET's unconfirmed publishes held back the acks of everything after them,
/// the window of 100 filled, and set-a received nothing for the 17 s of the alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_a_blocked_sets_messages_wait_on_the_source_and_all_arrive_after_the_alarm(
) -> anyhow::Result<()> {
    let c = faulty().await;
    let name = "t2blk";
    // A window of 100 unacked messages fills within a second or two of set-b's share.
    let mut st = start_stream_with(&c, name, "hold", Some(100)).await?;

    c.b.ctl(&["set_vm_memory_high_watermark", "absolute", "1"])
        .await?;
    let alarmed = Instant::now();
    let took = live_set_keeps_receiving(&st, st.sinks["set-a"].count()).await;
    let status = wait_until(
        "set-b down (blocked) with messages held",
        Duration::from_secs(20),
        || async {
            let s = shovel_status(&st.sg, name).await.ok()?;
            let held = set_count(&s, "set-b", "held").unwrap_or(0);
            (s["sets"]["set-b"]["state"] == "down" && held > 0).then_some(s)
        },
    )
    .await;
    // The stream is still running (it ends about 8 s after the alarm): set-a's gaps so far.
    let gap = longest_gap(&st.sinks["set-a"], alarmed, Instant::now());
    // Lift the alarm before asserting: the brokers are shared with the next test.
    c.b.ctl(&["set_vm_memory_high_watermark", "0.4"]).await?;
    let took = took?;
    let status = status?;
    println!("blocked: set-a received 100 more messages {took:?} after set-b's alarm");
    println!("blocked: status while set-b is blocked: {}", status["sets"]);
    println!("blocked: set-a's longest wait for a message while set-b was blocked: {gap:?}");
    assert!(
        status["sets"]["set-b"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("blocked publishing")),
        "set-b's status should say it is blocked: {status}"
    );
    assert!(
        gap < Duration::from_secs(5),
        "set-a went {gap:?} without a message while set-b was blocked: the live SET stalled"
    );
    let (phase1, phase2) = after_restart(&c, name, &mut st).await?;
    let all: BTreeSet<u64> = phase1.union(&phase2).copied().collect();
    let key = KeyHeader::new(KEY_HEADER, st.users.clone());
    let expected = expected_by_cluster(&all, &key, &st.routes);
    assert_routed("blocked", &st.sinks, &expected, Duration::from_secs(90)).await;
    Ok(())
}

/// A message larger than the sockets' buffers between setgate and set-b's broker, and more.
const BIG: usize = 32 * 1024 * 1024;

/// A shovel `name` from the center's `{name}.orders` to the SETs, holding a down SET's messages;
/// a sink per cluster; the users of set-a and of set-b.
struct Routed {
    sg: Setgate,
    source_x: String,
    sinks: BTreeMap<String, Collector>,
    a_users: Vec<String>,
    b_users: Vec<String>,
}

async fn start_routed(c: &Clusters, name: &str) -> anyhow::Result<Routed> {
    let (source_x, dest_x) = (format!("{name}.orders"), format!("{name}.deliver"));
    declare_exchange(&c.center.amqp_uri(), &source_x, "topic").await?;
    let sinks = sinks(c, &dest_x, &format!("{name}.sink")).await?;
    let shovel = Shovel::new(
        name,
        Source::exchange(&[c.center.amqp_uri()], &source_x),
        to_sets(&dest_x).on_set_down("hold"),
    );
    let sg = Setgate::start(BIN, &base_config(c).shovel(shovel)).await?;
    wait_shovel_state(&sg, name, "running").await?;
    let routes = routes(&sg, &users());
    let users_of = |set: &str| -> Vec<String> {
        let of: Vec<String> = routes
            .iter()
            .filter(|(_, c)| c.as_str() == set)
            .map(|(u, _)| u.clone())
            .collect();
        assert!(!of.is_empty(), "no user routes to {set}");
        of
    };
    Ok(Routed {
        a_users: users_of("set-a"),
        b_users: users_of("set-b"),
        sg,
        source_x,
        sinks,
    })
}

impl Routed {
    /// Publishes a [`BIG`] message for a set-b user, then 300 messages for set-a users over
    /// 6 s: (the big one's id, the others', set-a's longest wait for a message meanwhile).
    async fn big_then_small(
        &self,
        c: &Clusters,
    ) -> anyhow::Result<(BTreeSet<u64>, BTreeSet<u64>, Duration)> {
        let big = PublishOptions {
            body_size: BIG,
            ..keyed(&self.source_x, self.b_users[..1].to_vec())
        };
        let big_ids = publish(&c.center.amqp_uri(), 50_000..50_001, &big).await?;
        let started = Instant::now();
        let small = PublishOptions {
            rate: Some(50.0),
            window: 50,
            ..keyed(&self.source_x, self.a_users.clone())
        };
        let small_ids = publish(&c.center.amqp_uri(), 0..300, &small).await?;
        let gap = longest_gap(&self.sinks["set-a"], started, Instant::now());
        Ok((big_ids, small_ids, gap))
    }

    /// Waits until every message arrived where it belongs: the big one at set-b, the others
    /// at set-a.
    async fn all_arrive(&self, case: &str, big: BTreeSet<u64>, small: BTreeSet<u64>) {
        let expected: BTreeMap<String, BTreeSet<u64>> = [
            ("center".to_string(), BTreeSet::new()),
            ("set-a".to_string(), small),
            ("set-b".to_string(), big),
        ]
        .into();
        assert_routed(case, &self.sinks, &expected, Duration::from_secs(90)).await;
    }
}

/// A SET's broker blocks publishing (memory alarm) while setgate writes it a message larger
/// than the buffers of the socket between them: the broker stops reading mid-message, and the
/// write waits. set-a's messages go on (a SET's write is not waited for), and set-b is down as
/// blocked: it said Connection.Blocked before it stopped reading. Before: set-a received
/// nothing while the write waited, 15 s, and then the flow's other connections were found
/// dead (not read from, nor written heartbeats, meanwhile) and all made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_a_set_blocked_in_the_middle_of_a_large_message_and_the_other_set_goes_on(
) -> anyhow::Result<()> {
    let c = faulty().await;
    let name = "t2big";
    let r = start_routed(&c, name).await?;
    c.b.ctl(&["set_vm_memory_high_watermark", "absolute", "1"])
        .await?;
    let sent = r.big_then_small(&c).await;
    let status = shovel_status(&r.sg, name).await;
    // Lift the alarm before asserting: the brokers are shared with the next test.
    c.b.ctl(&["set_vm_memory_high_watermark", "0.4"]).await?;
    let ((big, small, gap), status) = (sent?, status?);
    println!("big: set-a's longest wait for a message while set-b was blocked: {gap:?}");
    println!("big: status while set-b is blocked: {}", status["sets"]);
    assert!(
        gap < Duration::from_secs(5),
        "set-a went {gap:?} without a message while set-b's broker was blocked mid-write: \
         the live SET stalled\nsetgate log:\n{}",
        log_tail(&r.sg, 30)
    );
    assert!(
        status["sets"]["set-b"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("blocked publishing")),
        "set-b's status should say it is blocked: {status}"
    );
    r.all_arrive("big", big, small).await;
    Ok(())
}

/// A SET's broker freezes (SIGSTOP) while setgate writes it a message larger than the socket's
/// buffers: set-a's messages go on, set-b is found silent and its messages are held, and all
/// arrive once it thaws; the flow's other connections are never made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_a_set_frozen_in_the_middle_of_a_large_message_and_the_other_set_goes_on(
) -> anyhow::Result<()> {
    let c = faulty().await;
    let name = "t2frz";
    let r = start_routed(&c, name).await?;
    c.b.sigstop();
    let sent = r.big_then_small(&c).await;
    let down = wait_until("set-b down (silent)", Duration::from_secs(40), || async {
        let s = shovel_status(&r.sg, name).await.ok()?;
        (s["sets"]["set-b"]["state"] == "down").then_some(s)
    })
    .await;
    c.b.sigcont();
    let ((big, small, gap), status) = (sent?, down?);
    println!("frozen: set-a's longest wait for a message while set-b was frozen: {gap:?}");
    println!("frozen: status while set-b is frozen: {}", status["sets"]);
    assert!(
        gap < Duration::from_secs(5),
        "set-a went {gap:?} without a message while set-b's broker was frozen mid-write: \
         the live SET stalled\nsetgate log:\n{}",
        log_tail(&r.sg, 30)
    );
    r.all_arrive("frozen", big, small).await;
    let flow = status["flows"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["exchange"] == format!("{name}.orders")))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        flow["reconnects"], 0,
        "the flow's other connections are kept: {status}"
    );
    Ok(())
}

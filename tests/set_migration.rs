//! Moving users between SETs, end to end on real brokers: the operator moves one bucket and one
//! override, `setgate route --diff` names exactly those, and a reload with `reroute` closes the
//! moved users' connections (Connection.Close with the reason, spread over the window) while
//! every other connection stays as it was; the moved clients come back on their new SET. Then
//! their queued messages follow them: a one-off shovel from the old SET's queue, routed by the
//! new table with `delete_after = "queue-length"`, moves exactly the moved users' messages to
//! their new SET and gives everyone else's back to the old SET, each once.

mod common;

use common::BIN;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, Event};
use setgate_router::bucket_of;
use setgate_testkit::config::{
    Check, Config, Destination, Listener, Pool, Routing, Shovel, Source,
};
use setgate_testkit::fed::{
    declare_bound_queue, declare_exchange, publish, queue_messages, shovel_status,
    wait_shovel_state, Collector, KeyHeader, PublishOptions,
};
use setgate_testkit::{amqp, wait_until, Node, Setgate};
use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUCKETS: u32 = 10;
/// The bucket the operator moves from set-a to set-b.
const MOVED_BUCKET: u32 = 3;
const VIP: &str = "vip-1";
const WINDOW: Duration = Duration::from_secs(3);

fn uri(user: &str, port: u16) -> String {
    format!("amqp://{user}:pw@127.0.0.1:{port}/%2f")
}

/// set-a owns buckets 0-4, set-b 5-9 (and, after the move, `MOVED_BUCKET` too); `VIP` is pinned
/// to set-a, then to set-b.
fn routing(moved: bool) -> Routing {
    let base = Routing::new("center")
        .set("set-a", "set-a", "set-b")
        .set("set-b", "set-b", "set-a");
    if moved {
        base.buckets(
            BUCKETS,
            &[
                ("0-2", "set-a"),
                ("3", "set-b"),
                ("4", "set-a"),
                ("5-9", "set-b"),
            ],
        )
        .override_key(VIP, "set-b")
        .reroute(&format!("{}s", WINDOW.as_secs()))
    } else {
        base.buckets(BUCKETS, &[("0-4", "set-a"), ("5-9", "set-b")])
            .override_key(VIP, "set-a")
    }
}

fn config(nodes: &[Node], routing: Routing) -> Config {
    let check = Check::amqp().inter("300ms").fall(2).rise(2).timeout("1s");
    let pool = |name: &str, node: &Node| {
        Pool::new(name)
            .check(check.clone())
            .server(&format!("{name}-1"), node.amqp_addr())
    };
    Config::new()
        .listener(Listener::set("amqp").handshake_timeout("2s"))
        .pool(pool("set-a", &nodes[0]))
        .pool(pool("set-b", &nodes[1]))
        .pool(pool("center", &nodes[2]))
        .routing(routing)
}

/// One client: its connection, and when (and why) that connection was closed from the far end.
struct Client {
    user: String,
    conn: Connection,
    closed: tokio::sync::watch::Receiver<Option<(Instant, String)>>,
}

async fn connect(user: &str, port: u16) -> anyhow::Result<Client> {
    let conn = amqp::connect(&uri(user, port)).await?;
    let (tx, closed) = tokio::sync::watch::channel(None);
    let mut events = conn.events_listener();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if let Event::Error(err) = e {
                let _ = tx.send(Some((Instant::now(), err.to_string())));
                break;
            }
        }
    });
    roundtrip(&conn, user).await?;
    Ok(Client {
        user: user.to_string(),
        conn,
        closed,
    })
}

/// Keeps `ch`'s connection busy both ways until it fails: publishes 16 KiB messages to the user's own
/// traffic queue and consumes them back, so a close lands while frames are in flight in both
/// directions. Returns how many messages came back.
async fn busy(ch: lapin::Channel, user: &str, got: Arc<AtomicU64>) -> anyhow::Result<u64> {
    let queue = format!("busy-{user}");
    let args = FieldTable::default();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        args.clone(),
    )
    .await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let body = vec![b'x'; 16 * 1024];
    let publish = async {
        loop {
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                Default::default(),
                &body,
                Default::default(),
            )
            .await?;
            // A steady stream, not a flood: 61 clients share two cores with three brokers.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    };
    let consume = async {
        let mut n = 0u64;
        while let Some(d) = consumer.next().await {
            d?;
            n += 1;
            got.fetch_add(1, Ordering::Relaxed);
        }
        anyhow::Ok(n)
    };
    tokio::select! {
        r = publish => r.map(|_| 0),
        r = consume => r,
    }
}

/// Declares the user's queue, publishes one confirmed message to it and consumes it.
async fn roundtrip(conn: &Connection, user: &str) -> anyhow::Result<()> {
    let ch = amqp::confirm_channel(conn).await?;
    let queue = format!("q-{user}");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    amqp::publish_confirmed(&ch, "", &queue, user.as_bytes()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no delivery"))??;
    anyhow::ensure!(d.data == user.as_bytes());
    d.ack(BasicAckOptions::default()).await?;
    ch.close(200, "done".into()).await?;
    Ok(())
}

/// `setgate route --diff OLD NEW --keys FILE --json`.
fn route_diff(old: &std::path::Path, new: &std::path::Path, keys: &[String]) -> serde_json::Value {
    let dir = setgate_testkit::unique_dir("route-diff");
    let file = dir.join("keys.txt");
    std::fs::write(&file, keys.join("\n")).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["route", "--json", "--diff"])
        .arg(old)
        .arg(new)
        .arg("--keys")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::process::Command::new(BIN)
        .args(["route", "--diff"])
        .arg(old)
        .arg(new)
        .arg("--keys")
        .arg(&file)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&text.stdout));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn users_on(node: &Node) -> anyhow::Result<BTreeSet<String>> {
    Ok(node.connection_users().await?.into_iter().collect())
}

/// The tests run one after the other: each boots three brokers, and the close-time figures of
/// the first need the CPU.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn moving_a_bucket_and_an_override_closes_exactly_those_users_over_the_window(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let nodes: Vec<Node> = futures_util::future::join_all((0..3).map(|_| Node::start()))
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let mut users: Vec<String> = (0..60).map(|i| format!("user-{i:03}")).collect();
    users.push(VIP.to_string());
    let creds: Vec<(String, String)> = users.iter().map(|u| (u.clone(), "pw".into())).collect();
    for n in &nodes {
        n.add_users(&creds).await?;
    }
    let n = NonZeroU32::new(BUCKETS).unwrap();
    let bucket = |u: &str| bucket_of(u, n);
    let expected_moved: BTreeSet<String> = users
        .iter()
        .filter(|u| *u == VIP || bucket(u) == MOVED_BUCKET)
        .cloned()
        .collect();
    assert!(
        expected_moved.len() >= 4,
        "the moved bucket should hold a few users: {expected_moved:?}"
    );

    let old_cfg = config(&nodes, routing(false));
    let new_cfg = config(&nodes, routing(true));
    let sg = Setgate::start(BIN, &old_cfg).await?;
    sg.wait_ready().await?;
    let port = sg.port("amqp").await?;

    // `route --diff` names the bucket, the override and exactly the users in them.
    let new_file = setgate_testkit::unique_dir("set-migration").join("new.toml");
    std::fs::write(&new_file, new_cfg.to_string())?;
    let diff = route_diff(&sg.config_path(), &new_file, &users);
    let m = &diff["moves"];
    assert_eq!(
        m["buckets"],
        serde_json::json!([{ "first": MOVED_BUCKET, "last": MOVED_BUCKET, "from": "set-a", "to": "set-b" }])
    );
    assert_eq!(m["share"], 0.1, "one bucket of ten");
    assert_eq!(m["sampled"], serde_json::Value::Null);
    assert_eq!(
        m["overrides"],
        serde_json::json!([{ "key": VIP, "before": "set-a", "after": "set-b", "from": "set-a", "to": "set-b" }])
    );
    let listed: BTreeSet<String> = m["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!(
                (k["from"].as_str(), k["to"].as_str()),
                (Some("set-a"), Some("set-b"))
            );
            k["key"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(listed, expected_moved);

    // Everyone connects through setgate and uses the connection.
    let clients: Vec<Client> =
        futures_util::future::join_all(users.iter().map(|u| connect(u, port)))
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
    let on_a = users_on(&nodes[0]).await?;
    for u in &expected_moved {
        assert!(on_a.contains(u), "{u} starts on set-a: {on_a:?}");
    }

    // The moved users, and a few who stay, keep traffic flowing both ways through the reload.
    let stayers: Vec<&String> = users
        .iter()
        .filter(|u| !expected_moved.contains(*u))
        .take(4)
        .collect();
    let mut traffic = std::collections::BTreeMap::new();
    for c in clients
        .iter()
        .filter(|c| expected_moved.contains(&c.user) || stayers.contains(&&c.user))
    {
        let (ch, user) = (c.conn.create_channel().await?, c.user.clone());
        let got = Arc::new(AtomicU64::new(0));
        let counter = got.clone();
        let task = tokio::spawn(async move { busy(ch, &user, counter).await });
        traffic.insert(c.user.clone(), (task, got));
    }
    wait_until(
        "messages flowing on every busy connection",
        Duration::from_secs(20),
        || async {
            traffic
                .values()
                .all(|(_, got)| got.load(Ordering::Relaxed) >= 20)
                .then_some(())
        },
    )
    .await?;

    let reloaded = Instant::now();
    sg.reload(&new_cfg)?;
    let (moved, stayed): (Vec<&Client>, Vec<&Client>) = clients
        .iter()
        .partition(|c| expected_moved.contains(&c.user));

    // Each moved user's connection is closed by setgate with the reason.
    let mut closes = Vec::new();
    for c in &moved {
        let mut rx = c.closed.clone();
        let (at, why) = tokio::time::timeout(WINDOW + Duration::from_secs(10), async {
            loop {
                if let Some(v) = rx.borrow_and_update().clone() {
                    return v;
                }
                rx.changed().await.expect("event task alive");
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("{}'s connection was not closed", c.user))?;
        assert!(
            why.contains("setgate: user moved to SET set-b"),
            "{}: {why}",
            c.user
        );
        assert!(!c.conn.status().connected(), "{}", c.user);
        if closes.is_empty() {
            println!("{} sees: {why}", c.user);
        }
        closes.push(at.duration_since(reloaded));
    }
    closes.sort();
    let span = *closes.last().unwrap() - closes[0];
    println!(
        "{} moved connections closed at (since SIGHUP): {:?}; span {span:?} of a {WINDOW:?} window",
        closes.len(),
        closes
    );
    // i-th of n at window * i / n: the span is window * (n-1) / n; allow for scheduling.
    let k = closes.len() as u32;
    let ideal = WINDOW * (k - 1) / k;
    assert!(
        span >= ideal.mul_f64(0.75) && span <= WINDOW + Duration::from_secs(1),
        "closes not spread over the window: {closes:?}"
    );
    for w in closes.windows(2) {
        assert!(
            w[1] - w[0] >= (WINDOW / k).mul_f64(0.4),
            "two closes too close together: {closes:?}"
        );
    }

    // The others: not closed, still on the broker they were on, and still usable.
    let (on_a, on_b) = (users_on(&nodes[0]).await?, users_on(&nodes[1]).await?);
    for c in &stayed {
        assert!(c.closed.borrow().is_none(), "{} was closed", c.user);
        assert!(c.conn.status().connected(), "{}", c.user);
        let want = if bucket(&c.user) < 5 { &on_a } else { &on_b };
        assert!(want.contains(&c.user), "{} left its broker", c.user);
        roundtrip(&c.conn, &c.user).await?;
    }
    // The moved users' old connections are gone from set-a too.
    wait_until(
        "set-a to drop the moved connections",
        Duration::from_secs(10),
        || async {
            let on_a = users_on(&nodes[0]).await.ok()?;
            expected_moved
                .iter()
                .all(|u| !on_a.contains(u))
                .then_some(())
        },
    )
    .await?;
    assert_eq!(
        sg.metric("setgate_set_rerouted_total{from=\"set-a\",to=\"set-b\"}")
            .await?,
        Some(expected_moved.len() as f64)
    );

    // The moved users' traffic ended with the close; the stayers' is still flowing.
    for (user, (task, got)) in traffic {
        println!(
            "{user}: {} messages back through setgate",
            got.load(Ordering::Relaxed)
        );
        if expected_moved.contains(&user) {
            let r = tokio::time::timeout(Duration::from_secs(10), task).await??;
            assert!(
                r.is_err(),
                "{user}'s traffic should have ended with its connection"
            );
        } else {
            assert!(
                !task.is_finished(),
                "{user}'s traffic stopped: {:?}",
                task.await
            );
            task.abort();
        }
    }

    // They reconnect, as their clients would, and land on set-b.
    let back: Vec<Client> =
        futures_util::future::join_all(expected_moved.iter().map(|u| connect(u, port)))
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
    let on_b = users_on(&nodes[1]).await?;
    let on_a = users_on(&nodes[0]).await?;
    for c in &back {
        assert!(
            on_b.contains(&c.user) && !on_a.contains(&c.user),
            "{} is not on set-b",
            c.user
        );
    }
    // Nothing else was closed in the meantime.
    assert!(stayed.iter().all(|c| c.closed.borrow().is_none()));
    Ok(())
}

/// The users of the queued-messages test: set-a's users under the old table (buckets 0-4, and
/// `VIP`), and who of them moves (bucket `MOVED_BUCKET`, and `VIP`).
fn queued_users() -> (Vec<String>, BTreeSet<String>) {
    let n = NonZeroU32::new(BUCKETS).unwrap();
    let mut users: Vec<String> = (0..80)
        .map(|i| format!("user-{i:03}"))
        .filter(|u| bucket_of(u, n) <= 4)
        .collect();
    users.push(VIP.to_string());
    let moved = users
        .iter()
        .filter(|u| *u == VIP || bucket_of(u, n) == MOVED_BUCKET)
        .cloned()
        .collect();
    (users, moved)
}

#[tokio::test]
async fn a_one_off_shovel_moves_exactly_the_moved_users_queued_messages() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let nodes: Vec<Node> = futures_util::future::join_all((0..3).map(|_| Node::start()))
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let (a, b, center) = (&nodes[0], &nodes[1], &nodes[2]);
    // Every cluster: exchange "inbox", and a queue "inbox" bound to it, where users' messages wait.
    for n in &nodes {
        declare_exchange(&n.amqp_uri(), "inbox", "topic").await?;
        declare_bound_queue(&n.amqp_uri(), "inbox", "inbox").await?;
    }
    let (users, moved) = queued_users();
    assert!(moved.len() >= 3, "a few users should move: {moved:?}");
    // Three messages per user wait in set-a's queue (published there under the old table).
    let key = KeyHeader::new("x-user-id", users.clone());
    let opts = PublishOptions {
        key_header: Some(key.clone()),
        ..PublishOptions::new("inbox")
    };
    let total = 3 * users.len() as u64;
    let confirmed = publish(&a.amqp_uri(), 0..total, &opts).await?;
    assert_eq!(confirmed.len() as u64, total);
    let (want_b, want_a): (BTreeSet<u64>, BTreeSet<u64>) = confirmed
        .iter()
        .partition(|id| moved.contains(key.user_of(**id)));
    wait_until(
        "set-a's queue to hold every message",
        Duration::from_secs(30),
        || async { (queue_messages(a, "inbox").await.ok()?? == total).then_some(()) },
    )
    .await?;

    // The new table, and the one-off shovel that carries set-a's queue over by it.
    let routing = routing(true)
        .default_uris(&[center.amqp_uri()])
        .uris("set-a", &[a.amqp_uri()])
        .uris("set-b", &[b.amqp_uri()]);
    let cfg = config(&nodes, routing).shovel(
        Shovel::new(
            "migrate-inbox",
            Source::queue(&[a.amqp_uri()], "inbox"),
            Destination::sets("header:x-user-id").exchange_name("inbox"),
        )
        .delete_after("queue-length"),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_shovel_state(&sg, "migrate-inbox", "completed").await?;
    let st = shovel_status(&sg, "migrate-inbox").await?;
    println!("one-off shovel: {st}");
    assert_eq!(
        st["moved"], total,
        "it moved what set-a's queue held at start: {st}"
    );
    assert_eq!(st["remaining"], 0, "{st}");

    // set-b's queue holds exactly the moved users' messages; set-a's exactly the others', once
    // each; the center got nothing (every user has a SET).
    let on_b = Collector::start(&b.amqp_uri(), "inbox");
    let on_a = Collector::start(&a.amqp_uri(), "inbox");
    assert_eq!(
        on_b.wait_for(&want_b, Duration::from_secs(30)).await,
        BTreeSet::new()
    );
    assert_eq!(
        on_a.wait_for(&want_a, Duration::from_secs(30)).await,
        BTreeSet::new()
    );
    // Give anything extra (a duplicate, a message sent round twice) time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, sink, want) in [("set-b", &on_b, &want_b), ("set-a", &on_a, &want_a)] {
        let got: Vec<u64> = sink.received().iter().map(|r| r.id).collect();
        assert_eq!(
            got.len(),
            want.len(),
            "{name}: each message exactly once, got {got:?}"
        );
        assert_eq!(&sink.ids(), want, "{name}: exactly its users' messages");
    }
    assert_eq!(queue_messages(center, "inbox").await?, Some(0));
    println!(
        "moved users' messages on set-b: {}, the others' back on set-a: {}",
        want_b.len(),
        want_a.len()
    );
    Ok(())
}

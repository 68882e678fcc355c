//! Shovels with the plugin's semantics: `delete_after = "queue-length"` moves exactly what was
//! there when it started and stops; an exchange source gets its own bound queue; the
//! `x-shovelled` header is the one RabbitMQ's shovel plugin writes, compared with the plugin
//! itself on the same broker.

use super::*;
use lapin::types::{AMQPValue, FieldTable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_queue_length_moves_exactly_what_was_there_then_completes(
) -> anyhow::Result<()> {
    let s = steady().await;
    let c = &s.clusters;
    let (entry, src, out) = ("t4q.in", "t4q.src", "t4q.out");
    const PRESENT: u64 = 500;
    const LATER: u64 = 300;
    declare_exchange(&c.center.amqp_uri(), entry, "topic").await?;
    declare_bound_queue(&c.center.amqp_uri(), src, entry).await?;
    declare_exchange(&c.a.amqp_uri(), out, "topic").await?;
    declare_bound_queue(&c.a.amqp_uri(), "t4q.sink", out).await?;
    let sink = Collector::start(&c.a.amqp_uri(), "t4q.sink");
    let opts = PublishOptions::new(entry);
    let present = publish(&c.center.amqp_uri(), 0..PRESENT, &opts).await?;
    assert_eq!(present.len() as u64, PRESENT);

    let cfg = Config::new().shutdown_grace("2s").shovel(
        Shovel::new(
            "t4q",
            Source::queue(&[c.center.amqp_uri()], src),
            Destination::exchange(&[c.a.amqp_uri()], out),
        )
        .delete_after("queue-length"),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_until(
        "shovel t4q to start (running or already completed)",
        Duration::from_secs(60),
        || async {
            let st = shovel_status(&sg, "t4q").await.ok()?;
            (st["state"] == "running" || st["state"] == "completed").then_some(())
        },
    )
    .await
    .map_err(|e| e.context(format!("setgate log:\n{}", log_tail(&sg, 40))))?;
    // More arrive after the start: not the shovel's to move.
    let later = publish(&c.center.amqp_uri(), PRESENT..PRESENT + LATER, &opts).await?;
    assert_eq!(later.len() as u64, LATER);

    let st = wait_shovel_state(&sg, "t4q", "completed").await?;
    println!("t4q completed: {st}");
    assert_eq!(st["delete_after"], "queue-length", "{st}");
    assert_eq!(
        st["moved"], PRESENT,
        "moved should be the {PRESENT} messages in the queue at start: {st}"
    );
    // What was left stays in the source queue, and nobody consumes it any more.
    let left = wait_until(
        "the source queue to settle at the messages published after the start",
        Duration::from_secs(15),
        || async {
            let q = queue_info(&c.center, src).await.ok()??;
            (q["messages"].as_u64() == Some(LATER) && q["consumers"].as_u64() == Some(0))
                .then_some(q)
        },
    )
    .await
    .map_err(|e| {
        e.context(format!(
            "after completing, {src} should keep the {LATER} later messages with no consumer"
        ))
    })?;
    println!(
        "{src} after completion: {} messages, {} consumers",
        left["messages"], left["consumers"]
    );
    let missing = sink.wait_for(&present, Duration::from_secs(10)).await;
    let got = sink.ids();
    let extra: Vec<u64> = got.difference(&present).copied().collect();
    Tally::of(&present, &sink.received()).print("delete_after queue-length");
    assert!(
        missing.is_empty(),
        "messages present at start not moved: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "moved messages published after the start ({} of them, e.g. {:?})",
        extra.len(),
        &extra[..extra.len().min(10)]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_n_moves_n_messages_into_a_destination_queue_then_completes(
) -> anyhow::Result<()> {
    let s = steady().await;
    let c = &s.clusters;
    let (entry, src, dest) = ("t4n.in", "t4n.src", "t4n.dest");
    declare_exchange(&c.center.amqp_uri(), entry, "topic").await?;
    declare_bound_queue(&c.center.amqp_uri(), src, entry).await?;
    let published = publish(&c.center.amqp_uri(), 0..50, &PublishOptions::new(entry)).await?;
    assert_eq!(published.len(), 50);
    // The destination queue does not exist yet: a queue destination declares it, as the
    // plugin does (a passive declare, then a durable declare when it is missing: `ensure_queue`
    // for `dest-queue` in the plugin's rabbit_shovel_parameters.erl).
    let cfg = Config::new().shutdown_grace("2s").shovel(
        Shovel::new(
            "t4n",
            Source::queue(&[c.center.amqp_uri()], src),
            Destination::queue(&[c.a.amqp_uri()], dest),
        )
        .delete_after_messages(20),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    let st = wait_shovel_state(&sg, "t4n", "completed").await?;
    assert_eq!(st["moved"], 20, "delete_after = 20 moves 20 messages: {st}");
    assert_eq!(st["delete_after"], 20, "{st}");
    let sink = Collector::start(&c.a.amqp_uri(), dest);
    let first: BTreeSet<u64> = (0..20).collect();
    let missing = sink.wait_for(&first, Duration::from_secs(30)).await;
    assert!(
        missing.is_empty(),
        "the first 20 messages should be in {dest}: missing {missing:?}"
    );
    wait_until(
        "the source queue to keep the other 30, unconsumed",
        Duration::from_secs(15),
        || async {
            let q = queue_info(&c.center, src).await.ok()??;
            (q["messages"].as_u64() == Some(30) && q["consumers"].as_u64() == Some(0)).then_some(())
        },
    )
    .await?;
    let got = sink.received();
    Tally::of(&first, &got).print("delete_after 20 into a queue");
    let extra: Vec<u64> = got.iter().map(|r| r.id).filter(|id| *id >= 20).collect();
    assert!(extra.is_empty(), "moved more than 20: {extra:?}");
    assert!(
        got.iter().all(|r| r.routing_key == dest),
        "a queue destination is published to by the queue's name"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_source_declares_its_own_queue_bound_with_the_binding_keys(
) -> anyhow::Result<()> {
    let s = steady().await;
    let c = &s.clusters;
    let (source_x, out) = ("t4x.orders", "t4x.out");
    declare_exchange(&c.center.amqp_uri(), source_x, "topic").await?;
    declare_exchange(&c.a.amqp_uri(), out, "topic").await?;
    declare_bound_queue(&c.a.amqp_uri(), "t4x.sink", out).await?;
    let sink = Collector::start(&c.a.amqp_uri(), "t4x.sink");
    let cfg = Config::new().shutdown_grace("2s").shovel(Shovel::new(
        "t4x",
        Source::exchange(&[c.center.amqp_uri()], source_x).binding_keys(&["k1", "k2"]),
        Destination::exchange(&[c.a.amqp_uri()], out),
    ));
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_shovel_state(&sg, "t4x", "running").await?;

    let queue = "shovel: t4x";
    let info = queue_info(&c.center, queue).await?.unwrap_or_else(|| {
        panic!("an exchange source should have its own queue {queue:?} on the source cluster")
    });
    assert_eq!(info["durable"], true, "{queue} should be durable: {info}");
    let bindings = c
        .center
        .mgmt(
            "GET",
            &format!(
                "/api/queues/%2f/{}/bindings",
                setgate_testkit::fed::path_segment(queue)
            ),
            None,
        )
        .await?
        .json()?;
    let mut keys: Vec<String> = bindings
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["source"] == source_x)
        .filter_map(|b| b["routing_key"].as_str().map(str::to_owned))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["k1", "k2"],
        "{queue} should be bound to {source_x} with the binding keys: {bindings}"
    );

    // Routing keys k0..k9: only k1 and k2 match, and they arrive with their own routing key.
    let confirmed = publish(&c.center.amqp_uri(), 0..200, &PublishOptions::new(source_x)).await?;
    let want: BTreeSet<u64> = confirmed
        .iter()
        .copied()
        .filter(|id| id % 10 == 1 || id % 10 == 2)
        .collect();
    let missing = sink.wait_for(&want, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "not shovelled: {missing:?}");
    wait_until(
        "the shovel's queue to be empty",
        Duration::from_secs(15),
        || async { (queue_messages(&c.center, queue).await.ok()?? == 0).then_some(()) },
    )
    .await?;
    let got = sink.received();
    Tally::of(&want, &got).print("exchange source");
    let unexpected: Vec<u64> = got
        .iter()
        .map(|r| r.id)
        .filter(|id| !want.contains(id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "messages no binding key matches were shovelled: {unexpected:?}"
    );
    for r in &got {
        assert_eq!(
            r.routing_key,
            format!("k{}", r.id % 10),
            "the routing key is kept"
        );
    }
    Ok(())
}

/// The entries of a message's `x-shovelled` header, newest first.
fn shovelled(r: &Received) -> Vec<FieldTable> {
    match header(r, "x-shovelled") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|v| v.as_field_table().cloned())
            .collect(),
        other => panic!("message {} has no x-shovelled array but {other:?}", r.id),
    }
}

/// Each key of an `x-shovelled` entry with its value's AMQP type.
fn shape(t: &FieldTable) -> BTreeMap<String, String> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), format!("{:?}", v.get_type())))
        .collect()
}

/// An `x-shovelled` entry as text, for people.
fn readable(t: &FieldTable) -> BTreeMap<String, String> {
    t.inner()
        .keys()
        .map(|k| {
            let v = text(t, k.as_str()).unwrap_or_else(|| format!("{:?}", t.inner()[k]));
            (k.as_str().to_string(), v)
        })
        .collect()
}

fn text(t: &FieldTable, key: &str) -> Option<String> {
    match t.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_forward_headers_writes_x_shovelled_as_the_rabbitmq_plugin_does() -> anyhow::Result<()>
{
    let s = steady().await;
    let (hq, center) = (&s.hq, &s.clusters.center);
    // hq: t4h.entry -> t4h.in -(plugin shovel)-> t4h.mid (fanout) -> t4h.plugin-out, t4h.setgate-in
    // setgate: t4h.setgate-in -> center's t4h.out -> t4h.sink
    declare_exchange(&hq.amqp_uri(), "t4h.entry", "topic").await?;
    declare_bound_queue(&hq.amqp_uri(), "t4h.in", "t4h.entry").await?;
    declare_exchange(&hq.amqp_uri(), "t4h.mid", "fanout").await?;
    declare_bound_queue(&hq.amqp_uri(), "t4h.plugin-out", "t4h.mid").await?;
    declare_bound_queue(&hq.amqp_uri(), "t4h.setgate-in", "t4h.mid").await?;
    declare_exchange(&center.amqp_uri(), "t4h.out", "topic").await?;
    declare_bound_queue(&center.amqp_uri(), "t4h.sink", "t4h.out").await?;
    // The plugin first: its output waits in t4h.setgate-in for setgate's shovel.
    let plugin_out = Collector::start(&hq.amqp_uri(), "t4h.plugin-out");
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let confirmed = publish(&hq.amqp_uri(), 0..3, &PublishOptions::new("t4h.entry")).await?;
    let plugin_shovel = serde_json::json!({
        "src-uri": hq.amqp_uri(), "src-queue": "t4h.in",
        "dest-uri": hq.amqp_uri(), "dest-exchange": "t4h.mid",
        "add-forward-headers": true, "add-timestamp-header": true,
        "ack-mode": "on-confirm",
    });
    shovel_with_the_plugin(hq, "t4h-plugin", plugin_shovel, &plugin_out, &confirmed).await?;
    let by_plugin = plugin_out.received().swap_remove(0);
    let plugin_entries = shovelled(&by_plugin);
    assert_eq!(plugin_entries.len(), 1, "{plugin_entries:?}");
    let plugin_entry = &plugin_entries[0];
    println!(
        "the plugin's x-shovelled entry: {:?}; x-shovelled-timestamp: {:?}",
        readable(plugin_entry),
        header(&by_plugin, "x-shovelled-timestamp")
    );

    let sink = Collector::start(&center.amqp_uri(), "t4h.sink");
    let (from, to) = (("t4h.setgate-in", hq), ("t4h.out", center));
    let _sg = shovel_with_setgate("t4h", from, to, &sink, &confirmed).await?;

    let by_setgate = sink
        .received()
        .into_iter()
        .find(|r| r.id == by_plugin.id)
        .unwrap();
    let entries = shovelled(&by_setgate);
    let ours = &entries[0];
    println!("setgate's x-shovelled entry: {:?}", readable(ours));
    // Prepended: setgate's entry first, the plugin's kept after it as it was.
    assert_eq!(
        entries.len(),
        2,
        "setgate should prepend its entry to the plugin's: {entries:?}"
    );
    assert_eq!(
        &entries[1], plugin_entry,
        "the earlier entry is kept as it was"
    );
    // The same keys, each with the same type (the plugin writes them all as long strings).
    assert_eq!(
        shape(ours),
        shape(plugin_entry),
        "setgate's x-shovelled entry should have the plugin's keys and types"
    );
    // Values: this shovel's name, source and destination, URIs without credentials.
    let plugin_src = text(plugin_entry, "src-uri").expect("the plugin writes src-uri");
    let hq_addr = hq.amqp_addr().to_string();
    assert!(
        plugin_src.contains(&hq_addr) && !plugin_src.contains("guest"),
        "{plugin_src}"
    );
    let expect = [
        ("shovel-name", "t4h".to_string()),
        ("shovel-vhost", "/".to_string()),
        ("src-queue", "t4h.setgate-in".to_string()),
        ("dest-exchange", "t4h.out".to_string()),
        ("src-uri", plugin_src.clone()),
        (
            "dest-uri",
            plugin_src.replace(&hq_addr, &center.amqp_addr().to_string()),
        ),
    ];
    for (key, want) in expect {
        assert_eq!(
            text(ours, key).as_deref(),
            Some(want.as_str()),
            "x-shovelled {key}"
        );
    }
    // The timestamp header: the plugin's type, set now.
    let ts_type =
        |r: &Received| header(r, "x-shovelled-timestamp").map(|v| format!("{:?}", v.get_type()));
    assert_eq!(
        ts_type(&by_setgate),
        ts_type(&by_plugin),
        "x-shovelled-timestamp should be there, with the plugin's type"
    );
    let ts = match header(&by_setgate, "x-shovelled-timestamp") {
        Some(AMQPValue::LongLongInt(n)) => *n as u64,
        Some(AMQPValue::LongInt(n)) => *n as u64,
        Some(AMQPValue::Timestamp(n)) => *n,
        other => panic!("x-shovelled-timestamp is {other:?}"),
    };
    assert!(
        ts + 5 >= start && ts <= start + 120,
        "x-shovelled-timestamp {ts} should be the time (seconds) it was shovelled, about {start}"
    );
    Ok(())
}

/// A publisher's `x-shovelled` that is not an array, in three shapes: alone; beside an
/// `x-invalid-headers` table that already holds an older one; beside an `x-invalid-headers`
/// that is not a table. The plugin's shovel and setgate's take the same messages; what each
/// delivers must keep the publisher's value under `x-invalid-headers` alike, and start a new
/// `x-shovelled` array with the one entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x_shovelled_that_is_not_an_array_is_kept_in_x_invalid_headers_as_the_plugin_keeps_it(
) -> anyhow::Result<()> {
    let s = steady().await;
    let (hq, center) = (&s.hq, &s.clusters.center);
    // hq: tih.entry (fanout) -> tih.plugin-in -(plugin shovel)-> tih.mid -> tih.plugin-out
    //                        -> tih.setgate-in -(setgate)-> center's tih.out -> tih.sink
    declare_exchange(&hq.amqp_uri(), "tih.entry", "fanout").await?;
    declare_bound_queue(&hq.amqp_uri(), "tih.plugin-in", "tih.entry").await?;
    declare_bound_queue(&hq.amqp_uri(), "tih.setgate-in", "tih.entry").await?;
    declare_exchange(&hq.amqp_uri(), "tih.mid", "fanout").await?;
    declare_bound_queue(&hq.amqp_uri(), "tih.plugin-out", "tih.mid").await?;
    declare_exchange(&center.amqp_uri(), "tih.out", "fanout").await?;
    declare_bound_queue(&center.amqp_uri(), "tih.sink", "tih.out").await?;

    let long = |s: &str| AMQPValue::LongString(s.into());
    let older = {
        let mut t = FieldTable::default();
        t.insert(
            "x-shovelled".into(),
            AMQPValue::FieldArray(vec![long("older")].into()),
        );
        AMQPValue::FieldTable(t)
    };
    let shapes: [Vec<(&str, AMQPValue)>; 3] = [
        vec![("x-shovelled", long("not an array"))],
        vec![
            ("x-shovelled", AMQPValue::LongInt(7)),
            ("x-invalid-headers", older),
        ],
        vec![
            ("x-shovelled", AMQPValue::Boolean(true)),
            ("x-invalid-headers", long("not a table")),
        ],
    ];
    let conn = setgate_testkit::amqp::connect(&hq.amqp_uri()).await?;
    let ch = setgate_testkit::amqp::confirm_channel(&conn).await?;
    for (id, shape) in shapes.iter().enumerate() {
        let props = setgate_testkit::fed::message_properties(id as u64);
        let mut headers = props.headers().clone().unwrap_or_default();
        for (k, v) in shape {
            headers.insert((*k).into(), v.clone());
        }
        let props = props.with_headers(headers);
        let confirm = ch
            .basic_publish(
                "tih.entry".into(),
                "".into(),
                Default::default(),
                &setgate_testkit::fed::body(id as u64, 16),
                props,
            )
            .await?
            .await?;
        assert!(confirm.is_ack(), "message {id} not confirmed");
    }
    conn.close(200, "done".into()).await?;
    let want: BTreeSet<u64> = (0..shapes.len() as u64).collect();

    let plugin_out = Collector::start(&hq.amqp_uri(), "tih.plugin-out");
    let plugin_shovel = serde_json::json!({
        "src-uri": hq.amqp_uri(), "src-queue": "tih.plugin-in",
        "dest-uri": hq.amqp_uri(), "dest-exchange": "tih.mid",
        "add-forward-headers": true, "ack-mode": "on-confirm",
    });
    shovel_with_the_plugin(hq, "tih-plugin", plugin_shovel, &plugin_out, &want).await?;
    let sink = Collector::start(&center.amqp_uri(), "tih.sink");
    let (from, to) = (("tih.setgate-in", hq), ("tih.out", center));
    let _sg = shovel_with_setgate("tih", from, to, &sink, &want).await?;

    let by_id = |c: &Collector, id: u64| c.received().into_iter().find(|r| r.id == id).unwrap();
    for id in want {
        let (theirs, ours) = (by_id(&plugin_out, id), by_id(&sink, id));
        let invalid = |r: &Received| header(r, "x-invalid-headers").cloned();
        println!(
            "message {id}: the plugin's x-invalid-headers {:?}",
            invalid(&theirs)
        );
        assert!(
            invalid(&theirs).is_some(),
            "message {id}: the plugin kept nothing in x-invalid-headers: {:?}",
            theirs.properties.headers()
        );
        assert_eq!(
            invalid(&ours),
            invalid(&theirs),
            "message {id}: x-invalid-headers should be the plugin's"
        );
        for (who, r) in [("the plugin", &theirs), ("setgate", &ours)] {
            assert_eq!(
                shovelled(r).len(),
                1,
                "message {id}: {who} should start a new x-shovelled array"
            );
            assert_eq!(
                header(r, "seq"),
                Some(&AMQPValue::LongLongInt(id as i64)),
                "message {id}: {who} kept the other headers"
            );
        }
    }
    Ok(())
}

/// Runs RabbitMQ's shovel `name` on `hq` (`value`: its parameter, as the management API takes
/// it) until `out` has every message of `want`, then deletes it.
async fn shovel_with_the_plugin(
    hq: &Node,
    name: &str,
    value: serde_json::Value,
    out: &Collector,
    want: &BTreeSet<u64>,
) -> anyhow::Result<()> {
    let path = format!("/api/parameters/shovel/%2f/{name}");
    let r = hq
        .mgmt("PUT", &path, Some(serde_json::json!({ "value": value })))
        .await?;
    assert!(
        (200..300).contains(&r.status),
        "creating the plugin's shovel {name}: {} {}",
        r.status,
        r.body
    );
    let missing = out.wait_for(want, Duration::from_secs(30)).await;
    let _ = hq.mgmt("DELETE", &path, None).await;
    assert!(
        missing.is_empty(),
        "the plugin's shovel {name} did not deliver {missing:?}"
    );
    Ok(())
}

/// Runs setgate's shovel `name` with forward headers from a queue to an exchange (each named
/// with its node) until `sink` has every message of `want`; returns setgate, still running.
async fn shovel_with_setgate(
    name: &str,
    (queue, from): (&str, &Node),
    (exchange, to): (&str, &Node),
    sink: &Collector,
    want: &BTreeSet<u64>,
) -> anyhow::Result<Setgate> {
    let cfg = Config::new().shutdown_grace("2s").shovel(
        Shovel::new(
            name,
            Source::queue(&[from.amqp_uri()], queue),
            Destination::exchange(&[to.amqp_uri()], exchange),
        )
        .add_forward_headers(true),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_shovel_state(&sg, name, "running").await?;
    let missing = sink.wait_for(want, Duration::from_secs(30)).await;
    assert!(
        missing.is_empty(),
        "setgate's shovel {name} did not deliver {missing:?}"
    );
    Ok(sg)
}

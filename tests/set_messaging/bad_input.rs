//! Bad input: a destination exchange that does not exist (reported, retried, nothing acked), a
//! message with no key (to the default cluster, counted), messages whose properties amq-protocol
//! refuses (forwarded as they came), and every new config error named by `setgate check`.

use super::*;
use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
use amq_protocol::types::{AMQPValue, FieldTable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_destination_exchange_is_reported_retried_and_nothing_is_acked(
) -> anyhow::Result<()> {
    let s = steady().await;
    let c = &s.clusters;
    let (entry, src, missing) = ("t5m.in", "t5m.src", "t5m.missing");
    declare_exchange(&c.center.amqp_uri(), entry, "topic").await?;
    declare_bound_queue(&c.center.amqp_uri(), src, entry).await?;
    let confirmed = publish(&c.center.amqp_uri(), 0..100, &PublishOptions::new(entry)).await?;
    let cfg = Config::new().shutdown_grace("2s").shovel(Shovel::new(
        "t5m",
        Source::queue(&[c.center.amqp_uri()], src),
        Destination::exchange(&[c.a.amqp_uri()], missing),
    ));
    let sg = Setgate::start(BIN, &cfg).await?;
    // A plain destination is named by its address or as the shovel's destination.
    let set_a = c.a.amqp_addr().to_string();
    let dest_name = "t5m destination".to_string();
    let last = std::sync::Mutex::new(serde_json::Value::Null);
    let st = wait_until(
        "the status to name the missing exchange and its cluster, after two retries",
        Duration::from_secs(30),
        || async {
            let st = shovel_status(&sg, "t5m").await.ok()?;
            let named = last_errors(&st)
                .iter()
                .any(|e| e.contains(missing) && (e.contains(&set_a) || e.contains(&dest_name)));
            let retries =
                st.to_string().contains("\"reconnects\"") && max_number(&st, "reconnects") >= 2;
            *last.lock().unwrap() = st.clone();
            (named && retries).then_some(st)
        },
    )
    .await
    .map_err(|e| {
        e.context(format!(
            "expected a last_error naming exchange {missing:?} and the destination ({set_a} or \
             {dest_name:?}), and reconnects >= 2; last status: {}\nsetgate log:\n{}",
            last.lock().unwrap(),
            log_tail(&sg, 30)
        ))
    })?;
    println!("t5m while the exchange is missing: {st}");
    assert_ne!(
        st["state"], "running",
        "a shovel that cannot publish is not running: {st}"
    );
    // Nothing was acked: the source queue still has every message.
    let in_queue = wait_until(
        "the source queue's count",
        Duration::from_secs(10),
        || async { queue_messages(&c.center, src).await.ok()? },
    )
    .await?;
    assert_eq!(
        in_queue, 100,
        "the source queue must keep every message while none can be delivered"
    );

    // Once the exchange exists, everything arrives. It is declared with an alternate exchange
    // the sink is already bound to, so it routes to the sink from its first moment: a queue
    // bound after the declare could miss what the shovel publishes in between.
    declare_exchange(&c.a.amqp_uri(), "t5m.ae", "fanout").await?;
    declare_bound_queue(&c.a.amqp_uri(), "t5m.sink", "t5m.ae").await?;
    let sink = Collector::start(&c.a.amqp_uri(), "t5m.sink");
    let conn = setgate_testkit::amqp::connect(&c.a.amqp_uri()).await?;
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        lapin::types::AMQPValue::LongString("t5m.ae".into()),
    );
    conn.create_channel()
        .await?
        .exchange_declare(
            missing.into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let _ = conn.close(200, "OK".into()).await;
    let lost = sink.wait_for(&confirmed, Duration::from_secs(60)).await;
    Tally::of(&confirmed, &sink.received()).print("missing exchange, then declared");
    assert!(
        lost.is_empty(),
        "messages lost after the exchange was declared: {lost:?}"
    );
    assert_eq!(shovel_status(&sg, "t5m").await?["state"], "running");
    Ok(())
}

/// The largest number under `key` anywhere in `v`.
fn max_number(v: &serde_json::Value, key: &str) -> u64 {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let own = if k == key { v.as_u64().unwrap_or(0) } else { 0 };
                own.max(max_number(v, key))
            })
            .max()
            .unwrap_or(0),
        serde_json::Value::Array(a) => a.iter().map(|v| max_number(v, key)).max().unwrap_or(0),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_no_key_goes_to_the_default_cluster_and_is_counted() -> anyhow::Result<()> {
    let s = steady().await;
    let c = &s.clusters;
    let (source_x, dest_x) = ("t5u.orders", "t5u.deliver");
    declare_exchange(&c.center.amqp_uri(), source_x, "topic").await?;
    let sinks = sinks(c, dest_x, "t5u.sink").await?;
    let cfg = base_config(c).shovel(Shovel::new(
        "t5u",
        Source::exchange(&[c.center.amqp_uri()], source_x),
        to_sets(dest_x),
    ));
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_shovel_state(&sg, "t5u", "running").await?;
    let routes = routes(&sg, &users());

    let opts = keyed(source_x, users());
    let keyed_ids = publish(&c.center.amqp_uri(), 0..60, &opts).await?;
    let unkeyed = publish(
        &c.center.amqp_uri(),
        1_000..1_010,
        &PublishOptions::new(source_x),
    )
    .await?;
    assert_eq!((keyed_ids.len(), unkeyed.len()), (60, 10));
    let mut expected = expected_by_cluster(&keyed_ids, opts.key_header.as_ref().unwrap(), &routes);
    expected
        .get_mut("center")
        .unwrap()
        .extend(unkeyed.iter().copied());
    assert_routed("unkeyed", &sinks, &expected, Duration::from_secs(60)).await;

    let last = std::sync::Mutex::new(serde_json::Value::Null);
    let st = wait_until(
        "unkeyed = 10 in the status",
        Duration::from_secs(10),
        || async {
            let st = shovel_status(&sg, "t5u").await.ok()?;
            *last.lock().unwrap() = st.clone();
            (st["unkeyed"] == 10).then_some(st)
        },
    )
    .await
    .map_err(|e| e.context(format!("last status: {}", last.lock().unwrap())))?;
    println!("t5u: {}", st);
    let counted = metric(&sg, "setgate_flow_unkeyed_total", &[]).await?;
    assert_eq!(
        counted, 10.0,
        "setgate_flow_unkeyed_total should count the 10 messages with no key"
    );
    Ok(())
}

/// `encoded` with its one occurrence of `from` replaced by `to`, of the same length.
fn patched(mut encoded: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = encoded
        .windows(from.len())
        .position(|w| w == from)
        .expect("the placeholder is there");
    encoded[at..at + to.len()].copy_from_slice(to);
    encoded
}

fn encoded(p: &AMQPProperties) -> Vec<u8> {
    gen_properties(p)(WriteContext::from(Vec::new()))
        .expect("encodes")
        .into_inner()
        .0
}

/// Properties with message id `id` whose headers are `depth` tables each inside the last, as
/// bytes.
fn deeply_nested_properties(id: &str, depth: usize) -> Vec<u8> {
    let table = setgate_testkit::amqp_lite::nested_table_entries(depth);
    // Flags: headers, delivery mode, message id.
    let flags: u16 = (1 << 13) | (1 << 12) | (1 << 7);
    let mut raw = flags.to_be_bytes().to_vec();
    raw.extend_from_slice(&(table.len() as u32).to_be_bytes());
    raw.extend_from_slice(&table);
    raw.push(2);
    raw.push(id.len() as u8);
    raw.extend_from_slice(id.as_bytes());
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_amq_protocol_refuses_are_forwarded_as_they_came() -> anyhow::Result<()> {
    let s = steady().await;
    let (hq, center) = (&s.hq, &s.clusters.center);
    let (entry, src, out, sink_q) = ("t5p.entry", "t5p.in", "t5p.out", "t5p.sink");
    declare_exchange(&hq.amqp_uri(), entry, "topic").await?;
    declare_bound_queue(&hq.amqp_uri(), src, entry).await?;
    declare_exchange(&center.amqp_uri(), out, "topic").await?;
    declare_bound_queue(&center.amqp_uri(), sink_q, out).await?;

    // In the queue before setgate starts, in this order: short strings that are not UTF-8 (a
    // correlation id and a header key), a plain message, headers nested 5,000 deep. RabbitMQ
    // takes all three (its strings are bytes; its parser does not recurse on the stack), and
    // amq-protocol (lapin's parser) refuses the first and the last.
    let mut headers = FieldTable::default();
    headers.insert("KKKK".into(), AMQPValue::LongString("v".into()));
    let not_utf8 = AMQPProperties::default()
        .with_delivery_mode(2)
        .with_message_id("9001".into())
        .with_correlation_id("ZZZZ".into())
        .with_headers(headers);
    let bad_id = [4, 0xFF, b'a', 0xC3, b'b'];
    let bad_key = [4, b'k', 0x80, 0x80, b'!'];
    let not_utf8 = patched(encoded(&not_utf8), b"ZZZZ", &bad_id[1..]);
    let not_utf8 = patched(not_utf8, b"KKKK", &bad_key[1..]);
    let plain = encoded(
        &AMQPProperties::default()
            .with_delivery_mode(2)
            .with_message_id("9002".into()),
    );
    let deep = deeply_nested_properties("9003", 5000);
    let mut publisher =
        setgate_testkit::amqp_lite::connect(hq.amqp_addr(), "guest", "guest", "/").await?;
    for (props, body) in [(&not_utf8, "9001"), (&plain, "9002"), (&deep, "9003")] {
        publisher
            .publish_raw_properties(entry, "k", props, body.as_bytes())
            .await?;
    }

    // Forward headers: a shovel that edits every message's headers.
    let cfg = Config::new().shutdown_grace("2s").shovel(
        Shovel::new(
            "t5p",
            Source::queue(&[hq.amqp_uri()], src),
            Destination::exchange(&[center.amqp_uri()], out),
        )
        .add_forward_headers(true),
    );
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_until(
        "all three in the sink queue",
        Duration::from_secs(30),
        || async { (queue_messages(center, sink_q).await.ok()? == Some(3)).then_some(()) },
    )
    .await
    .map_err(|e| e.context(format!("setgate log:\n{}", log_tail(&sg, 30))))?;
    let mut reader =
        setgate_testkit::amqp_lite::connect(center.amqp_addr(), "guest", "guest", "/").await?;
    let mut got = Vec::new();
    while let Some(m) = reader.get_raw(sink_q).await? {
        got.push(m);
    }
    let bodies: Vec<&[u8]> = got.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(
        bodies,
        [&b"9001"[..], b"9002", b"9003"],
        "each once, in order"
    );
    let holds = |m: &setgate_testkit::amqp_lite::RawMessage, bytes: &[u8]| {
        m.properties.windows(bytes.len()).any(|w| w == bytes)
    };
    for m in &got {
        assert!(holds(m, b"\x0bx-shovelledA"), "x-shovelled: {:?}", m.body);
        assert!(
            holds(m, b"\x15x-shovelled-timestampl"),
            "timestamp: {:?}",
            m.body
        );
    }
    assert!(holds(&got[0], &bad_id), "the correlation id as it came");
    assert!(holds(&got[0], &bad_key), "the header key as it came");
    let nested = setgate_testkit::amqp_lite::nested_table_entries(5000);
    assert!(holds(&got[2], &nested), "the nested headers as they came");
    let st = shovel_status(&sg, "t5p").await?;
    println!("t5p: {st}");
    assert!(last_errors(&st).is_empty(), "no error: {st}");
    // The management API counts a queue's messages every few seconds: its count is waited for.
    wait_until("all acked upstream", Duration::from_secs(30), || async {
        (queue_messages(hq, src).await.ok()? == Some(0)).then_some(())
    })
    .await?;
    Ok(())
}

/// Runs `setgate check` on `cfg`; returns (exit code, stderr).
fn check(dir: &std::path::Path, i: usize, cfg: &Config) -> (Option<i32>, String) {
    let path = dir.join(format!("case-{i}.toml"));
    std::fs::write(&path, cfg.to_toml()).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run setgate check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn check_names_every_new_config_error() {
    // Addresses only: `check` connects to nothing.
    let uri = |port: u16| format!("amqp://u:p@127.0.0.1:{port}/%2f");
    let pools = |cfg: Config| {
        ["center", "set-a", "set-b"]
            .iter()
            .zip(5672u16..)
            .fold(cfg, |cfg, (p, port)| {
                cfg.pool(Pool::new(p).server("n1", format!("127.0.0.1:{port}")))
            })
    };
    let routing = || {
        Routing::new("center")
            .default_uris(&[uri(5672)])
            .set("set-a", "set-a", "set-b")
            .set("set-b", "set-b", "set-a")
            .uris("set-a", &[uri(5673)])
            .uris("set-b", &[uri(5674)])
    };
    let routed = |shovel: Shovel| pools(Config::new()).routing(routing()).shovel(shovel);
    let plain = |shovel: Shovel| Config::new().shovel(shovel);
    let queue = || Source::queue(&[uri(5672)], "q");
    let exchange = || Source::exchange(&[uri(5672)], "orders");
    let dest = || Destination::exchange(&[uri(5673)], "orders");
    // A destination exchange other than the source's: no loop through the default cluster.
    let sets = || Destination::sets("header:x-user-id").exchange_name("deliver");

    // The file must be otherwise valid: the plain shovel passes.
    let dir = setgate_testkit::unique_dir("set-messaging-check");
    let (code, out) = check(&dir, 0, &plain(Shovel::new("fine", queue(), dest())));
    assert_eq!(code, Some(0), "a valid shovel should pass check:\n{out}");
    let (code, out) = check(&dir, 1, &routed(Shovel::new("fine", exchange(), sets())));
    assert_eq!(
        code,
        Some(0),
        "a valid routed shovel should pass check:\n{out}"
    );

    let no_uris: &[&str] = &[];
    let cases: Vec<(&str, Config, Vec<&str>)> = vec![
        (
            "a source without uris",
            plain(Shovel::new(
                "s-no-uris",
                Source::queue(no_uris, "q"),
                dest(),
            )),
            vec!["source.uris"],
        ),
        (
            "a source with both queue and exchange",
            plain(Shovel::new(
                "s-both",
                queue().with("exchange", "orders"),
                dest(),
            )),
            vec!["source", "queue", "exchange"],
        ),
        (
            "an unknown route",
            routed(Shovel::new(
                "s-route",
                exchange(),
                sets().with("route", "some-sets"),
            )),
            vec!["route", "some-sets"],
        ),
        (
            "a key of no known form",
            routed(Shovel::new(
                "s-key",
                exchange(),
                Destination::sets("hdr:x-user-id").exchange_name("deliver"),
            )),
            vec!["key", "hdr:x-user-id"],
        ),
        (
            "route = \"sets\" without [routing]",
            plain(Shovel::new("s-norouting", exchange(), sets())),
            vec!["route", "[routing]"],
        ),
        (
            "a SET without uris",
            pools(Config::new())
                .routing(
                    Routing::new("center")
                        .default_uris(&[uri(5672)])
                        .set("set-a", "set-a", "set-b")
                        .set("set-b", "set-b", "set-a")
                        .uris("set-a", &[uri(5673)]),
                )
                .shovel(Shovel::new("s-seturis", exchange(), sets())),
            vec!["set-b", "uris"],
        ),
        (
            "all-sets from a queue",
            routed(Shovel::new(
                "s-allq",
                queue(),
                Destination::all_sets("catalog"),
            )),
            vec!["route", "all-sets", "queue"],
        ),
        (
            "delete_after = \"sometimes\"",
            plain(Shovel::new("s-del", queue(), dest()).delete_after("sometimes")),
            vec!["delete_after", "sometimes"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, cfg, words)) in cases.iter().enumerate() {
        let (code, out) = check(&dir, i + 10, cfg);
        let absent: Vec<&&str> = words.iter().filter(|w| !out.contains(**w)).collect();
        if code != Some(1) || !absent.is_empty() {
            failures.push(format!(
                "{what}: expected exit 1 and an error naming {words:?}; got exit {code:?}, \
                 missing {absent:?}, output:\n{out}\nconfig:\n{cfg}"
            ));
        }
    }
    // Several at once: every one is reported.
    let both = pools(Config::new())
        .routing(
            Routing::new("center")
                .default_uris(&[uri(5672)])
                .set("set-a", "set-a", "set-b")
                .set("set-b", "set-b", "set-a")
                .uris("set-a", &[uri(5673)]),
        )
        .shovel(Shovel::new("s-routed", exchange(), sets()))
        .shovel(Shovel::new("s-empty", Source::queue(no_uris, "q"), dest()));
    let (code, out) = check(&dir, 99, &both);
    let absent: Vec<&str> = ["set-b", "source.uris"]
        .into_iter()
        .filter(|w| !out.contains(w))
        .collect();
    if code != Some(1) || !absent.is_empty() {
        failures.push(format!(
            "two errors in one file: expected exit 1 naming set-b (no uris) and source.uris (empty); got exit {code:?}, missing {absent:?}, output:\n{out}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

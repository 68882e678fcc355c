//! Per-message SET routing: 300 users' messages, published with confirms in the center, each
//! land on the broker `setgate route` names for that user, through a shovel and through a
//! federation link; none lost, none on a wrong SET, and the per-SET counts say so.

use super::*;

/// Two messages per user.
const MESSAGES: u64 = 2 * USERS as u64;

/// A shovel or a link, by name.
#[derive(Debug, Clone, Copy)]
enum Flow<'a> {
    Shovel(&'a str),
    Link(&'a str),
}

impl Flow<'_> {
    async fn status(self, sg: &Setgate) -> anyhow::Result<serde_json::Value> {
        match self {
            Flow::Shovel(name) => shovel_status(sg, name).await,
            Flow::Link(name) => link_status(sg, name).await,
        }
    }
}

/// Waits until the status's per-cluster `forwarded` counts equal `expected`'s sizes and its total
/// `forwarded` equals their sum.
async fn wait_counts(
    sg: &Setgate,
    flow: Flow<'_>,
    expected: &BTreeMap<String, BTreeSet<u64>>,
) -> anyhow::Result<()> {
    let want: BTreeMap<&str, u64> = expected
        .iter()
        .map(|(c, ids)| (status_key(c), ids.len() as u64))
        .collect();
    let total: u64 = want.values().sum();
    let last = std::sync::Mutex::new(serde_json::Value::Null);
    wait_until(
        &format!("{flow:?}: forwarded {total}, per SET {want:?}"),
        Duration::from_secs(15),
        || async {
            let st = flow.status(sg).await.ok()?;
            let ok = st["forwarded"].as_u64() == Some(total)
                && want
                    .iter()
                    .all(|(set, n)| set_count(&st, set, "forwarded") == Some(*n));
            *last.lock().unwrap() = st;
            ok.then_some(())
        },
    )
    .await
    .map_err(|e| e.context(format!("last status: {}", last.lock().unwrap())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shovel_delivers_300_users_messages_to_the_broker_setgate_route_names(
) -> anyhow::Result<()> {
    let s = steady().await;
    let c = &s.clusters;
    let (source_x, dest_x) = ("t1s.orders", "t1s.deliver");
    declare_exchange(&c.center.amqp_uri(), source_x, "topic").await?;
    let sinks = sinks(c, dest_x, "t1s.sink").await?;
    // The destination exchange has another name than the source's: the center is both the
    // source and the default cluster, and a shovel (unlike a link) does not stop loops.
    let cfg = base_config(c).shovel(Shovel::new(
        "t1s",
        Source::exchange(&[c.center.amqp_uri()], source_x),
        to_sets(dest_x),
    ));
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_shovel_state(&sg, "t1s", "running").await?;
    let routes = routes(&sg, &users());
    println!("300 users by cluster: {:?}", spread(&routes));

    let opts = keyed(source_x, users());
    let confirmed = publish(&c.center.amqp_uri(), 0..MESSAGES, &opts).await?;
    assert_eq!(
        confirmed.len() as u64,
        MESSAGES,
        "the center confirmed every publish"
    );
    let expected = expected_by_cluster(&confirmed, opts.key_header.as_ref().unwrap(), &routes);
    assert_routed("shovel t1s", &sinks, &expected, Duration::from_secs(60)).await;

    wait_counts(&sg, Flow::Shovel("t1s"), &expected).await?;
    let st = shovel_status(&sg, "t1s").await?;
    assert_eq!(st["unkeyed"], 0, "every message had a key: {st}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federation_link_with_a_routed_downstream_delivers_each_message_to_its_users_set(
) -> anyhow::Result<()> {
    let s = steady().await;
    let c = &s.clusters;
    let x = "t1l.orders";
    declare_exchange(&s.hq.amqp_uri(), x, "topic").await?;
    let sinks = sinks(c, x, "t1l.sink").await?;
    let cfg = base_config(c)
        .upstream(Upstream::new("hq", &[s.hq.amqp_uri()]))
        .link(Link::routed(
            "t1l",
            &["hq"],
            Destination::sets(&format!("header:{KEY_HEADER}")),
            &[x],
        ));
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_running(&sg, "t1l").await?;
    let routes = routes(&sg, &users());
    spread(&routes);

    let opts = keyed(x, users());
    let confirmed = publish(&s.hq.amqp_uri(), 0..MESSAGES, &opts).await?;
    assert_eq!(
        confirmed.len() as u64,
        MESSAGES,
        "hq confirmed every publish"
    );
    let expected = expected_by_cluster(&confirmed, opts.key_header.as_ref().unwrap(), &routes);
    assert_routed("link t1l", &sinks, &expected, Duration::from_secs(60)).await;

    wait_counts(&sg, Flow::Link("t1l"), &expected).await?;
    Ok(())
}

//! Links over TLS: `amqps` URIs naming the CA and a client certificate in their query, as
//! RabbitMQ's plugins take them, to a broker that requires a client certificate; and a link
//! whose CA does not vouch for the broker, which fails at once and says why.

use super::*;
use setgate_testkit::pki::Pki;
use setgate_testkit::NodeOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_both_ways_over_amqps_with_a_private_ca_and_a_client_certificate(
) -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let pki = Pki::generate(&setgate_testkit::unique_dir("fed-pki"))?;
    let tls_port = free_port();
    // Refuses any client without a certificate from the test CA.
    let tls_node = Node::start_with(NodeOptions {
        extra_config: pki.rabbitmq_listener(tls_port, true),
        ..Default::default()
    })
    .await?;
    let amqps = pki.amqps_uri("guest", "guest", tls_port);
    // The same listener, verified against a CA that did not sign its certificate.
    let other_ca = Pki::generate(&setgate_testkit::unique_dir("fed-pki-other"))?;
    let untrusted = other_ca.amqps_uri("guest", "guest", tls_port);
    // From the TLS node (consumed over TLS) to dc2, and from dc2 to the TLS node (published
    // over TLS).
    let (out, back) = ("t-tls-out", "t-tls-back");
    topology(out, &[&tls_node, &s.dc2], &[(&s.dc2, "t-tls-out.sink")]).await?;
    topology(
        back,
        &[&s.dc2, &tls_node],
        &[(&tls_node, "t-tls-back.sink")],
    )
    .await?;
    let cfg = config()
        .upstream(Upstream::new("tls", std::slice::from_ref(&amqps)))
        .upstream(Upstream::new("plain", &[s.dc2.amqp_uri()]))
        .upstream(Upstream::new("untrusted", std::slice::from_ref(&untrusted)))
        .link(link("out", "tls", "dc2", &s.dc2, out))
        .link(link(
            "untrusted",
            "untrusted",
            "dc2",
            &s.dc2,
            "t-tls-untrusted",
        ))
        .link(Link::new(
            "back",
            &["plain"],
            "tlsdc",
            std::slice::from_ref(&amqps),
            &[back],
        ));
    let started = std::time::Instant::now();
    let sg = Setgate::start(BIN, &cfg).await?;
    // A failed handshake is an answer: reported from the first try, not after knocking for the
    // connect timeout (10 s; a try every 3 s for amqps).
    let st = wait_until(
        "the untrusted link to report its certificate",
        Duration::from_secs(30),
        || async {
            let st = link_status(&sg, "untrusted").await.ok()?;
            let err = st["last_error"].as_str()?;
            err.contains("invalid peer certificate")
                .then_some(st.clone())
        },
    )
    .await
    .map_err(|e| e.context(format!("setgate log:\n{}", sg.log())))?;
    let waited = started.elapsed();
    println!("untrusted after {waited:?}: {}", st["last_error"]);
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect to upstream untrusted")
                && e.contains("must chain to the URI's cacertfile")),
        "{st}"
    );
    assert!(waited < Duration::from_secs(5), "took {waited:?}: {st}");
    wait_running(&sg, "out").await?;
    wait_running(&sg, "back").await?;

    let out_sink = Collector::start(&s.dc2.amqp_uri(), "t-tls-out.sink");
    let back_sink = Collector::start(&tls_node.amqp_uri(), "t-tls-back.sink");
    let sent_out = publish(&tls_node.amqp_uri(), 0..500, &PublishOptions::new(out)).await?;
    let sent_back = publish(&s.dc2.amqp_uri(), 0..500, &PublishOptions::new(back)).await?;
    // Long bodies too: written from where they were read, between their frames, in one
    // vectored write (2,100 bytes: one body frame), and bodies over the brokers' frame_max of
    // 128 KiB, delivered in several frames and published in several.
    let size = |id: u64| match id {
        0..500 => 0,
        500..540 => 2_100,
        _ => 300_000,
    };
    let (mut sent_out, mut sent_back) = (sent_out, sent_back);
    for ids in [500..540, 540..560] {
        let mut opts = PublishOptions::new(out);
        opts.body_size = size(ids.start);
        sent_out.extend(publish(&tls_node.amqp_uri(), ids.clone(), &opts).await?);
        opts.exchange = back.into();
        sent_back.extend(publish(&s.dc2.amqp_uri(), ids, &opts).await?);
    }
    for (case, sent, sink) in [
        ("out", &sent_out, &out_sink),
        ("back", &sent_back, &back_sink),
    ] {
        let missing = sink.wait_for(sent, Duration::from_secs(60)).await;
        let received = sink.received();
        let tally = Tally::of(sent, &received);
        tally.print(case);
        assert!(
            missing.is_empty() && tally.missing == 0,
            "{case}: {tally:?}"
        );
        for r in &received {
            assert!(
                r.body == setgate_testkit::fed::body(r.id, size(r.id)),
                "{case}: message {} arrived with a body of {} bytes, not as published",
                r.id,
                r.body.len()
            );
        }
    }

    // Every connection to the TLS listener (setgate's: the test's own use the plain one) is
    // TLS with the client certificate: the lapin connection and the wire of each link.
    let conns = tls_node
        .ctl(&[
            "list_connections",
            "name",
            "ssl",
            "peer_cert_subject",
            "--silent",
            "--no-table-headers",
        ])
        .await?;
    let listener = format!("-> 127.0.0.1:{tls_port}");
    let over_tls: Vec<&str> = conns.lines().filter(|l| l.contains(&listener)).collect();
    assert!(over_tls.len() >= 4, "connections to {tls_port}: {conns}");
    for c in &over_tls {
        assert!(
            c.contains("true") && c.contains("CN=client"),
            "not TLS with the client certificate: {c}"
        );
    }
    Ok(())
}

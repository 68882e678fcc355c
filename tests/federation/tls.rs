//! Links over TLS: `amqps` URIs naming the CA and a client certificate in their query, as
//! RabbitMQ's plugins take them, to a broker that requires a client certificate.

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
        .link(link("out", "tls", "dc2", &s.dc2, out))
        .link(Link::new(
            "back",
            &["plain"],
            "tlsdc",
            std::slice::from_ref(&amqps),
            &[back],
        ));
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_running(&sg, "out").await?;
    wait_running(&sg, "back").await?;

    let out_sink = Collector::start(&s.dc2.amqp_uri(), "t-tls-out.sink");
    let back_sink = Collector::start(&tls_node.amqp_uri(), "t-tls-back.sink");
    let sent_out = publish(&tls_node.amqp_uri(), 0..500, &PublishOptions::new(out)).await?;
    let sent_back = publish(&s.dc2.amqp_uri(), 0..500, &PublishOptions::new(back)).await?;
    for (case, sent, sink) in [
        ("out", &sent_out, &out_sink),
        ("back", &sent_back, &back_sink),
    ] {
        let missing = sink.wait_for(sent, Duration::from_secs(60)).await;
        let tally = Tally::of(sent, &sink.received());
        tally.print(case);
        assert!(
            missing.is_empty() && tally.missing == 0,
            "{case}: {tally:?}"
        );
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

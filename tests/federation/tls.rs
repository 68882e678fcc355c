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

/// `server_name_indication` as the plugins take it. The broker is reached at 127.0.0.2, an
/// address its certificate does not name (it names localhost and 127.0.0.1):
/// - without the parameter the link is refused, and the error says what to write;
/// - `server_name_indication=localhost` verifies that name instead, and the link runs;
/// - `server_name_indication=disable` skips the name check, and the link runs, both ways
///   (consuming from the broker and publishing to it);
/// - with `disable` a certificate its CA did not sign is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_indication_names_the_broker_or_skips_only_the_name_check() -> anyhow::Result<()>
{
    let _p = permit().await;
    let s = shared().await;
    let pki = Pki::generate(&setgate_testkit::unique_dir("fed-sni"))?;
    let stranger = Pki::generate(&setgate_testkit::unique_dir("fed-sni-other"))?;
    let port = free_port();
    let node = Node::start_with(NodeOptions {
        extra_config: pki.rabbitmq_listener(port, false),
        ..Default::default()
    })
    .await?;
    let at_other_address = |pki: &Pki, query: &str| {
        let uri = pki.amqps_uri("guest", "guest", port);
        format!("{}{query}", uri.replace("@127.0.0.1:", "@127.0.0.2:"))
    };
    let (named_x, unnamed_x, back_x) = ("t-sni-named", "t-sni-unnamed", "t-sni-back");
    topology(named_x, &[&node, &s.dc2], &[(&s.dc2, "t-sni-named.sink")]).await?;
    topology(
        unnamed_x,
        &[&node, &s.dc2],
        &[(&s.dc2, "t-sni-unnamed.sink")],
    )
    .await?;
    topology(back_x, &[&s.dc2, &node], &[(&node, "t-sni-back.sink")]).await?;
    let unnamed = at_other_address(&pki, "&server_name_indication=disable");
    let cfg = config()
        .upstream(Upstream::new("by-address", &[at_other_address(&pki, "")]))
        .upstream(Upstream::new(
            "named",
            &[at_other_address(&pki, "&server_name_indication=localhost")],
        ))
        .upstream(Upstream::new("unnamed", std::slice::from_ref(&unnamed)))
        .upstream(Upstream::new(
            "stranger",
            &[at_other_address(
                &stranger,
                "&server_name_indication=disable",
            )],
        ))
        .upstream(Upstream::new("plain", &[s.dc2.amqp_uri()]))
        .link(link("by-address", "by-address", "dc2", &s.dc2, "t-sni-x1"))
        .link(link("stranger", "stranger", "dc2", &s.dc2, "t-sni-x2"))
        .link(link("named", "named", "dc2", &s.dc2, named_x))
        .link(link("unnamed", "unnamed", "dc2", &s.dc2, unnamed_x))
        .link(Link::new(
            "back",
            &["plain"],
            "snidc",
            std::slice::from_ref(&unnamed),
            &[back_x],
        ));
    let sg = Setgate::start(BIN, &cfg).await?;
    let error_of = |name: &'static str, wanted: &'static str| {
        let sg = &sg;
        async move {
            wait_until(
                &format!("link {name} to report {wanted:?}"),
                Duration::from_secs(30),
                || async {
                    let st = link_status(sg, name).await.ok()?;
                    let err = st["last_error"].as_str()?;
                    err.contains(wanted).then(|| err.to_string())
                },
            )
            .await
        }
    };
    let e = error_of("by-address", "not valid for name").await?;
    println!("by-address: {e}");
    assert!(e.contains("server_name_indication=<name>"), "{e}");
    let e = error_of("stranger", "invalid peer certificate").await?;
    println!("stranger: {e}");
    assert!(!e.contains("not valid for name"), "{e}");
    for name in ["named", "unnamed", "back"] {
        wait_running(&sg, name).await?;
    }

    let named_sink = Collector::start(&s.dc2.amqp_uri(), "t-sni-named.sink");
    let unnamed_sink = Collector::start(&s.dc2.amqp_uri(), "t-sni-unnamed.sink");
    let back_sink = Collector::start(&node.amqp_uri(), "t-sni-back.sink");
    let sent_named = publish(&node.amqp_uri(), 0..200, &PublishOptions::new(named_x)).await?;
    let sent_unnamed = publish(&node.amqp_uri(), 0..200, &PublishOptions::new(unnamed_x)).await?;
    let sent_back = publish(&s.dc2.amqp_uri(), 0..200, &PublishOptions::new(back_x)).await?;
    for (case, sent, sink) in [
        ("named", &sent_named, &named_sink),
        ("unnamed", &sent_unnamed, &unnamed_sink),
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
    // Still refused, every attempt.
    for name in ["by-address", "stranger"] {
        let st = link_status(&sg, name).await?;
        assert_ne!(st["state"], "running", "{st}");
    }
    Ok(())
}

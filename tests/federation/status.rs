//! What a link reports and how its config changes: errors in the status while it retries,
//! `setgate check` on a broken file, reload restarting only the links that changed.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_in_the_status_while_retrying() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let (missing_x, typed_x, good_x) = ("t-bad-missing", "t-bad-type", "t-bad-good");
    declare_exchange(&s.dc1.amqp_uri(), missing_x, "topic").await?;
    declare_exchange(&s.dc1.amqp_uri(), typed_x, "topic").await?;
    declare_exchange(&s.dc2.amqp_uri(), typed_x, "fanout").await?;
    topology(good_x, &[&s.dc1, &s.dc2], &[]).await?;
    let closed = free_port();
    let unreachable = format!("amqp://guest:secret1@127.0.0.1:{closed}/%2f");
    let wrong_password = format!("amqp://guest:wrong-secret2@{}/%2f", s.dc1.amqp_addr());
    let cfg = config()
        .upstream(Upstream::new("dead", &[unreachable]))
        .upstream(Upstream::new("badpw", &[wrong_password]))
        .upstream(Upstream::new("dc1", &[s.dc1.amqp_uri()]))
        .link(link("unreachable", "dead", "dc2", &s.dc2, good_x))
        .link(link("credentials", "badpw", "dc2", &s.dc2, good_x))
        .link(link("missing", "dc1", "dc2", &s.dc2, missing_x))
        .link(link("type", "dc1", "dc2", &s.dc2, typed_x))
        .link(link("good", "dc1", "dc2", &s.dc2, good_x));
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_running(&sg, "good").await?;
    let expect = [
        ("unreachable", format!("cannot connect to upstream dead: amqp://guest:***@127.0.0.1:{closed}/%2f: ")),
        ("credentials", "ACCESS_REFUSED".to_string()),
        ("credentials", "check the user name and password".to_string()),
        ("missing", format!("downstream exchange \"{missing_x}\" does not exist on dc2 (vhost /); declare it there")),
        (
            "type",
            format!("exchange \"{typed_x}\" is of type fanout on downstream dc2 but topic on upstream dc1"),
        ),
    ];
    for (name, text) in &expect {
        let st = wait_until(
            &format!("{name} reports {text:?}"),
            Duration::from_secs(30),
            || async {
                let st = link_status(&sg, name).await.ok()?;
                let err = st["last_error"].as_str()?.to_string();
                (st["state"] == "reconnecting" && err.contains(text.as_str())).then_some(st)
            },
        )
        .await
        .map_err(|e| e.context(format!("setgate log:\n{}", sg.log())))?;
        assert!(st["next_attempt"].is_string(), "{st}");
        println!("{name}: {}", st["last_error"]);
    }
    let everything =
        sg.get_json("/api/links").await?.to_string() + &sg.get("/metrics").await?.body + &sg.log();
    for secret in ["secret1", "wrong-secret2"] {
        assert!(!everything.contains(secret), "password {secret} leaked");
    }
    assert!(
        sg.log().contains("does not exist on dc2"),
        "the error is not logged"
    );

    // Still retrying: once the exchange exists, the link runs; nothing crashed meanwhile.
    declare_exchange(&s.dc2.amqp_uri(), missing_x, "topic").await?;
    wait_running(&sg, "missing").await?;
    let reconnects = link_status(&sg, "type").await?["flows"][0]["reconnects"]
        .as_u64()
        .unwrap_or(0);
    assert!(reconnects >= 1, "the wrong-type link does not retry");
    assert_eq!(sg.get("/healthz").await?.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_restarts_only_changed_links() -> anyhow::Result<()> {
    let _p = permit().await;
    let s = shared().await;
    let (x, y) = ("t-reload-x", "t-reload-y");
    topology(x, &[&s.dc1, &s.dc2], &[(&s.dc2, "t-reload.sink")]).await?;
    topology(y, &[&s.dc1, &s.dc2], &[]).await?;
    let cfg = config()
        .upstream(Upstream::new("dc1", &[s.dc1.amqp_uri()]))
        .link(link("keep", "dc1", "dc2", &s.dc2, x));
    let sg = Setgate::start(BIN, &cfg).await?;
    wait_running(&sg, "keep").await?;
    let since = link_status(&sg, "keep").await?["flows"][0]["since"].clone();

    sg.reload(&cfg.clone().link(link("added", "dc1", "dc2", &s.dc2, y)))?;
    wait_running(&sg, "added").await?;
    assert_eq!(
        link_status(&sg, "keep").await?["flows"][0]["since"],
        since,
        "an unchanged link was restarted"
    );

    // An invalid file changes nothing.
    sg.reload(
        &cfg.clone()
            .raw("[[federation.link]]\nupstreams = [\"nope\"]"),
    )?;
    wait_until(
        "the reload to be refused",
        Duration::from_secs(10),
        || async { sg.log().contains("reload refused").then_some(()) },
    )
    .await?;
    assert_eq!(link_status(&sg, "added").await?["state"], "running");

    sg.reload(&cfg)?;
    wait_until("link added to go away", Duration::from_secs(30), || async {
        link_status(&sg, "added").await.is_err().then_some(())
    })
    .await?;
    let sink = Collector::start(&s.dc2.amqp_uri(), "t-reload.sink");
    let confirmed = publish(&s.dc1.amqp_uri(), 0..200, &PublishOptions::new(x)).await?;
    let missing = sink.wait_for(&confirmed, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "missing {missing:?}");
    Ok(())
}

#[test]
fn check_reports_every_federation_error() -> anyhow::Result<()> {
    let dir = setgate_testkit::unique_dir("fed-check");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[admin]\nlisten = \"127.0.0.1:1\"\n\
         [[federation.upstream]]\nname = \"dc1\"\nuris = [\"http://fed:topsecret@h/\"]\nprefetch_count = 0\n\
         [[federation.link]]\nupstreams = [\"dc9\"]\ndownstream = { name = \"dc2\", uris = [\"amqp://h:5672/%2f\"] }\nexchanges = []\n",
    )?;
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "federation.upstream[0].uris[0]: http://fed:***@h/ scheme must be amqp or amqps",
        "federation.upstream[0].prefetch_count: must be between 1 and 65535, got 0",
        "federation.link[0].upstreams: upstream \"dc9\" is not defined; use one of dc1",
        "federation.link[0].exchanges: is empty",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("topsecret"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

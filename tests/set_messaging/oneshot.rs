//! `setgate shovel --from URI --queue Q --to URI [--exchange X] [--routing-key K]`: the one-shot
//! replay of a queue; exits 0 printing how many it moved, non-zero with the reason otherwise.

use super::*;

/// Runs `setgate shovel ARGS` (at most 60 s); returns (exit code, stdout, stderr).
async fn oneshot(args: &[&str]) -> (Option<i32>, String, String) {
    let run = tokio::process::Command::new(BIN)
        .arg("shovel")
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`setgate shovel {}` did not exit within 60 s",
                args.join(" ")
            )
        })
        .expect("run setgate shovel");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_shot_shovel_moves_what_is_there_and_prints_the_count() -> anyhow::Result<()> {
    let s = steady().await;
    let c = &s.clusters;
    let (entry, src, out) = ("t6.in", "t6.src", "t6.out");
    declare_exchange(&c.center.amqp_uri(), entry, "topic").await?;
    declare_bound_queue(&c.center.amqp_uri(), src, entry).await?;
    // The sink matches only the replacement routing key, not the messages' own k0..k9.
    declare_exchange(&c.a.amqp_uri(), out, "topic").await?;
    setgate_testkit::fed::declare_queue_bound_by(&c.a.amqp_uri(), "t6.sink", out, &["t6.key"])
        .await?;
    let sink = Collector::start(&c.a.amqp_uri(), "t6.sink");
    let confirmed = publish(&c.center.amqp_uri(), 0..100, &PublishOptions::new(entry)).await?;
    wait_until(
        "the 100 messages in the source queue",
        Duration::from_secs(15),
        || async { (queue_messages(&c.center, src).await.ok()?? == 100).then_some(()) },
    )
    .await?;

    let (code, stdout, stderr) = oneshot(&[
        "--from",
        &c.center.amqp_uri(),
        "--queue",
        src,
        "--to",
        &c.a.amqp_uri(),
        "--exchange",
        out,
        "--routing-key",
        "t6.key",
    ])
    .await;
    println!("setgate shovel: exit {code:?}\n{stdout}{stderr}");
    assert_eq!(
        code,
        Some(0),
        "the one-shot shovel should succeed:\n{stdout}{stderr}"
    );
    assert!(
        stdout
            .split(|c: char| !c.is_ascii_digit())
            .any(|w| w == "100"),
        "it should print how many it moved (100):\n{stdout}"
    );
    let missing = sink.wait_for(&confirmed, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "not moved: {missing:?}");
    let got = sink.received();
    Tally::of(&confirmed, &got).print("setgate shovel");
    assert!(
        got.iter().all(|r| r.routing_key == "t6.key"),
        "--routing-key replaces the key"
    );
    wait_until(
        "the source queue emptied",
        Duration::from_secs(15),
        || async { (queue_messages(&c.center, src).await.ok()?? == 0).then_some(()) },
    )
    .await?;

    // An address nobody listens on: fails, naming it, without printing the password.
    let port = free_port();
    let dead = format!("amqp://guest:s3cret-pw@127.0.0.1:{port}/%2f");
    let (code, stdout, stderr) = oneshot(&[
        "--from",
        &dead,
        "--queue",
        src,
        "--to",
        &c.a.amqp_uri(),
        "--exchange",
        out,
    ])
    .await;
    println!("unreachable: exit {code:?}\n{stdout}{stderr}");
    assert!(
        code.is_some_and(|c| c != 0),
        "an unreachable --from must fail: exit {code:?}"
    );
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "the reason should name the unreachable address 127.0.0.1:{port}:\n{stderr}"
    );
    assert!(
        !(stdout + &stderr).contains("s3cret-pw"),
        "the password was printed"
    );

    // A queue that does not exist: fails, naming it.
    let (code, stdout, stderr) = oneshot(&[
        "--from",
        &c.center.amqp_uri(),
        "--queue",
        "t6.no-such-queue",
        "--to",
        &c.a.amqp_uri(),
        "--exchange",
        out,
    ])
    .await;
    println!("missing queue: exit {code:?}\n{stdout}{stderr}");
    assert!(
        code.is_some_and(|c| c != 0),
        "a missing --queue must fail: exit {code:?}"
    );
    assert!(
        stderr.contains("t6.no-such-queue"),
        "the reason should name the missing queue t6.no-such-queue:\n{stderr}"
    );
    Ok(())
}

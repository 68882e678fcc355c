//! Real clients through the `set` listener: lapin refused with a wrong password, pika and
//! amqplib publishing and consuming.

use crate::{routing, sets, shared_edge, user};
use setgate_testkit::amqp;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[tokio::test]
async fn wrong_password_reaches_the_client_as_the_brokers_refusal() -> anyhow::Result<()> {
    let s = sets().await;
    let (_sg, port) = shared_edge(s, routing()).await?;
    let start = Instant::now();
    let err = amqp::connect(&format!("amqp://user-001:wrong@127.0.0.1:{port}/%2f"))
        .await
        .expect_err("wrong password");
    let text = format!("{err:#}");
    assert!(
        text.contains("ACCESS_REFUSED") || text.contains("403"),
        "{text}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "refusal took {:?}",
        start.elapsed()
    );
    Ok(())
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

#[tokio::test]
async fn pika_and_amqplib_work_through_the_set_listener() -> anyhow::Result<()> {
    let s = sets().await;
    let (_sg, port) = shared_edge(s, routing()).await?;
    let node_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/clients/node_modules");
    for (i, (program, script)) in [("python3", "pika_client.py"), ("node", "amqplib_client.js")]
        .iter()
        .enumerate()
    {
        let u = user(200 + i);
        let out = tokio::process::Command::new(program)
            .arg(clients_dir().join(script))
            .arg(format!("amqp://{u}:pw@127.0.0.1:{port}/%2f"))
            .arg(format!("{script}-q"))
            .arg("100")
            .env("NODE_PATH", &node_path)
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{script} failed (the test command installs pika and amqplib; run scripts/test):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{stdout}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim())?;
        assert_eq!(v["consumed"], 100);
        assert_eq!(v["in_order"], true);
    }
    Ok(())
}

//! Clients through the `set` listener: lapin refused with a wrong password, pika and amqplib
//! publishing and consuming; clients that do not speak AMQP properly, or do not speak at all,
//! each get a clean close and none delays a good client.

use super::*;

#[tokio::test]
async fn wrong_password_reaches_the_client_as_the_brokers_refusal() -> anyhow::Result<()> {
    let s = sets().await;
    let (_sg, port) = shared_edge(s, routing()).await?;
    let start = Instant::now();
    assert_wrong_password_refused("user-001", port).await;
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
            .arg(uri(&u, port))
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

/// Reads until the peer closes, with a deadline; returns what arrived.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> anyhow::Result<Vec<u8>> {
    let mut all = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut all)).await??;
    Ok(all)
}

/// A Connection.StartOk frame whose client properties are `depth` tables, each inside the last
/// (the frame around them by hand too: amq-protocol's encoder would recurse into them).
fn deeply_nested_start_ok(depth: usize) -> Vec<u8> {
    let table = setgate_testkit::amqp_lite::nested_table_entries(depth);
    let mut args = vec![0, 10, 0, 11];
    args.extend_from_slice(&(table.len() as u32).to_be_bytes());
    args.extend_from_slice(&table);
    args.extend_from_slice(b"\x05PLAIN");
    args.extend_from_slice(&8u32.to_be_bytes());
    args.extend_from_slice(b"\0user-01");
    args.extend_from_slice(b"\x05en_US");
    let mut frame = vec![1u8, 0, 0];
    frame.extend_from_slice(&(args.len() as u32).to_be_bytes());
    frame.extend_from_slice(&args);
    frame.push(0xCE);
    frame
}

#[tokio::test]
async fn hostile_handshakes_get_a_clean_close_and_never_a_stuck_task() -> anyhow::Result<()> {
    let s = sets().await;
    let (sg, port) = shared_edge(s, routing()).await?;
    let header = b"AMQP\x00\x00\x09\x01";
    let start_len = {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
        c.write_all(header).await?;
        let mut buf = vec![0u8; 7];
        c.read_exact(&mut buf).await?;
        7 + u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize + 1
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "HTTP instead of AMQP",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "protocol header back",
        ),
        (
            "AMQP 0-10 header",
            b"AMQP\x01\x01\x00\x0a".to_vec(),
            "protocol header back",
        ),
        (
            "huge frame size",
            [&header[..], &[1, 0, 0, 0xff, 0xff, 0xff, 0xf0]].concat(),
            "close 501",
        ),
        (
            "frame without frame-end",
            [&header[..], &[1, 0, 0, 0, 0, 0, 4, 0, 10, 0, 11, 0x00]].concat(),
            "close 501",
        ),
        (
            "body frame instead of StartOk",
            [&header[..], &[3, 0, 1, 0, 0, 0, 2, 1, 2, 0xCE]].concat(),
            "close 503",
        ),
        (
            "Connection.Close instead of StartOk",
            [
                &header[..],
                &[
                    1, 0, 0, 0, 0, 0, 11, 0, 10, 0, 50, 0, 200, 0, 0, 0, 0, 0, 0xCE,
                ][..],
            ]
            .concat(),
            "close 503",
        ),
        (
            // 35 KiB, under the handshake's frame limit; parsed as it is, it would overflow
            // the parsing thread's stack and abort setgate.
            "StartOk whose client properties nest 5,000 tables deep",
            [&header[..], &deeply_nested_start_ok(5000)].concat(),
            "close 501",
        ),
        (
            "truncated frame, then silence",
            [&header[..], &[1, 0, 0, 0, 0, 0, 40, 0, 10]].concat(),
            "close on deadline",
        ),
        (
            "protocol header, then silence",
            header.to_vec(),
            "close on deadline",
        ),
    ];
    for (what, bytes, expect) in cases {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
        c.write_all(&bytes).await?;
        let started = Instant::now();
        let got = read_to_close(&mut c, Duration::from_secs(5))
            .await
            .map_err(|e| anyhow::anyhow!("{what}: not closed: {e}"))?;
        let after_start = if got.starts_with(&[1, 0, 0]) && got.len() >= start_len {
            &got[start_len..]
        } else {
            &got[..]
        };
        match expect {
            "protocol header back" => assert_eq!(got, header, "{what}"),
            "close 501" | "close 503" => {
                // A Connection.Close method frame: class 10, method 50, then the reply code.
                assert!(
                    after_start.len() > 13 && after_start[7..11] == [0, 10, 0, 50],
                    "{what}: {after_start:?}"
                );
                let code = u16::from_be_bytes([after_start[11], after_start[12]]);
                assert_eq!(format!("close {code}"), expect, "{what}");
            }
            _ => {
                assert!(
                    started.elapsed() >= Duration::from_millis(1500),
                    "{what}: closed too early"
                );
                assert!(
                    after_start.len() > 13 && after_start[7..11] == [0, 10, 0, 50],
                    "{what}: expected a Close, got {after_start:?}"
                );
            }
        }
    }
    let failures = sg.get("/metrics").await?.body;
    assert!(
        failures.contains(
            "setgate_handshake_failures_total{listener=\"amqp\",cause=\"frame_too_large\"} 1"
        ),
        "{failures}"
    );
    // And setgate still serves.
    let conn = amqp::connect(&uri("user-010", port)).await?;
    publish_and_consume(&conn, "after-hostile").await?;
    Ok(())
}

#[tokio::test]
async fn a_thousand_silent_clients_do_not_delay_a_good_one() -> anyhow::Result<()> {
    let _heavy = HEAVY.lock().await;
    setgate_testkit::raise_fd_limit();
    let s = sets().await;
    let (sg, port) = shared_edge(s, routing()).await?;
    let uri = uri("user-020", port);
    async fn median_connect(uri: &str) -> anyhow::Result<Duration> {
        let mut times = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            let c = amqp::connect(uri).await?;
            times.push(t.elapsed());
            drop(c);
        }
        times.sort();
        Ok(times[3])
    }
    // Interleave rounds with and without the silent crowd, so background load on a shared machine
    // affects both sides alike.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        without.push(median_connect(&uri).await?);
        let mut silent = Vec::new();
        for _ in 0..1000 {
            silent.push(TcpStream::connect(("127.0.0.1", port)).await?);
        }
        wait_until(
            "1000 silent connections accepted",
            Duration::from_secs(10),
            || async {
                let v = sg.get_json("/api/listeners").await.ok()?;
                (v["listeners"][0]["active"].as_u64()? >= 1000).then_some(())
            },
        )
        .await?;
        with.push(median_connect(&uri).await?);
        drop(silent);
        wait_until(
            "silent connections gone",
            Duration::from_secs(10),
            || async {
                let v = sg.get_json("/api/listeners").await.ok()?;
                (v["listeners"][0]["active"].as_u64()? < 10).then_some(())
            },
        )
        .await?;
    }
    without.sort();
    with.sort();
    let (before, during) = (without[1], with[1]);
    println!("connection setup (median of 3 rounds): {before:?} alone, {during:?} next to 1000 silent clients");
    assert!(
        during < before + Duration::from_millis(20),
        "1000 silent clients slowed a good one from {before:?} to {during:?}"
    );
    Ok(())
}

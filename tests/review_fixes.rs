//! Regression tests for defects a code review found in the proxy, each against real brokers:
//! connects bounded by `handshake_timeout`, `shutdown-sessions` reaching connections that were
//! still connecting, the brokers' own Connection.Start through a `set` listener, and an admin
//! server that closes idle connections and keeps answering beside them.

mod common;

use common::BIN;
use setgate_amqp::frame::{self, HANDSHAKE_FRAME_MAX, PROTOCOL_HEADER};
use setgate_testkit::config::{Check, Config, Listener, Pool, Routing};
use setgate_testkit::{wait_until, Node, Setgate};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A "broker" that accepts TCP and then says nothing: a hung node behind a live kernel.
async fn tarpit() -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    Ok((addr, task))
}

/// Sends the protocol header and a PLAIN StartOk for `user`, returns the first frame setgate sends
/// back after its own Start, and how long that took.
async fn start_ok_and_wait(port: u16, user: &str) -> anyhow::Result<(Vec<u8>, Duration)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(PROTOCOL_HEADER).await?;
    let mut buf = Vec::new();
    let start = frame::read_frame(&mut s, &mut buf, HANDSHAKE_FRAME_MAX).await?;
    frame::expect_start(&start)?;
    s.write_all(&start_ok(user)).await?;
    let began = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut rest)).await;
    Ok((rest, began.elapsed()))
}

fn start_ok(user: &str) -> Vec<u8> {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{connection, AMQPClass};
    frame::encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: Default::default(),
            mechanism: "PLAIN".into(),
            response: format!("\0{user}\0pw").into(),
            locale: "en_US".into(),
        })),
    ))
}

#[tokio::test]
async fn a_client_is_answered_within_handshake_timeout_when_no_broker_answers() -> anyhow::Result<()>
{
    let (a, _ta) = tarpit().await?;
    let (b, _tb) = tarpit().await?;
    // 2 pools x (1 + 3 retries) x 5 s connect_timeout = 40 s of attempts before the fix.
    let pool = |name: &str, addr| {
        Pool::new(name)
            .with("retries", 3u32)
            .with("connect_timeout", "5s")
            .check(Check::tcp().inter("1s"))
            .server(&format!("{name}1"), addr)
    };
    let config = Config::new()
        .listener(Listener::set("amqp").with("handshake_timeout", "2s"))
        .pool(pool("set-a", a))
        .pool(pool("set-b", b))
        .routing(
            Routing::new("set-b")
                .set("set-a", "set-a", "set-b")
                .set("set-b", "set-b", "set-a")
                .override_key("alice", "set-a"),
        );
    let sg = Setgate::start(BIN, &config).await?;
    sg.wait_ready().await?;
    let port = sg.port("amqp").await?;
    let (answer, took) = start_ok_and_wait(port, "alice").await?;
    println!("answered after {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "answered after {took:?}; handshake_timeout is 2s"
    );
    let close = frame::parse(&answer)?;
    let text = format!("{close:?}");
    assert!(text.contains("handshake_timeout"), "{text}");
    assert!(text.contains("SET set-a"), "{text}");
    Ok(())
}

#[tokio::test]
async fn shutdown_sessions_closes_a_connection_whose_server_went_down_while_it_connected(
) -> anyhow::Result<()> {
    let node = Node::start().await?;
    node.add_users(&[("bob".into(), "pw".into())]).await?;
    let config = Config::new()
        .listener(Listener::set("amqp").with("handshake_timeout", "30s"))
        .pool(
            Pool::new("center")
                .on_marked_down("shutdown-sessions")
                .with("connect_timeout", "20s")
                .with("retries", 0u32)
                .check(
                    Check::amqp()
                        .inter("200ms")
                        .fall(2)
                        .rise(10)
                        .timeout("300ms"),
                )
                .server("c1", node.amqp_addr()),
        )
        .routing(Routing::new("center"));
    let sg = Setgate::start(BIN, &config).await?;
    sg.wait_ready().await?;
    let port = sg.port("amqp").await?;
    // The broker hangs: setgate's connect to it waits for its Connection.Start while the checks
    // mark it down. Then it resumes: the Start arrives, but the server is down by now.
    node.sigstop();
    let client = tokio::spawn(start_ok_and_wait(port, "bob"));
    wait_until("c1 marked down", Duration::from_secs(20), || async {
        let v = sg.get_json("/api/pools").await.ok()?;
        (v["pools"][0]["servers"][0]["up"] == false).then_some(())
    })
    .await?;
    node.sigcont();
    let (answer, _) = client.await??;
    // Before the fix the connection was spliced to the broker (its Tune arrived and it stayed
    // open); now setgate closes it without passing anything on.
    assert!(
        answer.is_empty(),
        "the client got {} bytes from a server marked down",
        answer.len()
    );
    wait_until(
        "the close to be logged",
        Duration::from_secs(10),
        || async {
            sg.log()
                .contains("server was marked down while connecting")
                .then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_set_listener_presents_the_brokers_connection_start() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let config = Config::new()
        .listener(Listener::set("amqp"))
        .pool(
            Pool::new("center")
                .check(Check::amqp().inter("300ms"))
                .server("c1", node.amqp_addr()),
        )
        .routing(Routing::new("center"));
    let sg = Setgate::start(BIN, &config).await?;
    let port = sg.port("amqp").await?;
    wait_until("the first amqp check", Duration::from_secs(20), || async {
        let v = sg.get_json("/api/pools").await.ok()?;
        (v["pools"][0]["servers"][0]["last_check"]["ok"] == true).then_some(())
    })
    .await?;
    let read_start = |addr: std::net::SocketAddr| async move {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(PROTOCOL_HEADER).await?;
        let mut buf = Vec::new();
        let f = frame::read_frame(&mut s, &mut buf, HANDSHAKE_FRAME_MAX).await?;
        anyhow::Ok(frame::expect_start(&f)?.server_properties.clone())
    };
    let direct = read_start(node.amqp_addr()).await?;
    let through = read_start(([127, 0, 0, 1], port).into()).await?;
    for key in ["product", "version", "platform"] {
        assert_eq!(
            through.inner().get(key),
            direct.inner().get(key),
            "{key} through setgate must be the broker's"
        );
    }
    assert_eq!(
        through.inner().get("capabilities"),
        direct.inner().get("capabilities"),
        "one broker: exactly its capabilities"
    );
    Ok(())
}

#[tokio::test]
async fn the_admin_server_answers_beside_idle_connections_and_closes_them() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let config = Config::new()
        .listener(Listener::tcp("amqp", "center"))
        .pool(Pool::new("center").server("c1", node.amqp_addr()));
    let sg = Setgate::start(BIN, &config).await?;
    sg.wait_ready().await?;
    // Slow clients that never finish their request headers.
    let mut idle = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(sg.admin).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await?;
        idle.push(s);
    }
    let r = sg.get("/healthz").await?;
    assert_eq!(r.status, 200);
    // Each is closed by the header-read timeout (10 s), not held forever.
    let began = Instant::now();
    for s in &mut idle {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "an idle admin connection was held open");
    }
    println!("idle admin connections closed after {:?}", began.elapsed());
    Ok(())
}

#[tokio::test]
async fn at_maxconn_the_listener_stops_accepting_instead_of_dropping() -> anyhow::Result<()> {
    let node = Node::start().await?;
    let config = Config::new()
        .listener(Listener::tcp("small", "center").with("maxconn", 5u32))
        .pool(Pool::new("center").server("c1", node.amqp_addr()));
    let sg = Setgate::start(BIN, &config).await?;
    sg.wait_ready().await?;
    let port = sg.port("small").await?;
    // Five clients that got as far as the broker's Connection.Start.
    let mut open = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(PROTOCOL_HEADER).await?;
        let mut buf = Vec::new();
        frame::read_frame(&mut s, &mut buf, HANDSHAKE_FRAME_MAX).await?;
        open.push(s);
    }
    // The sixth waits in the accept queue: neither served nor closed.
    let mut sixth = TcpStream::connect(("127.0.0.1", port)).await?;
    sixth.write_all(PROTOCOL_HEADER).await?;
    let mut buf = [0u8; 64];
    let waited = tokio::time::timeout(Duration::from_secs(1), sixth.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "over maxconn the client must wait, not be answered or closed: {waited:?}"
    );
    // One ends: the sixth is served.
    drop(open.pop());
    let mut got = Vec::new();
    let f = tokio::time::timeout(
        Duration::from_secs(10),
        frame::read_frame(&mut sixth, &mut got, HANDSHAKE_FRAME_MAX),
    )
    .await??;
    frame::expect_start(&f)?;
    let paused = sg
        .metric("setgate_listener_maxconn_reached_total{listener=\"small\"}")
        .await?;
    assert!(paused >= Some(1.0), "{paused:?}");
    Ok(())
}

/// A reload that adds a listener while clients already knock on its port: the new listener must
/// serve from then on. (Before the fix a connection accepted before the new snapshot was stored
/// ended the listener's accept loop, and the port stayed dead until a restart.)
#[tokio::test]
async fn a_listener_added_by_a_reload_serves_even_when_clients_knock_during_the_reload(
) -> anyhow::Result<()> {
    // The pool's "broker" greets every connection at once, so what is measured is the listener.
    let greeter = TcpListener::bind("127.0.0.1:0").await?;
    let greeter_addr = greeter.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = greeter.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"hello").await;
            });
        }
    });
    // Clients knock on the new listener's port before it exists, so that port is chosen here.
    let extra_port = setgate_testkit::free_port();
    let without = Config::new()
        .listener(Listener::tcp("main", "center"))
        .pool(Pool::new("center").server("c1", greeter_addr));
    let with = without
        .clone()
        .listener(Listener::tcp("extra", "center").bind(format!("127.0.0.1:{extra_port}")));
    let sg = Setgate::start(BIN, &without).await?;
    sg.wait_ready().await?;
    let knocking = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let knockers: Vec<_> = (0..16)
        .map(|_| {
            let knocking = knocking.clone();
            tokio::spawn(async move {
                while knocking.load(std::sync::atomic::Ordering::Relaxed) {
                    match TcpStream::connect(("127.0.0.1", extra_port)).await {
                        Err(_) => tokio::task::yield_now().await,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            })
        })
        .collect();
    for round in 1..=20 {
        let extra = round % 2 == 1;
        sg.reload(if extra { &with } else { &without })?;
        wait_until("the reload", Duration::from_secs(20), || async {
            let done = sg.log().matches(" reloaded").count();
            (done >= round).then_some(())
        })
        .await?;
        if extra {
            let mut s = tokio::time::timeout(
                Duration::from_secs(5),
                TcpStream::connect(("127.0.0.1", extra_port)),
            )
            .await??;
            let mut hello = [0u8; 5];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut hello))
                .await
                .map_err(|_| anyhow::anyhow!("round {round}: the new listener does not serve"))??;
            assert_eq!(&hello, b"hello");
        }
    }
    knocking.store(false, std::sync::atomic::Ordering::Relaxed);
    for k in knockers {
        k.await?;
    }
    Ok(())
}

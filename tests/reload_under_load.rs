//! SIGHUP under load: 200 clients connect in a loop through setgate while it is reloaded 50 times
//! between two configs that rename the listener, change its pool and add/remove a federation
//! link. No client may see an error (neither config refuses anyone), the listener must never stop
//! accepting, and `/readyz` must answer 200 throughout. The pool's check is a TCP check with a
//! generous timeout, so that what is measured is the reload, not how the brokers' AMQP handshake
//! keeps up under 200 clients on a small machine.

mod common;

use common::BIN;
use setgate_testkit::config::{Check, Config, Link, Listener, Pool, Upstream};
use setgate_testkit::{amqp, fed, free_port, wait_until, Node, Setgate};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 200;
const RELOADS: usize = 50;

/// Config A (`with_link = false`): listener `amqp` -> pool `center` = [c1]. Config B: the listener
/// renamed `amqp-b`, a second server c2 in the pool, and a federation link between the brokers.
/// Both bind the same port, chosen here: a renamed listener on port 0 could move.
fn config(admin: &str, port: u16, nodes: &[Node], with_link: bool) -> Config {
    let bind = format!("127.0.0.1:{port}");
    let pool = Pool::new("center")
        .balance("roundrobin")
        .check(Check::tcp().inter("1s").timeout("5s"))
        .server("c1", nodes[0].amqp_addr());
    let cfg = Config::new().admin(admin);
    if !with_link {
        return cfg
            .listener(Listener::tcp("amqp", "center").bind(bind))
            .pool(pool);
    }
    let (up, down) = ([nodes[0].amqp_uri()], [nodes[1].amqp_uri()]);
    let link = Link::new("reload-link", &["dc1"], "dc2", &down, &["reload.x"]);
    cfg.listener(Listener::tcp("amqp-b", "center").bind(bind))
        .pool(pool.server("c2", nodes[1].amqp_addr()))
        .upstream(Upstream::new("dc1", &up))
        .link(link)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_clients_see_no_error_through_fifty_reloads() -> anyhow::Result<()> {
    setgate_testkit::raise_fd_limit();
    let nodes = vec![Node::start().await?, Node::start().await?];
    for n in &nodes {
        n.add_users(&[("load".into(), "load".into())]).await?;
        fed::declare_exchange(&n.amqp_uri(), "reload.x", "topic").await?;
    }
    let admin = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let configs = [
        config(&admin, port, &nodes, false),
        config(&admin, port, &nodes, true),
    ];
    let sg = Setgate::start(BIN, &configs[0]).await?;
    sg.wait_ready().await?;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let uri = format!("amqp://load:load@127.0.0.1:{port}/%2f");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, ok, errors, uri) = (stop.clone(), ok.clone(), errors.clone(), uri.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // About one connection a second per client: 200 clients keep both brokers
                    // busy on a 2-core machine without starving their health checks.
                    let pause = tokio::time::sleep(Duration::from_millis(800));
                    let round = async {
                        let conn = amqp::connect(&uri).await?;
                        let ch = conn.create_channel().await?;
                        ch.close(200, "bye".into()).await?;
                        conn.close(200, "bye".into()).await?;
                        anyhow::Ok(())
                    };
                    match round.await {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.lock().unwrap().push(format!("{e:#}")),
                    }
                    pause.await;
                }
            })
        })
        .collect();

    let readyz_failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let readyz_checks = Arc::new(AtomicUsize::new(0));
    let readyz = {
        let (stop, failures, checks) =
            (stop.clone(), readyz_failures.clone(), readyz_checks.clone());
        let admin = sg.admin;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match setgate_testkit::http::get(admin, "/readyz").await {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", r.status, r.body)),
                    Err(e) => failures.lock().unwrap().push(format!("{e:#}")),
                }
                checks.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Let every client get going, then reload, each time waiting for the reload to finish and
    // for some clients to connect through the new config.
    wait_until("clients connecting", Duration::from_secs(60), || async {
        (ok.load(Ordering::Relaxed) >= CLIENTS).then_some(())
    })
    .await?;
    let started = Instant::now();
    for i in 1..=RELOADS {
        sg.reload(&configs[i % 2])?;
        let want = i as f64;
        wait_until("the reload to finish", Duration::from_secs(30), || async {
            let done = sg
                .metric("setgate_config_reloads_total{result=\"ok\"}")
                .await
                .ok()??;
            (done >= want).then_some(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\nsetgate log:\n{}", sg.log()))?;
        let before = ok.load(Ordering::Relaxed);
        wait_until(
            "clients to connect after the reload",
            Duration::from_secs(30),
            || async { (ok.load(Ordering::Relaxed) >= before + 20).then_some(()) },
        )
        .await?;
    }
    let reload_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    readyz.await?;

    let connects = ok.load(Ordering::Relaxed);
    let errors = errors.lock().unwrap().clone();
    let readyz_failures = readyz_failures.lock().unwrap().clone();
    println!(
        "{RELOADS} reloads in {reload_time:?}: {connects} client connections, {} errors; \
         /readyz polled {} times, {} not 200",
        errors.len(),
        readyz_checks.load(Ordering::Relaxed),
        readyz_failures.len()
    );
    assert!(
        errors.is_empty(),
        "client errors: {:?}",
        &errors[..errors.len().min(10)]
    );
    assert!(readyz_failures.is_empty(), "/readyz: {readyz_failures:?}");
    let refused = sg
        .metric("setgate_config_reloads_total{result=\"refused\"}")
        .await?;
    assert_eq!(refused, None, "no reload may be refused");

    // After an even number of reloads config A is in use: one listener, named `amqp`, on its
    // port, accepting; the link of config B is gone.
    let listeners = sg.get_json("/api/listeners").await?;
    let listeners = listeners["listeners"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(listeners.len(), 1, "{listeners:?}");
    assert_eq!(listeners[0]["name"], "amqp");
    assert_eq!(listeners[0]["addr"], format!("127.0.0.1:{port}"));
    let links = sg.get_json("/api/links").await?;
    assert_eq!(links["links"].as_array().map(Vec::len), Some(0), "{links}");
    let conn = amqp::connect(&uri).await?;
    conn.close(200, "bye".into()).await?;

    // One more reload to config B: the link comes up and runs.
    sg.reload(&configs[1])?;
    fed::wait_running(&sg, "reload-link").await?;
    Ok(())
}

use setgate_testkit::{amqp, Cluster, Node};

#[tokio::test]
async fn node_lifecycle() -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let mut node = Node::start().await?;
    eprintln!("boot {:?}", t.elapsed());
    let conn = amqp::connect(&node.amqp_uri()).await?;
    let ch = amqp::confirm_channel(&conn).await?;
    amqp::publish_confirmed(&ch, "", "nothing", b"x").await?;
    assert_eq!(node.connection_count().await?, 1);
    node.add_users(&[("u1".into(), "p1".into())]).await?;
    amqp::connect(&node.uri_for("u1", "p1")).await?;
    node.kill9();
    let t = std::time::Instant::now();
    node.restart().await?;
    eprintln!("restart {:?}", t.elapsed());
    amqp::connect(&node.uri_for("u1", "p1")).await?;
    Ok(())
}

#[tokio::test]
async fn cluster_of_three() -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let c = Cluster::start(3).await?;
    eprintln!("cluster {:?}", t.elapsed());
    let out = c.nodes[2].ctl(&["cluster_status"]).await?;
    assert!(out.contains(&c.nodes[0].name), "{out}");
    Ok(())
}

//! The latest-value cache for market data (`weir:host/market`): fed from
//! the subjects `[market]` names, read by components granted
//! `grants.market`, the same on two hosts fed the same trades, and in
//! replays (fed in event order).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::time::Duration;

use weir::Host;
use weir::bus::{Bus, BusMessage};
use weir_tests::servers::NatsServer;
use weir_tests::{Collector, manifest, sample_trade_messages};

/// `hostile` in `market-probe` mode on `probe.market`.
fn probe(grant: bool) -> String {
    format!(
        r#"
[components.probe]
wasm = "{{hostile}}"
subscribe = [{{ subject = "probe.market" }}]
grants = {{ subscribe = ["probe.market"], publish = ["market.out"], market = {grant} }}
config = {{ behaviour = "market-probe" }}
"#
    )
}

/// What the sample data's newest trade of `symbol` is, as the probe
/// prints it: `price/trade_id`.
fn newest(trades: &[BusMessage], symbol: &str) -> String {
    let t = trades
        .iter()
        .map(|m| market::Trade::parse(&m.payload).unwrap())
        .filter(|t| t.symbol == symbol)
        .max_by_key(|t| (t.ts, t.trade_id))
        .unwrap();
    format!("{}/{}", t.price, t.trade_id)
}

async fn ask(bus: &dyn Bus, out: &Collector, symbol: &str) -> String {
    let before = out.messages().len();
    bus.publish(BusMessage::new("probe.market", symbol.to_owned()))
        .await
        .unwrap();
    let got = out.wait_for(before + 1, Duration::from_secs(5)).await;
    String::from_utf8(got[before].payload.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_read_the_newest_trade_per_symbol_only_with_the_grant() {
    let trades = sample_trade_messages(2000);
    let m = manifest(&format!(
        "[market]\nsubjects = [\"TRADE.trade.*\"]\n{}{}",
        probe(true),
        probe(false)
            .replace("components.probe", "components.nogrant")
            .replace("probe.market", "nogrant.market")
    ));
    let host = Host::start(&m).await.unwrap();
    let bus = host.bus();
    let out = Collector::start(&*bus, "market.out").await;
    assert_eq!(ask(&*bus, &out, "BTCUSDT").await, "none");
    for t in &trades {
        bus.publish(t.clone()).await.unwrap();
    }
    // Published in order: the newest is the last BTCUSDT one.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let want = newest(&trades, "BTCUSDT");
    loop {
        let seen = ask(&*bus, &out, "BTCUSDT").await;
        if seen == want {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "{seen} is not {want}");
    }
    assert_eq!(
        ask(&*bus, &out, "SOLUSDT").await,
        newest(&trades, "SOLUSDT")
    );
    assert_eq!(ask(&*bus, &out, "NOPE").await, "none");

    // Without the grant: denied, counted, and the reason says how.
    let before = out.messages().len();
    bus.publish(BusMessage::new("nogrant.market", "BTCUSDT"))
        .await
        .unwrap();
    let got = out.wait_for(before + 1, Duration::from_secs(5)).await;
    let refused = String::from_utf8_lossy(&got[before].payload).into_owned();
    assert!(
        refused.contains("Denied") && refused.contains("grants.market = true"),
        "{refused}"
    );
    assert!(host.wait_idle(Duration::from_secs(5)).await);
    let nogrant = host
        .component_stats()
        .into_iter()
        .find(|(n, _)| n == "nogrant")
        .unwrap()
        .1;
    assert_eq!(nogrant.denied, 1);
    host.shutdown(Duration::from_secs(5)).await;

    // A host without [market] keeps none: unavailable, with the fix.
    let host = Host::start(&manifest(&probe(true))).await.unwrap();
    let bus = host.bus();
    let out = Collector::start(&*bus, "market.out").await;
    let answer = ask(&*bus, &out, "BTCUSDT").await;
    assert!(
        answer.contains("Unavailable") && answer.contains("[market] subjects"),
        "{answer}"
    );
    host.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_fed_the_same_trades_in_different_orders_agree() {
    let server = NatsServer::start();
    let start = |id: &str| {
        let m = manifest(&format!(
            "[host]\nid = \"{id}\"\n[nats]\nurl = \"{}\"\n[market]\nsubjects = [\"TRADE.trade.*\"]\n{}",
            server.url(),
            probe(true).replace("probe.market", &format!("probe.{id}"))
        ));
        async move { Host::start(&m).await.unwrap() }
    };
    let a = start("a").await;
    let b = start("b").await;
    let client = server.client().await;
    let mut out = client.subscribe("market.out").await.unwrap();
    client.flush().await.unwrap();
    let trades = sample_trade_messages(3000);
    // The trades, then the older half again, late (as a feed replaying
    // after a reconnect would): older values never replace newer ones.
    for t in trades.iter().chain(&trades[..1500]) {
        client
            .publish(t.subject.clone(), t.payload.clone())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let want = newest(&trades, "ETHUSDT");
    for id in ["a", "b"] {
        client
            .publish(format!("probe.{id}"), "ETHUSDT".into())
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&got.payload), want, "host {id}");
    }
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_author_harness_the_store_follows_the_pushed_events() {
    let mut h = weir::testing::Harness::new(&format!(
        "[market]\nsubjects = [\"TRADE.trade.*\"]\n{}",
        probe(true).replace(
            "{hostile}",
            &weir_tests::wasm("hostile").display().to_string()
        )
    ))
    .unwrap();
    let trades = sample_trade_messages(200);
    for t in &trades[..100] {
        h.push(&t.subject, t.payload.clone()).await;
    }
    h.push("probe.market", "BTCUSDT").await;
    for t in &trades[100..] {
        h.push(&t.subject, t.payload.clone()).await;
    }
    h.push("probe.market", "BTCUSDT").await;
    let seen: Vec<String> = h
        .published("market.out")
        .into_iter()
        .map(|p| String::from_utf8(p.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(
        seen,
        [
            newest(&trades[..100], "BTCUSDT"),
            newest(&trades, "BTCUSDT")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_started_late_reads_the_latest_values_from_the_stream() {
    let server = NatsServer::start();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "TRADE".into(),
        subjects: vec!["TRADE.trade.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let trades = sample_trade_messages(2000);
    for t in &trades {
        js.publish(t.subject.clone(), t.payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Started after every trade was stored: it reads the last one of
    // each subject from the stream, then follows new ones.
    let m = manifest(&format!(
        "[nats]\nurl = \"{}\"\n[market]\nsubjects = [\"TRADE.trade.*\"]\nstream = \"TRADE\"\n{}",
        server.url(),
        probe(true)
    ));
    let host = Host::start(&m).await.unwrap();
    let mut out = client.subscribe("market.out").await.unwrap();
    client.flush().await.unwrap();
    probe_until(&client, &mut out, &newest(&trades, "BNBUSDT")).await;
    // A new trade stored afterwards is followed.
    let newer = format!(
        r#"{{"symbol":"BNBUSDT","price":1.5,"qty":1,"ts":{},"trade_id":99999999}}"#,
        i64::MAX / 2
    );
    js.publish("TRADE.trade.BNBUSDT", newer.into())
        .await
        .unwrap()
        .await
        .unwrap();
    probe_until(&client, &mut out, "1.5/99999999").await;
    host.shutdown(Duration::from_secs(5)).await;

    // Without NATS a stream cannot be read: the start fails and says why.
    let e = Host::start(&manifest(&format!(
        "[market]\nsubjects = [\"TRADE.trade.*\"]\nstream = \"TRADE\"\n{}",
        probe(true)
    )))
    .await
    .err()
    .unwrap();
    assert!(format!("{e:#}").contains("needs JetStream"), "{e:#}");
}

/// Asks the probe for BNBUSDT until it answers `want` (fails after 10 s).
async fn probe_until(client: &async_nats::Client, out: &mut async_nats::Subscriber, want: &str) {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        client
            .publish("probe.market", "BNBUSDT".into())
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(out))
            .await
            .unwrap()
            .unwrap();
        if String::from_utf8_lossy(&got.payload) == want {
            return;
        }
        assert!(tokio::time::Instant::now() < until, "never read {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// NATS goes away under `[market] stream` and comes back: the host keeps
/// following the stream (the newest values come back, and new trades are
/// followed), without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_market_stream_is_followed_again_after_nats_comes_back() {
    let mut server = NatsServer::start();
    let js = async_nats::jetstream::new(server.client().await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "TRADE".into(),
        subjects: vec!["TRADE.trade.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    let m = manifest(&format!(
        "[nats]\nurl = \"{}\"\nreconnect_wait_ms = 100\n[market]\nsubjects = [\"TRADE.trade.*\"]\nstream = \"TRADE\"\n{}",
        server.url(),
        probe(true)
    ));
    let host = Host::start(&m).await.unwrap();
    let trade = |price: &str, id: u64| {
        format!(r#"{{"symbol":"BNBUSDT","price":{price},"qty":1,"ts":{id},"trade_id":{id}}}"#)
    };
    js.publish("TRADE.trade.BNBUSDT", trade("1.5", 1).into())
        .await
        .unwrap()
        .await
        .unwrap();
    let client = server.client().await;
    let mut out = client.subscribe("market.out").await.unwrap();
    client.flush().await.unwrap();
    probe_until(&client, &mut out, "1.5/1").await;

    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut out = client.subscribe("market.out").await.unwrap();
    client.flush().await.unwrap();
    // A trade stored after the restart reaches the host's store.
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stored = js
            .publish("TRADE.trade.BNBUSDT", trade("2.5", 2).into())
            .await;
        if let Ok(ack) = stored
            && ack.await.is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the server never took the trade"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        client
            .publish("probe.market", "BNBUSDT".into())
            .await
            .unwrap();
        let got =
            tokio::time::timeout(Duration::from_secs(2), futures::StreamExt::next(&mut out)).await;
        if let Ok(Some(got)) = got
            && String::from_utf8_lossy(&got.payload) == "2.5/2"
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the market store stopped following the stream after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    host.shutdown(Duration::from_secs(5)).await;
}

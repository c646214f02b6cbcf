//! `weir status`: one screen from a running host's dashboard document.

use anyhow::Context as _;
use weir::observe::Dashboard;

/// Shows a running host's components, rates, errors, cache and connections.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// The host's `host.http` address.
    #[arg(long, default_value = "127.0.0.1:9464")]
    addr: String,
}

/// Reads the host's `/api/dashboard` and prints it as one screen.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let addr = args.addr;
    let (code, body) = weir::observe::http_get(&addr, "/api/dashboard?since=0")
        .await
        .with_context(|| format!("no weir host answers on {addr} (is host.http set?)"))?;
    anyhow::ensure!(code == 200, "{addr} answered {code}: {body}");
    let d: Dashboard = serde_json::from_str(&body).context("unexpected dashboard document")?;
    print!("{}", status_screen(&d));
    Ok(())
}

/// `weir status`: one screen from the dashboard document.
fn status_screen(d: &Dashboard) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let ready = if d.ready.is_empty() {
        "ready".to_owned()
    } else {
        format!("NOT READY: {}", d.ready.join("; "))
    };
    let _ = writeln!(out, "host {}  up {}s  {ready}", d.host, d.uptime_secs);
    let c = &d.connections;
    let nats = match &c.nats {
        Some(s) => format!("{s} ({} reconnects)", c.nats_reconnects.unwrap_or(0)),
        None => "embedded bus".to_owned(),
    };
    let _ = writeln!(
        out,
        "nats {nats}  redis {}",
        c.redis.as_deref().unwrap_or("not configured")
    );
    let _ = writeln!(
        out,
        "\n{:<16} {:<8} {:>8} {:>9} {:>9} {:>7} {:>8} {:>6} {:>9} {:>9}",
        "component",
        "state",
        "events/s",
        "p99 ms",
        "handled",
        "failed",
        "dead-ltr",
        "traps",
        "published",
        "in flight"
    );
    for comp in &d.components {
        let k = &comp.counters;
        let (rate, p99) = comp
            .now
            .as_ref()
            .map_or((0.0, 0.0), |n| (n.handled_per_s, n.p99_ms));
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:>8.1} {:>9.3} {:>9} {:>7} {:>8} {:>6} {:>9} {:>9}",
            comp.name,
            comp.state,
            rate,
            p99,
            k.handled,
            k.failed,
            k.dead_lettered,
            k.traps,
            k.published,
            k.in_flight,
        );
    }
    let _ = writeln!(out);
    for l in &d.cache_layers {
        let _ = writeln!(
            out,
            "cache {}: hit rate {:.1}% ({} hits, {} misses), {} errors, {} entries, {} bytes",
            l.layer,
            l.hit_rate * 100.0,
            l.hits,
            l.misses,
            l.errors,
            l.entries,
            l.bytes
        );
    }
    if let Some(last) = d.recent_alerts.last() {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
        let _ = writeln!(
            out,
            "cache alerts: {} recent, last: {} ({})",
            d.recent_alerts.len(),
            text(&last["message"]),
            text(&last["timestamp"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weir::stats::ComponentStats;

    #[tokio::test]
    async fn status_screen_shows_components_counters_and_readiness() {
        let busy = Arc::new(ComponentStats::default());
        let flow = busy.add_flow();
        for _ in 0..7 {
            ComponentStats::bump(&flow.handled);
        }
        ComponentStats::bump(&flow.dead_lettered);
        let o = weir::observe::Observed::new(
            "h1",
            vec![
                ("sma-crossover".into(), busy),
                ("price-alert".into(), Arc::default()),
            ],
        );
        let screen = super::status_screen(&weir::observe::dashboard(&o, None).await);
        let lines: Vec<&str> = screen.lines().collect();
        assert!(lines[0].starts_with("host h1  up 0s  ready"), "{screen}");
        assert!(lines[1].contains("embedded bus"), "{screen}");
        let sma: Vec<&str> = lines
            .iter()
            .find(|l| l.starts_with("sma-crossover"))
            .unwrap()
            .split_whitespace()
            .collect();
        // name, state, events/s, p99, handled, failed, dead-lettered, ...
        assert_eq!((sma[1], sma[4], sma[6]), ("idle", "7", "1"), "{screen}");
        assert!(screen.contains("price-alert"), "{screen}");
    }
}

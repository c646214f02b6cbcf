//! `weir record`: live traffic written in the format a replay reads.

use std::io::Write;
use std::time::SystemTime;

use anyhow::Context as _;
use futures::StreamExt;

use super::RecordedLine;
use crate::bus::Bus;

/// Writes every message on `subjects` to `out`, one [`RecordedLine`] each,
/// timed on arrival, until `count` messages (if given) or `stop`; returns
/// how many. The subscriptions are in place when `ready` is called.
pub async fn record(
    bus: &dyn Bus,
    subjects: &[String],
    out: &mut (dyn Write + Send),
    count: Option<u64>,
    stop: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(),
) -> anyhow::Result<u64> {
    let mut subs = Vec::new();
    for s in subjects {
        subs.push(
            bus.subscribe(s, None)
                .await
                .with_context(|| format!("cannot subscribe to {s}"))?,
        );
    }
    ready();
    let mut all = futures::stream::select_all(subs);
    let mut n = 0u64;
    tokio::pin!(stop);
    while count.is_none_or(|c| n < c) {
        let msg = tokio::select! {
            _ = &mut stop => break,
            m = all.next() => match m { Some(m) => m, None => break },
        };
        serde_json::to_writer(&mut *out, &RecordedLine::new(&msg, SystemTime::now()))?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush().context("cannot write the recording")?;
    Ok(n)
}

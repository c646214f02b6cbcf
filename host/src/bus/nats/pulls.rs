//! Pipelined pull requests on one inbox, the way async-nats' own
//! `messages()` stream works, but with an end: [`Pulls::stop`] stops
//! asking, and [`Pulls::next`] then drains what was asked for, so a host
//! that stops leaves nothing stranded at the server until its ack wait.
//!
//! Why one inbox: the server hands messages to waiting pull requests in
//! turn, so two requests with two inboxes would each get every other
//! message, and reading one batch then the next would break the stream's
//! order. On one inbox they arrive in the order the server sends them.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, Message};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::StreamExt;

/// Messages asked for per pull request.
pub const BATCH: usize = 256;
/// How long a pull request waits at the server for messages.
pub const BATCH_WAIT: Duration = Duration::from_millis(500);
/// No word from the server this long past a request's expiry: it was lost
/// (a reconnect, a partition), so stop waiting for what it asked for and
/// say so.
const LOST_AFTER: Duration = Duration::from_secs(5);

/// What [`Pulls::next`] yields.
// Moved once per message and taken apart at once: boxing the message
// would cost an allocation per message to save a move.
#[allow(clippy::large_enum_variant)]
pub enum Pulled {
    /// A message of the stream.
    Message(Message),
    /// The server or the connection refused a request; asked-for counts
    /// are reset, the caller asks again after a pause.
    Error(String),
    /// A request expired at the server having sent what the stream had:
    /// the consumer answers, whether or not there was anything to send.
    Expired,
    /// Nothing is asked for any more (after [`Pulls::stop`], or an error).
    Idle,
}

/// Pull requests of one consumer, pipelined on one inbox.
pub struct Pulls {
    consumer: PullConsumer,
    /// Acks go through it.
    js: jetstream::Context,
    inbox: Subject,
    sub: Subscriber,
    /// Messages asked for and neither received nor expired.
    outstanding: usize,
    /// Set once the host stops: ask for nothing more.
    stopped: bool,
}

impl Pulls {
    /// Subscribes the inbox the requests will name.
    pub async fn open(consumer: PullConsumer, js: jetstream::Context) -> Result<Pulls, String> {
        let client = js.client();
        let inbox = Subject::from(client.new_inbox());
        let sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| format!("cannot subscribe the pull inbox: {e}"))?;
        Ok(Pulls {
            consumer,
            js,
            inbox,
            sub,
            outstanding: 0,
            stopped: false,
        })
    }

    /// Asks for another batch while at most one batch is outstanding, so
    /// one request always waits at the server while the other is read.
    pub async fn top_up(&mut self) -> Result<(), String> {
        if self.stopped || self.outstanding > BATCH {
            return Ok(());
        }
        let batch = BatchConfig {
            batch: BATCH,
            expires: Some(BATCH_WAIT),
            ..Default::default()
        };
        self.consumer
            .request_batch(batch, self.inbox.clone())
            .await
            .map_err(|e| format!("pull request failed: {e}"))?;
        self.outstanding += BATCH;
        Ok(())
    }

    /// Asks for nothing more; what was asked for is still delivered.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// The next message of what was asked for, or why there is none.
    pub async fn next(&mut self) -> Pulled {
        while self.outstanding > 0 {
            let Ok(got) = tokio::time::timeout(BATCH_WAIT + LOST_AFTER, self.sub.next()).await
            else {
                // Lost on the way (a reconnect), or nobody can answer: the
                // stream's leader is out of reach (a partition). Either
                // way the consumer is not serving this host now.
                self.outstanding = 0;
                return Pulled::Error(format!(
                    "no answer to pull requests for {:?}",
                    BATCH_WAIT + LOST_AFTER
                ));
            };
            let Some(msg) = got else {
                self.outstanding = 0;
                return Pulled::Error("the pull inbox closed".into());
            };
            match msg.status {
                None | Some(StatusCode::OK) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    return Pulled::Message(Message {
                        message: msg,
                        context: self.js.clone(),
                    });
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                Some(status @ (StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED))
                    if pending(&msg).is_some() =>
                {
                    // One request ended with this many of its messages unsent.
                    let unsent = pending(&msg).unwrap_or(0);
                    self.outstanding = self.outstanding.saturating_sub(unsent);
                    if status == StatusCode::TIMEOUT {
                        return Pulled::Expired;
                    }
                }
                Some(status) => {
                    self.outstanding = 0;
                    let why = msg.description.unwrap_or_default();
                    return Pulled::Error(format!("pull refused: {status} {why}"));
                }
            }
        }
        Pulled::Idle
    }
}

/// `Nats-Pending-Messages` of a status message: what its request left unsent.
fn pending(msg: &async_nats::Message) -> Option<usize> {
    msg.headers
        .as_ref()?
        .get("Nats-Pending-Messages")?
        .as_str()
        .parse()
        .ok()
}

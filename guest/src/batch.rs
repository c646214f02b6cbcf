//! The messages of a `handle-batch` call, read back from their frames.
//!
//! weir packs a batch into four buffers (subjects and stream names, the
//! payloads, the headers, and [`FRAME_WORDS`] numbers per message that say
//! where its parts are; see `wit/handler.wit`), so
//! that lowering it into the component costs four copies however many
//! messages it holds. [`Batch::events`] lends each message out of those
//! buffers without copying it; [`EventRef::to_message`] makes the owned
//! [`Message`] that `Handler::handle` takes.
//!
//! ```ignore
//! fn handle_batch(batch: Batch) -> Vec<Result<(), HandleError>> {
//!     let mut out = Vec::new();
//!     for event in batch.events() {
//!         let result = event.and_then(|e| my_step(e.subject, e.payload));
//!         let failed = result.is_err();
//!         out.push(result);
//!         if failed { break }
//!     }
//!     out
//! }
//! ```

pub use crate::bindings::exports::weir::host::batch_handler::Batch;
use crate::{Delivery, HandleError, Message};

/// Numbers per message in [`Batch::frames`].
pub const FRAME_WORDS: usize = 12;

/// Word 11: words 6 and 7 hold a stream.
const HAS_STREAM: u32 = 1;
/// Word 11: words 8 and 9 hold a sequence.
const HAS_SEQUENCE: u32 = 2;

/// A stretch of one of the batch's buffers: `len` bytes (or entries) from
/// `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Where it starts.
    pub start: u32,
    /// How long it is.
    pub len: u32,
}

/// One message's frame, read from its [`FRAME_WORDS`] numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Its subject, bytes of `text`.
    pub subject: Span,
    /// Its payload, bytes of `bytes`.
    pub payload: Span,
    /// Its headers, entries of `headers`.
    pub headers: Span,
    /// The JetStream stream it came from, bytes of `text`.
    pub stream: Option<Span>,
    /// Its sequence in that stream.
    pub sequence: Option<u64>,
    /// 1 on first delivery, then 2, 3, … on redelivery.
    pub attempt: u32,
}

impl Frame {
    /// A frame from its numbers, laid out as `wit/handler.wit` says.
    pub fn from_words(w: &[u32; FRAME_WORDS]) -> Frame {
        let span = |at: usize| Span {
            start: w[at],
            len: w[at + 1],
        };
        Frame {
            subject: span(0),
            payload: span(2),
            headers: span(4),
            stream: (w[11] & HAS_STREAM != 0).then(|| span(6)),
            sequence: (w[11] & HAS_SEQUENCE != 0).then(|| u64::from(w[8]) | u64::from(w[9]) << 32),
            attempt: w[10],
        }
    }

    /// Its numbers, as weir packs them (for a component's own tests).
    pub fn to_words(&self) -> [u32; FRAME_WORDS] {
        let stream = self.stream.unwrap_or(Span { start: 0, len: 0 });
        let sequence = self.sequence.unwrap_or(0);
        let flags = u32::from(self.stream.is_some()) * HAS_STREAM
            + u32::from(self.sequence.is_some()) * HAS_SEQUENCE;
        [
            self.subject.start,
            self.subject.len,
            self.payload.start,
            self.payload.len,
            self.headers.start,
            self.headers.len,
            stream.start,
            stream.len,
            sequence as u32,
            (sequence >> 32) as u32,
            self.attempt,
            flags,
        ]
    }
}

/// One message of a batch, borrowed from the batch's buffers.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    /// The subject it was published on.
    pub subject: &'a str,
    /// The payload bytes.
    pub payload: &'a [u8],
    /// Headers in arrival order.
    pub headers: &'a [(String, String)],
    /// The JetStream stream it came from.
    pub stream: Option<&'a str>,
    /// Its sequence in that stream.
    pub sequence: Option<u64>,
    /// 1 on first delivery, then 2, 3, … on redelivery.
    pub attempt: u32,
}

impl EventRef<'_> {
    /// The message as `Handler::handle` takes it (a copy).
    pub fn to_message(&self) -> Message {
        Message {
            subject: self.subject.to_owned(),
            reply_to: None,
            headers: self.headers.to_vec(),
            payload: self.payload.to_vec(),
        }
    }

    /// How it reached the component, as `Handler::handle` takes it.
    pub fn delivery(&self) -> Delivery {
        Delivery {
            stream: self.stream.map(str::to_owned),
            sequence: self.sequence,
            attempt: self.attempt,
        }
    }
}

/// The range a span covers, when it lies within `len`.
fn range(span: Span, len: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(span.start).ok()?;
    let end = start.checked_add(usize::try_from(span.len).ok()?)?;
    (end <= len).then_some(start..end)
}

impl Batch {
    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.frames.len() / FRAME_WORDS
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Message `index`'s frame.
    pub fn frame(&self, index: usize) -> Option<Frame> {
        let start = index.checked_mul(FRAME_WORDS)?;
        let words = self.frames.get(start..start.checked_add(FRAME_WORDS)?)?;
        Some(Frame::from_words(words.try_into().ok()?))
    }

    /// Message `index`, or a retry when its frame points outside the
    /// batch's buffers (which weir never sends: the message is delivered
    /// again rather than handled wrongly).
    pub fn event(&self, index: usize) -> Result<EventRef<'_>, HandleError> {
        let outside = || HandleError::Retry(format!("batch frame {index} lies outside its batch"));
        let frame = self.frame(index).ok_or_else(outside)?;
        let text = |s: Span| range(s, self.text.len()).and_then(|r| self.text.get(r));
        let stream = match frame.stream {
            Some(s) => Some(text(s).ok_or_else(outside)?),
            None => None,
        };
        Ok(EventRef {
            subject: text(frame.subject).ok_or_else(outside)?,
            payload: range(frame.payload, self.bytes.len())
                .map(|r| &self.bytes[r])
                .ok_or_else(outside)?,
            headers: range(frame.headers, self.headers.len())
                .map(|r| &self.headers[r])
                .ok_or_else(outside)?,
            stream,
            sequence: frame.sequence,
            attempt: frame.attempt,
        })
    }

    /// Every message, in order.
    pub fn events(&self) -> impl Iterator<Item = Result<EventRef<'_>, HandleError>> + '_ {
        (0..self.len()).map(|i| self.event(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: u32, len: u32) -> Span {
        Span { start, len }
    }

    fn batch() -> Batch {
        Batch {
            text: "a.bTRADEc".into(),
            bytes: b"onetwo".to_vec(),
            headers: vec![("k".into(), "v".into())],
            frames: [
                Frame {
                    subject: span(0, 3),
                    payload: span(0, 3),
                    headers: span(0, 0),
                    stream: Some(span(3, 5)),
                    sequence: Some(9 | 3 << 32),
                    attempt: 2,
                },
                Frame {
                    subject: span(8, 1),
                    payload: span(3, 3),
                    headers: span(0, 1),
                    stream: None,
                    sequence: None,
                    attempt: 1,
                },
            ]
            .iter()
            .flat_map(Frame::to_words)
            .collect(),
        }
    }

    /// Sets frame `i` of `b` to what `change` makes of it.
    fn edit(b: &mut Batch, i: usize, change: impl FnOnce(&mut Frame)) {
        let mut f = b.frame(i).unwrap();
        change(&mut f);
        b.frames[i * FRAME_WORDS..][..FRAME_WORDS].copy_from_slice(&f.to_words());
    }

    #[test]
    fn events_are_read_back_from_their_frames() {
        let b = batch();
        let events: Vec<EventRef<'_>> = b.events().collect::<Result<_, _>>().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[0].subject, events[0].payload, events[0].stream),
            ("a.b", &b"one"[..], Some("TRADE"))
        );
        assert_eq!(events[0].headers.len(), 0);
        assert_eq!(events[0].delivery().sequence, Some(9 | 3 << 32));
        assert_eq!(events[0].delivery().attempt, 2);
        let m = events[1].to_message();
        assert_eq!(
            (m.subject.as_str(), m.payload.as_slice()),
            ("c", &b"two"[..])
        );
        assert_eq!(m.headers, vec![("k".to_owned(), "v".to_owned())]);
        assert_eq!(events[1].delivery().stream, None);
    }

    #[test]
    fn a_frame_outside_its_batch_is_a_retry_not_a_panic() {
        let mut b = batch();
        edit(&mut b, 1, |f| f.payload = span(4, 3));
        edit(&mut b, 0, |f| f.stream = Some(span(u32::MAX, 2)));
        assert!(matches!(b.event(0), Err(HandleError::Retry(_))));
        assert!(matches!(b.event(1), Err(HandleError::Retry(_))));
        assert!(matches!(b.event(2), Err(HandleError::Retry(_))));
        // A frame table cut short.
        let mut b = batch();
        b.frames.pop();
        assert_eq!(b.len(), 1);
        assert!(matches!(b.event(1), Err(HandleError::Retry(_))));
        // A span that cuts a character in two.
        let mut b = batch();
        b.text = "é".into();
        edit(&mut b, 1, |f| f.subject = span(0, 1));
        assert!(matches!(b.event(1), Err(HandleError::Retry(_))));
    }
}

//! A batch as `handle-batch` takes it: every subject and stream name in
//! one string, every payload in one byte list, and twelve numbers per
//! message saying where its parts are. wasmtime lowers a list of messages
//! with a `cabi_realloc` call into the guest for each string and list,
//! three per message; packed, a batch costs four, whatever its size. The
//! frames are a flat `list<u32>` because wasmtime copies an integer list
//! in one go and stores a list of records field by field (about 1,000
//! instructions per event in batches of 16). The buffers are kept between
//! batches, so packing allocates nothing once they have grown.

use crate::capability::bindings::exports::weir::host::batch_handler::Batch;

use super::BatchItem;

/// The reusable buffers of one instance's batches.
#[derive(Default)]
pub(crate) struct Packer {
    /// Subjects and stream names, one after another.
    text: String,
    /// Payloads, one after another.
    bytes: Vec<u8>,
    /// [`FRAME_WORDS`] per message, in order.
    frames: Vec<u32>,
}

/// Numbers per message in a batch's frames, laid out as the WIT's table
/// says (`wit/handler.wit`, `batch-handler`).
pub(crate) const FRAME_WORDS: usize = 12;

/// Word 11: words 6 and 7 hold a stream.
const HAS_STREAM: u32 = 1;
/// Word 11: words 8 and 9 hold a sequence.
const HAS_SEQUENCE: u32 = 2;

/// A stretch of one of the batch's buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Span {
    start: u32,
    len: u32,
}

/// Largest buffer kept for the next batch: 64 messages of 16 KiB.
const KEEP_BYTES: usize = 1024 * 1024;

/// A batch too large to address with the WIT's 32-bit offsets.
#[derive(Debug)]
pub(crate) struct TooLarge;

/// Where `len` more units start in a buffer that holds `start`.
fn span(start: usize, len: usize) -> Result<Span, TooLarge> {
    let start = u32::try_from(start).map_err(|_| TooLarge)?;
    let len = u32::try_from(len).map_err(|_| TooLarge)?;
    start.checked_add(len).ok_or(TooLarge)?;
    Ok(Span { start, len })
}

impl Packer {
    /// Packs `items` and lends the batch to `call`; `headers` is filled
    /// here too (it borrows from the items, so the caller owns it).
    pub(crate) fn pack<'a>(
        &'a mut self,
        items: &'a [BatchItem<'a>],
        headers: &'a mut Vec<(&'a str, &'a str)>,
    ) -> Result<Batch<'a>, TooLarge> {
        // A buffer grown by an unusually large batch is let go, not kept
        // for the instance's lifetime (up to 64 MiB for each instance).
        if self.bytes.capacity() > KEEP_BYTES {
            self.bytes = Vec::new();
        }
        if self.text.capacity() > KEEP_BYTES {
            self.text = String::new();
        }
        self.text.clear();
        self.bytes.clear();
        self.frames.clear();
        self.frames.reserve(items.len() * FRAME_WORDS);
        headers.clear();
        // One stream name per run of messages from the same stream.
        let mut last_stream: Option<(&str, Span)> = None;
        for item in items {
            let msg = item.msg;
            let subject = span(self.text.len(), msg.subject.len())?;
            self.text.push_str(&msg.subject);
            let payload = span(self.bytes.len(), msg.payload.len())?;
            self.bytes.extend_from_slice(&msg.payload);
            let header_span = span(headers.len(), msg.headers.len())?;
            headers.extend(msg.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let stream = match (item.stream, last_stream) {
                (None, _) => None,
                (Some(name), Some((last, at))) if last == name => Some(at),
                (Some(name), _) => {
                    let at = span(self.text.len(), name.len())?;
                    self.text.push_str(name);
                    last_stream = Some((name, at));
                    Some(at)
                }
            };
            let flags = (u32::from(stream.is_some()) * HAS_STREAM)
                | (u32::from(item.sequence.is_some()) * HAS_SEQUENCE);
            let stream = stream.unwrap_or(Span { start: 0, len: 0 });
            let sequence = item.sequence.unwrap_or(0);
            self.frames.extend_from_slice(&[
                subject.start,
                subject.len,
                payload.start,
                payload.len,
                header_span.start,
                header_span.len,
                stream.start,
                stream.len,
                sequence as u32,
                (sequence >> 32) as u32,
                item.attempt,
                flags,
            ]);
        }
        Ok(Batch {
            text: &self.text,
            bytes: &self.bytes,
            headers,
            frames: &self.frames,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::bus::BusMessage;

    fn msg(subject: &str, payload: &str, headers: &[(&str, &str)]) -> BusMessage {
        BusMessage {
            decoded: crate::bus::Decoded::for_subject(subject),
            subject: subject.into(),
            reply_to: None,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }
    }

    fn text<'a>(b: &'a Batch<'_>, s: Span) -> &'a str {
        &b.text[s.start as usize..(s.start + s.len) as usize]
    }

    /// Frame `i`, read back by the SDK's reader (what a component sees).
    fn frame(b: &Batch<'_>, i: usize) -> weir_guest::batch::Frame {
        assert_eq!(weir_guest::batch::FRAME_WORDS, FRAME_WORDS);
        let words = &b.frames[i * FRAME_WORDS..][..FRAME_WORDS];
        weir_guest::batch::Frame::from_words(words.try_into().unwrap())
    }

    /// The SDK's span as this module's.
    fn ours(s: weir_guest::batch::Span) -> Span {
        Span {
            start: s.start,
            len: s.len,
        }
    }

    #[test]
    fn every_part_of_every_message_is_where_its_frame_says() {
        let a = msg("TRADE.trade.BTCUSDT", "{\"p\":1}", &[]);
        let b = msg("TRADE.trade.ETHUSDT", "", &[("k", "v"), ("k", "w")]);
        let c = msg("x", "third", &[("content-type", "text/plain")]);
        let item = |msg, stream, sequence, attempt| BatchItem {
            msg,
            stream,
            sequence,
            attempt,
        };
        let items = [
            item(&a, Some("TRADE"), Some(7 | 5 << 32), 1),
            item(&b, Some("TRADE"), Some(8), 3),
            item(&c, Some("OTHER"), None, 1),
        ];
        let mut packer = Packer::default();
        for _ in 0..2 {
            // The second round reuses the buffers: nothing of the first stays.
            let mut headers = Vec::new();
            let batch = packer.pack(&items, &mut headers).unwrap();
            assert_eq!(batch.frames.len(), 3 * FRAME_WORDS);
            let expect = [&a, &b, &c];
            for (i, (m, it)) in expect.iter().zip(&items).enumerate() {
                let f = frame(&batch, i);
                assert_eq!(text(&batch, ours(f.subject)), m.subject);
                let p = &batch.bytes[f.payload.start as usize..][..f.payload.len as usize];
                assert_eq!(p, &m.payload[..]);
                let h = &batch.headers[f.headers.start as usize..][..f.headers.len as usize];
                let want: Vec<(&str, &str)> = m
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert_eq!(h, &want[..]);
                assert_eq!(f.stream.map(|s| text(&batch, ours(s))), it.stream);
                assert_eq!(f.sequence, it.sequence);
                assert_eq!(f.attempt, it.attempt);
            }
            // One copy of a stream name for a run of messages from it.
            let at = |i: usize| frame(&batch, i).stream;
            assert_eq!(at(0), at(1));
            assert_eq!(
                batch.text.len(),
                a.subject.len() + b.subject.len() + c.subject.len() + "TRADE".len() + "OTHER".len()
            );
        }
    }

    #[test]
    fn a_large_batch_s_buffer_is_not_kept() {
        let big = msg("s", &"x".repeat(2 * KEEP_BYTES), &[]);
        let small = msg("s", "y", &[]);
        let item = |msg| BatchItem {
            msg,
            stream: None,
            sequence: None,
            attempt: 1,
        };
        let mut packer = Packer::default();
        let mut headers = Vec::new();
        packer.pack(&[item(&small)], &mut headers).unwrap();
        let kept = packer.bytes.capacity();
        let mut headers = Vec::new();
        packer.pack(&[item(&big)], &mut headers).unwrap();
        assert!(packer.bytes.capacity() >= 2 * KEEP_BYTES);
        let items = [item(&small)];
        let mut headers = Vec::new();
        let batch = packer.pack(&items, &mut headers).unwrap();
        assert_eq!(batch.bytes, b"y");
        assert!(packer.bytes.capacity() <= KEEP_BYTES.max(kept));
    }

    #[test]
    fn a_span_past_four_gigabytes_is_refused() {
        assert!(span(u32::MAX as usize, 1).is_err());
        assert!(span(0, u32::MAX as usize + 1).is_err());
        assert!(span(1, u32::MAX as usize - 1).is_ok());
    }
}

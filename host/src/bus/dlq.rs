//! Dead letters: messages weir gave up on, published on `dlq.<subject>`
//! with everything needed to understand and replay them.

use serde::{Deserialize, Serialize};

use crate::bus::BusMessage;

/// Prefix of dead-letter subjects.
pub const DLQ_PREFIX: &str = "dlq.";

/// The JSON envelope published on `dlq.<original subject>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Subject the message was first published on.
    pub original_subject: String,
    /// Component that could not handle it.
    pub component: String,
    /// Why: the component's reason or the failure (trap, deadline, ...).
    pub error: String,
    /// Deliveries made before giving up.
    pub attempts: u32,
    /// When weir gave up (RFC 3339, UTC).
    pub time: String,
    /// JetStream stream, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// JetStream stream sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// Original headers.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Original payload, when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Original payload as base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl DeadLetter {
    /// Builds the envelope for a message, given up on at `time`.
    pub fn new(
        time: std::time::SystemTime,
        msg: &BusMessage,
        component: &str,
        error: String,
        attempts: u32,
        stream: Option<String>,
        sequence: Option<u64>,
    ) -> Self {
        let (payload, payload_base64) = super::text_or_base64(&msg.payload);
        DeadLetter {
            original_subject: msg.subject.clone(),
            component: component.to_owned(),
            error,
            attempts,
            time: humantime::format_rfc3339_millis(time).to_string(),
            stream,
            sequence,
            headers: msg.headers.clone(),
            payload,
            payload_base64,
        }
    }

    /// The subject it is published on.
    pub fn subject(&self) -> String {
        format!("{DLQ_PREFIX}{}", self.original_subject)
    }

    /// The original payload bytes.
    pub fn original_payload(&self) -> Vec<u8> {
        super::bytes_from(self.payload.as_deref(), self.payload_base64.as_deref())
            .unwrap_or_default()
    }

    /// The envelope as a bus message, with headers saying where it came from.
    pub fn to_message(&self) -> BusMessage {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        let mut msg = BusMessage::new(self.subject(), payload);
        msg.headers = vec![
            ("Weir-Component".into(), self.component.clone()),
            ("Weir-Attempts".into(), self.attempts.to_string()),
            ("content-type".into(), "application/json".into()),
        ];
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_and_binary_payloads() {
        for payload in [&b"{\"a\":1}"[..], &[0xff, 0x00, 0x80][..]] {
            let msg = BusMessage::new("TRADE.trade.X", payload.to_vec());
            let dl = DeadLetter::new(
                std::time::SystemTime::now(),
                &msg,
                "c",
                "boom".into(),
                5,
                Some("TRADE".into()),
                Some(9),
            );
            let out = dl.to_message();
            assert_eq!(out.subject, "dlq.TRADE.trade.X");
            let back: DeadLetter = serde_json::from_slice(&out.payload).unwrap();
            assert_eq!(back, dl);
            assert_eq!(back.original_payload(), payload);
        }
    }
}

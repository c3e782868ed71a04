//! The events the harness posts: JSON payloads of an exact size, and batch
//! bodies for `POST /v1/domains/{domain}/events/batch`, written by hand so
//! that building them costs next to nothing.

use std::fmt::Write;

/// Size of the payload used by the ceiling, throughput, latency and
/// fairness scenarios.
pub const BODY_BYTES: usize = 1024;

/// Event type of every posted event.
pub const EVENT_TYPE: &str = "bench.event";

/// A JSON object `{"seq":N,"pad":"xxx…"}` of exactly `size` bytes (or the
/// shortest possible when `size` is smaller than that).
pub fn json_body(seq: u64, size: usize) -> String {
    let head = format!("{{\"seq\":{seq},\"pad\":\"");
    let tail = "\"}";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(head.len() + pad + tail.len());
    body.push_str(&head);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str(tail);
    body
}

/// A batch body carrying events `first..first + count`, each with the
/// producer id `<prefix>-<seq>` and a payload of `size` bytes.
pub fn batch_body(prefix: &str, first: u64, count: u64, size: usize) -> String {
    let mut body = String::with_capacity((count as usize) * (size + 64) + 16);
    body.push_str("{\"events\":[");
    for seq in first..first + count {
        if seq != first {
            body.push(',');
        }
        let _ = write!(
            body,
            "{{\"type\":\"{EVENT_TYPE}\",\"id\":\"{prefix}-{seq}\",\"payload\":{}}}",
            json_body(seq, size)
        );
    }
    body.push_str("]}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_asked_size_and_parse() {
        for seq in [0, 7, 123_456_789] {
            let body = json_body(seq, BODY_BYTES);
            assert_eq!(body.len(), BODY_BYTES);
            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(value["seq"], seq);
        }
    }

    #[test]
    fn batch_bodies_carry_every_event_with_its_id() {
        let body = batch_body("tp", 10, 3, 100);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        let events = value["events"].as_array().unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[2]["id"], "tp-12");
        assert_eq!(events[2]["type"], EVENT_TYPE);
        assert_eq!(events[2]["payload"]["seq"], 12);
    }
}

//! Small pieces every console page draws: times as "3 min ago" with the
//! RFC 3339 time on hover, state chips, counts, latency, and the
//! per-minute bar chart drawn as inline SVG (no script, no library), and
//! what an attempt sent.

use maud::{Markup, html};

use crate::api::time::Timestamp;
use crate::model::{Millis, RecordState, SentRequest};
use crate::telemetry::WindowStats;

/// How long ago `at` was, for people: "12 s ago", "3 min ago", "in 5 s".
pub fn ago(at: Millis, now: Millis) -> String {
    let delta = now - at;
    let (seconds, future) = if delta >= 0 {
        (delta / 1000, false)
    } else {
        (-delta / 1000, true)
    };
    let span = match seconds {
        0 => {
            return if future {
                "now".into()
            } else {
                "just now".into()
            };
        }
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// A time: relative text, with the exact UTC time as its title and
/// `datetime`.
pub fn when(at: Millis, now: Millis) -> Markup {
    let exact = Timestamp(at).to_rfc3339();
    html! { time datetime=(exact) title=(exact) { (ago(at, now)) } }
}

/// An optional time, or a dash.
pub fn when_opt(at: Option<Millis>, now: Millis) -> Markup {
    match at {
        Some(at) => when(at, now),
        None => html! { span.muted { "–" } },
    }
}

/// A size in bytes, in the largest binary unit under which it is at least
/// one: 512 B, 300 KiB, 12.5 GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match value < 10.0 {
        true => format!("{value:.1} {}", UNITS[unit]),
        false => format!("{value:.0} {}", UNITS[unit]),
    }
}

/// A count with thousands separators: 1 234 567.
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(digit);
    }
    out
}

/// Milliseconds for people: "840 ms", "2.4 s".
pub fn millis(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// A record state as a coloured chip.
pub fn state_chip(state: RecordState) -> Markup {
    let tone = match state {
        RecordState::Succeeded => "ok",
        RecordState::Rejected => "bad",
        RecordState::Retrying => "warn",
        RecordState::Pending | RecordState::Empty | RecordState::Cancelled => "",
    };
    html! { span class={ "chip " (tone) } { (state.as_str()) } }
}

/// A share as a percentage, or a dash without attempts.
pub fn rate(stats: &WindowStats) -> String {
    match stats.success_rate() {
        Some(rate) => format!("{:.1} %", rate * 100.0),
        None => "–".into(),
    }
}

/// The window's successes (green, up) and failures (red, down) per minute,
/// scaled to the busiest minute, as an inline SVG of `width` × `height`.
pub fn minute_bars(stats: &WindowStats, width: u32, height: u32) -> Markup {
    let minutes = stats.per_minute.len().max(1) as u32;
    let peak = stats
        .per_minute
        .iter()
        .map(|(s, f)| s.max(f))
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let half = f64::from(height) / 2.0;
    let slot = f64::from(width) / f64::from(minutes);
    let bar = (slot - 2.0).max(1.0);
    let label = format!(
        "{} successes and {} failures in the last {} minutes",
        stats.successes, stats.failures, minutes
    );
    html! {
        svg.spark width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) }
            role="img" aria-label=(label) {
            title { (label) }
            line.base x1="0" y1=(half) x2=(width) y2=(half) {}
            @for (i, (successes, failures)) in stats.per_minute.iter().enumerate() {
                @let x = i as f64 * slot + 1.0;
                @let up = (*successes as f64 / peak * (half - 1.0)).max(if *successes > 0 { 1.0 } else { 0.0 });
                @let down = (*failures as f64 / peak * (half - 1.0)).max(if *failures > 0 { 1.0 } else { 0.0 });
                rect.s x=(format!("{x:.1}")) y=(format!("{:.1}", half - up)) width=(format!("{bar:.1}")) height=(format!("{up:.1}")) {}
                rect.f x=(format!("{x:.1}")) y=(format!("{half:.1}")) width=(format!("{bar:.1}")) height=(format!("{down:.1}")) {}
            }
        }
    }
}

/// Successes and failures of the minute in progress (the window's last
/// entry).
pub fn this_minute(stats: &WindowStats) -> (u64, u64) {
    stats.per_minute.last().copied().unwrap_or((0, 0))
}

/// What an attempt sent: its method and URL, with the headers (already
/// redacted when stored) and body size folded under them. `id` keys the
/// fold so a live refresh keeps it open.
pub fn sent_request(attempt_id: i64, request: Option<&SentRequest>) -> Markup {
    let Some(request) = request else {
        return html! { span.muted { "–" } };
    };
    html! {
        details id={ "attempt-" (attempt_id) "-request" } {
            summary.mono { (request.method) " " (request.url) }
            pre.headers {
                @for header in &request.headers { (header.name) ": " (header.value) "\n" }
                "(" (count(request.body_bytes as i64)) " bytes of body)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_say_them() {
        let now = 1_000_000_000;
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - 12_000, now), "12 s ago");
        assert_eq!(ago(now - 180_000, now), "3 min ago");
        assert_eq!(ago(now - 7_200_000, now), "2 h ago");
        assert_eq!(ago(now + 5_000, now), "in 5 s");
        assert!(
            when(now, now)
                .into_string()
                .contains("datetime=\"1970-01-12T13:46:40.000Z\"")
        );
    }

    #[test]
    fn sizes_are_readable() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(300 << 10), "300 KiB");
        assert_eq!(bytes((25 << 30) / 2), "12 GiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(u64::MAX), "16384 PiB");
    }

    #[test]
    fn counts_and_durations_are_readable() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1\u{202f}234\u{202f}567");
        assert_eq!(count(-1000), "-1\u{202f}000");
        assert_eq!(millis(12.0), "12 ms");
        assert_eq!(millis(2_400.0), "2.4 s");
    }

    #[test]
    fn the_chart_has_one_bar_pair_per_minute_scaled_to_the_peak() {
        let stats = WindowStats {
            per_minute: vec![(0, 0), (10, 0), (5, 5)],
            successes: 15,
            failures: 5,
            p50_ms: None,
            p99_ms: None,
        };
        let svg = minute_bars(&stats, 90, 40).into_string();
        assert_eq!(svg.matches("<rect class=\"s\"").count(), 3);
        assert_eq!(svg.matches("<rect class=\"f\"").count(), 3);
        // The busiest minute fills its half (19 of 20 px).
        assert!(svg.contains("height=\"19.0\""), "{svg}");
        assert!(svg.contains("15 successes and 5 failures"));
    }
}

//! Durations as users write them, read by `humantime`: `"30s"`, `"5m"`,
//! `"1h30m"`, `"1h 30m"`, `"100ms"`, `"7d"`, `"2 days"`, `"1.5h"`. A bare
//! number is refused so that a unit is never guessed, and so is a duration
//! finer than a millisecond, the unit every stored time is counted in.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses a duration with a unit (`ms`, `s`, `m`, `h`, `d` and the longer
/// names `humantime` knows), in whole milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|err| match err {
        humantime::DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("invalid duration {text:?}: {value} has no unit (write \"{value}s\", \"{value}m\", ...)")
        }
        other => format!(
            "invalid duration {text:?}: {other} (write something like \"30s\", \"5m\" or \"1h30m\")"
        ),
    })?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "invalid duration {text:?}: durations are counted in whole milliseconds"
        ));
    }
    Ok(duration)
}

/// serde: a positive duration from a string.
pub(crate) fn positive<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    let duration = parse_duration(&text).map_err(serde::de::Error::custom)?;
    if duration.is_zero() {
        return Err(serde::de::Error::custom(format!(
            "duration {text:?} must be greater than zero"
        )));
    }
    Ok(duration)
}

/// serde: an optional positive duration.
pub(crate) fn positive_opt<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    positive(de).map(Some)
}

/// serde: a non-empty list of positive durations.
pub(crate) fn positive_list<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<Duration>, D::Error> {
    let texts = Vec::<String>::deserialize(de)?;
    if texts.is_empty() {
        return Err(serde::de::Error::custom(
            "the list must hold at least one duration",
        ));
    }
    texts
        .iter()
        .map(|text| match parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(format!("duration {text:?} must be greater than zero")),
            Err(e) => Err(e),
        })
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

/// serde: an optional non-empty list of positive durations.
pub(crate) fn positive_list_opt<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<Vec<Duration>>, D::Error> {
    positive_list(de).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units_compounds_and_long_names() {
        // The forms the hand-written parser read before humantime.
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration(" 5m "), Ok(Duration::from_secs(300)));
        // What humantime adds.
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("2 days"),
            Ok(Duration::from_secs(2 * 86_400))
        );
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn refuses_no_unit_unknown_units_sub_milliseconds_and_overflow() {
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("\"30\"") && err.contains("no unit"), "{err}");
        for bad in [
            "",
            "s",
            "3x",
            "-1s",
            "99999999999999999999d",
            "500us",
            "1.0005s",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}

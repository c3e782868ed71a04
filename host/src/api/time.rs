//! Times at the API's edge. The store keeps epoch milliseconds; every time
//! the API writes or reads is an RFC 3339 UTC string with milliseconds
//! (`"2026-12-05T07:10:28.123Z"`), converted here by one newtype.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::Millis;

/// The last millisecond RFC 3339 can write (the end of year 9999).
const LAST_WRITABLE: Millis = 253_402_300_799_999;

/// A point in time: epoch milliseconds inside, an RFC 3339 UTC string with
/// milliseconds in JSON. Reading accepts any fraction of a second and `Z`
/// or `+00:00`; times in other offsets are refused rather than guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, utoipa::ToSchema)]
#[schema(value_type = String, format = DateTime, example = "2026-12-05T07:10:28.123Z")]
pub struct Timestamp(pub Millis);

impl Timestamp {
    /// The time as RFC 3339 text. Times outside what RFC 3339 can write
    /// (before 1970 or after 9999) are clamped to its ends.
    pub fn to_rfc3339(self) -> String {
        let millis = u64::try_from(self.0.clamp(0, LAST_WRITABLE)).unwrap_or(0);
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(millis)).to_string()
    }

    /// Reads RFC 3339 UTC text; the error names what was expected.
    pub fn parse(text: &str) -> Result<Timestamp, String> {
        let at = humantime::parse_rfc3339(text).map_err(|err| {
            format!(
                "{text:?} is not an RFC 3339 UTC time like \"2026-12-05T07:10:28.123Z\" ({err})"
            )
        })?;
        Ok(Timestamp::from_system_time(at))
    }

    /// The time of a [`SystemTime`], to the millisecond.
    pub fn from_system_time(at: SystemTime) -> Timestamp {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(Millis::try_from(since.as_millis()).unwrap_or(Millis::MAX))
    }
}

impl From<Millis> for Timestamp {
    fn from(millis: Millis) -> Timestamp {
        Timestamp(millis)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_rfc3339_utc_with_milliseconds() {
        assert_eq!(
            Timestamp(1_796_454_628_123).to_rfc3339(),
            "2026-12-05T07:10:28.123Z"
        );
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            serde_json::to_string(&Timestamp(1_796_454_628_000)).unwrap(),
            "\"2026-12-05T07:10:28.000Z\""
        );
    }

    #[test]
    fn times_past_the_ends_of_rfc3339_are_clamped() {
        assert_eq!(Timestamp(-5).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(Millis::MAX).to_rfc3339(),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn times_read_back_to_the_millisecond() {
        for millis in [0, 1, 1_796_454_628_123, LAST_WRITABLE] {
            let text = serde_json::to_string(&Timestamp(millis)).unwrap();
            let back: Timestamp = serde_json::from_str(&text).unwrap();
            assert_eq!(back, Timestamp(millis), "{text}");
        }
        assert_eq!(
            Timestamp::parse("2026-12-05T07:10:28+00:00").unwrap(),
            Timestamp(1_796_454_628_000)
        );
    }

    #[test]
    fn other_offsets_and_other_shapes_are_refused_by_name() {
        for bad in [
            "2026-12-05T07:10:28+02:00",
            "2026-12-05 07:10:28",
            "1796454628123",
            "yesterday",
        ] {
            let err = Timestamp::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}

//! `fhir-r4`: the built-in plugin that maps a patient event to a FHIR R4
//! `Patient` resource and sends it with `PUT Patient/{id}` (an update-or-
//! create, so a redelivery is harmless), as `application/fhir+json`.
//!
//! # Input
//!
//! The event's payload is a JSON object; every field but `id` is optional,
//! unknown fields are ignored:
//!
//! ```json
//! {
//!   "id": "p-123",
//!   "given_name": "Ada",            // or "first_name"
//!   "middle_name": "Augusta",
//!   "family_name": "Lovelace",      // or "last_name"
//!   "birth_date": "1815-12-10",     // YYYY-MM-DD, a real calendar date
//!   "gender": "female",             // male|female|other|unknown, or m|f|o|u
//!   "phone": "+44 20 7946 0000",
//!   "email": "ada@example.org",
//!   "address": {
//!     "line": ["12 St James's Square"],   // or a single string
//!     "city": "London", "district": "Westminster", "state": "England",
//!     "postal_code": "SW1Y 4JH", "country": "GB"
//!   }
//! }
//! ```
//!
//! `id` (a string or a non-negative integer) becomes the resource id, so it
//! must be a FHIR id: 1 to 64 of `A-Z a-z 0-9 - .`. An event without an id,
//! or with a field of the wrong type or value, is rejected with a reason
//! naming the field. Absent fields are left out of the resource (FHIR
//! forbids empty values).
//!
//! # Config
//!
//! `{"identifier_system": "https://hospital.example/patients"}` (optional)
//! adds `identifier: [{"system": ..., "value": id}]` to the resource.
//!
//! # Replies
//!
//! The SDK's default rules, except that a rejection (any 4xx the defaults
//! reject, including 412 and 422) quotes the diagnostics of the
//! `OperationOutcome` the server returned, when there is one.

use repeater_plugin_sdk::{
    BuildOutcome, Event, Method, Plugin, Reply, Request, RequestSummary, Verdict, default_classify,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The media type of FHIR's JSON format.
pub const FHIR_JSON: &str = "application/fhir+json";

/// The plugin config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// When set, the event id is also sent as an identifier in this system.
    pub identifier_system: Option<String>,
}

/// The `fhir-r4` plugin.
pub struct FhirR4;

impl Plugin for FhirR4 {
    type Config = Config;

    fn validate_config(config: &Config) -> Result<(), String> {
        match &config.identifier_system {
            Some(system) if system.trim().is_empty() => {
                Err("identifier_system must not be empty".to_owned())
            }
            _ => Ok(()),
        }
    }

    fn build(event: &Event, config: &Config) -> BuildOutcome {
        let patient = match patient_from_event(event, config) {
            Ok(patient) => patient,
            Err(reason) => return BuildOutcome::reject(reason),
        };
        let Some(id) = patient["id"].as_str() else {
            return BuildOutcome::reject("field `id` is missing");
        };
        let path = format!("Patient/{id}");
        let body = match serde_json::to_vec(&patient) {
            Ok(body) => body,
            Err(err) => return BuildOutcome::reject(format!("cannot write the Patient: {err}")),
        };
        BuildOutcome::Send(
            Request::new(Method::Put)
                .with_path(path)
                .with_header("content-type", FHIR_JSON)
                .with_header("accept", FHIR_JSON)
                .with_header("idempotency-key", &event.record_id)
                .with_body(body),
        )
    }

    fn classify(_request: &RequestSummary, reply: &Reply, _config: &Config) -> Verdict {
        let verdict = default_classify(reply);
        let (Verdict::Reject(reason), Reply::Response(response)) = (&verdict, reply) else {
            return verdict;
        };
        match operation_outcome_diagnostics(&response.body_excerpt) {
            Some(diagnostics) => Verdict::reject(format!(
                "HTTP {}: OperationOutcome: {diagnostics}",
                response.status
            )),
            None => Verdict::reject(reason.clone()),
        }
    }
}

repeater_plugin_sdk::export_plugin!(FhirR4);

/// Maps the event's payload to a Patient resource, or says which field is
/// wrong.
pub fn patient_from_event(event: &Event, config: &Config) -> Result<Value, String> {
    let input: Value = serde_json::from_slice(&event.payload)
        .map_err(|err| format!("payload is not valid JSON: {err}"))?;
    let Value::Object(input) = input else {
        return Err("payload must be a JSON object describing a patient".to_owned());
    };

    let id = patient_id(&input)?;
    let mut patient = Map::new();
    patient.insert("resourceType".into(), json!("Patient"));
    patient.insert("id".into(), json!(id));
    if let Some(system) = &config.identifier_system {
        patient.insert(
            "identifier".into(),
            json!([{"system": system, "value": id}]),
        );
    }

    let mut given = Vec::new();
    if let Some(first) = text_field(&input, &["given_name", "first_name"])? {
        given.push(first);
    }
    if let Some(middle) = text_field(&input, &["middle_name"])? {
        given.push(middle);
    }
    let family = text_field(&input, &["family_name", "last_name"])?;
    if family.is_some() || !given.is_empty() {
        let mut name = Map::new();
        name.insert("use".into(), json!("official"));
        if let Some(family) = family {
            name.insert("family".into(), json!(family));
        }
        if !given.is_empty() {
            name.insert("given".into(), json!(given));
        }
        patient.insert("name".into(), json!([name]));
    }

    if let Some(gender) = text_field(&input, &["gender"])? {
        patient.insert("gender".into(), json!(fhir_gender(&gender)?));
    }
    if let Some(birth_date) = text_field(&input, &["birth_date"])? {
        check_date(&birth_date).map_err(|err| format!("field `birth_date` {err}"))?;
        patient.insert("birthDate".into(), json!(birth_date));
    }

    let mut telecom = Vec::new();
    if let Some(phone) = text_field(&input, &["phone"])? {
        telecom.push(json!({"system": "phone", "value": phone}));
    }
    if let Some(email) = text_field(&input, &["email"])? {
        check_email(&email)?;
        telecom.push(json!({"system": "email", "value": email}));
    }
    if !telecom.is_empty() {
        patient.insert("telecom".into(), json!(telecom));
    }

    if let Some(address) = input.get("address").filter(|value| !value.is_null())
        && let Some(address) = fhir_address(address)?
    {
        patient.insert("address".into(), json!([address]));
    }
    Ok(Value::Object(patient))
}

/// The event's `id` as a FHIR id.
fn patient_id(input: &Map<String, Value>) -> Result<String, String> {
    let id = match input.get("id") {
        None | Some(Value::Null) => return Err("field `id` is missing".to_owned()),
        Some(Value::String(id)) => id.clone(),
        Some(Value::Number(number)) if number.is_u64() => number.to_string(),
        Some(other) => {
            return Err(format!(
                "field `id` must be a string or a non-negative integer, got {other}"
            ));
        }
    };
    let valid = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if valid {
        Ok(id)
    } else {
        Err(format!(
            "field `id` must be 1 to 64 of A-Z, a-z, 0-9, `-` and `.` (a FHIR id), got {id:?}"
        ))
    }
}

/// The first of `names` present in `input`, as trimmed non-empty text.
/// Null and blank count as absent; other non-strings are errors.
fn text_field(input: &Map<String, Value>, names: &[&str]) -> Result<Option<String>, String> {
    for name in names {
        match input.get(*name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(text)) if text.trim().is_empty() => continue,
            Some(Value::String(text)) => return Ok(Some(text.trim().to_owned())),
            Some(other) => return Err(format!("field `{name}` must be a string, got {other}")),
        }
    }
    Ok(None)
}

/// Maps common spellings to FHIR's administrative-gender codes.
fn fhir_gender(gender: &str) -> Result<&'static str, String> {
    match gender.to_ascii_lowercase().as_str() {
        "male" | "m" => Ok("male"),
        "female" | "f" => Ok("female"),
        "other" | "o" => Ok("other"),
        "unknown" | "u" => Ok("unknown"),
        _ => Err(format!(
            "field `gender` must be male, female, other or unknown (or m, f, o, u), got {gender:?}"
        )),
    }
}

/// Checks a `YYYY-MM-DD` calendar date.
fn check_date(date: &str) -> Result<(), String> {
    let bad = || format!("must be a date YYYY-MM-DD, got {date:?}");
    let bytes = date.as_bytes();
    let shape_ok = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(index, byte)| index == 4 || index == 7 || byte.is_ascii_digit());
    if !shape_ok {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| date[range].parse::<u32>().map_err(|_| bad());
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if year == 0 || day == 0 || day > days_in_month {
        return Err(bad());
    }
    Ok(())
}

/// A light plausibility check; the receiving server has the final word.
fn check_email(email: &str) -> Result<(), String> {
    let plausible = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !domain.contains('@')
    }) && !email.chars().any(char::is_whitespace);
    if plausible {
        Ok(())
    } else {
        Err(format!("field `email` is not an email address: {email:?}"))
    }
}

/// Maps the input address to a FHIR Address, or `None` when it is empty.
fn fhir_address(address: &Value) -> Result<Option<Value>, String> {
    let Value::Object(input) = address else {
        return Err(format!("field `address` must be an object, got {address}"));
    };
    let mut output = Map::new();

    let lines: Vec<String> = match input.get("line") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(line)) => vec![line.trim().to_owned()],
        Some(Value::Array(lines)) => lines
            .iter()
            .enumerate()
            .map(|(index, line)| match line {
                Value::String(line) => Ok(line.trim().to_owned()),
                other => Err(format!(
                    "field `address.line[{index}]` must be a string, got {other}"
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "field `address.line` must be a string or a list of strings, got {other}"
            ));
        }
    };
    let lines: Vec<String> = lines.into_iter().filter(|line| !line.is_empty()).collect();
    if !lines.is_empty() {
        output.insert("line".into(), json!(lines));
    }

    for (from, to) in [
        ("city", "city"),
        ("district", "district"),
        ("state", "state"),
        ("postal_code", "postalCode"),
        ("country", "country"),
    ] {
        let value = text_field(input, &[from])
            .map_err(|err| err.replacen("field `", "field `address.", 1))?;
        if let Some(value) = value {
            output.insert(to.into(), json!(value));
        }
    }
    Ok((!output.is_empty()).then_some(Value::Object(output)))
}

/// The diagnostics of an `OperationOutcome` body: each issue's
/// `diagnostics`, else its `details.text`, joined with `; `.
fn operation_outcome_diagnostics(body: &[u8]) -> Option<String> {
    let outcome: Value = serde_json::from_slice(body).ok()?;
    if outcome["resourceType"] != "OperationOutcome" {
        return None;
    }
    let messages: Vec<&str> = outcome["issue"]
        .as_array()?
        .iter()
        .filter_map(|issue| {
            issue["diagnostics"]
                .as_str()
                .or_else(|| issue["details"]["text"].as_str())
        })
        .collect();
    (!messages.is_empty()).then(|| messages.join("; "))
}

#[cfg(test)]
mod tests {
    use repeater_plugin_sdk::testing::{self, event, expect_reject, expect_send, response};

    use super::*;

    fn build(payload: Value, config: &str) -> BuildOutcome {
        testing::build::<FhirR4>(&event().json(&payload).record_id("rec-5").build(), config)
    }

    fn reject_reason(payload: Value) -> String {
        expect_reject(build(payload, "{}"))
    }

    #[test]
    fn a_full_patient_event_maps_to_a_fhir_patient() {
        let request = expect_send(build(
            json!({
                "id": "p-123",
                "first_name": "Ada",
                "middle_name": "Augusta",
                "last_name": "Lovelace",
                "birth_date": "1815-12-10",
                "gender": "F",
                "phone": "+44 20 7946 0000",
                "email": "ada@example.org",
                "address": {
                    "line": ["12 St James's Square", ""],
                    "city": "London",
                    "postal_code": "SW1Y 4JH",
                    "country": "GB"
                },
                "ward": "ignored"
            }),
            r#"{"identifier_system": "https://hospital.example/patients"}"#,
        ));
        assert_eq!(request.method, Method::Put);
        assert_eq!(request.path.as_deref(), Some("Patient/p-123"));
        assert_eq!(request.header("content-type"), Some(FHIR_JSON));
        assert_eq!(request.header("idempotency-key"), Some("rec-5"));
        let patient: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            patient,
            json!({
                "resourceType": "Patient",
                "id": "p-123",
                "identifier": [{"system": "https://hospital.example/patients", "value": "p-123"}],
                "name": [{"use": "official", "family": "Lovelace", "given": ["Ada", "Augusta"]}],
                "gender": "female",
                "birthDate": "1815-12-10",
                "telecom": [
                    {"system": "phone", "value": "+44 20 7946 0000"},
                    {"system": "email", "value": "ada@example.org"}
                ],
                "address": [{
                    "line": ["12 St James's Square"],
                    "city": "London",
                    "postalCode": "SW1Y 4JH",
                    "country": "GB"
                }]
            })
        );
    }

    #[test]
    fn a_minimal_event_leaves_absent_fields_out() {
        let request = expect_send(build(
            json!({"id": 42, "given_name": "Bo", "email": null}),
            "{}",
        ));
        assert_eq!(request.path.as_deref(), Some("Patient/42"));
        let patient: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            patient,
            json!({"resourceType": "Patient", "id": "42", "name": [{"use": "official", "given": ["Bo"]}]})
        );
    }

    #[test]
    fn gender_spellings_map_to_fhir_codes() {
        for (input, code) in [
            ("male", "male"),
            ("M", "male"),
            ("o", "other"),
            ("Unknown", "unknown"),
        ] {
            let request = expect_send(build(json!({"id": "p", "gender": input}), "{}"));
            let patient: Value = serde_json::from_slice(&request.body).unwrap();
            assert_eq!(patient["gender"], code, "input {input}");
        }
        assert!(reject_reason(json!({"id": "p", "gender": "x"})).contains("`gender`"));
    }

    #[test]
    fn events_without_a_usable_id_are_rejected() {
        assert!(reject_reason(json!({"given_name": "Ada"})).contains("`id` is missing"));
        assert!(reject_reason(json!({"id": null})).contains("`id` is missing"));
        assert!(reject_reason(json!({"id": "a/b"})).contains("`id`"));
        assert!(reject_reason(json!({"id": "../x"})).contains("`id`"));
        assert!(reject_reason(json!({"id": "x".repeat(65)})).contains("`id`"));
        assert!(reject_reason(json!({"id": -1})).contains("`id`"));
    }

    #[test]
    fn birth_dates_must_be_real_calendar_dates() {
        for good in ["2000-02-29", "1999-12-31", "0001-01-01"] {
            expect_send(build(json!({"id": "p", "birth_date": good}), "{}"));
        }
        for bad in [
            "1999-02-29",
            "1900-02-29",
            "2001-13-01",
            "2001-04-31",
            "2001-1-01",
            "10/12/1815",
            "1815-12-10T00:00:00",
            "0000-01-01",
        ] {
            let reason = reject_reason(json!({"id": "p", "birth_date": bad}));
            assert!(reason.contains("`birth_date`"), "{bad}: {reason}");
            assert!(reason.contains(bad), "{bad}: {reason}");
        }
    }

    #[test]
    fn invalid_fields_are_named_in_the_reason() {
        assert!(reject_reason(json!({"id": "p", "family_name": 7})).contains("`family_name`"));
        assert!(reject_reason(json!({"id": "p", "email": "not-an-email"})).contains("`email`"));
        assert!(reject_reason(json!({"id": "p", "address": "London"})).contains("`address`"));
        assert!(
            reject_reason(json!({"id": "p", "address": {"city": 1}})).contains("`address.city`")
        );
        assert!(
            reject_reason(json!({"id": "p", "address": {"line": [1]}}))
                .contains("`address.line[0]`")
        );
        assert!(reject_reason(json!(["p"])).contains("JSON object"));
        let not_json = testing::build::<FhirR4>(&event().payload("<Patient/>").build(), "{}");
        assert!(expect_reject(not_json).contains("not valid JSON"));
    }

    #[test]
    fn config_refuses_unknown_keys_and_empty_systems() {
        assert_eq!(testing::validate_config::<FhirR4>("{}"), Ok(()));
        let err = testing::validate_config::<FhirR4>(r#"{"identifier_system": " "}"#).unwrap_err();
        assert!(err.contains("identifier_system"), "{err}");
        let err = testing::validate_config::<FhirR4>(r#"{"base": "x"}"#).unwrap_err();
        assert!(err.contains("base"), "{err}");
    }

    #[test]
    fn operation_outcome_diagnostics_explain_rejections() {
        let summary = testing::summary("http://127.0.0.1:9/fhir/Patient/p");
        let outcome = json!({
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "error", "code": "invalid", "diagnostics": "Patient.birthDate: bad value"},
                {"severity": "error", "code": "business-rule", "details": {"text": "duplicate MRN"}}
            ]
        });
        for status in [412, 422, 400] {
            let reply = response(status).body(outcome.to_string()).build();
            let verdict = testing::classify::<FhirR4>(&summary, &reply, "{}");
            assert_eq!(
                verdict,
                Verdict::reject(format!(
                    "HTTP {status}: OperationOutcome: Patient.birthDate: bad value; duplicate MRN"
                ))
            );
        }
    }

    #[test]
    fn other_replies_follow_the_default_rules() {
        let summary = testing::summary("http://127.0.0.1:9/fhir/Patient/p");
        let classify = |reply| testing::classify::<FhirR4>(&summary, &reply, "{}");
        assert_eq!(classify(response(200).build()), Verdict::Success);
        assert_eq!(classify(response(201).build()), Verdict::Success);
        assert_eq!(
            classify(response(503).header("retry-after", "30").build()),
            Verdict::retry_after(30, "HTTP 503")
        );
        assert_eq!(
            classify(response(422).body("plain text").build()),
            Verdict::reject("HTTP 422: plain text")
        );
        // An OperationOutcome on a retryable status does not turn it into a reject.
        let outcome = r#"{"resourceType":"OperationOutcome","issue":[{"diagnostics":"busy"}]}"#;
        assert!(matches!(
            classify(response(500).body(outcome).build()),
            Verdict::Retry(_)
        ));
    }
}

//! The API's reference for people: the OpenAPI description rendered as
//! Markdown, committed as `docs/api.md`. A test renders it again and fails
//! when the committed file differs, so the page never drifts from the
//! routes; `REPEATERD_BLESS=1` rewrites it.

use std::fmt::Write;

use serde_json::{Map, Value};

/// The command that refreshes `docs/api.md`.
pub const REFRESH: &str = "REPEATERD_BLESS=1 cargo test -p repeaterd --lib api::reference";

/// The description (as JSON) rendered as a Markdown page.
pub fn markdown(description: &Value) -> String {
    let mut page = String::new();
    let info = &description["info"];
    let _ = writeln!(page, "# HTTP API reference\n");
    let _ = writeln!(
        page,
        "<!-- Generated from the OpenAPI description by host/src/api/reference.rs; \
         do not edit. Refresh with: {REFRESH} -->\n"
    );
    let _ = writeln!(page, "{}\n", text(&info["description"]));
    let _ = writeln!(
        page,
        "API version {}, described as OpenAPI {}; the daemon serves the description at \
         `GET /v1/openapi.json`.\n",
        text(&info["version"]),
        text(&description["openapi"])
    );
    for (name, scheme) in object(&description["components"]["securitySchemes"]) {
        let _ = writeln!(page, "## Authentication\n");
        let _ = writeln!(
            page,
            "`Authorization: Bearer <token>` (scheme `{name}`, {}). {}\n",
            text(&scheme["scheme"]),
            text(&scheme["description"])
        );
    }
    let operations = operations(description);
    let _ = writeln!(page, "## Routes\n");
    let _ = writeln!(
        page,
        "| method | path | what it does |\n| --- | --- | --- |"
    );
    for operation in &operations {
        let _ = writeln!(
            page,
            "| `{}` | [`{}`](#{}) | {} |",
            operation.method.to_uppercase(),
            operation.path,
            operation.anchor(),
            cell(&operation.body["summary"])
        );
    }
    page.push('\n');
    for tag in array(&description["tags"]) {
        let name = text(&tag["name"]);
        let tagged: Vec<&Operation> = operations
            .iter()
            .filter(|operation| text(&operation.body["tags"][0]) == name)
            .collect();
        if tagged.is_empty() {
            continue;
        }
        let _ = writeln!(
            page,
            "## {}\n\n{}\n",
            title(&name),
            text(&tag["description"])
        );
        for operation in tagged {
            render_operation(&mut page, operation);
        }
    }
    let _ = writeln!(page, "## Schemas\n");
    for (name, schema) in object(&description["components"]["schemas"]) {
        render_schema(&mut page, name, schema);
    }
    while page.ends_with("\n\n") {
        page.pop();
    }
    page
}

/// One operation of the description.
struct Operation<'a> {
    path: &'a str,
    method: &'a str,
    body: &'a Value,
}

impl Operation<'_> {
    fn anchor(&self) -> String {
        format!("op-{}", text(&self.body["operationId"]).replace('_', "-"))
    }
}

fn operations(description: &Value) -> Vec<Operation<'_>> {
    let mut all = Vec::new();
    for (path, item) in object(&description["paths"]) {
        for (method, body) in object(item) {
            all.push(Operation { path, method, body });
        }
    }
    all
}

fn render_operation(page: &mut String, operation: &Operation<'_>) {
    let body = operation.body;
    let _ = writeln!(
        page,
        "<a id=\"{}\"></a>\n### `{} {}`\n\n**{}**\n",
        operation.anchor(),
        operation.method.to_uppercase(),
        operation.path,
        text(&body["summary"])
    );
    if let Some(description) = body["description"].as_str() {
        let _ = writeln!(page, "{description}\n");
    } else {
        let _ = writeln!(page, "No token needed.\n");
    }
    let parameters = array(&body["parameters"]);
    if !parameters.is_empty() {
        let _ = writeln!(
            page,
            "| parameter | in | type | required | what it is |\n| --- | --- | --- | --- | --- |"
        );
        for parameter in parameters {
            let mut what = cell(&parameter["description"]);
            if let Some(pattern) = parameter["schema"]["pattern"].as_str() {
                let _ = write!(what, " Pattern `{pattern}`.");
            }
            let _ = writeln!(
                page,
                "| `{}` | {} | {} | {} | {} |",
                text(&parameter["name"]),
                text(&parameter["in"]),
                type_of(&parameter["schema"]),
                yes_no(parameter["required"].as_bool().unwrap_or(false)),
                what
            );
        }
        page.push('\n');
    }
    if let Some(request) = body.get("requestBody") {
        for (media_type, media) in object(&request["content"]) {
            let _ = writeln!(
                page,
                "Body (`{media_type}`): {}.{}\n",
                type_of(&media["schema"]),
                request["description"]
                    .as_str()
                    .map(|d| format!(" {d}."))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(page, "| status | body | when |\n| --- | --- | --- |");
    for (status, response) in object(&body["responses"]) {
        let content: Vec<String> = object(&response["content"])
            .map(|(media_type, media)| {
                if media_type == "application/json" {
                    type_of(&media["schema"])
                } else {
                    format!("`{media_type}`")
                }
            })
            .collect();
        let content = if content.is_empty() {
            "none".to_owned()
        } else {
            content.join(", ")
        };
        let _ = writeln!(
            page,
            "| {status} | {content} | {} |",
            cell(&response["description"])
        );
    }
    page.push('\n');
}

fn render_schema(page: &mut String, name: &str, schema: &Value) {
    let _ = writeln!(page, "<a id=\"{}\"></a>\n### {name}\n", schema_anchor(name));
    if let Some(description) = schema["description"].as_str() {
        let _ = writeln!(page, "{}\n", description.replace('\n', " "));
    }
    if let Some(parts) = schema["allOf"].as_array() {
        for part in parts {
            if part.get("$ref").is_some() {
                let _ = writeln!(page, "Every field of {}, and:\n", type_of(part));
            } else {
                render_fields(page, part);
            }
        }
    } else if let Some(variants) = schema["oneOf"].as_array() {
        let _ = writeln!(page, "One of:\n");
        for variant in variants {
            let _ = writeln!(page, "- {}\n", text(&variant["description"]));
            let mut fields = String::new();
            render_fields(&mut fields, variant);
            for line in fields.lines() {
                if line.is_empty() {
                    page.push('\n');
                } else {
                    let _ = writeln!(page, "  {line}");
                }
            }
        }
    } else if schema["properties"].is_object() {
        render_fields(page, schema);
    } else {
        let _ = write!(page, "{}", type_of(schema));
        if let Some(example) = schema.get("example") {
            let _ = write!(page, ", for example `{example}`");
        }
        page.push_str(".\n\n");
    }
}

fn render_fields(page: &mut String, schema: &Value) {
    let required: Vec<&str> = array(&schema["required"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let _ = writeln!(
        page,
        "| field | type | required | what it is |\n| --- | --- | --- | --- |"
    );
    for (field, property) in object(&schema["properties"]) {
        let description = match property.get("description") {
            Some(description) => cell(description),
            // A nullable reference keeps its description on the reference.
            None => array(&property["oneOf"])
                .iter()
                .find_map(|part| part.get("description"))
                .map(cell)
                .unwrap_or_default(),
        };
        let _ = writeln!(
            page,
            "| `{field}` | {} | {} | {description} |",
            type_of(property),
            yes_no(required.contains(&field.as_str()))
        );
    }
    if schema["additionalProperties"] == Value::Bool(false) {
        let _ = writeln!(page, "\nOther fields are refused.");
    }
    page.push('\n');
}

/// A schema's type in a few words, with links to named schemas.
fn type_of(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("[{name}](#{})", schema_anchor(name));
    }
    if let Some(variants) = schema["oneOf"].as_array() {
        let words: Vec<String> = variants.iter().map(type_of).collect();
        return words.join(" or ");
    }
    if let Some(parts) = schema["allOf"].as_array() {
        let words: Vec<String> = parts.iter().map(type_of).collect();
        return words.join(" and ");
    }
    if let Some(values) = schema["enum"].as_array() {
        let words: Vec<String> = values.iter().map(|v| format!("`{}`", text(v))).collect();
        return format!("one of {}", words.join(", "));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(several) => several.iter().filter_map(Value::as_str).collect(),
        _ => return "any JSON".to_owned(),
    };
    let words: Vec<String> = types
        .into_iter()
        .map(|kind| match kind {
            "array" => format!("array of {}", type_of(&schema["items"])),
            "string" => match schema["format"].as_str() {
                Some("date-time") => "string (RFC 3339 time)".to_owned(),
                Some("binary") => "bytes".to_owned(),
                _ => "string".to_owned(),
            },
            other => other.to_owned(),
        })
        .collect();
    words.join(" or ")
}

fn schema_anchor(name: &str) -> String {
    format!("schema-{}", name.to_lowercase())
}

fn title(tag: &str) -> String {
    let mut chars = tag.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn yes_no(yes: bool) -> &'static str {
    if yes { "yes" } else { "no" }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Text fit for one table cell: one line, pipes escaped.
fn cell(value: &Value) -> String {
    text(value).replace('\n', " ").replace('|', "\\|")
}

fn object(value: &Value) -> impl Iterator<Item = (&String, &Value)> {
    value.as_object().into_iter().flat_map(Map::iter)
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> String {
        let description: Value =
            serde_json::from_str(super::super::openapi::description_json()).unwrap();
        markdown(&description)
    }

    #[test]
    fn docs_api_md_is_the_description_rendered() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md");
        let fresh = rendered();
        if std::env::var_os("REPEATERD_BLESS").is_some() {
            std::fs::write(&path, &fresh).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == fresh,
            "{} is stale: it no longer matches the API's description. Refresh it with\n  {REFRESH}",
            path.display()
        );
    }

    #[test]
    fn every_route_and_schema_has_its_section() {
        let page = rendered();
        let description: Value =
            serde_json::from_str(super::super::openapi::description_json()).unwrap();
        for operation in operations(&description) {
            let heading = format!(
                "### `{} {}`",
                operation.method.to_uppercase(),
                operation.path
            );
            assert!(page.contains(&heading), "missing {heading}");
            assert!(page.contains(&format!("(#{})", operation.anchor())));
        }
        for (name, _) in object(&description["components"]["schemas"]) {
            assert!(page.contains(&format!("### {name}\n")), "missing {name}");
        }
        // Every link points at an anchor of the page.
        for link in page.split("](#").skip(1) {
            let anchor = link.split(')').next().unwrap();
            assert!(
                page.contains(&format!("<a id=\"{anchor}\"></a>")),
                "dangling link #{anchor}"
            );
        }
    }

    #[test]
    fn types_read_as_words() {
        use serde_json::json;
        assert_eq!(
            type_of(&json!({"$ref": "#/components/schemas/RecordPage"})),
            "[RecordPage](#schema-recordpage)"
        );
        assert_eq!(
            type_of(&json!({"type": ["string", "null"]})),
            "string or null"
        );
        assert_eq!(
            type_of(&json!({"type": "array", "items": {"type": "string", "format": "date-time"}})),
            "array of string (RFC 3339 time)"
        );
        assert_eq!(
            type_of(&json!({"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/X"}]})),
            "null or [X](#schema-x)"
        );
        assert_eq!(type_of(&json!({})), "any JSON");
        assert_eq!(cell(&json!("a | b\nc")), "a \\| b c");
    }
}

//! The admin verbs: `repeaterd records ...` and `repeaterd repeaters ...`
//! call a running daemon's HTTP API and print its JSON answer, so operators
//! script the same API the daemon documents.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Where the daemon's API is and how to authenticate.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Base URL of the daemon's API.
    #[arg(long, env = "REPEATERD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token (admin, or the domain's token).
    #[arg(long, env = "REPEATERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `repeaterd records ...`
#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// List a domain's records.
    List {
        /// The domain.
        domain: String,
        /// Only this repeater's records.
        #[arg(long)]
        repeater: Option<String>,
        /// Only records in this state (pending, retrying, succeeded, ...).
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
        /// Only ids after this one (paging).
        #[arg(long)]
        after: Option<i64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one record with its attempts.
    Show {
        domain: String,
        id: i64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send a record again (back to pending, history kept).
    Resend {
        domain: String,
        id: i64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a record that is not finished yet.
    Cancel {
        domain: String,
        id: i64,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `repeaterd repeaters ...`
#[derive(Debug, Subcommand)]
pub enum RepeatersCommand {
    /// List repeaters with their status (all, or one domain's).
    List {
        /// Only this domain.
        domain: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one repeater's status.
    Show {
        domain: String,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop scheduling a repeater; its records wait.
    Pause {
        domain: String,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Schedule a paused repeater again.
    Resume {
        domain: String,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Put retrying and cancelled records back to pending, clear the backoff.
    Requeue {
        domain: String,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Runs a `records` verb.
pub fn records(command: RecordsCommand) -> anyhow::Result<()> {
    let (api, method, path) = match command {
        RecordsCommand::List {
            domain,
            repeater,
            state,
            limit,
            after,
            api,
        } => {
            let mut query = Vec::new();
            if let Some(r) = repeater {
                query.push(format!("repeater={r}"));
            }
            if let Some(s) = state {
                query.push(format!("state={s}"));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            if let Some(a) = after {
                query.push(format!("after={a}"));
            }
            let mut path = format!("/v1/domains/{domain}/records");
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            (api, "GET", path)
        }
        RecordsCommand::Show { domain, id, api } => {
            (api, "GET", format!("/v1/domains/{domain}/records/{id}"))
        }
        RecordsCommand::Resend { domain, id, api } => (
            api,
            "POST",
            format!("/v1/domains/{domain}/records/{id}/resend"),
        ),
        RecordsCommand::Cancel { domain, id, api } => (
            api,
            "POST",
            format!("/v1/domains/{domain}/records/{id}/cancel"),
        ),
    };
    call(&api, method, &path)
}

/// Runs a `repeaters` verb.
pub fn repeaters(command: RepeatersCommand) -> anyhow::Result<()> {
    let (api, method, path) = match command {
        RepeatersCommand::List { domain, api } => {
            (api, "GET", format!("/v1/domains/{domain}/repeaters"))
        }
        RepeatersCommand::Show { domain, name, api } => {
            (api, "GET", format!("/v1/domains/{domain}/repeaters/{name}"))
        }
        RepeatersCommand::Pause { domain, name, api } => (
            api,
            "POST",
            format!("/v1/domains/{domain}/repeaters/{name}/pause"),
        ),
        RepeatersCommand::Resume { domain, name, api } => (
            api,
            "POST",
            format!("/v1/domains/{domain}/repeaters/{name}/resume"),
        ),
        RepeatersCommand::Requeue { domain, name, api } => (
            api,
            "POST",
            format!("/v1/domains/{domain}/repeaters/{name}/requeue"),
        ),
    };
    call(&api, method, &path)
}

/// Sends one request and prints the answer; a non-2xx answer is an error.
fn call(api: &ApiArgs, method: &str, path: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let url = format!("{}{path}", api.url.trim_end_matches('/'));
    let (status, body) = runtime.block_on(async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", "application/json");
        if let Some(token) = &api.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = if method == "POST" {
            request = request.header("content-type", "application/json");
            Full::new(Bytes::from_static(b"{}"))
        } else {
            Full::new(Bytes::new())
        };
        let request = request
            .body(body)
            .with_context(|| format!("invalid request URL {url}"))?;
        let response = client
            .request(request)
            .await
            .with_context(|| format!("cannot reach repeaterd at {url}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer of {url}"))?
            .to_bytes();
        anyhow::Ok((status, body))
    })?;
    let text = String::from_utf8_lossy(&body);
    let pretty = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string());
    if status.is_success() {
        println!("{pretty}");
        Ok(())
    } else {
        bail!("{method} {url} answered {status}: {pretty}")
    }
}

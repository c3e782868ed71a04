//! The operator console in a real browser: Debian's chromium, headless,
//! driven through chromedriver (WebDriver) against the real daemon on a
//! real SQLite file, delivering to a real receiver.
//!
//! chromedriver is found as `REPEATERD_TEST_CHROMEDRIVER` or `chromedriver`
//! on PATH, chromium as `REPEATERD_TEST_CHROMIUM` or `/usr/bin/chromium`;
//! `.ci/run` installs both. Without them these tests fail and say so.
//!
//! The run writes screenshots of the overview and a record page to
//! `target/console-screenshots/`; `docs/console-*.png` are one such set.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use repeaterd_tests::{
    ADMIN_TOKEN, Backend, Daemon, DaemonConfig, Receiver, RepeaterConfig, Reply, TestDir,
    domain_token, eventually, free_port, list_records,
};
use serde_json::json;
use tokio::process::{Child, Command};

/// A headless chromium under chromedriver, stopped when dropped.
struct Browser {
    client: Client,
    _driver: Child,
}

impl Browser {
    async fn start() -> Browser {
        let driver_path = std::env::var("REPEATERD_TEST_CHROMEDRIVER")
            .unwrap_or_else(|_| "chromedriver".to_owned());
        let chromium = std::env::var("REPEATERD_TEST_CHROMIUM")
            .unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        let port = free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {driver_path:?} ({error}): the console's browser tests need \
                     chromium and chromedriver (Debian: apt-get install chromium chromium-driver; \
                     or set REPEATERD_TEST_CHROMEDRIVER)"
                )
            });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = eventually(
            "chromedriver to answer",
            Duration::from_secs(20),
            String::new,
            || {
                let capabilities = capabilities.clone();
                let url = url.clone();
                async move {
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                        .capabilities(capabilities)
                        .connect(&url)
                        .await
                        .ok()
                }
            },
        )
        .await;
        Browser {
            client,
            _driver: driver,
        }
    }

    async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("open a page");
    }

    async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("current url");
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The page's text; empty while a navigation replaces the page (the
    /// callers wait for what they expect).
    async fn text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(error) => panic!(
                "no {css} on {}: {error}\n{}",
                self.path().await,
                self.text().await
            ),
        }
    }

    /// The text of `css`. Live refresh swaps elements every 2 s, so an
    /// element found just before a swap is looked up again.
    async fn text_of(&self, css: &str) -> String {
        for _ in 0..5 {
            if let Ok(text) = self.find(css).await.text().await {
                return text;
            }
        }
        panic!("{css} kept going stale on {}", self.path().await)
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Waits until the page's text contains `wanted` (live refresh, or a
    /// page load after a click).
    async fn wait_text(&self, wanted: &str, within: Duration) -> String {
        let what = format!("the page to show {wanted:?}");
        eventually(&what, within, String::new, || async {
            let text = self.text().await;
            text.contains(wanted).then_some(text)
        })
        .await
    }

    async fn login(&self, base: &str, token: &str) {
        self.open(&format!("{base}/ui")).await;
        assert!(
            self.path().await.starts_with("/ui/login"),
            "without a session /ui sends to the login page, not {}",
            self.path().await
        );
        self.client
            .find(Locator::Css("#token"))
            .await
            .expect("token field")
            .send_keys(token)
            .await
            .expect("type the token");
        self.click("#login").await;
    }

    async fn csrf(&self) -> String {
        self.client
            .find(Locator::Css("input[name=csrf]"))
            .await
            .expect("a form with a CSRF token")
            .attr("value")
            .await
            .expect("attr")
            .expect("a value")
    }

    async fn session_cookie(&self) -> String {
        self.client
            .get_named_cookie("repeaterd_session")
            .await
            .expect("the session cookie")
            .value()
            .to_owned()
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(name), png).expect("write screenshot");
    }
}

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
}

/// A POST to the console as a browser with `session` would send it, with
/// the given form fields; returns the status.
async fn post_form(base: &str, path: &str, session: &str, fields: &[(&str, &str)]) -> u16 {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}{path}"))
        .header("cookie", format!("repeaterd_session={session}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            fields
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&"),
        )
        .send()
        .await
        .expect("post")
        .status()
        .as_u16()
}

async fn paused(daemon: &Daemon, domain: &str, name: &str) -> bool {
    let (_, status) = daemon
        .get(&format!("/v1/domains/{domain}/repeaters/{name}"))
        .await;
    status["paused"].as_bool().expect("paused in the status")
}

fn two_domains(receiver: &Receiver) -> DaemonConfig {
    DaemonConfig {
        repeaters: vec![
            RepeaterConfig::json_forward("acme", "crm", &receiver.url()),
            RepeaterConfig::json_forward("globex", "erp", &receiver.url()),
        ],
        // Rejected at once, so failures group without waiting on retries.
        max_attempts: 1,
        domain_tokens: vec!["acme".into()],
        ..DaemonConfig::default()
    }
}

#[tokio::test]
async fn an_operator_watches_and_repairs_deliveries_in_a_browser() {
    let refuse = Arc::new(AtomicBool::new(true));
    let refusing = refuse.clone();
    let receiver = Receiver::with_script(Arc::new(move |request, _| {
        let bad = String::from_utf8_lossy(&request.body).contains("\"bad\":true");
        if bad && refusing.load(Ordering::SeqCst) {
            Reply::status(422)
        } else {
            Reply::status(200)
        }
    }))
    .await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &two_domains(&receiver), &Backend::Sqlite).await;
    let base = daemon.base.clone();
    let browser = Browser::start().await;

    // Log in as admin; the overview lists both domains.
    browser.login(&base, ADMIN_TOKEN).await;
    browser.wait_text("Domains", Duration::from_secs(5)).await;
    assert_eq!(browser.path().await, "/ui");
    let overview = browser.text().await;
    assert!(
        overview.contains("acme") && overview.contains("globex"),
        "{overview}"
    );

    // A paused repeater's backlog grows on the open overview by itself.
    daemon.repeater_action("acme", "crm", "pause").await;
    let events: Vec<_> = (0..20)
        .map(|i| json!({"type": "patient.created", "id": format!("p{i}"), "payload": {"n": i}}))
        .collect();
    daemon.ingest_many("acme", events).await;
    eventually(
        "the overview to show 20 pending",
        Duration::from_secs(10),
        String::new,
        || async {
            let pending = browser.text_of("tr[data-domain=acme] td.pending").await;
            (pending == "20").then_some(())
        },
    )
    .await;
    assert_eq!(
        browser.path().await,
        "/ui",
        "refreshed in place, not reloaded"
    );

    // Resume from the domain page; the backlog drains.
    browser.open(&format!("{base}/ui/domains/acme")).await;
    browser.wait_text("Repeaters", Duration::from_secs(5)).await;
    browser
        .click("tr[data-repeater=crm] form[action$='/resume'] button")
        .await;
    browser
        .wait_text("acme/crm is resumed.", Duration::from_secs(5))
        .await;
    receiver.wait_for(20, Duration::from_secs(15)).await;
    browser.open(&format!("{base}/ui")).await;
    eventually(
        "the overview to show no backlog",
        Duration::from_secs(10),
        String::new,
        || async {
            let pending = browser.text_of("tr[data-domain=acme] td.pending").await;
            (pending == "0").then_some(())
        },
    )
    .await;

    // Refused records group by their last error; a sample opens with its attempts.
    let bad: Vec<_> = (0..5)
        .map(|i| json!({"type": "patient.created", "id": format!("bad{i}"), "payload": {"bad": true}}))
        .collect();
    daemon.ingest_many("acme", bad).await;
    eventually(
        "5 rejected records",
        Duration::from_secs(15),
        String::new,
        || async {
            (list_records(&daemon, "acme", Some("rejected")).await.len() == 5).then_some(())
        },
    )
    .await;
    browser
        .open(&format!("{base}/ui/domains/acme/repeaters/crm"))
        .await;
    let groups = browser.text_of("#failure-groups").await;
    assert!(groups.contains("422"), "{groups}");
    browser
        .click("#failure-groups td a[href*='/records/']")
        .await;
    browser.wait_text("Attempts", Duration::from_secs(5)).await;
    let attempts = browser.text_of("#attempts").await;
    assert!(attempts.contains("422"), "{attempts}");
    // What was sent is summarised on the attempt: method and URL.
    assert!(attempts.contains("POST http://127.0.0.1:"), "{attempts}");
    assert!(browser.text_of("#payload").await.contains("\"bad\": true"));
    browser.screenshot("record.png").await;

    // Resend the group once the receiver takes them: it asks first, then
    // every record of the group succeeds.
    refuse.store(false, Ordering::SeqCst);
    browser
        .open(&format!("{base}/ui/domains/acme/repeaters/crm"))
        .await;
    browser
        .click("#failure-groups a.button[href*='/failures/resend']")
        .await;
    browser
        .wait_text("Resend a failure group?", Duration::from_secs(5))
        .await;
    assert_eq!(browser.text_of("#group-count").await, "5");
    browser.click("#confirm").await;
    browser
        .wait_text("Resent 5 records.", Duration::from_secs(5))
        .await;
    eventually(
        "the resent group to succeed",
        Duration::from_secs(15),
        String::new,
        || async {
            list_records(&daemon, "acme", Some("rejected"))
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        list_records(&daemon, "acme", Some("succeeded")).await.len(),
        25
    );
    // Pin the repeater to the plugin version it runs, then let it follow
    // the newest again; a version that is not kept is refused.
    browser
        .open(&format!("{base}/ui/domains/acme/repeaters/crm"))
        .await;
    let versions = browser.text_of("#plugin-versions").await;
    assert!(
        versions.contains("runs here") && versions.contains("newest"),
        "{versions}"
    );
    browser.click("#plugin-versions form button").await;
    browser
        .wait_text("acme/crm is pinned to", Duration::from_secs(5))
        .await;
    let (_, crm) = daemon.get("/v1/domains/acme/repeaters/crm").await;
    let pin = crm["spec"]["plugin_sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("pinned in the store: {crm}"))
        .to_owned();
    assert_eq!(crm["plugin"]["running"]["sha256"], pin.as_str(), "{crm}");
    assert!(
        browser
            .text()
            .await
            .contains(&format!("Pinned to {}", &pin[..12]))
    );
    browser.click("form[action$='/crm/plugin'] button").await;
    browser
        .wait_text(
            "acme/crm follows the newest version of json-forward again.",
            Duration::from_secs(5),
        )
        .await;
    let (_, crm) = daemon.get("/v1/domains/acme/repeaters/crm").await;
    assert!(crm["spec"]["plugin_sha256"].is_null(), "{crm}");
    let unknown = "0".repeat(64);
    assert_eq!(
        post_form(
            &base,
            "/ui/domains/acme/repeaters/crm/plugin",
            &browser.session_cookie().await,
            &[("csrf", &browser.csrf().await), ("sha256", &unknown)],
        )
        .await,
        400
    );
    let (_, crm) = daemon.get("/v1/domains/acme/repeaters/crm").await;
    assert!(crm["spec"]["plugin_sha256"].is_null(), "{crm}");

    browser.open(&format!("{base}/ui")).await;
    browser.wait_text("Domains", Duration::from_secs(5)).await;
    browser.screenshot("overview.png").await;

    // A POST without the session's CSRF token changes nothing.
    let session = browser.session_cookie().await;
    let pause = "/ui/domains/acme/repeaters/crm/pause";
    assert_eq!(post_form(&base, pause, &session, &[]).await, 403);
    assert_eq!(
        post_form(&base, pause, &session, &[("csrf", "forged")]).await,
        403
    );
    assert!(!paused(&daemon, "acme", "crm").await);
    let csrf = browser.csrf().await;
    assert_eq!(
        post_form(&base, pause, &session, &[("csrf", &csrf)]).await,
        303,
        "the same POST with the token is done"
    );
    assert!(paused(&daemon, "acme", "crm").await);
    daemon.repeater_action("acme", "crm", "resume").await;

    // Unknown names give a 404 page.
    browser
        .open(&format!("{base}/ui/domains/acme/records/999999"))
        .await;
    browser
        .wait_text("There is no record 999999", Duration::from_secs(5))
        .await;
    browser
        .open(&format!("{base}/ui/domains/acme/repeaters/nope"))
        .await;
    browser
        .wait_text("There is no repeater acme/nope", Duration::from_secs(5))
        .await;

    // Logging out ends the session: its cookie no longer opens anything.
    browser.open(&format!("{base}/ui")).await;
    browser.click("#logout").await;
    browser.wait_text("API token", Duration::from_secs(5)).await;
    browser.open(&format!("{base}/ui/domains/acme")).await;
    assert!(browser.path().await.starts_with("/ui/login"));
    assert_eq!(
        post_form(&base, pause, &session, &[("csrf", &csrf)]).await,
        303,
        "answered with the way to the login page"
    );
    assert!(!paused(&daemon, "acme", "crm").await, "and nothing done");

    // A domain token sees its domain only, by link and by URL.
    browser.login(&base, &domain_token("acme")).await;
    browser.wait_text("Domains", Duration::from_secs(5)).await;
    let overview = browser.text_of("#domains").await;
    assert!(
        overview.contains("acme") && !overview.contains("globex"),
        "{overview}"
    );
    for page in [
        "/ui/domains/globex",
        "/ui/domains/globex/repeaters/erp",
        "/ui/plugins",
    ] {
        browser.open(&format!("{base}{page}")).await;
        let text = browser
            .wait_text("Not allowed", Duration::from_secs(5))
            .await;
        assert!(
            !text.contains("erp"),
            "{page} shows nothing of globex: {text}"
        );
    }
    browser.open(&format!("{base}/ui/domains/acme")).await;
    let acme_csrf = browser.csrf().await;
    let acme_session = browser.session_cookie().await;
    assert_eq!(
        post_form(
            &base,
            "/ui/domains/globex/repeaters/erp/pause",
            &acme_session,
            &[("csrf", &acme_csrf)]
        )
        .await,
        403
    );
    assert!(!paused(&daemon, "globex", "erp").await);

    browser.client.close().await.expect("close the browser");
}

#[tokio::test]
async fn an_expired_console_session_sends_you_to_login_and_back() {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let config = DaemonConfig {
        server_extra: vec!["ui_session_ttl = \"2s\"".into()],
        ..two_domains(&receiver)
    };
    let daemon = Daemon::start(&dir, &config, &Backend::Sqlite).await;
    let base = daemon.base.clone();
    let browser = Browser::start().await;
    browser.login(&base, ADMIN_TOKEN).await;
    browser.wait_text("Domains", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let wanted = "/ui/domains/acme/repeaters/crm?state=succeeded";
    browser.open(&format!("{base}{wanted}")).await;
    let at = browser.path().await;
    assert!(at.starts_with("/ui/login?next="), "expired: sent to {at}");
    browser
        .client
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(ADMIN_TOKEN)
        .await
        .unwrap();
    browser.click("#login").await;
    browser
        .wait_text("Failures by last error", Duration::from_secs(5))
        .await;
    assert_eq!(
        browser.path().await,
        wanted,
        "and back to the page asked for"
    );
    browser.client.close().await.expect("close the browser");
}

//! The raw ceiling of the machine: the fastest a minimal keep-alive HTTP/1.1
//! client can post the benchmark's 1 KiB JSON body to the same receiver the
//! scenarios use, over loopback. Every throughput figure is divided by it, so
//! results from different machines and runs can be compared.
//!
//! Where `nginx` and `wrk` are installed, the same body posted by wrk to
//! nginx is measured too, and the stronger of the two pairs is the
//! ceiling.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::payload;
use crate::receiver::{RECORD_ID_HEADER, Receiver};

/// What the ceiling run measured.
#[derive(Debug, Clone)]
pub struct Ceiling {
    /// Completed requests per second.
    pub requests_per_s: f64,
    /// Requests completed.
    pub requests: u64,
    /// Connections used.
    pub connections: usize,
    /// How long it ran.
    pub seconds: f64,
}

/// Posts the 1 KiB body over `connections` keep-alive connections for
/// `duration`, each connection sending its next request as soon as the last
/// answer came back.
pub async fn measure(duration: Duration, connections: usize) -> Result<Ceiling, String> {
    let domains = vec!["ceiling".to_owned()];
    let receiver = Receiver::start(&domains).await?;
    let addr = receiver.addr();
    let body = Bytes::from(payload::json_body(0, payload::BODY_BYTES));
    let next_id = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let body = body.clone();
        let next_id = next_id.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|err| format!("ceiling client cannot connect to {addr}: {err}"))?;
            let _ = stream.set_nodelay(true);
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|err| format!("ceiling client handshake: {err}"))?;
            tokio::spawn(connection);
            let mut done = 0u64;
            while Instant::now() < deadline {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let request = Request::post(format!("http://{addr}/ceiling/sink"))
                    .header("host", addr.to_string())
                    .header("content-type", "application/json")
                    .header(RECORD_ID_HEADER, id.to_string())
                    .body(Full::new(body.clone()))
                    .map_err(|err| format!("ceiling request: {err}"))?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|err| format!("ceiling request failed: {err}"))?;
                if !response.status().is_success() {
                    return Err(format!("ceiling receiver answered {}", response.status()));
                }
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|err| format!("ceiling response body: {err}"))?;
                done += 1;
            }
            Ok::<u64, String>(done)
        }));
    }
    let mut requests = 0;
    for task in tasks {
        requests += task
            .await
            .map_err(|err| format!("ceiling client task failed: {err}"))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    if receiver.requests() as u64 != requests {
        return Err(format!(
            "ceiling client counted {requests} answers but the receiver saw {} requests",
            receiver.requests()
        ));
    }
    Ok(Ceiling {
        requests_per_s: requests as f64 / seconds,
        requests,
        connections,
        seconds,
    })
}

/// Connections of the nginx + wrk ceiling: enough to keep nginx's one
/// worker busy while wrk's one thread waits for answers.
const WRK_CONNECTIONS: usize = 32;

/// The same 1 KiB body posted by `wrk` (one thread) to `nginx` (one worker
/// answering `204` to everything), both started here on a free loopback
/// port. Two of the fastest HTTP/1.1 programs there are, in C, each on one
/// core: on a 2-core machine this has measured well above the hyper pair,
/// and a ratio is only honest against the strongest ceiling the machine
/// shows. `Ok(None)` when either program is not installed.
pub async fn measure_nginx_wrk(duration: Duration, dir: &Path) -> Result<Option<Ceiling>, String> {
    let (Some(nginx), Some(wrk)) = (on_path("nginx"), on_path("wrk")) else {
        return Ok(None);
    };
    let dir = dir.join("ceiling-nginx");
    std::fs::create_dir_all(dir.join("temp"))
        .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    let port = free_port()?;
    let config = dir.join("nginx.conf");
    std::fs::write(&config, nginx_config(&dir, port))
        .map_err(|err| format!("cannot write {}: {err}", config.display()))?;
    let mut server = tokio::process::Command::new(&nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", nginx.display()))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let listening = async {
        while TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), listening)
        .await
        .is_err()
    {
        let _ = server.kill().await;
        let output = server.wait_with_output().await.ok();
        let stderr = output.map(|out| String::from_utf8_lossy(&out.stderr).into_owned());
        return Err(format!(
            "nginx did not listen on {addr} within 10 s: {}",
            stderr.unwrap_or_default().trim()
        ));
    }
    let script = dir.join("post.lua");
    let body = payload::json_body(0, payload::BODY_BYTES);
    std::fs::write(&script, wrk_script(&body))
        .map_err(|err| format!("cannot write {}: {err}", script.display()))?;
    let seconds = duration.as_secs().max(1);
    let run = tokio::process::Command::new(&wrk)
        .args([
            "-t1",
            &format!("-c{WRK_CONNECTIONS}"),
            &format!("-d{seconds}s"),
        ])
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{addr}/ceiling/sink"))
        .output()
        .await;
    let _ = server.kill().await;
    let run = run.map_err(|err| format!("cannot run {}: {err}", wrk.display()))?;
    let report = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() {
        return Err(format!(
            "wrk failed ({}): {} {}",
            run.status,
            report.trim(),
            String::from_utf8_lossy(&run.stderr).trim()
        ));
    }
    parse_wrk(&report).map(Some)
}

/// Reads the requests and the seconds from wrk's report ("N requests in
/// 3.00s, ..."); an answer other than 2xx or 3xx is an error.
fn parse_wrk(report: &str) -> Result<Ceiling, String> {
    if let Some(line) = report.lines().find(|l| l.contains("Non-2xx or 3xx")) {
        return Err(format!("nginx answered with errors: {}", line.trim()));
    }
    let line = (report.lines())
        .find(|l| l.contains(" requests in "))
        .ok_or_else(|| format!("no request count in wrk's report: {report}"))?;
    let mut words = line.split_whitespace();
    let requests: u64 = (words.next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("bad request count in wrk's report: {line}"))?;
    let seconds = (line.split(" requests in ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|time| wrk_seconds(time.trim()))
        .ok_or_else(|| format!("bad duration in wrk's report: {line}"))?;
    Ok(Ceiling {
        requests_per_s: requests as f64 / seconds,
        requests,
        connections: WRK_CONNECTIONS,
        seconds,
    })
}

/// A wrk duration ("3.00s", "2.99s", "1.00m") in seconds.
fn wrk_seconds(text: &str) -> Option<f64> {
    if let Some(minutes) = text.strip_suffix('m') {
        return minutes.parse::<f64>().ok().map(|m| m * 60.0);
    }
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    (seconds > 0.0).then_some(seconds)
}

/// nginx with one worker, no logs, answering `204` to every request.
fn nginx_config(dir: &Path, port: u16) -> String {
    let dir = dir.display();
    format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log error;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {dir}/temp/body;\n\
         \x20   proxy_temp_path {dir}/temp/proxy;\n\
         \x20   fastcgi_temp_path {dir}/temp/fastcgi;\n\
         \x20   uwsgi_temp_path {dir}/temp/uwsgi;\n\
         \x20   scgi_temp_path {dir}/temp/scgi;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       location / {{ return 204; }}\n\
         \x20   }}\n\
         }}\n"
    )
}

/// A wrk script posting `body` as JSON.
fn wrk_script(body: &str) -> String {
    format!(
        "wrk.method = \"POST\"\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.body = [==[{body}]==]\n"
    )
}

/// The program `name` in a directory of `PATH` (or `/usr/sbin`, where
/// Debian puts nginx), if there is one.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    (std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A loopback port nothing listens on at the moment.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|err| format!("cannot find a free port: {err}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|err| format!("cannot find a free port: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read_and_errors_refused() {
        let report = "Running 3s test @ http://127.0.0.1:4000/ceiling/sink\n  \
            1 threads and 32 connections\n  \
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n  \
            Latency   180.00us   50.00us   2.00ms   90.00%\n  \
            550800 requests in 3.00s, 40.98MB read\n\
            Requests/sec: 183600.00\n";
        let ceiling = parse_wrk(report).unwrap();
        assert_eq!(ceiling.requests, 550_800);
        assert!((ceiling.requests_per_s - 183_600.0).abs() < 0.01);
        assert_eq!(ceiling.connections, WRK_CONNECTIONS);

        let failing = format!("{report}  Non-2xx or 3xx responses: 12\n");
        assert!(parse_wrk(&failing).unwrap_err().contains("Non-2xx"));
        assert!(parse_wrk("Running 3s test\n").is_err());
        assert_eq!(wrk_seconds("1.00m"), Some(60.0));
        assert_eq!(wrk_seconds("0.00s"), None);
    }

    #[test]
    fn the_wrk_script_carries_the_body_whole() {
        let body = payload::json_body(0, payload::BODY_BYTES);
        let script = wrk_script(&body);
        assert!(script.contains(&format!("[==[{body}]==]")));
        assert!(
            !body.contains("]==]"),
            "the body would end the Lua string early"
        );
    }
}

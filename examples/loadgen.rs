//! A small HTTP load generator for the benchmarks and the chaos run: N POSTs at concurrency C,
//! with `{i}` in the body (and the idempotency key) replaced by the request number and `{i%K}`
//! by that number modulo K; with several `--body`, request i takes the (i mod count)-th. Prints
//! throughput and latency percentiles as JSON.
//!
//! cargo run --release --example loadgen -- --url URL [--url URL2 …] --body JSON [-n 5000] [-c 32]
//!     [--rate PER_SECOND] [--header K:V] [--key TEMPLATE] [--retry-for SECONDS] [--answers FILE]
//!
//! As a careful ESB caller under faults: `--key` sends an `Idempotency-Key`, `--retry-for` tries
//! a request that failed on the way or got a non-2xx answer again (on the next URL, with the
//! same key) for up to that long, and `--answers` writes each request's last answer as a JSON
//! line `{"i", "tries", "status", "answer", "error"}`.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The pause between two tries of one request.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

struct Args {
    /// Requests go round-robin over these.
    urls: Vec<String>,
    /// Requests per second over all workers (0 = as fast as possible).
    rate: f64,
    /// Request i takes `bodies[i % len]`.
    bodies: Vec<String>,
    n: usize,
    concurrency: usize,
    headers: Vec<(String, String)>,
    key: Option<String>,
    retry_for: Duration,
    answers: Option<String>,
}

/// A request's last try.
struct Answer {
    status: Option<u16>,
    body: Result<String, String>,
}

impl Answer {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s)) && self.body.is_ok()
    }

    fn json_line(&self, i: usize, tries: usize) -> String {
        let (answer, error) = match &self.body {
            Ok(b) => (
                serde_json::from_str(b).unwrap_or(serde_json::Value::String(b.clone())),
                serde_json::Value::Null,
            ),
            Err(e) => (serde_json::Value::Null, e.clone().into()),
        };
        serde_json::json!({"i": i, "tries": tries, "status": self.status, "answer": answer, "error": error})
            .to_string()
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        urls: vec![],
        rate: 0.0,
        bodies: vec![],
        n: 5000,
        concurrency: 32,
        headers: vec![],
        key: None,
        retry_for: Duration::ZERO,
        answers: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.urls.push(value()?),
            "--rate" => args.rate = value()?.parse().map_err(|_| "--rate takes a number")?,
            "--body" => args.bodies.push(value()?),
            "-n" => args.n = value()?.parse().map_err(|_| "-n takes a number")?,
            "-c" => args.concurrency = value()?.parse().map_err(|_| "-c takes a number")?,
            "--header" => {
                let v = value()?;
                let (k, v) = v.split_once(':').ok_or("--header takes NAME:VALUE")?;
                args.headers.push((k.trim().into(), v.trim().into()));
            }
            "--key" => args.key = Some(value()?),
            "--retry-for" => {
                let secs: f64 = value()?.parse().map_err(|_| "--retry-for takes seconds")?;
                args.retry_for = Duration::from_secs_f64(secs);
            }
            "--answers" => args.answers = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.urls.is_empty() {
        return Err("--url is required".into());
    }
    if args.bodies.is_empty() {
        args.bodies.push("{}".into());
    }
    Ok(args)
}

fn render(template: &str, i: usize) -> String {
    let mut out = String::with_capacity(template.len() + 8);
    let mut rest = template;
    while let Some(start) = rest.find("{i") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        let spec = &rest[start + 2..start + end];
        match spec.strip_prefix('%').and_then(|k| k.parse::<usize>().ok()) {
            Some(k) if k > 0 => out.push_str(&(i % k).to_string()),
            _ if spec.is_empty() => out.push_str(&i.to_string()),
            _ => out.push_str(&rest[start..=start + end]),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// One try of request `i` (the `try_`-th), on the URL its turn picks.
async fn send(client: &reqwest::Client, args: &Args, i: usize, try_: usize) -> Answer {
    let mut req = client
        .post(&args.urls[(i + try_) % args.urls.len()])
        .header("content-type", "application/json")
        .body(render(&args.bodies[i % args.bodies.len()], i));
    for (k, v) in &args.headers {
        req = req.header(k, v);
    }
    if let Some(key) = &args.key {
        req = req.header("idempotency-key", render(key, i));
    }
    match req.send().await {
        Ok(res) => Answer {
            status: Some(res.status().as_u16()),
            body: res.text().await.map_err(|e| e.to_string()),
        },
        Err(e) => Answer {
            status: None,
            body: Err(e.to_string()),
        },
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        // A server that never answers counts as a failed try, not a stuck worker.
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let out = args.answers.as_ref().map(|path| {
        let file = std::fs::File::create(path).expect("answers file created");
        Arc::new(Mutex::new(std::io::BufWriter::new(file)))
    });
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, args, next, out) =
                (client.clone(), args.clone(), next.clone(), out.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let (mut failures, mut retried) = (0usize, 0usize);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= args.n {
                        break;
                    }
                    if args.rate > 0.0 {
                        let due = started + Duration::from_secs_f64(i as f64 / args.rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let t = Instant::now();
                    let (mut answer, mut tries) = (send(&client, &args, i, 0).await, 1);
                    while !answer.ok() && t.elapsed() < args.retry_for {
                        tokio::time::sleep(RETRY_PAUSE).await;
                        answer = send(&client, &args, i, tries).await;
                        tries += 1;
                    }
                    latencies.push(t.elapsed());
                    failures += usize::from(!answer.ok());
                    retried += usize::from(tries > 1);
                    if let Some(out) = &out {
                        let line = answer.json_line(i, tries);
                        writeln!(out.lock().unwrap(), "{line}").expect("answers file written");
                    }
                }
                (latencies, failures, retried)
            })
        })
        .collect();
    let mut all: Vec<Duration> = Vec::with_capacity(args.n);
    let (mut failures, mut retried) = (0, 0);
    for w in workers {
        let (l, f, r) = w.await.unwrap();
        all.extend(l);
        failures += f;
        retried += r;
    }
    if let Some(out) = out {
        out.lock().unwrap().flush().expect("answers file written");
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{{\"requests\": {}, \"failures\": {failures}, \"retried\": {retried}, \"seconds\": {:.3}, \"per_second\": {:.0}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}

//! A small HTTP load generator for the benchmarks: N POSTs at concurrency C, with `{i}` in the
//! body replaced by the request number and `{i%K}` by that number modulo K. Prints throughput
//! and latency percentiles as JSON.
//!
//! cargo run --release --example loadgen -- --url URL [--url URL2 …] --body JSON [-n 5000] [-c 32]
//!     [--rate PER_SECOND] [--header K:V]

use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    /// Requests go round-robin over these.
    urls: Vec<String>,
    /// Requests per second over all workers (0 = as fast as possible).
    rate: f64,
    body: String,
    n: usize,
    concurrency: usize,
    headers: Vec<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        urls: vec![],
        rate: 0.0,
        body: "{}".into(),
        n: 5000,
        concurrency: 32,
        headers: vec![],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.urls.push(value()?),
            "--rate" => args.rate = value()?.parse().map_err(|_| "--rate takes a number")?,
            "--body" => args.body = value()?,
            "-n" => args.n = value()?.parse().map_err(|_| "-n takes a number")?,
            "-c" => args.concurrency = value()?.parse().map_err(|_| "-c takes a number")?,
            "--header" => {
                let v = value()?;
                let (k, v) = v.split_once(':').ok_or("--header takes NAME:VALUE")?;
                args.headers.push((k.trim().into(), v.trim().into()));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.urls.is_empty() {
        return Err("--url is required".into());
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
        .build()
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, args, next) = (client.clone(), args.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0usize;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= args.n {
                        break;
                    }
                    if args.rate > 0.0 {
                        let due = started + Duration::from_secs_f64(i as f64 / args.rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let mut req = client
                        .post(&args.urls[i % args.urls.len()])
                        .header("content-type", "application/json")
                        .body(render(&args.body, i));
                    for (k, v) in &args.headers {
                        req = req.header(k, v);
                    }
                    let t = Instant::now();
                    let ok = match req.send().await {
                        Ok(res) => res.status().is_success() && res.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    latencies.push(t.elapsed());
                    failures += usize::from(!ok);
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut all: Vec<Duration> = Vec::with_capacity(args.n);
    let mut failures = 0;
    for w in workers {
        let (l, f) = w.await.unwrap();
        all.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{{\"requests\": {}, \"failures\": {failures}, \"seconds\": {:.3}, \"per_second\": {:.0}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}

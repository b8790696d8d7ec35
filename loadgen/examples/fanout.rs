//! Fan-out micro-benchmark: N clients in one room, P of them publishing; reports
//! deliveries/s, send→receive latency, and the server's CPU per delivery.
//!
//! It starts the server binary itself (so it can read the server's CPU time from /proc),
//! or measures an external server with `--target` (then CPU is read from `--server-pid`
//! if given).
//!
//! ```text
//! cargo build --release
//! cargo run --release -p lockstep-loadgen --example fanout -- --clients 1000 --publishers 10 --rate 100
//! ```
//! `--rate` is messages per second per publisher, sent on a fixed schedule; latency is
//! measured from the scheduled send time, so a stalled server cannot hide behind a
//! stalled sender (coordinated omission). `--rate 0` is a closed loop: each publisher
//! keeps `--window` sends un-acked.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lockstep_loadgen::stats::{proc_cpu_secs as cpu_secs, proc_rss_kib as rss_kib};
use lockstep_loadgen::wire;
use lockstep_protocol::ws::{Decoded, Decoder, Frame, OP_PONG, Role};
use tokio::io::AsyncWriteExt;

struct Opts {
    server_bin: String,
    target: Option<String>,
    server_pid: Option<u32>,
    clients: usize,
    rooms: usize,
    publishers: usize,
    rate: f64,
    window: usize,
    duration: f64,
    warmup: f64,
    text_bytes: usize,
    sync: String,
    workers: usize,
    /// Lift the server's per-connection rate limits (a benchmark measures capacity).
    unlimited: bool,
}

fn parse() -> Opts {
    let mut o = Opts {
        server_bin: "target/release/lockstep".into(),
        target: None,
        server_pid: None,
        clients: 1000,
        rooms: 1,
        publishers: 10,
        rate: 100.0,
        window: 16,
        duration: 10.0,
        warmup: 3.0,
        text_bytes: 64,
        sync: "normal".into(),
        workers: 2,
        unlimited: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--server-bin" => o.server_bin = v,
            "--target" => o.target = Some(v),
            "--server-pid" => o.server_pid = v.parse().ok(),
            "--clients" => o.clients = v.parse().expect("--clients N"),
            "--rooms" => o.rooms = v.parse().expect("--rooms N"),
            "--publishers" => o.publishers = v.parse().expect("--publishers N"),
            "--rate" => o.rate = v.parse().expect("--rate R"),
            "--window" => o.window = v.parse().expect("--window W"),
            "--duration" => o.duration = v.parse().expect("--duration S"),
            "--warmup" => o.warmup = v.parse().expect("--warmup S"),
            "--text-bytes" => o.text_bytes = v.parse().expect("--text-bytes N"),
            "--sync" => o.sync = v,
            "--workers" => o.workers = v.parse().expect("--workers N"),
            "--limits" => {
                o.unlimited = false;
                i -= 1;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    o
}

struct Shared {
    start: Instant,
    measuring: AtomicBool,
    stop: AtomicBool,
    delivered: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    acked_measured: AtomicU64,
    errors: AtomicU64,
    late_sends: AtomicU64,
}

fn nanos(shared: &Shared) -> u64 {
    shared.start.elapsed().as_nanos() as u64
}

/// Finds `"text":"t<digits>` and returns the digits' value.
fn sent_at(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"text\":\"t";
    let at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let mut v = 0u64;
    for &b in &payload[at..] {
        if !b.is_ascii_digit() {
            break;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    Some(v)
}

async fn client(
    k: usize,
    addr: SocketAddr,
    opts: Arc<Opts>,
    shared: Arc<Shared>,
    ready: Arc<tokio::sync::Barrier>,
) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 2).expect("bounds");
    let (mut stream, mut buf) = wire::connect(addr, "bench", &format!("/ws?user=u{k}"))
        .await
        .expect("connect");
    let mut out = Vec::new();
    let room = format!("bench-{}", k % opts.rooms.max(1));
    wire::text_frame(
        &mut out,
        format!(r#"{{"type":"join","room":"{room}"}}"#).as_bytes(),
    );
    stream.write_all(&out).await.expect("join");
    out.clear();
    let publisher = k < opts.publishers;
    let mut dec = Decoder::new(Role::Client, 1 << 20);
    let mut joined = false;
    let mut n = 0u64;
    let mut outstanding = 0usize;
    let interval = if opts.rate > 0.0 {
        Duration::from_secs_f64(1.0 / opts.rate)
    } else {
        Duration::ZERO
    };
    let pad = "x".repeat(opts.text_bytes.saturating_sub(21));
    let mut next_send = Instant::now();
    let mut pos = 0;
    ready.wait().await;
    if publisher {
        // Spread publishers over one interval so they do not send in lockstep.
        next_send = Instant::now() + interval.mul_f64(k as f64 / opts.publishers.max(1) as f64);
    }
    loop {
        if shared.stop.load(Relaxed) {
            break;
        }
        // Publish what is due.
        if publisher && joined {
            let now = Instant::now();
            let mut burst = 0;
            while (opts.rate > 0.0 && next_send <= now && burst < 64)
                || (opts.rate == 0.0 && outstanding < opts.window)
            {
                let intended = if opts.rate > 0.0 { next_send } else { now };
                let t = intended.duration_since(shared.start).as_nanos() as u64;
                n += 1;
                wire::text_frame_with(&mut out, |b| {
                    use std::io::Write;
                    let _ = write!(
                        b,
                        r#"{{"type":"send","room":"{room}","id":"p{k}-{n}","text":"t{t:020}{pad}"}}"#
                    );
                });
                shared.sent.fetch_add(1, Relaxed);
                outstanding += 1;
                burst += 1;
                if opts.rate > 0.0 {
                    next_send += interval;
                }
            }
            if opts.rate > 0.0 && next_send + interval * 64 < now {
                shared.late_sends.fetch_add(1, Relaxed);
            }
            if !out.is_empty() {
                if stream.write_all(&out).await.is_err() {
                    break;
                }
                out.clear();
            }
        }
        // Read what arrived (with a wake-up for the next scheduled send).
        let wait = if publisher && joined && opts.rate > 0.0 {
            next_send.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(100)
        };
        let readable = tokio::time::timeout(wait, stream.readable()).await;
        if readable.is_err() {
            continue;
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match stream.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        let now_ns = nanos(&shared);
        let measuring = shared.measuring.load(Relaxed);
        let mut delivered = 0;
        loop {
            match dec.decode(&mut buf[pos..]) {
                Ok(Decoded::NeedMore(_)) => break,
                Ok(Decoded::Fragment(used)) => pos += used,
                Ok(Decoded::Frame(f, used)) => {
                    pos += used;
                    match f {
                        Frame::Text(p) if p.starts_with(br#"{"type":"message""#) => {
                            delivered += 1;
                            if measuring && let Some(t) = sent_at(p) {
                                let _ = hist.record(now_ns.saturating_sub(t).max(1_000));
                            }
                        }
                        Frame::Text(p) if p.starts_with(br#"{"type":"ack""#) => {
                            outstanding = outstanding.saturating_sub(1);
                            shared.acked.fetch_add(1, Relaxed);
                            if measuring {
                                shared.acked_measured.fetch_add(1, Relaxed);
                            }
                        }
                        Frame::Text(p) if p.starts_with(br#"{"type":"joined""#) => joined = true,
                        Frame::Text(p)
                            if p.starts_with(br#"{"type":"error""#)
                                && shared.errors.fetch_add(1, Relaxed) < 5 =>
                        {
                            eprintln!("client {k}: {}", String::from_utf8_lossy(p));
                        }
                        Frame::Ping(p) => wire::control_frame(&mut out, OP_PONG, p),
                        _ => {}
                    }
                }
                Err(e) => panic!("client {k}: {e}"),
            }
        }
        buf.drain(..pos);
        pos = 0;
        if measuring {
            shared.delivered.fetch_add(delivered, Relaxed);
        }
        if !out.is_empty() {
            let _ = stream.write_all(&out).await;
            out.clear();
        }
    }
    hist
}

fn wait_healthy(addr: SocketAddr) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server at {addr} did not come up");
}

fn main() {
    let opts = Arc::new(parse());
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, mut child, pid): (SocketAddr, Option<Child>, Option<String>) = match &opts.target {
        Some(t) => {
            let hostport = t
                .trim_start_matches("ws://")
                .split('/')
                .next()
                .expect("host:port");
            (
                hostport.parse().expect("--target ws://IP:PORT/ws"),
                None,
                opts.server_pid.map(|p| p.to_string()),
            )
        }
        None => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let config = dir.path().join("bench.toml");
            let limits = if opts.unlimited {
                "send_rate_per_sec = 1e9\nsend_burst = 1000000\nevent_rate_per_sec = 1e9\nevent_burst = 1000000\n"
            } else {
                ""
            };
            std::fs::write(&config, limits).expect("writing the server config");
            let child = Command::new(&opts.server_bin)
                .args([
                    "serve",
                    "--config",
                    &config.display().to_string(),
                    "--listen",
                    &addr.to_string(),
                    "--db",
                    &dir.path().join("bench.db").display().to_string(),
                    "--sync",
                    &opts.sync,
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("spawning the server (build it with cargo build --release)");
            let pid = child.id().to_string();
            wait_healthy(addr);
            (addr, Some(child), Some(pid))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.workers)
        .enable_all()
        .build()
        .expect("runtime");
    let shared = Arc::new(Shared {
        start: Instant::now(),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        delivered: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        acked_measured: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        late_sends: AtomicU64::new(0),
    });
    let hist = rt.block_on(async {
        let ready = Arc::new(tokio::sync::Barrier::new(opts.clients + 1));
        let mut tasks = Vec::new();
        for k in 0..opts.clients {
            tasks.push(tokio::spawn(client(
                k,
                addr,
                opts.clone(),
                shared.clone(),
                ready.clone(),
            )));
            if k % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        ready.wait().await;
        let idle_rss = pid.as_deref().map(rss_kib).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs_f64(opts.warmup)).await;
        let cpu0 = pid.as_deref().map(cpu_secs).unwrap_or(0.0);
        let me0 = cpu_secs("self");
        let t0 = Instant::now();
        shared.measuring.store(true, Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(opts.duration)).await;
        shared.measuring.store(false, Relaxed);
        let secs = t0.elapsed().as_secs_f64();
        let cpu1 = pid.as_deref().map(cpu_secs).unwrap_or(0.0);
        let me1 = cpu_secs("self");
        let delivered = shared.delivered.load(Relaxed);
        let busy_rss = pid.as_deref().map(rss_kib).unwrap_or(0);
        shared.stop.store(true, Relaxed);
        let mut all = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 2).expect("bounds");
        for t in tasks {
            if let Ok(h) = t.await {
                all.add(&h).expect("same bounds");
            }
        }
        let rate = delivered as f64 / secs;
        let server_cpu = cpu1 - cpu0;
        println!(
            "clients={} rooms={} publishers={} rate={}/s/publisher window={} text={}B sync={}",
            opts.clients,
            opts.rooms,
            opts.publishers,
            opts.rate,
            opts.window,
            opts.text_bytes,
            opts.sync
        );
        println!("deliveries/s        {:>12.0}", rate);
        println!(
            "acked sends/s       {:>12.0}",
            shared.acked_measured.load(Relaxed) as f64 / secs
        );
        println!(
            "latency ms          p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            all.value_at_quantile(0.5) as f64 / 1e6,
            all.value_at_quantile(0.9) as f64 / 1e6,
            all.value_at_quantile(0.99) as f64 / 1e6,
            all.value_at_quantile(0.999) as f64 / 1e6,
            all.max() as f64 / 1e6
        );
        if pid.is_some() {
            println!(
                "server CPU          {:.0}% of a core, {:.3} us/delivery",
                server_cpu / secs * 100.0,
                server_cpu * 1e6 / delivered.max(1) as f64
            );
            println!(
                "server RSS          {} KiB after connect, {} KiB under load ({:.1} KiB/connection after connect)",
                idle_rss,
                busy_rss,
                idle_rss as f64 / opts.clients as f64
            );
        }
        println!(
            "load generator CPU  {:.0}% of a core ({} workers), {:.3} us/delivery",
            (me1 - me0) / secs * 100.0,
            opts.workers,
            (me1 - me0) * 1e6 / delivered.max(1) as f64
        );
        println!(
            "sent {} acked {} errors {} late-schedule events {}",
            shared.sent.load(Relaxed),
            shared.acked.load(Relaxed),
            shared.errors.load(Relaxed),
            shared.late_sends.load(Relaxed)
        );
        all
    });
    drop(hist);
    if let Some(c) = child.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

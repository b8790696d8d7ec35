//! `lockstep run`, the main job, as users run it: the binary, a scenario file, exit codes
//! 0 / 1 / 2, the JSON and HTML reports, and a server killed mid-run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const TINY: &str = r#"
name = "tiny"
seed = 2
duration = "3s"
quiet = "3s"
[server]
heartbeat_ms = 1000
[ramp]
connect_rate = 200
[reconnect]
delay_min = "20ms"
delay_max = "100ms"
[[group]]
name = "t"
rooms = 2
members = 10
senders = 4
rate = 10.0
[[fault]]
kind = "reset_peer"
clients = 0.3
every = "1s"
[thresholds]
unconfirmed_max = 0
"#;

fn scenario(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn lockstep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the lockstep binary runs")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn run_exits_0_when_valid_1_with_a_bug_2_when_it_cannot_run() {
    // Goal: the exit codes CI relies on — 0 for a valid run, 1 (naming the anomaly) when
    // the fault proxy breaks the guarantees, 2 for a scenario that cannot run.
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path(), "tiny.toml", TINY);
    let s = s.to_str().unwrap();

    let ok = lockstep(&["run", s, "--json", "--no-progress"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let j = json_of(&ok);
    assert_eq!(j["schema"], "lockstep.run/1");
    assert_eq!(j["check"]["verdict"], "pass");
    assert!(j["load"]["counts"]["reconnects"].as_u64().unwrap() > 0);

    let junit = dir.path().join("j.xml");
    let bad = lockstep(&[
        "run",
        s,
        "--inject",
        "drop:5",
        "--no-progress",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(text.contains("Verdict: FAIL"), "{text}");
    assert!(text.contains("lost"), "{text}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<failure"), "{xml}");

    let broken = scenario(
        dir.path(),
        "broken.toml",
        &TINY.replace("rate = 10.0", "rate = -1.0"),
    );
    let out = lockstep(&["run", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.toml:") && err.contains("group[0].rate"),
        "{err}"
    );
}

#[test]
fn a_server_killed_mid_run_loses_nothing_acked() {
    // Goal: with the server SIGKILLed and restarted on the same database mid-run (and a
    // graceful restart later), clients reconnect and resume, and the checker finds every
    // acked message and no anomaly.
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{TINY}\n[[server_fault]]\nkind = \"kill\"\nat = \"1s\"\ndown = \"300ms\"\n\n[[server_fault]]\nkind = \"restart\"\nat = \"2s\"\ndown = \"200ms\"\n"
    )
    .replace("duration = \"3s\"", "duration = \"4s\"");
    let s = scenario(dir.path(), "kill.toml", &text);
    let out = lockstep(&["run", s.to_str().unwrap(), "--json", "--no-progress"]);
    let j = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        serde_json::to_string_pretty(&j["check"]["anomalies"]).unwrap()
    );
    let faults = &j["check"]["stats"]["faults"];
    assert_eq!(faults["server_kill"], 1, "{faults}");
    assert_eq!(faults["server_restart"], 1, "{faults}");
    // Both came back (a restart whose SIGTERM did not end in a clean exit 0 makes the
    // run exit 2, so exit 0 above also says the graceful shutdown was graceful).
    assert_eq!(faults["server_up"], 2, "{faults}");
    assert!(j["server"].as_str().unwrap().starts_with("child process"));
    // Messages were acked before the kill and found afterwards.
    assert!(j["check"]["stats"]["sends"]["acked"].as_u64().unwrap() > 50);
}

/// Pixels of `png` within a small distance of `rgb`.
fn count_color(png: &Path, rgb: (u8, u8, u8)) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bpp = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(bpp)
        .filter(|p| {
            p.len() >= 3
                && (p[0] as i32 - rgb.0 as i32).abs() < 12
                && (p[1] as i32 - rgb.1 as i32).abs() < 12
                && (p[2] as i32 - rgb.2 as i32).abs() < 12
        })
        .count()
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .filter_map(|c| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(c))
                    .find(|p| p.is_file())
            })
        })
        .next()
}

#[test]
fn the_html_report_draws_its_charts_in_a_browser() {
    // Goal: the HTML report is one self-contained file whose charts actually render:
    // headless Chromium screenshots it, and the series colours of the throughput and
    // latency charts and the red anomaly marks are on the page.
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("LOCKSTEP_REQUIRE_BROWSER").is_none(),
            "LOCKSTEP_REQUIRE_BROWSER is set but no chromium is on PATH"
        );
        eprintln!("skipped: no chromium on PATH (apt-get install chromium; .ci/run does)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path(), "tiny.toml", TINY);
    let html = dir.path().join("report.html");
    let out = lockstep(&[
        "run",
        s.to_str().unwrap(),
        "--inject",
        "drop:5",
        "--no-progress",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let page = std::fs::read_to_string(&html).unwrap();
    // Every chart the report promises is there: throughput and latency over time, the
    // per-group latency distribution, and a timeline for the first anomaly.
    for id in ["throughput", "latency", "groups", "anomaly-1"] {
        assert!(
            page.contains(&format!("<svg id=\"{id}\"")),
            "chart {id} missing"
        );
    }
    // Self-contained: nothing to fetch, nothing to run.
    assert!(!page.contains("<script") && !page.contains("<link "));
    let shot = dir.path().join("shot.png");
    let profile = dir.path().join("profile");
    let status = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.display()),
            "--window-size=1000,2600",
            &format!("--screenshot={}", shot.display()),
            &format!("file://{}", html.display()),
        ])
        .output()
        .unwrap();
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    // deliveries/s line, p50 and p99 lines, anomaly events in red.
    for (name, rgb) in [
        ("blue deliveries line", (31, 119, 180)),
        ("green p50 line", (44, 160, 44)),
        ("red p99 / anomaly marks", (214, 39, 40)),
    ] {
        let n = count_color(&shot, rgb);
        assert!(n > 200, "{name}: only {n} pixels drawn");
    }
}

#[test]
fn every_shipped_scenario_parses() {
    // Goal: the scenarios in `scenarios/` stay valid as the schema evolves, and each says
    // what it proves.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let s = lockstep_loadgen::scenario::Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# Proves"),
            "{} must open with `# Proves: ...`",
            path.display()
        );
        assert!(s.clients() > 0);
        n += 1;
    }
    assert!(n >= 9, "only {n} scenarios");
}

#[test]
fn an_unreachable_target_is_an_error_not_a_long_run() {
    // Goal: `lockstep load` against nothing fails at once, naming the target (exit 2).
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path(), "tiny.toml", TINY);
    let started = std::time::Instant::now();
    let out = lockstep(&[
        "load",
        s.to_str().unwrap(),
        "--target",
        "ws://127.0.0.1:9/ws",
        "--no-progress",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the server at ws://127.0.0.1:9/ws"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn bench_fanout_probes_and_reports_in_json() {
    // Goal: `lockstep bench fanout` really loads a server and reports what it measured.
    // A p99 bound no real run can meet makes the search short and deterministic: the
    // first rate fails, two bisection probes follow, none is sustainable, and each probe
    // still reports real deliveries and server CPU.
    let out = lockstep(&[
        "bench",
        "fanout",
        "--sizes",
        "10",
        "--clients",
        "20",
        "--probe-secs",
        "1",
        "--p99-ms",
        "0.0001",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json_of(&out);
    assert_eq!(j["schema"], "lockstep.bench.fanout/1");
    let size = &j["sizes"][0];
    assert_eq!(size["room_size"], 10);
    assert_eq!(size["rooms"], 2);
    assert!(size["best"].is_null(), "{size}");
    let probes = size["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 3, "{size}");
    for p in probes {
        assert_eq!(p["sustainable"], false, "{p}");
        assert!(p["deliveries_per_sec"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["server_cpu_percent"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["server_rss_kib"].as_u64().unwrap() > 0, "{p}");
    }

    // A room size of 0 is refused by the CLI, not divided by.
    let out = lockstep(&["bench", "fanout", "--sizes", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sizes"));
}

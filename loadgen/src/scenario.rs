//! Scenario files: what load to generate and which faults to inject.
//!
//! A scenario is TOML. Every key is checked: an unknown key, a misspelled threshold or a
//! value out of range is an error naming the file, line, column and key — a scenario
//! that does not say what its author meant must never run (a threshold nobody checks
//! passes silently). See `docs/scenarios.md` for every key.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use lockstep_protocol::record::Thresholds;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// The most clients one scenario may describe (across groups). One process holds at most
/// about 19,000 sockets on this machine; a scenario above what the process can open is
/// refused before it starts, with the numbers (see `run.rs`).
pub const CLIENTS_MAX: u64 = 1_000_000;

/// A duration written as `"250ms"`, `"20s"`, `"5m"`, `"1h"`, `"750us"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn as_us(self) -> u64 {
        self.0.as_micros() as u64
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        if us.is_multiple_of(1_000_000) {
            write!(f, "{}s", us / 1_000_000)
        } else if us.is_multiple_of(1000) {
            write!(f, "{}ms", us / 1000)
        } else {
            write!(f, "{us}us")
        }
    }
}

/// Parses `"<number><unit>"` with unit `us`, `ms`, `s`, `m` or `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit (write e.g. \"500ms\" or \"20s\")"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (write e.g. \"500ms\" or \"20s\")"))?;
    let secs = match unit.trim() {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use us, ms, s, m or h"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=1e7).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).map_err(de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Same seed, same send and fault schedule.
    #[serde(default)]
    pub seed: u64,
    /// How long the load runs after ramp-up.
    pub duration: Dur,
    /// The bounded quiet period at the end: no sends, no faults; every still-joined client
    /// catches up to its rooms' heads. The run waits at most this long.
    #[serde(default = "default_quiet")]
    pub quiet: Dur,
    /// After the quiet period, one extra client per room joins with `since: 0` and reads
    /// the whole history, so the checker sees every room's complete final sequence.
    #[serde(default = "yes")]
    pub final_read: bool,
    /// Anomaly kinds this scenario expects (e.g. history lost to a non-persistent store);
    /// the checker lists them, marked allowed, and does not fail on them.
    #[serde(default)]
    pub allowed_anomalies: Vec<String>,
    #[serde(default)]
    pub ramp: Ramp,
    #[serde(default)]
    pub reconnect: Reconnect,
    #[serde(rename = "group")]
    pub groups: Vec<Group>,
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub thresholds: Thresholds,
    /// Server-side faults (`lockstep run` only; skipped with a warning against `--target`).
    #[serde(default, rename = "server_fault")]
    pub server_faults: Vec<ServerFault>,
    /// Settings for the server `lockstep run` starts (keys of `lockstep serve`'s config
    /// file, e.g. `heartbeat_ms`); checked by `lockstep run`, ignored against `--target`.
    #[serde(default)]
    pub server: toml::Table,
}

fn default_quiet() -> Dur {
    Dur(Duration::from_secs(10))
}

fn yes() -> bool {
    true
}

/// How fast clients connect at the start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ramp {
    /// New connections per second during ramp-up (rate-limited connects).
    #[serde(default = "default_connect_rate")]
    pub connect_rate: f64,
}

fn default_connect_rate() -> f64 {
    1000.0
}

impl Default for Ramp {
    fn default() -> Self {
        Self {
            connect_rate: default_connect_rate(),
        }
    }
}

/// How long a client waits before reconnecting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconnect {
    #[serde(default = "default_delay_min")]
    pub delay_min: Dur,
    #[serde(default = "default_delay_max")]
    pub delay_max: Dur,
    #[serde(default)]
    pub distribution: Distribution,
}

fn default_delay_min() -> Dur {
    Dur(Duration::from_millis(100))
}

fn default_delay_max() -> Dur {
    Dur(Duration::from_secs(2))
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            delay_min: default_delay_min(),
            delay_max: default_delay_max(),
            distribution: Distribution::Uniform,
        }
    }
}

/// Shape of a random delay between a min and a max.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Uniform in [min, max].
    #[default]
    Uniform,
    /// min + exponential with mean (max - min) / 2, capped at max.
    Exponential,
}

/// A group of rooms of one size, with its members and what they do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Rooms are named `<name>-<i>`.
    pub name: String,
    pub rooms: u32,
    /// Members (clients) per room; each client is in exactly one room.
    pub members: u32,
    /// How many members of each room send.
    #[serde(default)]
    pub senders: u32,
    /// Open loop: messages per second per sender, Poisson arrivals. Latency is measured
    /// from the intended send time, so a stall shows instead of hiding.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Closed loop instead: each sender keeps this many sends un-acked (reported as
    /// closed-loop; its latency shows queueing, not the server alone).
    #[serde(default)]
    pub window: Option<u32>,
    /// Text size range in bytes, inclusive.
    #[serde(default = "default_text_bytes")]
    pub text_bytes: [u32; 2],
    /// `read` marks per member per second (Poisson).
    #[serde(default)]
    pub read_receipts: f64,
    /// `typing` events per member per second (Poisson).
    #[serde(default)]
    pub typing: f64,
    /// On its first join, a client asks for this many messages of history.
    #[serde(default)]
    pub history: u32,
}

fn default_text_bytes() -> [u32; 2] {
    [16, 128]
}

/// Where a connection fault applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client to server.
    Upstream,
    /// Server to client.
    Downstream,
    #[default]
    Both,
}

/// The kinds of connection faults, in toxiproxy's vocabulary (plus `close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Delay every chunk by `latency` ± `jitter`, keeping order (as TCP does).
    Latency,
    /// Abrupt disconnect: TCP reset, no close frame.
    ResetPeer,
    /// Half-open: the client goes silent (reads nothing, answers no ping) for `duration`,
    /// then drops the connection without a close.
    Timeout,
    /// A clean close whose TCP close is delayed by `delay` after the close frame.
    SlowClose,
    /// Limit throughput to `rate_kbps`; downstream, this is a slow reader.
    Bandwidth,
    /// Split data into small writes of `average_size` ± `size_variation` bytes, `delay`
    /// apart.
    Slicer,
    /// Reset the connection after `bytes` bytes in the direction.
    LimitData,
    /// Clean close with a close handshake.
    Close,
}

impl FaultKind {
    pub const ALL: [&'static str; 8] = [
        "latency",
        "reset_peer",
        "timeout",
        "slow_close",
        "bandwidth",
        "slicer",
        "limit_data",
        "close",
    ];

    /// Faults that happen at moments (and end the connection) rather than shaping it.
    pub fn is_event(self) -> bool {
        matches!(
            self,
            FaultKind::ResetPeer | FaultKind::Timeout | FaultKind::SlowClose | FaultKind::Close
        )
    }
}

/// One connection fault and who gets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub kind: FaultKind,
    #[serde(default)]
    pub direction: Direction,
    /// Fraction of clients affected (toxicity), 0..=1.
    #[serde(default = "one")]
    pub clients: f64,
    /// Only clients of these groups (all when empty).
    #[serde(default)]
    pub groups: Vec<String>,
    /// For moment faults (reset_peer, timeout, slow_close, close): mean time between
    /// occurrences per affected client (Poisson).
    #[serde(default)]
    pub every: Option<Dur>,
    /// latency: added delay; jitter: ± uniform around it.
    #[serde(default)]
    pub latency: Option<Dur>,
    #[serde(default)]
    pub jitter: Option<Dur>,
    /// bandwidth: kilobytes per second.
    #[serde(default)]
    pub rate_kbps: Option<f64>,
    /// timeout: how long the client stays silent before dropping the connection.
    #[serde(default)]
    pub duration: Option<Dur>,
    /// slow_close: delay before the TCP close; slicer: delay between slices.
    #[serde(default)]
    pub delay: Option<Dur>,
    /// slicer: slice size and its variation, bytes.
    #[serde(default)]
    pub average_size: Option<u32>,
    #[serde(default)]
    pub size_variation: Option<u32>,
    /// limit_data: bytes before the reset.
    #[serde(default)]
    pub bytes: Option<u64>,
}

fn one() -> f64 {
    1.0
}

/// A fault of the server process (`lockstep run` only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFault {
    /// `kill` (SIGKILL, then restart on the same database) or `restart` (SIGTERM,
    /// graceful, then restart).
    pub kind: ServerFaultKind,
    /// When, from the start of the load phase.
    pub at: Dur,
    /// How long the server stays down before it is started again.
    #[serde(default = "default_down")]
    pub down: Dur,
}

fn default_down() -> Dur {
    Dur(Duration::from_millis(500))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerFaultKind {
    Kill,
    Restart,
}

/// A scenario that could not be used: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {key}: {message}")]
pub struct ScenarioError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the offending key (`group[1].senders`), or `-` when the file
    /// itself is unreadable.
    pub key: String,
    pub message: String,
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// A path step into the TOML document.
#[derive(Debug, Clone)]
enum Step {
    Key(&'static str),
    Index(usize),
}

/// Finds where a key path is written, for error messages.
fn locate(text: &str, path: &[Step]) -> Option<std::ops::Range<usize>> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut span = doc.span();
    let mut table = doc.get_ref();
    let mut value: Option<&toml::de::DeValue> = None;
    for step in path {
        match step {
            Step::Key(k) => {
                let t = match value {
                    None => table,
                    Some(v) => v.as_table()?,
                };
                let (key, v) = t.iter().find(|(key, _)| key.get_ref() == k)?;
                span = key.span();
                value = Some(v.get_ref());
                table = t;
            }
            Step::Index(i) => {
                let arr = value?.as_array()?;
                let item = arr.get(*i)?;
                span = item.span();
                value = Some(item.get_ref());
            }
        }
    }
    Some(span)
}

/// The dotted path (`group[0].duration`) of the innermost key whose name or value holds
/// `at` (a parse error's span), so a bad value is reported under its key.
fn key_at(text: &str, at: std::ops::Range<usize>) -> Option<String> {
    fn walk(t: &toml::de::DeTable, at: &std::ops::Range<usize>, path: String) -> Option<String> {
        for (k, v) in t.iter() {
            let (ks, vs) = (k.span(), v.span());
            let holds = |s: &std::ops::Range<usize>| s.start <= at.start && at.end <= s.end;
            let here = if path.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{path}.{}", k.get_ref())
            };
            // A `[table]`'s span is its header, not its keys: always look inside.
            if let Some(deeper) = inner(v.get_ref(), at, &here) {
                return Some(deeper);
            }
            if holds(&ks) || holds(&vs) {
                return Some(here);
            }
        }
        None
    }
    fn inner(v: &toml::de::DeValue, at: &std::ops::Range<usize>, path: &str) -> Option<String> {
        if let Some(t) = v.as_table() {
            return walk(t, at, path.to_owned());
        }
        let arr = v.as_array()?;
        for (i, item) in arr.iter().enumerate() {
            let here = format!("{path}[{i}]");
            if let Some(deeper) = inner(item.get_ref(), at, &here) {
                return Some(deeper);
            }
            let s = item.span();
            if s.start <= at.start && at.end <= s.end {
                return Some(here);
            }
        }
        None
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    walk(doc.get_ref(), &at, String::new())
}

fn path_string(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: file.clone(),
            line: 0,
            column: 0,
            key: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and validates scenario text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            let key = e
                .span()
                .and_then(|s| key_at(text, s))
                .unwrap_or_else(|| "-".into());
            ScenarioError {
                file: file.to_owned(),
                line,
                column,
                key,
                message: e.message().trim().to_owned(),
            }
        })?;
        scenario.validate().map_err(|(path, message)| {
            let (line, column) = locate(text, &path).map_or((1, 1), |s| line_col(text, s.start));
            ScenarioError {
                file: file.to_owned(),
                line,
                column,
                key: path_string(&path),
                message,
            }
        })?;
        Ok(scenario)
    }

    /// Total clients over all groups.
    pub fn clients(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| u64::from(g.rooms) * u64::from(g.members))
            .sum()
    }

    fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        use Step::{Index, Key};
        let fail = |path: Vec<Step>, msg: String| Err((path, msg));
        if self.name.trim().is_empty() {
            return fail(vec![Key("name")], "must not be empty".into());
        }
        if self.duration.0.is_zero() {
            return fail(vec![Key("duration")], "must be positive".into());
        }
        if self.ramp.connect_rate.is_nan() || self.ramp.connect_rate <= 0.0 {
            return fail(
                vec![Key("ramp"), Key("connect_rate")],
                "must be a positive number of connections per second".into(),
            );
        }
        if self.reconnect.delay_min > self.reconnect.delay_max {
            return fail(
                vec![Key("reconnect"), Key("delay_min")],
                format!(
                    "{} is above delay_max {}",
                    self.reconnect.delay_min, self.reconnect.delay_max
                ),
            );
        }
        if self.groups.is_empty() {
            return fail(
                vec![Key("group")],
                "a scenario needs at least one [[group]]".into(),
            );
        }
        for kind in &self.allowed_anomalies {
            if !ANOMALY_KINDS.contains(&kind.as_str()) {
                return fail(
                    vec![Key("allowed_anomalies")],
                    format!(
                        "unknown anomaly kind {kind:?}; known: {}",
                        ANOMALY_KINDS.join(", ")
                    ),
                );
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            let at = |k: &'static str| vec![Key("group"), Index(i), Key(k)];
            if g.name.is_empty()
                || !g
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':'))
                || g.name.len() > 40
            {
                return fail(
                    at("name"),
                    format!(
                        "{:?} must be 1..=40 characters of [A-Za-z0-9._:] (rooms are named <name>-<i>)",
                        g.name
                    ),
                );
            }
            if !names.insert(g.name.as_str()) {
                return fail(at("name"), format!("group {:?} is defined twice", g.name));
            }
            if g.rooms == 0 {
                return fail(at("rooms"), "must be at least 1".into());
            }
            if g.members == 0 {
                return fail(at("members"), "must be at least 1".into());
            }
            if g.senders > g.members {
                return fail(
                    at("senders"),
                    format!(
                        "{} senders but only {} members per room",
                        g.senders, g.members
                    ),
                );
            }
            match (g.rate, g.window) {
                (Some(_), Some(_)) => {
                    return fail(
                        at("window"),
                        "give either rate (open loop) or window (closed loop), not both".into(),
                    );
                }
                (None, None) if g.senders > 0 => {
                    return fail(
                        at("senders"),
                        "senders need a rate (messages/s, open loop) or a window (closed loop)"
                            .into(),
                    );
                }
                (Some(r), _) if !(r > 0.0 && r <= 100_000.0) => {
                    return fail(at("rate"), format!("{r} is not in (0, 100000] messages/s"));
                }
                (_, Some(w)) if w == 0 || w as usize > WINDOW_MAX => {
                    return fail(
                        at("window"),
                        format!("{w} is not in 1..={WINDOW_MAX} sends"),
                    );
                }
                _ => {}
            }
            let [lo, hi] = g.text_bytes;
            if lo > hi || hi > 1_000_000 {
                return fail(
                    at("text_bytes"),
                    format!("[{lo}, {hi}] must be [min, max] with min <= max <= 1000000"),
                );
            }
            for (k, v) in [("read_receipts", g.read_receipts), ("typing", g.typing)] {
                if !(0.0..=1000.0).contains(&v) {
                    return fail(at(k), format!("{v} is not in [0, 1000] per second"));
                }
            }
        }
        if self.clients() > CLIENTS_MAX {
            return fail(
                vec![Key("group")],
                format!("{} clients in all; at most {CLIENTS_MAX}", self.clients()),
            );
        }
        for (i, f) in self.faults.iter().enumerate() {
            let at = |k: &'static str| vec![Key("fault"), Index(i), Key(k)];
            if !(0.0..=1.0).contains(&f.clients) {
                return fail(
                    at("clients"),
                    format!("{} is not a fraction in [0, 1]", f.clients),
                );
            }
            for g in &f.groups {
                if !names.contains(g.as_str()) {
                    return fail(at("groups"), format!("no group named {g:?}"));
                }
            }
            let need = |v: bool, k: &'static str, what: &str| {
                if v {
                    Ok(())
                } else {
                    Err((at(k), format!("{:?} needs {k} ({what})", f.kind)))
                }
            };
            if f.kind.is_event() {
                need(
                    f.every.is_some_and(|d| !d.0.is_zero()),
                    "every",
                    "mean time between occurrences per client",
                )?;
            }
            if f.kind.is_event() && f.direction != Direction::Both {
                // A reset, a silence or a close ends the whole connection: there is no
                // one-way version to give, so a direction would be silently ignored.
                return fail(
                    at("direction"),
                    format!(
                        "{:?} acts on the whole connection; direction must be \"both\" (or left out)",
                        f.kind
                    ),
                );
            }
            match f.kind {
                FaultKind::Latency => need(f.latency.is_some(), "latency", "added delay")?,
                FaultKind::Timeout => need(
                    f.duration.is_some(),
                    "duration",
                    "how long the client stays silent",
                )?,
                FaultKind::SlowClose => {
                    need(f.delay.is_some(), "delay", "delay before the TCP close")?
                }
                FaultKind::Bandwidth => {
                    need(
                        f.rate_kbps.is_some_and(|r| r > 0.0),
                        "rate_kbps",
                        "a positive rate",
                    )?;
                    if f.direction == Direction::Both {
                        return fail(at("direction"), "bandwidth needs direction upstream or downstream (downstream is a slow reader)".into());
                    }
                }
                FaultKind::Slicer => {
                    need(
                        f.average_size.is_some_and(|s| s > 0),
                        "average_size",
                        "bytes per slice",
                    )?;
                    if f.direction != Direction::Upstream {
                        return fail(
                            at("direction"),
                            "slicer splits what the client writes: direction must be upstream"
                                .into(),
                        );
                    }
                }
                FaultKind::LimitData => need(
                    f.bytes.is_some_and(|b| b > 0),
                    "bytes",
                    "bytes before the reset",
                )?,
                FaultKind::ResetPeer | FaultKind::Close => {}
            }
            if let (Some(l), Some(j)) = (f.latency, f.jitter)
                && j > l
            {
                return fail(
                    at("jitter"),
                    format!("jitter {j} is above latency {l} (delays would go negative)"),
                );
            }
        }
        Ok(())
    }
}

/// Most un-acked sends one client keeps (to re-send on reconnect); a closed-loop
/// `window` above it could never be filled. The client refuses further sends at it and
/// counts them as skipped.
pub const WINDOW_MAX: usize = 10_000;

/// The anomaly kinds the checker knows (for `allowed_anomalies`).
pub const ANOMALY_KINDS: [&str; 11] = [
    "lost",
    "duplicate",
    "reordered",
    "divergent",
    "phantom",
    "acked_lost",
    "double_sequenced",
    "fifo",
    "causal",
    "resume_gap",
    "incomplete",
];

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
seed = 7
duration = "10s"

[[group]]
name = "chat"
rooms = 2
members = 5
senders = 2
rate = 1.5

[[fault]]
kind = "reset_peer"
clients = 0.2
every = "3s"

[thresholds]
latency_p99_ms_max = 250
"#;

    fn err(text: &str) -> ScenarioError {
        Scenario::parse("s.toml", text).unwrap_err()
    }

    #[test]
    fn parses_a_good_scenario() {
        let s = Scenario::parse("s.toml", GOOD).unwrap();
        assert_eq!(s.clients(), 10);
        assert_eq!(s.duration.0, Duration::from_secs(10));
        assert_eq!(s.faults[0].kind, FaultKind::ResetPeer);
        assert_eq!(s.thresholds.latency_p99_ms_max, Some(250.0));
        assert_eq!(s.quiet.0, Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err(&GOOD.replace("seed = 7", "seed = 7\nsede = 8"));
        assert_eq!(
            (e.file.as_str(), e.line, e.key.as_str()),
            ("s.toml", 4, "sede")
        );
        assert!(e.message.contains("unknown field `sede`"), "{e}");
    }

    #[test]
    fn misspelled_threshold_is_an_error() {
        let e = err(&GOOD.replace("latency_p99_ms_max", "latency_p99_max"));
        assert_eq!(e.line, 19);
        assert_eq!(e.key, "thresholds.latency_p99_max");
        assert!(e.message.contains("unknown field `latency_p99_max`"), "{e}");
        assert!(
            e.to_string()
                .starts_with("s.toml:19:1: thresholds.latency_p99_max: unknown field")
        );
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let e = err(&GOOD.replace("senders = 2", "senders = 9"));
        assert_eq!((e.line, e.key.as_str()), (10, "group[0].senders"));
        assert_eq!(e.message, "9 senders but only 5 members per room");

        let e = err(&GOOD.replace("every = \"3s\"", ""));
        assert_eq!(e.key, "fault[0].every");
        assert!(e.message.contains("needs every"), "{e}");

        let e = err(&GOOD.replace("kind = \"reset_peer\"", "kind = \"meteor\""));
        assert_eq!(e.line, 14);
        assert!(e.message.contains("unknown variant `meteor`"), "{e}");
        assert!(e.message.contains("reset_peer"), "{e}");

        let e = err(&GOOD.replace("duration = \"10s\"", "duration = \"10 parsecs\""));
        assert_eq!((e.line, e.key.as_str()), (4, "duration"));
        assert!(e.message.contains("unknown unit"), "{e}");

        let e = err(&GOOD.replace("rate = 1.5", "rate = 1.5\nwindow = 3"));
        assert_eq!(e.key, "group[0].window");

        let e = err(&GOOD.replace("rate = 1.5", "window = 10001"));
        assert_eq!(e.key, "group[0].window");
        assert_eq!(e.message, "10001 is not in 1..=10000 sends");

        let e = err(&GOOD.replace(
            "kind = \"reset_peer\"",
            "kind = \"reset_peer\"\ndirection = \"upstream\"",
        ));
        assert_eq!(e.key, "fault[0].direction");
        assert!(e.message.contains("acts on the whole connection"), "{e}");

        let e = err("name = \"x\"\nduration = \"1s\"\n");
        assert!(e.message.contains("missing field `group`"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert_eq!(Dur(Duration::from_millis(1500)).to_string(), "1500ms");
    }
}

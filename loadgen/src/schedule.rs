//! The deterministic plan of a run: who is in which room, when each client sends, types,
//! marks read and suffers which fault.
//!
//! Everything here is a pure function of the scenario and its seed, drawn from per-client
//! random streams (SplitMix64, written out here so the sequence never changes with a
//! dependency's version). The same seed gives the same schedule; a test hashes two
//! generations to prove it. What depends on the run itself (reconnect delays, jitter) is
//! drawn from separate per-client streams, in the order the client needs them.

use std::time::Duration;

use crate::scenario::{Direction, Distribution, Fault, FaultKind, Scenario};

/// SplitMix64: tiny, fast, and fixed forever.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream for (seed, client, purpose).
    pub fn stream(seed: u64, client: u64, purpose: u64) -> Self {
        let mut r = Rng(seed ^ 0x5bd1_e995_u64.wrapping_mul(client.wrapping_add(1)));
        r.0 ^= purpose.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [lo, hi].
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Exponential with the given mean (Poisson inter-arrival times).
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// A delay between min and max with the given shape.
    pub fn delay(&mut self, min: Duration, max: Duration, shape: Distribution) -> Duration {
        let (lo, hi) = (min.as_secs_f64(), max.as_secs_f64());
        let s = match shape {
            Distribution::Uniform => lo + (hi - lo) * self.unit(),
            Distribution::Exponential => (lo + self.exp((hi - lo) / 2.0)).min(hi),
        };
        Duration::from_secs_f64(s)
    }
}

/// Purposes of the per-client random streams.
mod purpose {
    pub const SENDS: u64 = 1;
    pub const TYPING: u64 = 2;
    pub const READS: u64 = 3;
    pub const TEXT: u64 = 4;
    pub const FAULT_PICK: u64 = 100;
    pub const FAULT_TIMES: u64 = 200;
    pub const RECONNECT: u64 = 300;
    pub const JITTER: u64 = 400;
}

/// One simulated client's fixed facts.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientPlan {
    pub index: u32,
    pub user: String,
    pub group: usize,
    pub room: String,
    pub sender: bool,
    /// Shaping faults that apply to this client for the whole run.
    pub shaping: Vec<usize>,
    /// Moment faults this client is subject to (indexes into `scenario.faults`).
    pub moments: Vec<usize>,
}

/// Lays out every client: group by group, room by room. Rooms are named
/// `<group>-<i>`, followed by `.<tag>` when `tag` is not empty: a run tags its rooms so
/// that running a scenario again against the same server starts from empty rooms (the
/// same ids in a room that already holds them would all be duplicates).
pub fn clients(s: &Scenario, tag: &str) -> Vec<ClientPlan> {
    let mut out = Vec::with_capacity(s.clients() as usize);
    for (g, group) in s.groups.iter().enumerate() {
        for r in 0..group.rooms {
            for m in 0..group.members {
                let index = out.len() as u32;
                let mut shaping = Vec::new();
                let mut moments = Vec::new();
                for (f, fault) in s.faults.iter().enumerate() {
                    if affected(s.seed, index, f, fault, &group.name) {
                        if fault.kind.is_event() {
                            moments.push(f);
                        } else {
                            shaping.push(f);
                        }
                    }
                }
                out.push(ClientPlan {
                    index,
                    user: format!("u{index}"),
                    group: g,
                    room: room_name(&group.name, r, tag),
                    sender: m < group.senders,
                    shaping,
                    moments,
                });
            }
        }
    }
    out
}

/// The name of room `r` of a group in a run tagged `tag`.
pub fn room_name(group: &str, r: u32, tag: &str) -> String {
    if tag.is_empty() {
        format!("{group}-{r}")
    } else {
        format!("{group}-{r}.{tag}")
    }
}

fn affected(seed: u64, client: u32, f: usize, fault: &Fault, group: &str) -> bool {
    if !fault.groups.is_empty() && !fault.groups.iter().any(|g| g == group) {
        return false;
    }
    Rng::stream(seed, client.into(), purpose::FAULT_PICK + f as u64).unit() < fault.clients
}

/// Something a client does at a moment of the load phase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send message number `n` (from 1) of `text_len` bytes.
    Send {
        n: u64,
        text_len: u32,
    },
    Typing,
    Read,
    /// Moment fault `fault` (index into `scenario.faults`).
    Fault {
        fault: usize,
    },
}

/// A Poisson stream of one kind of action.
#[derive(Debug, Clone)]
struct Stream {
    next_us: u64,
    mean_us: f64,
    rng: Rng,
    kind: StreamKind,
}

#[derive(Debug, Clone, Copy)]
enum StreamKind {
    Send,
    Typing,
    Read,
    Fault(usize),
}

impl Stream {
    fn new(rate_per_sec: f64, rng: Rng, kind: StreamKind) -> Option<Self> {
        if rate_per_sec <= 0.0 {
            return None;
        }
        let mut s = Stream {
            next_us: 0,
            mean_us: 1e6 / rate_per_sec,
            rng,
            kind,
        };
        s.next_us = s.rng.exp(s.mean_us) as u64;
        Some(s)
    }

    fn advance(&mut self) {
        self.next_us += (self.rng.exp(self.mean_us) as u64).max(1);
    }
}

/// A client's actions in time order, relative to the start of the load phase, generated
/// lazily (a long run's schedule is never held in memory).
#[derive(Debug, Clone)]
pub struct Schedule {
    streams: Vec<Stream>,
    text_rng: Rng,
    text_bytes: [u32; 2],
    sent: u64,
    end_us: u64,
}

impl Schedule {
    pub fn new(s: &Scenario, c: &ClientPlan) -> Self {
        let g = &s.groups[c.group];
        let seed = s.seed;
        let k = u64::from(c.index);
        let mut streams = Vec::new();
        if c.sender
            && let Some(rate) = g.rate
        {
            streams.extend(Stream::new(
                rate,
                Rng::stream(seed, k, purpose::SENDS),
                StreamKind::Send,
            ));
        }
        streams.extend(Stream::new(
            g.typing,
            Rng::stream(seed, k, purpose::TYPING),
            StreamKind::Typing,
        ));
        streams.extend(Stream::new(
            g.read_receipts,
            Rng::stream(seed, k, purpose::READS),
            StreamKind::Read,
        ));
        for &f in &c.moments {
            let every = s.faults[f].every.map_or(0.0, |d| d.0.as_secs_f64());
            if every > 0.0 {
                streams.extend(Stream::new(
                    1.0 / every,
                    Rng::stream(seed, k, purpose::FAULT_TIMES + f as u64),
                    StreamKind::Fault(f),
                ));
            }
        }
        Schedule {
            streams,
            text_rng: Rng::stream(seed, k, purpose::TEXT),
            text_bytes: g.text_bytes,
            sent: 0,
            end_us: s.duration.as_us(),
        }
    }

    /// When the next action is due, if any before the end of the load phase.
    pub fn peek_us(&self) -> Option<u64> {
        self.streams
            .iter()
            .map(|s| s.next_us)
            .min()
            .filter(|t| *t < self.end_us)
    }

    /// The next action and when it is due.
    pub fn next_action(&mut self) -> Option<(u64, Action)> {
        let (i, t) = self
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.next_us))
            .min_by_key(|&(_, t)| t)?;
        if t >= self.end_us {
            return None;
        }
        let kind = self.streams[i].kind;
        self.streams[i].advance();
        let action = match kind {
            StreamKind::Send => Some(self.next_send()),
            StreamKind::Typing => Some(Action::Typing),
            StreamKind::Read => Some(Action::Read),
            StreamKind::Fault(fault) => Some(Action::Fault { fault }),
        }?;
        Some((t, action))
    }

    /// The next message for a closed-loop sender (no time: it is sent when the window
    /// allows).
    pub fn next_send(&mut self) -> Action {
        self.sent += 1;
        let [lo, hi] = self.text_bytes;
        Action::Send {
            n: self.sent,
            text_len: self.text_rng.range(lo.into(), hi.into()) as u32,
        }
    }
}

/// Runtime randomness of one client (reconnect delays, jitter), still seeded.
#[derive(Debug, Clone)]
pub struct Dice {
    reconnect: Rng,
    jitter: Rng,
}

impl Dice {
    pub fn new(seed: u64, client: u32) -> Self {
        Self {
            reconnect: Rng::stream(seed, client.into(), purpose::RECONNECT),
            jitter: Rng::stream(seed, client.into(), purpose::JITTER),
        }
    }

    pub fn reconnect_delay(&mut self, s: &Scenario) -> Duration {
        let r = &s.reconnect;
        self.reconnect
            .delay(r.delay_min.0, r.delay_max.0, r.distribution)
    }

    /// A latency for one chunk: `latency ± jitter`.
    pub fn latency(&mut self, latency: Duration, jitter: Duration) -> Duration {
        let j = jitter.as_secs_f64() * (2.0 * self.jitter.unit() - 1.0);
        Duration::from_secs_f64((latency.as_secs_f64() + j).max(0.0))
    }
}

/// The text of message `n` of client `index`: starts with the intended send time (so
/// any receiver can measure latency without a lookup) and the id, padded to `len` bytes
/// with printable characters that need no JSON escaping.
pub fn message_text(out: &mut String, intended_us: u64, id: &str, len: u32, fill: u64) {
    use std::fmt::Write as _;
    out.clear();
    let _ = write!(out, "t{intended_us};{id};");
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 ";
    let mut x = fill | 1;
    while out.len() < len as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(ALPHABET[(x % ALPHABET.len() as u64) as usize] as char);
    }
}

/// Reads the intended send time back out of a message text made by [`message_text`].
pub fn intended_us_of(text: &[u8]) -> Option<u64> {
    let rest = text.strip_prefix(b"t")?;
    let mut v = 0u64;
    for (digits, &b) in rest.iter().enumerate() {
        if b == b';' {
            return (digits > 0).then_some(v);
        }
        if !b.is_ascii_digit() || digits >= 19 {
            return None;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    None
}

/// Does a shaping fault apply to one direction?
pub fn applies(f: &Fault, dir: Direction) -> bool {
    f.direction == Direction::Both || f.direction == dir
}

/// Kinds that shape a connection for its whole life.
pub fn is_shaping(k: FaultKind) -> bool {
    !k.is_event()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};

    const SCENARIO: &str = r#"
name = "det"
seed = 11
duration = "60s"
[[group]]
name = "a"
rooms = 3
members = 20
senders = 5
rate = 3.0
typing = 0.5
read_receipts = 0.2
text_bytes = [10, 300]
[[group]]
name = "b"
rooms = 1
members = 50
senders = 50
window = 4
[[fault]]
kind = "reset_peer"
clients = 0.3
every = "5s"
[[fault]]
kind = "latency"
clients = 0.5
latency = "20ms"
jitter = "5ms"
"#;

    fn schedule_hash(seed: u64) -> u64 {
        let mut s = crate::scenario::Scenario::parse("det.toml", SCENARIO).unwrap();
        s.seed = seed;
        let mut h = DefaultHasher::new();
        for c in clients(&s, "") {
            (c.index, &c.user, &c.room, c.sender, &c.shaping, &c.moments).hash(&mut h);
            let mut sched = Schedule::new(&s, &c);
            while let Some((t, a)) = sched.next_action() {
                (t, a).hash(&mut h);
            }
            let mut dice = Dice::new(s.seed, c.index);
            for _ in 0..3 {
                dice.reconnect_delay(&s).hash(&mut h);
            }
        }
        h.finish()
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        assert_eq!(schedule_hash(11), schedule_hash(11));
        assert_ne!(schedule_hash(11), schedule_hash(12));
    }

    #[test]
    fn poisson_rates_come_out_right() {
        let s = crate::scenario::Scenario::parse("det.toml", SCENARIO).unwrap();
        let cs = clients(&s, "");
        assert_eq!(cs.len(), 110);
        assert_eq!(cs.iter().filter(|c| c.sender).count(), 15 + 50);
        let mut sends = 0;
        for c in cs.iter().filter(|c| c.group == 0 && c.sender) {
            let mut sched = Schedule::new(&s, c);
            while let Some((_, a)) = sched.next_action() {
                if matches!(a, Action::Send { .. }) {
                    sends += 1;
                }
            }
        }
        // 15 senders × 3/s × 60 s = 2700 expected.
        assert!((2400..3000).contains(&sends), "{sends}");
        let faulted = cs.iter().filter(|c| !c.moments.is_empty()).count();
        assert!((15..50).contains(&faulted), "{faulted}");
    }

    #[test]
    fn texts_carry_their_send_time() {
        let mut t = String::new();
        message_text(&mut t, 123456, "c1-2", 60, 99);
        assert_eq!(t.len(), 60);
        assert!(t.starts_with("t123456;c1-2;"));
        assert_eq!(intended_us_of(t.as_bytes()), Some(123456));
        assert_eq!(intended_us_of(b"hello"), None);
    }
}

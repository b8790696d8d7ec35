//! The taxonomy: every way a recording can contradict `PROTOCOL.md`, with a worked example
//! per kind, and the collector that counts anomalies and keeps a few examples of each.
//!
//! An anomaly is always judged *per room and epoch*: seqs of different epochs are different
//! histories and are never compared.

use serde::{Deserialize, Serialize};

/// Examples kept per kind; the rest are only counted.
pub const EXAMPLES_PER_KIND_MAX: usize = 8;
/// Events of a connection shown before (and including) the one an anomaly is about.
pub const CONTEXT_EVENTS_MAX: usize = 6;

/// What went wrong. The names (`snake_case`) are the ones scenarios use in
/// `allowed_anomalies` and the JSON report uses in `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A connection skipped a seq after the first one it was delivered (guarantee 3).
    ///
    /// Example: client 2 (conn 1, joined to `r` with head 4) receives seqs 5, 6, 8, 9
    /// and the join ends without seq 7 → `lost`, seqs `[7, 7]`.
    Lost,
    /// A connection received the same seq twice (guarantee 3).
    ///
    /// Example: client 2 conn 1 receives seqs 5, 6, 6, 7 of `r` → `duplicate`, seq 6.
    Duplicate,
    /// A connection received seq N after a higher seq (guarantee 3).
    ///
    /// Example: client 2 conn 1 receives 5, 7, 6 → `reordered`, seq 6 after 7. (Had 6
    /// never come it would be `lost`; it came late, so it is only out of order.)
    Reordered,
    /// Two receivers got different content (id, from, text, ts) for one seq
    /// (guarantee 2).
    ///
    /// Example: client 1 receives seq 5 of `r` as `m1` with ts 1000, client 2 as `m1`
    /// with ts 1001 → `divergent`, seq 5.
    Divergent,
    /// A delivered message that no client sent, or whose sender or text is not what was
    /// sent (guarantee 2, agreement with the sender).
    ///
    /// Example: `u1` sends `m1` with text hash `aa…`; client 2 receives seq 5 = `m1` from
    /// `u1` with text hash `bb…` → `phantom`, seq 5, id `m1`. Only one content of a seq is
    /// blamed: a corrupted copy is `phantom`, not also `divergent`. Counted per delivery
    /// (one corrupted content received by 3 clients is 3, in one example).
    Phantom,
    /// An acked message missing from the room's final sequence (guarantee 6).
    ///
    /// Example: client 1 gets `ack m1 seq 9`; the final readers read the room to its head,
    /// 9, where seq 9 is `m2` and `m1` is nowhere → `acked_lost`, id `m1`, seq 9.
    AckedLost,
    /// One (room, id) sequenced twice in one epoch: delivered at two seqs, acked with two
    /// seqs, or acked with a seq other than where it was delivered (guarantee 5).
    ///
    /// Example: client 1 retries `m1` and gets a second, non-dup ack with seq 12 while
    /// seq 9 was already `m1` → `double_sequenced`, seqs `[9, 12]`.
    DoubleSequenced,
    /// A connection's accepted sends to a room were sequenced out of the order it sent
    /// them (guarantee 7).
    ///
    /// Example: client 1 conn 1 sends `m1` then `m2`; `m1` is acked at seq 8 and `m2` at
    /// seq 7 → `fifo`, ids `[m1, m2]`, seqs `[8, 7]`.
    Fifo,
    /// A message got a seq at or below the highest seq its sender had received in that
    /// room before first sending it (guarantee 8).
    ///
    /// Example: client 1 receives seq 7 of `r`, then sends `m1`, which is sequenced at 6
    /// → `causal`, id `m1`, seqs `[6, 7]`.
    Causal,
    /// A join's first delivery is not where its `joined` answer says the stream starts:
    /// `since + 1` after a resume, `head + 1` for a plain join, `first` after a reset, the
    /// last N for `history: N` — or a promised replay never came (guarantee 4).
    ///
    /// Example: client 1 reconnects, joins `r` with `since: 4`, is told `head: 9`, and the
    /// first message is seq 7 → `resume_gap`, missing seqs `[5, 6]`.
    ResumeGap,
    /// When the run ended, a connection still joined to a room had not received up to the
    /// room's head (guarantees 3 and 9).
    ///
    /// Example: the room's last seq is 12; client 3, still joined when it finished, last
    /// received seq 10 → `incomplete`, seqs `[11, 12]`.
    Incomplete,
}

impl AnomalyKind {
    /// Every kind, in report order.
    pub const ALL: [AnomalyKind; 11] = [
        AnomalyKind::Lost,
        AnomalyKind::Duplicate,
        AnomalyKind::Reordered,
        AnomalyKind::Divergent,
        AnomalyKind::Phantom,
        AnomalyKind::AckedLost,
        AnomalyKind::DoubleSequenced,
        AnomalyKind::Fifo,
        AnomalyKind::Causal,
        AnomalyKind::ResumeGap,
        AnomalyKind::Incomplete,
    ];

    /// The name used in scenarios, JSON and JUnit.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::Lost => "lost",
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::Reordered => "reordered",
            AnomalyKind::Divergent => "divergent",
            AnomalyKind::Phantom => "phantom",
            AnomalyKind::AckedLost => "acked_lost",
            AnomalyKind::DoubleSequenced => "double_sequenced",
            AnomalyKind::Fifo => "fifo",
            AnomalyKind::Causal => "causal",
            AnomalyKind::ResumeGap => "resume_gap",
            AnomalyKind::Incomplete => "incomplete",
        }
    }

    pub fn from_name(name: &str) -> Option<AnomalyKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The guarantee it breaks, in one line (for reports).
    pub fn meaning(self) -> &'static str {
        match self {
            AnomalyKind::Lost => "a connection skipped a seq after its first delivered one",
            AnomalyKind::Duplicate => "a connection received the same seq twice",
            AnomalyKind::Reordered => "a connection received a seq after a higher one",
            AnomalyKind::Divergent => "two clients received different content for one seq",
            AnomalyKind::Phantom => "a delivered message no client sent, or not as it was sent",
            AnomalyKind::AckedLost => "an acked message is missing from the room's final sequence",
            AnomalyKind::DoubleSequenced => "one message id was sequenced at two seqs",
            AnomalyKind::Fifo => "a connection's sends were sequenced out of the order sent",
            AnomalyKind::Causal => "a message was sequenced at or below a seq its sender had seen",
            AnomalyKind::ResumeGap => "a join's stream did not start where its joined answer said",
            AnomalyKind::Incomplete => "a still-joined client had not received up to the head",
        }
    }
}

impl std::fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A simulated client, as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRef {
    pub index: u32,
    pub user: String,
}

/// One recorded event, shown for context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBrief {
    pub t_us: u64,
    pub client: u32,
    pub conn: u32,
    /// Event name as in the recording (`message`, `send`, `joined`, ...).
    pub event: String,
    /// Its fields, e.g. `room=r seq=5 id=m1`.
    pub detail: String,
}

/// Another observation an anomaly contrasts with (the other receiver, the ack, the send).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Witness {
    pub client: Option<ClientRef>,
    pub conn: Option<u32>,
    pub t_us: Option<u64>,
    /// What this party observed, e.g. `message seq=5 id=m1 from=u1 text=#12ab ts=1000`.
    pub saw: String,
}

/// One anomaly with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// The evidence, then the contradiction, in one sentence.
    pub explanation: String,
    /// The client whose observation is wrong (none for sequence-wide anomalies).
    pub client: Option<ClientRef>,
    pub conn: Option<u32>,
    pub room: String,
    pub epoch: Option<String>,
    /// The seqs involved (for a range: first and last).
    pub seqs: Vec<u64>,
    /// The message ids involved; for missing seqs, the first (up to 8) messages that are
    /// missing, as the final sequence names them.
    pub ids: Vec<String>,
    /// When it was observed (`t_us` of the event that showed it), if one event did.
    pub t_us: Option<u64>,
    /// The other observations it contradicts.
    pub witnesses: Vec<Witness>,
    /// The last events of the client's connection up to the anomaly.
    pub context: Vec<EventBrief>,
    /// How many anomalies identical to this one (same kind, room, epoch, seqs and ids,
    /// seen by other clients or connections) were counted, this one included.
    pub occurrences: u64,
}

/// A cheap identity of an anomaly, so identical ones are grouped without building them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Signature {
    pub kind: AnomalyKind,
    pub room: u32,
    pub epoch: u32,
    pub seqs: (u64, u64),
    pub msg: u32,
}

/// Anomalies of one kind: how many, and up to [`EXAMPLES_PER_KIND_MAX`] examples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnomalyGroup {
    pub kind: AnomalyKind,
    /// What the kind means.
    pub meaning: String,
    /// The scenario declared this kind acceptable: listed, but it does not fail the run.
    pub allowed: bool,
    pub count: u64,
    pub examples: Vec<Anomaly>,
}

/// Counts anomalies by kind, keeping the first examples of distinct signatures.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    counts: [u64; 11],
    examples: [Vec<(Signature, Anomaly)>; 11],
}

impl Collector {
    /// Counts one anomaly; `build` is called only when it becomes a kept example.
    #[cfg(test)]
    pub fn add(&mut self, sig: Signature, build: impl FnOnce() -> Anomaly) {
        self.add_n(sig, 1, build);
    }

    /// Counts `n` identical anomalies (e.g. one corrupted copy delivered `n` times).
    pub fn add_n(&mut self, sig: Signature, n: u64, build: impl FnOnce() -> Anomaly) {
        let k = sig.kind as usize;
        self.counts[k] += n;
        let ex = &mut self.examples[k];
        if let Some((_, a)) = ex.iter_mut().find(|(s, _)| *s == sig) {
            a.occurrences += n;
            return;
        }
        if ex.len() < EXAMPLES_PER_KIND_MAX {
            let mut a = build();
            a.occurrences = n;
            ex.push((sig, a));
        }
    }

    /// The kept examples of `kind`, with their signatures (to complete their evidence).
    pub fn examples_mut(
        &mut self,
        kind: AnomalyKind,
    ) -> impl Iterator<Item = (&Signature, &mut Anomaly)> {
        self.examples[kind as usize]
            .iter_mut()
            .map(|(s, a)| (&*s, a))
    }

    #[cfg(test)]
    pub fn count(&self, kind: AnomalyKind) -> u64 {
        self.counts[kind as usize]
    }

    /// The groups with at least one anomaly, in [`AnomalyKind::ALL`] order.
    pub fn into_groups(self, allowed: &[AnomalyKind]) -> Vec<AnomalyGroup> {
        let mut out = Vec::new();
        for (kind, (count, examples)) in AnomalyKind::ALL
            .into_iter()
            .zip(self.counts.into_iter().zip(self.examples))
        {
            if count == 0 {
                continue;
            }
            out.push(AnomalyGroup {
                kind,
                meaning: kind.meaning().to_owned(),
                allowed: allowed.contains(&kind),
                count,
                examples: examples.into_iter().map(|(_, a)| a).collect(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_match_serde() {
        // Goal: the names scenarios write are the names the JSON report uses.
        for k in AnomalyKind::ALL {
            assert_eq!(AnomalyKind::from_name(k.name()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
            assert_eq!(AnomalyKind::ALL[k as usize], k);
        }
    }

    #[test]
    fn identical_anomalies_are_grouped_and_examples_bounded() {
        // Goal: a seq dropped for 100 clients is one example with 100 occurrences, and a
        // flood of distinct anomalies keeps only the first few examples.
        let mut c = Collector::default();
        let sig = |seq| Signature {
            kind: AnomalyKind::Lost,
            room: 0,
            epoch: 0,
            seqs: (seq, seq),
            msg: u32::MAX,
        };
        let build = || Anomaly {
            kind: AnomalyKind::Lost,
            explanation: String::new(),
            client: None,
            conn: None,
            room: "r".into(),
            epoch: None,
            seqs: vec![],
            ids: vec![],
            t_us: None,
            witnesses: vec![],
            context: vec![],
            occurrences: 0,
        };
        for _ in 0..100 {
            c.add(sig(7), build);
        }
        for s in 0..50 {
            c.add(sig(100 + s), build);
        }
        assert_eq!(c.count(AnomalyKind::Lost), 150);
        let groups = c.into_groups(&[AnomalyKind::Lost]);
        assert_eq!(groups.len(), 1);
        assert!(groups[0].allowed);
        assert_eq!(groups[0].examples.len(), EXAMPLES_PER_KIND_MAX);
        assert_eq!(groups[0].examples[0].occurrences, 100);
        assert_eq!(groups[0].examples[1].occurrences, 1);
    }
}

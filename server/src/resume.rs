//! Where a `join` starts delivering: the pure decision behind guarantee 4 (resume).
//!
//! A joined connection holds a *cursor*: the last seq it has been given. Everything it
//! receives afterwards is `cursor + 1, cursor + 2, ...`, taken from the room's in-memory
//! ring when there and from storage otherwise. Replay, live delivery and slow-consumer
//! catch-up are therefore one mechanism, and the replay-to-live seam cannot produce a
//! gap or a duplicate: there is no seam, only a cursor that moves by one.
//! This module decides the starting cursor.

use lockstep_protocol::{Epoch, Seq};

/// Where delivery starts and whether the client must drop what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinPlan {
    /// The last seq considered delivered; the first message sent is `cursor + 1`.
    pub cursor: Seq,
    /// `joined` carries `reset: true`.
    pub reset: bool,
}

/// What the client asked for in `join`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JoinAsk<'a> {
    pub since: Option<Seq>,
    pub history: Option<u32>,
    pub epoch: Option<&'a Epoch>,
}

/// Decides where a join starts, given the room's `epoch`, lowest retained seq `first` and
/// `head` at the moment the join takes effect.
///
/// - `epoch` given and different from the room's: reset, replay from `first`.
/// - `since` below `first - 1` (history gone) or above `head` (the client holds seqs this
///   room never had, e.g. after the server lost its database): reset, replay from `first`.
/// - `since` otherwise: replay `since + 1 ..= head`, then live.
/// - no `since`, `history: n`: replay the last `n` retained, then live.
/// - neither: live only.
pub fn plan_join(ask: JoinAsk<'_>, epoch: &Epoch, first: Seq, head: Seq) -> JoinPlan {
    let from_first = JoinPlan {
        cursor: first.saturating_sub(1),
        reset: true,
    };
    if ask.epoch.is_some_and(|e| e != epoch) {
        return from_first;
    }
    match ask.since {
        Some(since) if since < first.saturating_sub(1) || since > head => from_first,
        Some(since) => JoinPlan {
            cursor: since,
            reset: false,
        },
        None => {
            let n = u64::from(ask.history.unwrap_or(0));
            JoinPlan {
                cursor: head.saturating_sub(n).max(first.saturating_sub(1)),
                reset: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> Epoch {
        Epoch::new(s).unwrap()
    }

    fn plan(
        since: Option<Seq>,
        history: Option<u32>,
        epoch: Option<&str>,
        first: Seq,
        head: Seq,
    ) -> (Seq, bool) {
        let client = epoch.map(e);
        let p = plan_join(
            JoinAsk {
                since,
                history,
                epoch: client.as_ref(),
            },
            &e("e-1"),
            first,
            head,
        );
        (p.cursor, p.reset)
    }

    #[test]
    fn live_only_by_default() {
        assert_eq!(plan(None, None, None, 1, 57), (57, false));
        assert_eq!(plan(None, None, None, 1, 0), (0, false));
    }

    #[test]
    fn history_replays_the_last_n_retained() {
        assert_eq!(plan(None, Some(10), None, 1, 57), (47, false));
        assert_eq!(plan(None, Some(100), None, 1, 57), (0, false));
        assert_eq!(plan(None, Some(100), None, 40, 57), (39, false));
        assert_eq!(plan(None, Some(0), None, 1, 57), (57, false));
    }

    #[test]
    fn since_resumes_exactly_after_it() {
        assert_eq!(plan(Some(50), None, None, 1, 57), (50, false));
        assert_eq!(plan(Some(57), None, None, 1, 57), (57, false));
        assert_eq!(plan(Some(0), None, None, 1, 57), (0, false));
        // `history` is ignored when `since` is given.
        assert_eq!(plan(Some(50), Some(3), None, 1, 57), (50, false));
        // Matching epoch is no reset.
        assert_eq!(plan(Some(50), None, Some("e-1"), 1, 57), (50, false));
    }

    #[test]
    fn resets_when_the_point_is_gone_or_foreign() {
        // Below retention: since < first - 1.
        assert_eq!(plan(Some(5), None, None, 10, 57), (9, true));
        assert_eq!(plan(Some(9), None, None, 10, 57), (9, false));
        // Ahead of the room.
        assert_eq!(plan(Some(58), None, None, 1, 57), (0, true));
        // Other epoch, with or without since.
        assert_eq!(plan(Some(50), None, Some("e-2"), 1, 57), (0, true));
        assert_eq!(plan(None, None, Some("e-2"), 1, 57), (0, true));
    }
}

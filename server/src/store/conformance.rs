//! The storage contract as tests, run against every engine through a factory.

use super::*;

/// Makes a fresh, empty engine: (writer, reader factory).
pub(crate) trait Factory {
    type W: StoreWriter;
    type R: StoreReader;
    fn make(&self) -> (Self::W, Box<dyn Fn() -> Self::R>);
}

fn room(s: &str) -> RoomName {
    RoomName::new(s).unwrap()
}
fn id(s: &str) -> MessageId {
    MessageId::new(s).unwrap()
}
fn user(s: &str) -> UserName {
    UserName::new(s).unwrap()
}
fn epoch(s: &str) -> Epoch {
    Epoch::new(s).unwrap()
}

pub(crate) fn run_all<F: Factory>(f: &F) {
    empty_room_is_unknown(f);
    committed_messages_are_readable_in_order(f);
    duplicate_id_reports_original(f);
    rollback_discards_everything(f);
    seq_conflict_is_refused(f);
    read_marks_never_go_back(f);
    epoch_is_kept(f);
}

fn empty_room_is_unknown<F: Factory>(f: &F) {
    let (_w, r) = f.make();
    assert_eq!(r().load_room(&room("nobody")).unwrap(), None);
}

fn committed_messages_are_readable_in_order<F: Factory>(f: &F) {
    let (mut w, r) = f.make();
    w.begin().unwrap();
    let rid = w.ensure_room(&room("a"), &epoch("e-1")).unwrap();
    for seq in 1..=10u64 {
        let got = w
            .insert_message(
                rid,
                seq,
                &id(&format!("m{seq}")),
                &user("u"),
                "hi",
                100 + seq,
            )
            .unwrap();
        assert_eq!(got, Inserted::New);
    }
    // Not visible to a reader before commit.
    assert_eq!(r().load_room(&room("a")).unwrap(), None);
    w.commit().unwrap();
    let rec = r().load_room(&room("a")).unwrap().unwrap();
    assert_eq!((rec.first, rec.head), (1, 10));
    let after = r().messages_after(rec.rid, 3, 8, 100).unwrap();
    assert_eq!(
        after.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![4, 5, 6, 7, 8]
    );
    assert_eq!(after[0].id.as_str(), "m4");
    assert_eq!(after[0].ts, 104);
    let limited = r().messages_after(rec.rid, 0, 10, 2).unwrap();
    assert_eq!(
        limited.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let before = r().messages_before(rec.rid, 8, 3).unwrap();
    assert_eq!(
        before.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
}

fn duplicate_id_reports_original<F: Factory>(f: &F) {
    let (mut w, r) = f.make();
    w.begin().unwrap();
    let rid = w.ensure_room(&room("a"), &epoch("e-1")).unwrap();
    w.insert_message(rid, 1, &id("x"), &user("u"), "one", 5)
        .unwrap();
    // Same transaction.
    assert_eq!(
        w.insert_message(rid, 2, &id("x"), &user("u"), "again", 6)
            .unwrap(),
        Inserted::Existing { seq: 1, ts: 5 }
    );
    w.commit().unwrap();
    // Later transaction.
    w.begin().unwrap();
    assert_eq!(
        w.insert_message(rid, 2, &id("x"), &user("v"), "third", 7)
            .unwrap(),
        Inserted::Existing { seq: 1, ts: 5 }
    );
    // The same id in another room is a different message.
    let rid2 = w.ensure_room(&room("b"), &epoch("e-2")).unwrap();
    assert_eq!(
        w.insert_message(rid2, 1, &id("x"), &user("u"), "b", 8)
            .unwrap(),
        Inserted::New
    );
    w.commit().unwrap();
    let msgs = r().messages_after(rid, 0, 100, 100).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].text, "one");
}

fn rollback_discards_everything<F: Factory>(f: &F) {
    let (mut w, r) = f.make();
    w.begin().unwrap();
    let rid = w.ensure_room(&room("a"), &epoch("e-1")).unwrap();
    w.insert_message(rid, 1, &id("x"), &user("u"), "one", 5)
        .unwrap();
    w.rollback();
    assert_eq!(r().load_room(&room("a")).unwrap(), None);
    // And the writer is usable afterwards.
    w.begin().unwrap();
    let rid = w.ensure_room(&room("a"), &epoch("e-1")).unwrap();
    w.insert_message(rid, 1, &id("x"), &user("u"), "one", 5)
        .unwrap();
    w.commit().unwrap();
    assert_eq!(r().load_room(&room("a")).unwrap().unwrap().head, 1);
}

fn seq_conflict_is_refused<F: Factory>(f: &F) {
    let (mut w, r) = f.make();
    w.begin().unwrap();
    let rid = w.ensure_room(&room("a"), &epoch("e-1")).unwrap();
    w.insert_message(rid, 1, &id("x"), &user("u"), "one", 5)
        .unwrap();
    assert!(
        w.insert_message(rid, 1, &id("y"), &user("u"), "two", 6)
            .is_err()
    );
    w.rollback();
    assert_eq!(r().load_room(&room("a")).unwrap(), None);
}

fn read_marks_never_go_back<F: Factory>(f: &F) {
    let (mut w, r) = f.make();
    w.begin().unwrap();
    let rid = w.ensure_room(&room("a"), &epoch("e-1")).unwrap();
    assert_eq!(w.raise_read_mark(rid, &user("u"), 5).unwrap(), 5);
    assert_eq!(w.raise_read_mark(rid, &user("u"), 3).unwrap(), 5);
    assert_eq!(w.raise_read_mark(rid, &user("u"), 9).unwrap(), 9);
    w.commit().unwrap();
    assert_eq!(r().read_mark(rid, &user("u")).unwrap(), Some(9));
    assert_eq!(r().read_mark(rid, &user("v")).unwrap(), None);
}

fn epoch_is_kept<F: Factory>(f: &F) {
    let (mut w, r) = f.make();
    w.begin().unwrap();
    w.ensure_room(&room("a"), &epoch("e-1")).unwrap();
    w.commit().unwrap();
    let rec = r().load_room(&room("a")).unwrap().unwrap();
    assert_eq!(rec.epoch.as_str(), "e-1");
    assert_eq!((rec.first, rec.head), (1, 0));
    // A different epoch for a stored room is refused, never silently mixed.
    w.begin().unwrap();
    assert!(w.ensure_room(&room("a"), &epoch("e-2")).is_err());
    w.rollback();
    r().check().unwrap();
}

#[test]
fn history_replies_are_trimmed_to_their_byte_budget() {
    let m = |seq: u64, len: usize| StoredMessage {
        seq,
        id: id(&format!("m{seq}")),
        from: user("u"),
        text: "x".repeat(len),
        ts: 0,
    };
    let big = HISTORY_REPLY_BYTES_MAX / 3;
    let mut rows: Vec<_> = (1..=5).map(|s| m(s, big)).collect();
    fit_reply(&mut rows, true);
    assert_eq!(rows.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5]);
    let mut rows: Vec<_> = (1..=5).map(|s| m(s, big)).collect();
    fit_reply(&mut rows, false);
    assert_eq!(rows.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
    // One message is always kept, however large.
    let mut rows = vec![m(9, HISTORY_REPLY_BYTES_MAX * 2)];
    fit_reply(&mut rows, true);
    assert_eq!(rows.len(), 1);
}

mod sqlite_engine {
    use super::*;
    use crate::config::SyncMode;
    use crate::store::sqlite;

    struct Sqlite(tempfile::TempDir);

    impl Factory for Sqlite {
        type W = sqlite::SqliteWriter;
        type R = sqlite::SqliteReader;
        fn make(&self) -> (Self::W, Box<dyn Fn() -> Self::R>) {
            let path = self.0.path().join(format!("t{}.db", rand::random::<u64>()));
            let w = sqlite::open_writer(&path, SyncMode::Normal).unwrap();
            (w, Box::new(move || sqlite::open_reader(&path).unwrap()))
        }
    }

    #[test]
    fn sqlite_meets_the_store_contract() {
        run_all(&Sqlite(tempfile::tempdir().unwrap()));
    }

    #[test]
    fn full_sync_opens_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let mut w = sqlite::open_writer(&path, SyncMode::Full).unwrap();
        w.begin().unwrap();
        w.ensure_room(&room("a"), &epoch("e-1")).unwrap();
        w.commit().unwrap();
    }
}

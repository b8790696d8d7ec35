//! The fast event reader agrees with serde_json on every event the protocol types can
//! encode, whatever the strings contain.

use lockstep_loadgen::parse::{Kind, parse};
use lockstep_protocol::record::text_hash;
use lockstep_protocol::*;
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,20}"
}

proptest! {
    #[test]
    fn messages_read_the_same(room in name(), seq in any::<u64>(), id in "\\PC{1,10}", from in name(), text in "\\PC{0,50}", ts in any::<u64>()) {
        let m = Message {
            room: RoomName::new(room.clone()).unwrap(),
            seq,
            id: MessageId::new(id.clone()).unwrap(),
            from: UserName::new(from.clone()).unwrap(),
            text: text.clone(),
            ts,
        };
        let json = encode(&ServerEvent::Message(m));
        let e = parse(&json).unwrap();
        prop_assert_eq!(e.kind, Kind::Message);
        prop_assert_eq!(e.room.as_ref(), room.as_str());
        prop_assert_eq!(e.seq, seq);
        prop_assert_eq!(e.id.as_deref(), Some(id.as_str()));
        prop_assert_eq!(e.from.as_ref(), from.as_str());
        prop_assert_eq!(e.text_hash, text_hash(&text));
        prop_assert_eq!(e.ts, ts);
    }

    #[test]
    fn acks_and_errors_read_the_same(room in name(), id in "\\PC{1,10}", seq in any::<u64>(), dup in any::<bool>(), retry in any::<Option<u64>>(), msg in "\\PC{0,30}") {
        let a = encode(&ServerEvent::Ack(Ack { room: RoomName::new(room.clone()).unwrap(), id: MessageId::new(id.clone()).unwrap(), seq, ts: 1, dup }));
        let e = parse(&a).unwrap();
        prop_assert_eq!((e.kind, e.seq, e.dup), (Kind::Ack, seq, dup));
        prop_assert_eq!(e.id.as_deref(), Some(id.as_str()));
        let err = encode(&ServerEvent::Error(ErrorEvent { id: Some(id.clone()), retry_after_ms: retry, ..ErrorEvent::new(ErrorCode::RateLimited, msg) }));
        let e = parse(&err).unwrap();
        prop_assert_eq!((e.kind, e.code.as_ref(), e.retry_after_ms), (Kind::Error, "rate_limited", retry));
        prop_assert_eq!(e.id.as_deref(), Some(id.as_str()));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse(&bytes);
    }
}

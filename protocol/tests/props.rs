//! Property tests for the wire codec: every event survives encode → decode unchanged, and
//! no byte sequence can panic a decoder (client JSON, server JSON or WebSocket framing).

use lockstep_protocol::ws::{Decoded, Decoder, Role};
use lockstep_protocol::*;
use proptest::prelude::*;
use serde_json::Value;

fn room() -> impl Strategy<Value = RoomName> {
    "[A-Za-z0-9._:-]{1,64}".prop_map(|s| RoomName::new(s).unwrap())
}
fn user() -> impl Strategy<Value = UserName> {
    "[A-Za-z0-9._:@-]{1,64}".prop_map(|s| UserName::new(s).unwrap())
}
fn msg_id() -> impl Strategy<Value = MessageId> {
    // Any UTF-8 up to 64 bytes, including quotes, escapes and non-ASCII.
    "\\PC{1,16}".prop_map(|s| MessageId::new(s).unwrap())
}
fn epoch() -> impl Strategy<Value = Epoch> {
    "e-[0-9a-f]{1,16}".prop_map(|s| Epoch::new(s).unwrap())
}
fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,40}", "\\PC{0,40}", Just("\u{0}\"\\\n\t😀".to_string())]
}
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "\\PC{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
fn message() -> impl Strategy<Value = Message> {
    (room(), any::<u64>(), msg_id(), user(), text(), any::<u64>()).prop_map(
        |(room, seq, id, from, text, ts)| Message {
            room,
            seq,
            id,
            from,
            text,
            ts,
        },
    )
}

fn client_event() -> impl Strategy<Value = ClientEvent> {
    prop_oneof![
        (
            room(),
            any::<Option<u64>>(),
            any::<Option<u32>>(),
            prop::option::of(epoch())
        )
            .prop_map(|(room, since, history, epoch)| ClientEvent::Join(JoinReq {
                room,
                since,
                history,
                epoch
            })),
        room().prop_map(|room| ClientEvent::Leave(LeaveReq { room })),
        (room(), msg_id(), text()).prop_map(|(room, id, text)| ClientEvent::Send(SendReq {
            room,
            id,
            text
        })),
        (room(), any::<bool>())
            .prop_map(|(room, active)| ClientEvent::Typing(TypingReq { room, active })),
        (room(), any::<u64>()).prop_map(|(room, seq)| ClientEvent::Read(ReadReq { room, seq })),
        (room(), any::<Option<u64>>(), any::<Option<u32>>()).prop_map(|(room, before, limit)| {
            ClientEvent::History(HistoryReq {
                room,
                before,
                limit,
            })
        }),
        prop::option::of(any_json()).prop_map(|t| ClientEvent::Ping(PingReq { t })),
    ]
}

fn server_event() -> impl Strategy<Value = ServerEvent> {
    prop_oneof![
        (
            user(),
            "c-[0-9a-f]{1,8}",
            "[a-z0-9]{1,8}",
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(user, conn, node, heartbeat_ms, max_text_bytes)| {
                ServerEvent::Welcome(Welcome {
                    user,
                    conn,
                    node,
                    heartbeat_ms,
                    max_text_bytes,
                })
            }),
        (
            room(),
            epoch(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(user(), 0..5),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(|(room, epoch, head, first, members, member_count, reset)| {
                ServerEvent::Joined(Joined {
                    room,
                    epoch,
                    head,
                    first,
                    members,
                    member_count,
                    reset,
                })
            }),
        message().prop_map(ServerEvent::Message),
        (room(), msg_id(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(room, id, seq, ts, dup)| ServerEvent::Ack(Ack {
                room,
                id,
                seq,
                ts,
                dup
            })
        ),
        (room(), user(), any::<bool>())
            .prop_map(|(room, user, active)| ServerEvent::Typing(Typing { room, user, active })),
        (room(), user(), any::<u64>()).prop_map(|(room, user, seq)| ServerEvent::Read(Read {
            room,
            user,
            seq
        })),
        (room(), user(), any::<bool>()).prop_map(|(room, user, on)| {
            ServerEvent::Presence(Presence {
                room,
                user,
                status: if on {
                    PresenceStatus::Online
                } else {
                    PresenceStatus::Offline
                },
            })
        }),
        room().prop_map(|room| ServerEvent::Left(Left { room })),
        (room(), prop::collection::vec(message(), 0..4), any::<u64>()).prop_map(
            |(room, messages, first)| ServerEvent::History(History {
                room,
                messages,
                first
            })
        ),
        (
            prop::sample::select(ErrorCode::ALL.to_vec()),
            text(),
            prop::option::of(text()),
            any::<Option<u64>>(),
            prop::option::of(room())
        )
            .prop_map(|(code, message, id, retry_after_ms, room)| {
                ServerEvent::Error(ErrorEvent {
                    code,
                    message,
                    id,
                    retry_after_ms,
                    room,
                })
            }),
        prop::option::of(any_json()).prop_map(|t| ServerEvent::Pong(Pong { t })),
    ]
}

proptest! {
    #[test]
    fn client_events_roundtrip(ev in client_event()) {
        let bytes = encode(&ev);
        prop_assert_eq!(decode_client(&bytes).unwrap(), ev);
    }

    #[test]
    fn server_events_roundtrip(ev in server_event()) {
        let bytes = encode(&ev);
        prop_assert_eq!(decode_server(&bytes).unwrap(), ev);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_client(&bytes);
        let _ = decode_server(&bytes);
        for role in [Role::Server, Role::Client] {
            let mut dec = Decoder::new(role, 256);
            let mut buf = bytes.clone();
            let mut pos = 0;
            while let Ok(Decoded::Frame(_, n) | Decoded::Fragment(n)) = dec.decode(&mut buf[pos..]) {
                pos += n;
            }
        }
    }

    #[test]
    fn json_shaped_garbage_never_panics(v in any_json(), ty in prop::option::of("[a-z]{1,8}")) {
        let mut v = v;
        if let (Some(ty), Value::Object(m)) = (ty, &mut v) {
            m.insert("type".into(), Value::String(ty));
        }
        let bytes = serde_json::to_vec(&v).unwrap();
        let _ = decode_client(&bytes);
        let _ = decode_server(&bytes);
    }

    #[test]
    fn frames_split_anywhere_decode_the_same(payload in prop::collection::vec(any::<u8>(), 0..300), cut in 0usize..320) {
        let mut frame = Vec::new();
        ws::append_frame(&mut frame, ws::OP_BINARY, &payload, Some([7, 1, 3, 9]));
        let cut = cut.min(frame.len());
        let mut dec = Decoder::new(Role::Server, 1024);
        let mut part = frame[..cut].to_vec();
        if cut < frame.len() {
            let need_more = matches!(dec.decode(&mut part), Ok(Decoded::NeedMore(_)));
            prop_assert!(need_more);
        }
        let mut whole = frame.clone();
        match dec.decode(&mut whole).unwrap() {
            Decoded::Frame(ws::Frame::Binary(p), n) => {
                prop_assert_eq!(p, &payload[..]);
                prop_assert_eq!(n, frame.len());
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

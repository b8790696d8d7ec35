//! JSON decode and encode of events.
//!
//! Decoding reads the `type` tag with a tiny envelope struct, then decodes exactly the
//! struct that tag names. That gives errors that name the event and field, tolerates
//! unknown fields (the contract says they are ignored), and never panics on any input:
//! a property test feeds it arbitrary bytes.

use std::borrow::Cow;

use serde::de::{self, DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};

use crate::event::{
    Ack, ClientEvent, ErrorEvent, History, HistoryReq, JoinReq, Joined, LeaveReq, Left, Message,
    MessageRef, PingReq, Pong, Presence, Read, ReadReq, SendReq, ServerEvent, Typing, TypingReq,
    Welcome, WithType,
};

/// Why a frame could not be decoded into an event. Always answerable with `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("an event must be a JSON object with a string \"type\"")]
    MissingType,
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{event}: {detail}")]
    Invalid { event: &'static str, detail: String },
}

/// What the decoder could read of a frame even when it was invalid, so that an `error`
/// answering a `send` can carry that send's `id` (the contract requires it).
#[derive(Debug, Default, Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "lenient_str")]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "lenient_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "lenient_str")]
    room: Option<Cow<'a, str>>,
}

/// Accepts any JSON value; keeps it only when it is a string.
fn lenient_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct V;
    impl<'de> de::Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any value")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// A client frame that failed to decode, with what could be salvaged for the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub error: DecodeError,
    /// The `type` tag, when the frame had a string one.
    pub event: Option<String>,
    /// The frame's `id` when it had a string one (echoed on the `error`).
    pub id: Option<String>,
    /// The frame's `room` when it had a string one.
    pub room: Option<String>,
}

fn parse_envelope(bytes: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    // A top-level non-object (array, number, ...) is valid JSON but not an event.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data && first != Some(&b'{') {
            DecodeError::MissingType
        } else {
            DecodeError::Json(e.to_string())
        }
    })?;
    Ok(env)
}

fn body<T: DeserializeOwned>(event: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid {
        event,
        detail: strip_position(e),
    })
}

/// serde_json appends " at line 1 column 57" — useful for multi-line documents, noise for
/// one-line frames. Keep the message, drop the position for single-line input.
fn strip_position(e: serde_json::Error) -> String {
    let s = e.to_string();
    if e.line() <= 1
        && let Some(at) = s.rfind(" at line ")
    {
        return s[..at].to_owned();
    }
    s
}

/// Decodes a client event from the payload of one text frame.
pub fn decode_client(bytes: &[u8]) -> Result<ClientEvent, Rejected> {
    let reject = |error: DecodeError, env: Option<&Envelope>| Rejected {
        error,
        event: env.and_then(|e| e.ty.as_deref().map(str::to_owned)),
        id: env.and_then(|e| e.id.as_deref().map(str::to_owned)),
        room: env.and_then(|e| e.room.as_deref().map(str::to_owned)),
    };
    let env = parse_envelope(bytes).map_err(|e| reject(e, None))?;
    let Some(ty) = env.ty.as_deref() else {
        return Err(reject(DecodeError::MissingType, Some(&env)));
    };
    let ev = match ty {
        "join" => body::<JoinReq>("join", bytes).map(ClientEvent::Join),
        "leave" => body::<LeaveReq>("leave", bytes).map(ClientEvent::Leave),
        "send" => body::<SendReq>("send", bytes).map(ClientEvent::Send),
        "typing" => body::<TypingReq>("typing", bytes).map(ClientEvent::Typing),
        "read" => body::<ReadReq>("read", bytes).map(ClientEvent::Read),
        "history" => body::<HistoryReq>("history", bytes).map(ClientEvent::History),
        "ping" => body::<PingReq>("ping", bytes).map(ClientEvent::Ping),
        other => Err(DecodeError::UnknownType(truncate(other, 64))),
    };
    ev.map_err(|e| reject(e, Some(&env)))
}

/// Decodes a server event from the payload of one text frame (for clients).
pub fn decode_server(bytes: &[u8]) -> Result<ServerEvent, DecodeError> {
    let env = parse_envelope(bytes)?;
    let Some(ty) = env.ty.as_deref() else {
        return Err(DecodeError::MissingType);
    };
    match ty {
        "welcome" => body::<Welcome>("welcome", bytes).map(ServerEvent::Welcome),
        "joined" => body::<Joined>("joined", bytes).map(ServerEvent::Joined),
        "message" => body::<Message>("message", bytes).map(ServerEvent::Message),
        "ack" => body::<Ack>("ack", bytes).map(ServerEvent::Ack),
        "typing" => body::<Typing>("typing", bytes).map(ServerEvent::Typing),
        "read" => body::<Read>("read", bytes).map(ServerEvent::Read),
        "presence" => body::<Presence>("presence", bytes).map(ServerEvent::Presence),
        "left" => body::<Left>("left", bytes).map(ServerEvent::Left),
        "history" => body::<History>("history", bytes).map(ServerEvent::History),
        "error" => body::<ErrorEvent>("error", bytes).map(ServerEvent::Error),
        "pong" => body::<Pong>("pong", bytes).map(ServerEvent::Pong),
        other => Err(DecodeError::UnknownType(truncate(other, 64))),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// An event body that knows its `type` tag, so it can be encoded without being moved
/// into [`ServerEvent`] / [`ClientEvent`] first (the server encodes from borrowed parts).
pub trait Tagged: Serialize {
    const TYPE: &'static str;
}

macro_rules! tagged {
    ($($t:ty => $name:literal),* $(,)?) => {
        $(impl Tagged for $t { const TYPE: &'static str = $name; })*
    };
}

tagged!(
    JoinReq => "join", LeaveReq => "leave", SendReq => "send", TypingReq => "typing",
    ReadReq => "read", HistoryReq => "history", PingReq => "ping",
    Welcome => "welcome", Joined => "joined", Message => "message", Ack => "ack",
    Typing => "typing", Read => "read", Presence => "presence", Left => "left",
    History => "history", ErrorEvent => "error", Pong => "pong",
);

impl Tagged for MessageRef<'_> {
    const TYPE: &'static str = "message";
}

/// Appends the JSON of an event body, `"type"` first, exactly as the enum would encode.
pub fn encode_event_into<T: Tagged>(out: &mut Vec<u8>, body: &T) {
    encode_into(out, &WithType { ty: T::TYPE, body });
}

/// An event as one complete unmasked text frame (server to client), ready to share
/// among recipients.
pub fn event_frame<T: Tagged>(body: &T) -> bytes::Bytes {
    crate::ws::frame_bytes_with(crate::ws::OP_TEXT, None, |b| encode_event_into(b, body))
}

/// Appends the JSON of `value` to `out`. Our event types always serialize.
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(&mut *out, value).expect("protocol events always serialize to JSON");
}

/// The JSON of `value` as a byte vector.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_into(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ErrorCode;

    #[test]
    fn decodes_send_and_keeps_unknown_fields_out() {
        let ev =
            decode_client(br#"{"type":"send","room":"r1","id":"m1","text":"hi","x":1}"#).unwrap();
        match ev {
            ClientEvent::Send(s) => {
                assert_eq!(s.room.as_str(), "r1");
                assert_eq!(s.id.as_str(), "m1");
                assert_eq!(s.text, "hi");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn precise_errors() {
        let e = decode_client(b"{nope").unwrap_err();
        assert!(matches!(e.error, DecodeError::Json(_)), "{e:?}");
        let e = decode_client(b"[1,2]").unwrap_err();
        assert_eq!(e.error, DecodeError::MissingType);
        let e = decode_client(br#"{"room":"a"}"#).unwrap_err();
        assert_eq!(e.error, DecodeError::MissingType);
        let e = decode_client(br#"{"type":"dance"}"#).unwrap_err();
        assert_eq!(e.error, DecodeError::UnknownType("dance".into()));
        let e = decode_client(br#"{"type":"send","room":"a","text":"x","id":7}"#).unwrap_err();
        assert_eq!(
            e.error.to_string(),
            "send: invalid type: integer `7`, expected a string"
        );
        assert_eq!(e.id, None);
        let e = decode_client(br#"{"type":"send","room":"bad room","id":"m9","text":"x"}"#)
            .unwrap_err();
        assert!(
            e.error
                .to_string()
                .starts_with("send: room name \"bad room\"")
        );
        assert_eq!(e.id.as_deref(), Some("m9"));
        let e = decode_client(br#"{"type":"send","room":"a","id":"m9"}"#).unwrap_err();
        assert_eq!(e.error.to_string(), "send: missing field `text`");
    }

    #[test]
    fn tagged_encoding_matches_enum_encoding() {
        let ack = Ack {
            room: "r".try_into().unwrap(),
            id: "m".try_into().unwrap(),
            seq: 3,
            ts: 9,
            dup: true,
        };
        let mut a = Vec::new();
        encode_event_into(&mut a, &ack);
        assert_eq!(a, encode(&ServerEvent::Ack(ack)));
    }

    #[test]
    fn message_ref_encodes_like_message() {
        let m = Message {
            room: "r".try_into().unwrap(),
            seq: 7,
            id: "i\"d".try_into().unwrap(),
            from: "u@x".try_into().unwrap(),
            text: "hé\n".into(),
            ts: 12,
        };
        let mut a = Vec::new();
        encode_event_into(
            &mut a,
            &MessageRef {
                room: &m.room,
                seq: m.seq,
                id: &m.id,
                from: &m.from,
                text: &m.text,
                ts: m.ts,
            },
        );
        assert_eq!(a, encode(&ServerEvent::Message(m)));
    }

    #[test]
    fn history_elements_are_message_events() {
        let h = History {
            room: "r".try_into().unwrap(),
            messages: vec![Message {
                room: "r".try_into().unwrap(),
                seq: 1,
                id: "a".try_into().unwrap(),
                from: "u".try_into().unwrap(),
                text: "t".into(),
                ts: 2,
            }],
            first: 1,
        };
        let json = String::from_utf8(encode(&ServerEvent::History(h))).unwrap();
        assert_eq!(
            json,
            r#"{"type":"history","room":"r","messages":[{"type":"message","room":"r","seq":1,"id":"a","from":"u","text":"t","ts":2}],"first":1}"#
        );
    }

    #[test]
    fn server_events_roundtrip_examples() {
        for raw in [
            r#"{"type":"welcome","user":"alice","conn":"c-8f2a","node":"n1","heartbeat_ms":15000,"max_text_bytes":4096}"#,
            r#"{"type":"joined","room":"general","epoch":"e-5c1d","head":57,"first":1,"members":["alice","bob"],"member_count":2}"#,
            r#"{"type":"message","room":"general","seq":58,"id":"01HV6","from":"alice","text":"hello","ts":1710600000123}"#,
            r#"{"type":"ack","room":"general","id":"01HV6","seq":58,"ts":1710600000123,"dup":true}"#,
            r#"{"type":"error","code":"rate_limited","message":"slow down","id":"01HV6","retry_after_ms":250}"#,
        ] {
            let ev = decode_server(raw.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(encode(&ev)).unwrap(), raw);
        }
        let ev = decode_server(br#"{"type":"error","code":"forbidden","message":"no"}"#).unwrap();
        assert!(matches!(
            ev,
            ServerEvent::Error(ErrorEvent {
                code: ErrorCode::Forbidden,
                ..
            })
        ));
    }
}

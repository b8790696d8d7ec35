//! Final readers: after the run, one client per room joins with `since: 0` and reads the
//! whole history, so the checker sees every room's complete final sequence (an acked
//! message nobody else happened to receive is still found, or found missing).

use std::sync::Arc;
use std::time::Duration;

use lockstep_protocol::record::{CloseCause, Event};
use lockstep_protocol::ws::{Decoded, Decoder, Frame, OP_PONG, Role};
use tokio::io::AsyncWriteExt;

use crate::client::RunCtx;
use crate::parse::{self, Kind};
use crate::wire;

/// How long a final reader may take, at least; more for long histories.
const READ_TIMEOUT_MIN: Duration = Duration::from_secs(60);
/// Assumed catch-up speed when scaling the timeout to the history's length.
const READ_MESSAGES_PER_SEC: u64 = 5_000;

/// Reads room `room` from seq 1 to its head as client `index`. Returns a warning when it
/// could not finish (the checker will then see an incomplete reader).
pub async fn final_read(
    ctx: Arc<RunCtx>,
    index: u32,
    room: String,
    target: crate::client::Target,
) -> Result<(), String> {
    let user = format!("reader-{room}");
    let rec = &ctx.recorder;
    rec.record(
        index,
        &Event::Client {
            client: index,
            user: &user,
        },
    );
    let t = &target;
    let path = format!("{}?user={user}", t.path);
    let (mut stream, mut rbuf) = match wire::connect(t.addr, &t.host, &path).await {
        Ok(s) => s,
        Err(e) => {
            let reason = e.to_string();
            rec.record(
                index,
                &Event::ConnectFailed {
                    t_us: rec.now_us(),
                    client: index,
                    reason: &reason,
                },
            );
            rec.record(
                index,
                &Event::Finished {
                    t_us: rec.now_us(),
                    client: index,
                },
            );
            return Err(format!(
                "final reader of {room} could not connect: {reason}"
            ));
        }
    };
    rec.record(
        index,
        &Event::Connected {
            t_us: rec.now_us(),
            client: index,
            conn: 1,
        },
    );
    let mut out = Vec::new();
    wire::text_frame(
        &mut out,
        format!(r#"{{"type":"join","room":"{room}","since":0}}"#).as_bytes(),
    );
    rec.record(
        index,
        &Event::JoinSent {
            t_us: rec.now_us(),
            client: index,
            conn: 1,
            room: &room,
            since: Some(0),
            epoch: None,
            history: None,
        },
    );
    let result = async {
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        out.clear();
        let mut dec = Decoder::new(Role::Client, 16 * 1024 * 1024);
        let mut head: Option<u64> = None;
        let mut last = 0u64;
        let mut deadline = tokio::time::Instant::now() + READ_TIMEOUT_MIN;
        loop {
            if head.is_some_and(|h| last >= h) {
                return Ok(());
            }
            let mut pos = 0;
            loop {
                match dec.decode(&mut rbuf[pos..]) {
                    Ok(Decoded::NeedMore(_)) => break,
                    Ok(Decoded::Fragment(n)) => pos += n,
                    Ok(Decoded::Frame(f, n)) => {
                        pos += n;
                        match f {
                            Frame::Text(p) => {
                                let ev = parse::parse(p).map_err(|e| e.to_string())?;
                                let t_us = rec.now_us();
                                match ev.kind {
                                    Kind::Joined => {
                                        rec.record(index, &ev.recorded_joined(t_us, index, 1));
                                        head = Some(ev.head);
                                        let extra =
                                            Duration::from_secs(ev.head / READ_MESSAGES_PER_SEC);
                                        deadline += extra;
                                    }
                                    Kind::Message => {
                                        rec.record(index, &ev.recorded_message(t_us, index, 1));
                                        last = last.max(ev.seq);
                                    }
                                    Kind::Error => {
                                        rec.record(
                                            index,
                                            &Event::Error {
                                                t_us,
                                                client: index,
                                                conn: 1,
                                                code: &ev.code,
                                                id: ev.id.as_deref(),
                                                room: Some(&room),
                                            },
                                        );
                                        return Err(format!(
                                            "final reader of {room} got error {}",
                                            ev.code
                                        ));
                                    }
                                    _ => {}
                                }
                            }
                            Frame::Ping(p) => wire::control_frame(&mut out, OP_PONG, p),
                            Frame::Close { code, .. } => {
                                return Err(format!(
                                    "final reader of {room}: server closed ({code:?})"
                                ));
                            }
                            _ => {}
                        }
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            rbuf.drain(..pos);
            if !out.is_empty() {
                stream.write_all(&out).await.map_err(|e| e.to_string())?;
                out.clear();
            }
            if head.is_some_and(|h| last >= h) {
                return Ok(());
            }
            let readable = tokio::time::timeout_at(deadline, stream.readable()).await;
            match readable {
                Err(_) => {
                    return Err(format!(
                        "final reader of {room} timed out at seq {last} of {head:?}"
                    ));
                }
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(())) => {}
            }
            rbuf.reserve(64 * 1024);
            match stream.try_read_buf(&mut rbuf) {
                Ok(0) => {
                    return Err(format!(
                        "final reader of {room}: connection closed at seq {last}"
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    .await;
    rec.record(
        index,
        &Event::Finished {
            t_us: rec.now_us(),
            client: index,
        },
    );
    wire::close_gracefully(stream, Duration::from_secs(1)).await;
    rec.record(
        index,
        &Event::Closed {
            t_us: rec.now_us(),
            client: index,
            conn: 1,
            cause: CloseCause::RunEnd,
            code: None,
        },
    );
    result
}

//! HTTP: the router, the WebSocket upgrade, and the read-only endpoints.
//!
//! The upgrade is done here rather than with axum's `WebSocketUpgrade` because the
//! connection then runs our own framing over the raw `TcpStream` (see
//! `lockstep_protocol::ws` for why); the handshake itself follows RFC 6455 §4.2.

// Handlers return a ready `Response` as their error: it is what they answer with.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use lockstep_protocol::http::{HttpError, MessagesPage, PresenceList};
use lockstep_protocol::limits::HISTORY_LIMIT_MAX;
use lockstep_protocol::{ErrorCode, Message, RoomName, UserName, ws};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::{Identity, RoomAccess, token_from};
use crate::connection::Connection;
use crate::node::Node;
use crate::reads::Priority;

/// The socket permit of the TCP connection a request arrived on; the WebSocket task takes
/// it over at the upgrade so the connection keeps counting against `connections_max`.
#[derive(Clone)]
pub(crate) struct SocketPermit(pub Arc<Mutex<Option<OwnedSemaphorePermit>>>);

/// Default `limit` of `GET /rooms/{room}/messages`.
const MESSAGES_LIMIT_DEFAULT: u32 = 100;

pub(crate) fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/rooms/{room}/messages", get(messages))
        .route("/rooms/{room}/presence", get(presence))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            http_error(
                StatusCode::NOT_FOUND,
                ErrorCode::BadRequest,
                "no such endpoint",
            )
        })
        .with_state(node)
}

fn http_error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(HttpError {
            error: code,
            message: message.into(),
        }),
    )
        .into_response()
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

#[derive(Debug, Default, Deserialize)]
struct WsQuery {
    user: Option<String>,
    token: Option<String>,
}

/// Who is asking: the token's subject with auth on, `?user=` (or a made-up name) without.
fn identify(
    node: &Node,
    headers: &HeaderMap,
    user: Option<&str>,
    token: Option<&str>,
) -> Result<Identity, Response> {
    let unauthorized = |msg: String| {
        let mut r = http_error(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, msg);
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    match &node.auth {
        Some(auth) => {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let Some(token) = token_from(bearer, token) else {
                return Err(unauthorized(crate::auth::AuthError::Missing.to_string()));
            };
            auth.verify(token).map_err(|e| unauthorized(e.to_string()))
        }
        None => {
            let user = match user {
                Some(u) => UserName::new(u).map_err(|e| {
                    http_error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadRequest,
                        format!("?user=: {e}"),
                    )
                })?,
                None => UserName::new(node.next_anon()).expect("anon names are valid"),
            };
            Ok(Identity {
                user,
                rooms: RoomAccess::All,
                expires_at: None,
            })
        }
    }
}

async fn upgrade(
    State(node): State<Arc<Node>>,
    query: Result<Query<WsQuery>, QueryRejection>,
    mut req: Request,
) -> Response {
    let refuse = |node: &Node, status: StatusCode, msg: &str| {
        node.metrics
            .http_upgrades_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        http_error(status, ErrorCode::BadRequest, msg)
    };
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return refuse(&node, StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let headers = req.headers();
    if !has_token(headers, header::UPGRADE, "websocket") {
        let mut r = refuse(
            &node,
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket: send Upgrade: websocket",
        );
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return refuse(
            &node,
            StatusCode::BAD_REQUEST,
            "missing Connection: Upgrade",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut r = refuse(
            &node,
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version; this server speaks 13",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| k.as_bytes().len() == 24)
    else {
        return refuse(
            &node,
            StatusCode::BAD_REQUEST,
            "missing or malformed Sec-WebSocket-Key",
        );
    };
    let accept = ws::accept_key(key.as_bytes());
    if node.shutdown.is_cancelled() {
        return refuse(
            &node,
            StatusCode::SERVICE_UNAVAILABLE,
            "server is shutting down",
        );
    }
    let identity = match identify(
        &node,
        headers,
        query.user.as_deref(),
        query.token.as_deref(),
    ) {
        Ok(id) => id,
        Err(r) => {
            node.metrics
                .http_upgrades_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return r;
        }
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(
            &node,
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded",
        );
    };
    let Some(permit) = req
        .extensions_mut()
        .remove::<SocketPermit>()
        .and_then(|p| p.0.lock().take())
    else {
        return refuse(
            &node,
            StatusCode::BAD_REQUEST,
            "this connection was already upgraded",
        );
    };
    let task_node = node.clone();
    node.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                Connection::new(
                    task_node,
                    parts.io.into_inner(),
                    parts.read_buf,
                    identity,
                    permit,
                )
                .run()
                .await
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    });
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    r
}

/// Checks the room name and, with auth on, the caller's token and its room list.
fn authorize_room(
    node: &Node,
    headers: &HeaderMap,
    token: Option<&str>,
    room: String,
) -> Result<RoomName, Response> {
    let room = RoomName::new(room).map_err(|e| {
        http_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            e.to_string(),
        )
    })?;
    if node.auth.is_some() {
        let id = identify(node, headers, None, token)?;
        if !id.rooms.allows(&room) {
            return Err(http_error(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("your token does not list room {room}"),
            ));
        }
    }
    Ok(room)
}

#[derive(Debug, Deserialize)]
struct MessagesQuery {
    after: Option<u64>,
    limit: Option<u32>,
    token: Option<String>,
}

async fn messages(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                e.body_text(),
            );
        }
    };
    let room = match authorize_room(&node, &headers, q.token.as_deref(), room) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let limit = q.limit.unwrap_or(MESSAGES_LIMIT_DEFAULT);
    if limit == 0 || limit > HISTORY_LIMIT_MAX {
        return http_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("limit must be 1..={HISTORY_LIMIT_MAX}, not {limit}"),
        );
    }
    let room = match node.hub.open(&room, false).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return http_error(
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownRoom,
                format!("room {room} does not exist"),
            );
        }
        Err(e) => {
            // A full room registry is load shedding (retry later), not a storage fault.
            let code = match e {
                crate::hub::HubError::Full(_) => ErrorCode::Overloaded,
                crate::hub::HubError::Store(_) => ErrorCode::Internal,
            };
            return http_error(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string());
        }
    };
    let head = room.head();
    let after = q.after.unwrap_or(0);
    let rows = match room.rid() {
        Some(rid) if after < head => {
            match node
                .reads
                .run(Priority::Bulk, move |r| {
                    r.messages_after(rid, after, head, limit as usize)
                })
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    return http_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::Internal,
                        e.to_string(),
                    );
                }
            }
        }
        _ => Vec::new(),
    };
    let mut rows = rows;
    crate::store::fit_reply(&mut rows, false);
    let messages = rows
        .into_iter()
        .map(|m| Message {
            room: room.name.clone(),
            seq: m.seq,
            id: m.id,
            from: m.from,
            text: m.text,
            ts: m.ts,
        })
        .collect();
    axum::Json(MessagesPage {
        room: room.name.clone(),
        epoch: room.epoch.clone(),
        first: room.first(),
        head,
        messages,
    })
    .into_response()
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn presence(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Response {
    let token = query.ok().and_then(|Query(q)| q.token);
    let room = match authorize_room(&node, &headers, token.as_deref(), room) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let users = node
        .hub
        .loaded(&room)
        .map(|r| r.users())
        .unwrap_or_default();
    axum::Json(PresenceList { room, users }).into_response()
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if node.sequencer.is_stopped() {
        return (StatusCode::SERVICE_UNAVAILABLE, "sequencer stopped\n").into_response();
    }
    match tokio::time::timeout(
        Duration::from_secs(2),
        node.reads.run(Priority::Control, |r| r.check()),
    )
    .await
    {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage unusable: {e}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage did not answer in 2 s\n",
        )
            .into_response(),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    node.metrics.sequencer_queue.store(
        node.sequencer.queued() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
        .into_response()
}

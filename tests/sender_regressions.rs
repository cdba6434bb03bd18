//! `FrameSender` regressions found by the randomized lifecycle test (`tests/lifecycle_random.rs`,
//! invariant 7f), reduced to deterministic cases.
//!
//! These tests failed before the fix (the queue is now synced in `Client::route` when it starts
//! a close, and at the end of `Client::run`); they pin the promise. Before: once the
//! client's close handshake has begun (the client sent a close frame: `Reply::Close`,
//! `SendFrame(Frame::Close)`, a sender's own `Frame::Close`), its connection is no longer open
//! (`Stats::connected` is false, `SendFrame` answers `Closing`), yet the senders' queue stays
//! open: `FrameSender::is_connected()` says true and `send` returns `Ok`, and the frame is only
//! refused later, to `handle_error` (`Error::Send(Closing)`). The queue is opened and closed by
//! `Client::sync_sender_queue`, which `Client::run` calls only after executing a lifecycle
//! action; a close started through `Client::route` (`Lifecycle::close_sent`) queues no action
//! (the close frame is written there and then), so nothing closes the queue until the next
//! action: the server's answer and the end of the connection, or the close timeout if the
//! server never answers. A close begun any other way (the server's close, a stop request, a
//! failure) queues an action, and the queue closes at once.
//!
//! Server: a scripted raw server on 127.0.0.1 that upgrades, then only reads (it never answers
//! the client's close, so the close handshake lasts as long as the checks need: the client's
//! close timeout is 30 s). Every wait is bounded.

mod common;
mod support;

use std::time::Duration;

use common::{Cmd, Event, Policy, Recorder, WAIT};
use minch::{
    Client, ConnectOptions, ConnectRequest, Error, Frame, FrameSender, GetFrameSender, GetStats,
    Info, MinchHandler, Reply, SendError, SendFrame,
};
use support::{scripted_ws_server, ScriptedServer, Step};

/// Upgrades, then reads and logs what the client sends, answering nothing.
fn quiet_server() -> ScriptedServer {
    scripted_ws_server(vec![Step::Sleep(Duration::from_secs(60))])
}

async fn connected_client(
    server: &ScriptedServer,
) -> (actix::Addr<Client<Recorder>>, FrameSender, common::Events) {
    let request = ConnectRequest::new(server.url("/"))
        .options(ConnectOptions::default().close_timeout(Duration::from_secs(30)));
    let (handler, mut events) = Recorder::new(request);
    // A long reconnect delay: the checks below are about the connection that is closing.
    let handler = handler.policy(Policy::Reconnect(Duration::from_secs(60)));
    let addr = Client::start(handler);
    let sender = addr.send(GetFrameSender).await.unwrap();
    events
        .wait_for("the upgrade", WAIT, Event::is_connected)
        .await;
    assert!(support::wait_until(WAIT, || sender.is_connected()).await);
    (addr, sender, events)
}

/// What the client and a sender say right after the close handshake began, on the client's
/// own thread, before the client could run again: nothing else has happened in between.
async fn assert_refused_once_closing<H: MinchHandler>(
    addr: &actix::Addr<Client<H>>,
    sender: &FrameSender,
    how: &str,
) {
    let stats = addr.send(GetStats).await.unwrap();
    assert!(
        !stats.connected,
        "{how}: the client says it is not connected"
    );
    let refused_by_addr = addr
        .send(SendFrame(Frame::text("by the addr")))
        .await
        .unwrap();
    assert_eq!(
        refused_by_addr,
        Err(SendError::Closing),
        "{how}: SendFrame is refused"
    );
    let connected = sender.is_connected();
    let sent = sender.send(Frame::text("by the sender"));
    assert!(
        !connected && matches!(sent, Err(SendError::NotConnected | SendError::Closing)),
        "{how}: the client is closing (Stats::connected false, SendFrame refused with Closing), \
         yet FrameSender::is_connected() = {connected} and send returned {sent:?} instead of a \
         refusal at once"
    );
}

/// Failed before the fix (see the module docs).
#[actix_rt::test]
async fn a_sender_refuses_once_a_send_frame_close_began_the_close_handshake() {
    let server = quiet_server();
    let (addr, sender, _events) = connected_client(&server).await;
    addr.send(SendFrame(Frame::close(1000, "bye")))
        .await
        .unwrap()
        .unwrap();
    assert_refused_once_closing(&addr, &sender, "after SendFrame(Close)").await;
}

/// Failed before the fix (see the module docs).
#[actix_rt::test]
async fn a_sender_refuses_once_the_handlers_reply_close_began_the_close_handshake() {
    let server = quiet_server();
    let (addr, sender, _events) = connected_client(&server).await;
    // `Info` resolves once `handle_info` ran and its reply (the close) was carried out.
    addr.send(Info(Cmd::Reply(Reply::close(1000, "bye"))))
        .await
        .unwrap();
    assert_refused_once_closing(&addr, &sender, "after Reply::Close").await;
}

/// Failed before the fix (see the module docs). The sender's own close: once the client took
/// it (the `GetStats` below takes what senders queued before it), the sender keeps accepting
/// frames, which the client then refuses to `handle_error`.
#[actix_rt::test]
async fn a_sender_refuses_once_its_own_close_began_the_close_handshake() {
    let server = quiet_server();
    let (addr, sender, mut events) = connected_client(&server).await;
    sender.send(Frame::close(1000, "bye")).unwrap();
    let stats = addr.send(GetStats).await.unwrap();
    assert!(!stats.connected, "the close was taken: closing");
    let connected = sender.is_connected();
    let sent = sender.send(Frame::text("after the close"));
    if sent.is_ok() {
        // What happens to the frame instead: accepted, then refused to handle_error.
        events
            .wait_for("handle_error with Closing", WAIT, |event| {
                matches!(event, Event::Error(Error::Send(SendError::Closing)))
            })
            .await;
    }
    assert!(
        !connected && matches!(sent, Err(SendError::NotConnected | SendError::Closing)),
        "the client took the sender's close (Stats::connected false), yet \
         FrameSender::is_connected() = {connected} and send returned {sent:?}: accepted, then \
         refused to handle_error with Closing"
    );
}

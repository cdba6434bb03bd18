//! `FrameSender`: frames for a client from any thread, with no mailbox message per frame.
//! What it promises: a refusal at once while there is no open connection, after the stop, or
//! for an invalid frame; accepted frames on the wire in order, before whatever a later `Addr`
//! message does; frames of one connection never on the next; a frame accepted and then not
//! written reported to `handle_error`; the sender valid across reconnects.
//!
//! Servers: the in-process test server on 127.0.0.1. Every wait is bounded.

mod common;
mod support;

use std::time::Duration;

use common::{closed_port, Event, Policy, Recorder, WAIT};
use minch::{
    Client, Close, Error, Frame, FrameSender, GetFrameSender, GetStats, Info, Reply, SendError,
    SendFrame,
};
use support::{ServerEvent, TestServer};

fn texts_on(server: &TestServer, prefix: &str) -> Vec<String> {
    server
        .texts()
        .into_iter()
        .filter(|text| text.starts_with(prefix))
        .collect()
}

#[actix_rt::test]
async fn frames_go_out_in_order_from_this_and_other_threads() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/silent"));
    let addr = Client::start(handler);
    let sender = addr.send(GetFrameSender).await.unwrap();
    events
        .wait_for("the upgrade", WAIT, Event::is_connected)
        .await;
    assert!(support::wait_until(WAIT, || sender.is_connected()).await);

    for n in 0..100 {
        sender.send(Frame::text(format!("here {n}"))).unwrap();
    }
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let sender: FrameSender = sender.clone();
            std::thread::spawn(move || {
                for n in 0..200 {
                    sender.send(Frame::text(format!("t{t} {n}"))).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    sender
        .send_all((0..50).map(|n| Frame::text(format!("all {n}"))))
        .unwrap();
    assert!(
        support::wait_until(WAIT, || server.texts().len() == 100 + 600 + 50).await,
        "{} frames arrived",
        server.texts().len()
    );
    let expected = |prefix: &str, count: usize| -> Vec<String> {
        (0..count).map(|n| format!("{prefix} {n}")).collect()
    };
    assert_eq!(texts_on(&server, "here "), expected("here", 100));
    for t in 0..3 {
        assert_eq!(
            texts_on(&server, &format!("t{t} ")),
            expected(&format!("t{t}"), 200)
        );
    }
    assert_eq!(texts_on(&server, "all "), expected("all", 50));
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.frames_out, 750);
    assert!(
        !events
            .seen
            .iter()
            .any(|event| matches!(event, Event::Error(_))),
        "{}",
        events.history()
    );
}

#[actix_rt::test]
async fn refused_at_once_before_the_upgrade_and_for_an_invalid_frame() {
    let url = format!("ws://127.0.0.1:{}/", closed_port());
    let (handler, mut events) = Recorder::new(url);
    let handler = handler.policy(Policy::Reconnect(Duration::from_secs(60)));
    let addr = Client::start(handler);
    let sender = addr.send(GetFrameSender).await.unwrap();
    events
        .wait_for("the failed attempt", WAIT, Event::is_disconnect)
        .await;
    assert!(!sender.is_connected());
    assert_eq!(sender.send(Frame::text("x")), Err(SendError::NotConnected));
    assert_eq!(
        sender.send_all([Frame::text("x")]),
        Err(SendError::NotConnected)
    );
    let ping = Frame::Ping(vec![0; 126].into());
    assert!(matches!(sender.send(ping), Err(SendError::InvalidFrame(_))));
    events
        .assert_none(
            "handle_error for a refusal the sender heard",
            Duration::from_millis(200),
            |event| matches!(event, Event::Error(_)),
        )
        .await;
}

#[actix_rt::test]
async fn refused_after_the_stop_and_from_a_sender_asked_for_after_it() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/silent"));
    let addr = Client::start(handler);
    let sender = addr.send(GetFrameSender).await.unwrap();
    events
        .wait_for("the upgrade", WAIT, Event::is_connected)
        .await;
    addr.send(Close).await.unwrap();
    assert_eq!(sender.send(Frame::text("late")), Err(SendError::Stopped));
    let later = addr.send(GetFrameSender).await.unwrap();
    assert_eq!(later.send(Frame::text("later")), Err(SendError::Stopped));
    assert!(!server.texts().iter().any(|text| text.starts_with("late")));
}

/// Frames sent before a `Close`, `SendFrame` or `Info` to the `Addr` go out before what the
/// message does: before the close frame, before the message's frame or the handler's reply.
#[actix_rt::test]
async fn frames_sent_before_an_addr_message_go_before_it() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/silent"));
    let addr = Client::start(handler);
    let sender = addr.send(GetFrameSender).await.unwrap();
    events
        .wait_for("the upgrade", WAIT, Event::is_connected)
        .await;
    assert!(support::wait_until(WAIT, || sender.is_connected()).await);
    sender.send(Frame::text("first")).unwrap();
    addr.send(SendFrame(Frame::text("second")))
        .await
        .unwrap()
        .unwrap();
    sender.send(Frame::text("third")).unwrap();
    // The handler's reply to an `Info` comes after what senders queued before it. (The other
    // way round there is no promise: frames queued after a message was sent, but before the
    // client took it, may go first. Hence the await.)
    addr.send(Info(common::Cmd::Reply(Reply::Send(Frame::text("fourth")))))
        .await
        .unwrap();
    sender.send(Frame::text("fifth")).unwrap();
    addr.send(Close).await.unwrap();
    assert!(
        server
            .wait_for(
                |events| events
                    .iter()
                    .any(|event| matches!(event, ServerEvent::Close { .. })),
                WAIT
            )
            .await,
        "{:?}",
        server.events()
    );
    assert_eq!(
        server.texts(),
        ["first", "second", "third", "fourth", "fifth"]
    );
    assert!(
        !events
            .seen
            .iter()
            .any(|event| matches!(event, Event::Error(_))),
        "{}",
        events.history()
    );
}

/// A frame queued after the handler began the close handshake is not written (no data after
/// a close frame) and `handle_error` hears why.
#[actix_rt::test]
async fn a_frame_queued_behind_a_close_is_refused_to_handle_error() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/silent"));
    let handler = handler.policy(Policy::Reconnect(Duration::from_secs(60)));
    let addr = Client::start(handler);
    let sender = addr.send(GetFrameSender).await.unwrap();
    events
        .wait_for("the upgrade", WAIT, Event::is_connected)
        .await;
    assert!(support::wait_until(WAIT, || sender.is_connected()).await);
    // Both in the queue before the client's next turn: the close goes first, the text after
    // it may not.
    sender.send(Frame::Close(None)).unwrap();
    sender.send(Frame::text("after the close")).unwrap();
    events
        .wait_for("handle_error with Closing", WAIT, |event| {
            matches!(event, Event::Error(Error::Send(SendError::Closing)))
        })
        .await;
    events
        .wait_for("the disconnect", WAIT, Event::is_disconnect)
        .await;
    assert!(!server.texts().iter().any(|text| text == "after the close"));
    assert_eq!(
        sender.send(Frame::text("between connections")),
        Err(SendError::NotConnected)
    );
}

/// The sender outlives connections: after a reconnect it sends on the new one, and nothing
/// queued for the old one reaches it.
#[actix_rt::test]
async fn the_sender_works_across_reconnects() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/silent"));
    let handler = handler.policy(Policy::Reconnect(Duration::from_millis(20)));
    let addr = Client::start(handler);
    let sender = addr.send(GetFrameSender).await.unwrap();
    events
        .wait_for("the first upgrade", WAIT, Event::is_connected)
        .await;
    assert!(support::wait_until(WAIT, || sender.is_connected()).await);
    sender.send(Frame::text("one")).unwrap();
    assert!(support::wait_until(WAIT, || server.texts() == ["one"]).await);
    server.drop_all();
    events
        .wait_for("the disconnect", WAIT, Event::is_disconnect)
        .await;
    events
        .wait_for("the second upgrade", WAIT, Event::is_connected)
        .await;
    assert!(support::wait_until(WAIT, || sender.is_connected()).await);
    sender.send(Frame::text("two")).unwrap();
    assert!(
        support::wait_until(WAIT, || server.texts() == ["one", "two"]).await,
        "{:?}",
        server.texts()
    );
    assert_eq!(server.upgrades(), 2);
}

/// The client's stats count the frames senders queued before `GetStats`.
#[actix_rt::test]
async fn stats_count_what_was_queued_before_them() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/silent"));
    let addr = Client::start(handler);
    let sender = addr.send(GetFrameSender).await.unwrap();
    events
        .wait_for("the upgrade", WAIT, Event::is_connected)
        .await;
    assert!(support::wait_until(WAIT, || sender.is_connected()).await);
    for n in 0..10 {
        sender.send(Frame::binary(vec![n; 3])).unwrap();
    }
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!((stats.frames_out, stats.bytes_out), (10, 30));
}

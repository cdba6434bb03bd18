//! The actor client's reconnect loop: `connect` before every attempt, the attempt counter,
//! and an address that keeps working across server restarts.

mod common;
mod support;

use std::time::Duration;

use common::{closed_port, Event, Recorder, WAIT};
use minch::{http::StatusCode, Client, Close, Error, Frame, SendFrame, StopReason};
use support::{wait_until, TestServer};

/// Every `Connected` and every `Disconnect` belongs to an attempt that `connect` started:
/// idle --connect--> attempting --connected--> up --disconnect--> idle, and
/// attempting --disconnect--> idle.
fn assert_connect_precedes_every_attempt(events: &[Event]) {
    #[derive(PartialEq, Debug)]
    enum S {
        Idle,
        Attempting,
        Up,
    }
    let mut state = S::Idle;
    for (i, event) in events.iter().enumerate() {
        state = match (state, event) {
            (S::Idle, Event::Connect { .. }) => S::Attempting,
            (S::Attempting, Event::Connected { .. }) => S::Up,
            (S::Attempting | S::Up, Event::Disconnect { .. }) => S::Idle,
            (state, Event::Connect { .. } | Event::Connected { .. } | Event::Disconnect { .. }) => {
                panic!("event #{i} {event:?} in state {state:?}; events: {events:#?}")
            }
            (state, _) => state,
        };
    }
}

#[actix_rt::test]
async fn connect_is_called_before_every_attempt() {
    let mut server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler);
    events
        .wait_for("the first connection", WAIT, Event::is_connected)
        .await;

    for _ in 0..2 {
        server.stop();
        events
            .wait_for(
                "the disconnect after the server stopped",
                WAIT,
                Event::is_disconnect,
            )
            .await;
        events
            .wait_for("a refused attempt while the server is down", WAIT, |e| {
                matches!(e.disconnect_error(), Some(Error::Connect(_)))
            })
            .await;
        server.start_again();
        events
            .wait_for("the reconnection", WAIT, Event::is_connected)
            .await;
    }
    events.drain_now();

    let connects = events.count(Event::is_connect);
    let disconnects = events.count(Event::is_disconnect);
    assert_eq!(events.count(Event::is_connected), 3, "{}", events.history());
    // Two drops plus at least one refused attempt per outage.
    assert!(disconnects >= 4, "{}", events.history());
    // Connected now: every attempt but the current one ended in a disconnect.
    assert_eq!(connects, disconnects + 1, "{}", events.history());
    assert_connect_precedes_every_attempt(&events.seen);
    assert_eq!(server.upgrades(), 3);

    actix_rt::time::timeout(WAIT, addr.send(Close))
        .await
        .expect("Close resolves")
        .expect("mailbox");
}

#[actix_rt::test]
async fn rejected_upgrade_gives_growing_attempts() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/reject401"));
    let addr = Client::start(handler);

    for expected in 1..=3 {
        let event = events
            .wait_for("a disconnect", WAIT, Event::is_disconnect)
            .await;
        let (reason, attempt) = event.disconnect().unwrap();
        assert_eq!(attempt, expected, "{}", events.history());
        match reason.error() {
            Some(error @ Error::Rejected { status, .. }) => {
                assert_eq!(*status, StatusCode::UNAUTHORIZED);
                assert_eq!(error.status(), Some(StatusCode::UNAUTHORIZED));
                assert!(!error.is_config());
            }
            other => panic!("expected Error::Rejected, got {other:?}"),
        }
    }
    events.drain_now();
    assert_eq!(events.count(Event::is_connected), 0, "{}", events.history());
    // `connect` saw the same counter: 0 before the first attempt, then 1, 2.
    let attempts: Vec<u32> = events
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::Connect { attempt } => Some(*attempt),
            _ => None,
        })
        .take(3)
        .collect();
    assert_eq!(attempts, [0, 1, 2]);
    assert!(server.request_count("/reject401") >= 3);
    assert_connect_precedes_every_attempt(&events.seen);

    actix_rt::time::timeout(WAIT, addr.send(Close))
        .await
        .expect("Close resolves")
        .expect("mailbox");
    events.drain_now();
    assert!(
        events
            .seen
            .iter()
            .any(|e| matches!(e, Event::Terminate(StopReason::Closed))),
        "{}",
        events.history()
    );
}

#[actix_rt::test]
async fn unreachable_host_gives_growing_attempts() {
    let port = closed_port();
    let (handler, mut events) = Recorder::new(format!("ws://127.0.0.1:{port}/echo"));
    let addr = Client::start(handler);

    for expected in 1..=3 {
        let event = events
            .wait_for("a disconnect", WAIT, Event::is_disconnect)
            .await;
        let (reason, attempt) = event.disconnect().unwrap();
        assert_eq!(attempt, expected, "{}", events.history());
        assert!(
            matches!(reason.error(), Some(Error::Connect(_))),
            "expected Error::Connect, got {reason:?}"
        );
        assert_eq!(reason.close_code(), None);
    }
    let _ = actix_rt::time::timeout(WAIT, addr.send(Close)).await;
}

#[actix_rt::test]
async fn attempt_counter_resets_after_a_successful_upgrade() {
    let mut server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler);
    events
        .wait_for("the first connection", WAIT, Event::is_connected)
        .await;

    // The connection drops, then two attempts are refused: 1, 2, 3.
    server.stop();
    for expected in 1..=3 {
        let event = events
            .wait_for("a disconnect", WAIT, Event::is_disconnect)
            .await;
        assert_eq!(
            event.disconnect().unwrap().1,
            expected,
            "{}",
            events.history()
        );
    }
    server.start_again();
    events
        .wait_for("the reconnection", WAIT, Event::is_connected)
        .await;

    // After a successful upgrade the count starts again at 1, every time.
    for _ in 0..2 {
        assert!(server.wait_live_connections(1, WAIT).await);
        assert_eq!(server.drop_all(), 1);
        let event = events
            .wait_for("the disconnect after drop_all", WAIT, Event::is_disconnect)
            .await;
        assert_eq!(event.disconnect().unwrap().1, 1, "{}", events.history());
        let next = events
            .wait_for("the next connect call", WAIT, Event::is_connect)
            .await;
        assert!(matches!(next, Event::Connect { attempt: 1 }), "{next:?}");
        events
            .wait_for("the reconnection", WAIT, Event::is_connected)
            .await;
    }

    let _ = actix_rt::time::timeout(WAIT, addr.send(Close)).await;
}

#[actix_rt::test]
async fn the_same_address_works_after_a_server_restart() {
    let mut server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler);
    events
        .wait_for("the first connection", WAIT, Event::is_connected)
        .await;

    let sent = addr.send(SendFrame(Frame::text("before"))).await;
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    events
        .wait_for("the echo of 'before'", WAIT, |e| e.is_text("before"))
        .await;

    server.restart();
    events
        .wait_for(
            "the disconnect after the restart",
            WAIT,
            Event::is_disconnect,
        )
        .await;
    events
        .wait_for("the reconnection", WAIT, Event::is_connected)
        .await;

    let sent = actix_rt::time::timeout(WAIT, addr.send(SendFrame(Frame::text("after"))))
        .await
        .expect("SendFrame resolves");
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    events
        .wait_for("the echo of 'after'", WAIT, |e| e.is_text("after"))
        .await;
    assert!(
        wait_until(Duration::from_secs(2), || server.texts()
            == ["before", "after"])
        .await,
        "server texts: {:?}",
        server.texts()
    );

    let _ = actix_rt::time::timeout(WAIT, addr.send(Close)).await;
}

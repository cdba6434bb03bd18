//! The actor client's life: handshake, callbacks and replies, sending, control frames, the
//! close handshake from either side, handle_info, init failures and invalid requests.

mod common;
mod support;

use std::time::{Duration, Instant};

use common::{closed_port, Cmd, Defaults, Event, Policy, Recorder, FAST, WAIT};
use minch::{
    Client, Close, CloseCode, ConnectOptions, ConnectRequest, DisconnectReason, Error, Frame, Info,
    Reply, SendError, SendFrame, StopReason,
};
use support::{
    close_frame, scripted_ws_server, silent_tcp_server, text_frame, wait_until, Handshake, Proxy,
    ServerEvent, Step, TestServer,
};

/// A delay long enough that a test never sees the reconnect it schedules.
const NEVER: Duration = Duration::from_secs(60);

async fn close_client<H: minch::MinchHandler>(addr: &actix::Addr<Client<H>>) {
    actix_rt::time::timeout(WAIT, addr.send(Close))
        .await
        .expect("Close resolves in time")
        .expect("the client's mailbox is open");
}

fn server_close(code: u16, reason: &str) -> impl Fn(&ServerEvent) -> bool + '_ {
    move |event| matches!(event, ServerEvent::Close { code: Some(c), reason: r } if *c == code && r == reason)
}

fn server_close_code(code: u16) -> impl Fn(&ServerEvent) -> bool {
    move |event| matches!(event, ServerEvent::Close { code: Some(c), .. } if *c == code)
}

// ---- the handshake -------------------------------------------------------------------------

#[actix_rt::test]
async fn handle_connect_gets_status_101_and_headers() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler);
    let event = events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    let Event::Connected {
        status,
        headers,
        subprotocol,
        connected,
    } = event
    else {
        unreachable!()
    };
    assert_eq!(status, 101);
    assert!(connected, "ClientContext::is_connected() in handle_connect");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    assert_eq!(
        header("upgrade").as_deref(),
        Some("websocket"),
        "{headers:?}"
    );
    assert!(header("sec-websocket-accept").is_some(), "{headers:?}");
    assert_eq!(subprotocol, None);
    close_client(&addr).await;
}

#[actix_rt::test]
async fn a_frame_sent_with_the_101_is_not_lost() {
    let server = scripted_ws_server(vec![
        Step::SendWithResponse(text_frame("early")),
        Step::Send(text_frame("second")),
        // Complete the close handshake the client starts at the end.
        Step::WaitClose(WAIT),
        Step::Send(close_frame(Some(1000), "")),
        Step::Close,
    ]);
    let (handler, mut events) = Recorder::new(server.url("/"));
    let addr = Client::start(handler);
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    let first = events
        .wait_for("the first frame", WAIT, |e| matches!(e, Event::Frame(_)))
        .await;
    assert!(first.is_text("early"), "{first:?}");
    let second = events
        .wait_for("the second frame", WAIT, |e| matches!(e, Event::Frame(_)))
        .await;
    assert!(second.is_text("second"), "{second:?}");
    close_client(&addr).await;
}

#[actix_rt::test]
async fn an_offered_subprotocol_is_selected() {
    let server = TestServer::start();
    let request = ConnectRequest::new(server.url("/subprotocol"))
        .options(ConnectOptions::default().subprotocol("chat"));
    let (handler, mut events) = Recorder::new(request);
    let addr = Client::start(handler);
    let event = events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    let Event::Connected { subprotocol, .. } = event else {
        unreachable!()
    };
    assert_eq!(subprotocol.as_deref(), Some("chat"));
    let upgraded = server
        .wait_event(|e| matches!(e, ServerEvent::Upgraded { .. }), WAIT)
        .await;
    let Some(ServerEvent::Upgraded { headers, .. }) = upgraded else {
        panic!("no upgrade recorded")
    };
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "sec-websocket-protocol" && v == "chat"),
        "{headers:?}"
    );
    close_client(&addr).await;
}

#[actix_rt::test]
async fn a_subprotocol_that_was_not_offered_fails_the_handshake() {
    let server = scripted_ws_server(vec![Step::Handshake(
        Handshake::new().header("Sec-WebSocket-Protocol", "evil"),
    )]);
    for offered in [None, Some("chat")] {
        let mut options = ConnectOptions::default();
        if let Some(protocol) = offered {
            options = options.subprotocol(protocol);
        }
        let request = ConnectRequest::new(server.url("/")).options(options);
        let (handler, mut events) = Recorder::new(request);
        let _addr = Client::start(handler.policy(Policy::Stop));
        let event = events
            .wait_for("the failed attempt", WAIT, Event::is_disconnect)
            .await;
        let (reason, attempt) = event.disconnect().unwrap();
        assert_eq!(attempt, 1);
        assert!(
            matches!(reason.error(), Some(Error::Handshake(_))),
            "offered {offered:?}: expected Error::Handshake, got {reason:?}"
        );
        events
            .wait_for("terminate", WAIT, Event::is_terminate)
            .await;
        assert_eq!(events.count(Event::is_connected), 0, "{}", events.history());
    }
}

// ---- replies and sending -------------------------------------------------------------------

#[actix_rt::test]
async fn replies_from_handle_connect_and_handle_frame_reach_the_server() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let handler = handler
        .on_connect(|_| Reply::Send(Frame::text("hello")))
        .on_frame(|frame| match frame.as_text() {
            Some("hello") => {
                Reply::SendAll(vec![Frame::text("again"), Frame::binary(&b"\x01\x02"[..])])
            }
            _ => Reply::Continue,
        });
    let addr = Client::start(handler);
    events
        .wait_for("the echo of the reply to the echo", WAIT, |e| {
            e.is_text("again")
        })
        .await;
    assert!(
        wait_until(WAIT, || server.texts() == ["hello", "again"]
            && server.binaries() == [vec![1u8, 2]])
        .await,
        "server got texts {:?}, binaries {:?}",
        server.texts(),
        server.binaries()
    );
    close_client(&addr).await;
}

#[actix_rt::test]
async fn send_frame_reaches_the_server_in_order() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler);
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;

    let expected: Vec<String> = (0..50).map(|i| format!("message {i}")).collect();
    // All requests are queued before any is awaited.
    let requests: Vec<_> = expected
        .iter()
        .map(|text| addr.send(SendFrame(Frame::text(text.clone()))))
        .collect();
    for request in requests {
        let result = actix_rt::time::timeout(WAIT, request)
            .await
            .expect("SendFrame resolves");
        assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    }
    let binary = addr.send(SendFrame(Frame::binary(vec![0u8, 255, 7]))).await;
    assert!(matches!(binary, Ok(Ok(()))), "{binary:?}");

    assert!(
        wait_until(WAIT, || server.texts().len() >= expected.len()
            && !server.binaries().is_empty())
        .await
    );
    assert_eq!(server.texts(), expected);
    assert_eq!(server.binaries(), [vec![0u8, 255, 7]]);

    // The echoes come back in the same order.
    let mut echoed = Vec::new();
    while echoed.len() < expected.len() {
        let event = events
            .wait_for("an echo", WAIT, |e| e.text().is_some())
            .await;
        echoed.push(event.text().unwrap().to_owned());
    }
    assert_eq!(echoed, expected);
    close_client(&addr).await;
}

#[actix_rt::test]
async fn sending_before_the_upgrade_is_not_connected_and_nothing_arrives_later() {
    let silent = silent_tcp_server();
    let (handler, _events) = Recorder::new(silent.url("/echo"));
    let addr = Client::start(handler);
    let early = addr.send(SendFrame(Frame::text("early"))).await;
    assert_eq!(early.expect("mailbox"), Err(SendError::NotConnected));

    // Connected at the TCP level, upgrade unanswered: still not connected.
    assert!(wait_until(WAIT, || silent.accepted() == 1).await);
    assert!(
        wait_until(WAIT, || String::from_utf8_lossy(&silent.received(0))
            .contains("\r\n\r\n"))
        .await
    );
    let connecting = addr.send(SendFrame(Frame::text("connecting"))).await;
    assert_eq!(connecting.expect("mailbox"), Err(SendError::NotConnected));

    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let received = String::from_utf8_lossy(&silent.received(0)).into_owned();
    assert!(
        received.starts_with("GET /echo HTTP/1.1\r\n"),
        "{received:?}"
    );
    assert!(
        received.ends_with("\r\n\r\n"),
        "bytes after the request head: {received:?}"
    );
    close_client(&addr).await;
}

#[actix_rt::test]
async fn a_frame_sent_right_after_start_is_never_delivered() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler);
    let early = addr.send(SendFrame(Frame::text("too early"))).await;
    assert_eq!(early.expect("mailbox"), Err(SendError::NotConnected));

    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    let probe = addr.send(SendFrame(Frame::text("probe"))).await;
    assert!(matches!(probe, Ok(Ok(()))), "{probe:?}");
    events
        .wait_for("the probe's echo", WAIT, |e| e.is_text("probe"))
        .await;
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.texts(), ["probe"]);
    close_client(&addr).await;
}

#[actix_rt::test]
async fn a_16_mib_binary_message_echoes_intact() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler);
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;

    let data: Vec<u8> = (0..16 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect();
    let sent = actix_rt::time::timeout(
        Duration::from_secs(30),
        addr.send(SendFrame(Frame::binary(data.clone()))),
    )
    .await
    .expect("SendFrame resolves");
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    let event = events
        .wait_for("the echo", Duration::from_secs(30), |e| {
            matches!(e, Event::Frame(Frame::Binary(_)))
        })
        .await;
    let Event::Frame(Frame::Binary(echo)) = event else {
        unreachable!()
    };
    assert_eq!(echo.len(), data.len());
    assert!(echo[..] == data[..], "the echo differs from what was sent");
    let at_server = server.binaries();
    assert_eq!(at_server.len(), 1);
    assert!(at_server[0] == data, "the server received different bytes");
    close_client(&addr).await;
}

// ---- control frames ------------------------------------------------------------------------

#[actix_rt::test]
async fn server_pings_are_answered_and_not_shown_to_handle_frame() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/ping?payload=abc"));
    let addr = Client::start(handler);
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    assert!(
        server
            .wait_event(|e| *e == ServerEvent::Pong(b"abc".to_vec()), WAIT)
            .await
            .is_some(),
        "no pong with the ping's payload; server events: {:?}",
        server.events()
    );
    // A second ping, later on the open connection.
    assert_eq!(server.send_ping(b"second"), 1);
    assert!(server
        .wait_event(|e| *e == ServerEvent::Pong(b"second".to_vec()), WAIT)
        .await
        .is_some());

    // A round trip after both pings: anything the handler saw for them is in by now.
    let marker = addr.send(SendFrame(Frame::text("marker"))).await;
    assert!(matches!(marker, Ok(Ok(()))), "{marker:?}");
    events
        .wait_for("the marker's echo", WAIT, |e| e.is_text("marker"))
        .await;
    assert_eq!(
        events.count(|e| matches!(
            e,
            Event::Frame(Frame::Ping(_)) | Event::Frame(Frame::Pong(_))
        )),
        0,
        "{}",
        events.history()
    );
    assert_eq!(server.log().count(|e| matches!(e, ServerEvent::Pong(_))), 2);
    close_client(&addr).await;
}

#[actix_rt::test]
async fn server_pongs_reach_handle_frame() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/pong?payload=P"));
    let addr = Client::start(handler);
    let event = events
        .wait_for("a frame", WAIT, |e| matches!(e, Event::Frame(_)))
        .await;
    assert!(
        matches!(&event, Event::Frame(Frame::Pong(payload)) if payload[..] == b"P"[..]),
        "{event:?}"
    );
    close_client(&addr).await;
}

// ---- closing -------------------------------------------------------------------------------

#[actix_rt::test]
async fn a_server_close_is_reported_and_its_code_echoed() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/close?code=4001&reason=bye"));
    let _addr = Client::start(handler.policy(Policy::Stop));
    let event = events
        .wait_for("handle_disconnect", WAIT, Event::is_disconnect)
        .await;
    let (reason, attempt) = event.disconnect().unwrap();
    assert_eq!(attempt, 1);
    match reason {
        DisconnectReason::ServerClosed(Some(close)) => {
            assert_eq!(close.code, CloseCode(4001));
            assert_eq!(close.reason, "bye");
        }
        other => panic!("expected ServerClosed(4001, bye), got {other:?}"),
    }
    assert_eq!(reason.close_code(), Some(CloseCode(4001)));
    assert!(
        server
            .wait_event(server_close_code(4001), WAIT)
            .await
            .is_some(),
        "the client did not echo 4001; server events: {:?}",
        server.events()
    );
    let terminate = events
        .wait_for("terminate", WAIT, Event::is_terminate)
        .await;
    assert!(
        matches!(
            terminate,
            Event::Terminate(StopReason::Disconnected(DisconnectReason::ServerClosed(_)))
        ),
        "{terminate:?}"
    );
}

#[actix_rt::test]
async fn close_from_outside_sends_1000_and_resolves_after_terminate() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler);
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;

    close_client(&addr).await;
    // terminate ran before the Close request resolved: its event is already queued.
    events.drain_now();
    let terminates: Vec<&Event> = events.seen.iter().filter(|e| e.is_terminate()).collect();
    assert!(
        matches!(terminates[..], [Event::Terminate(StopReason::Closed)]),
        "{}",
        events.history()
    );
    assert!(
        server
            .wait_event(server_close_code(1000), WAIT)
            .await
            .is_some(),
        "server events: {:?}",
        server.events()
    );
    let after = addr.send(SendFrame(Frame::text("after close"))).await;
    assert!(matches!(after, Ok(Err(SendError::Stopped))), "{after:?}");
    // The client stays stopped: no reconnect.
    events
        .assert_none(
            "a connect after Close",
            Duration::from_millis(300),
            Event::is_connect,
        )
        .await;
}

#[actix_rt::test]
async fn a_close_reply_reaches_the_server_then_client_closed_is_reported() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let handler = handler
        .policy(Policy::Stop)
        .on_frame(|frame| match frame.as_text() {
            Some("close-me") => Reply::close(1000, "bye"),
            _ => Reply::Continue,
        });
    let addr = Client::start(handler);
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    let sent = addr.send(SendFrame(Frame::text("close-me"))).await;
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");

    assert!(
        server
            .wait_event(server_close(1000, "bye"), WAIT)
            .await
            .is_some(),
        "server events: {:?}",
        server.events()
    );
    let event = events
        .wait_for("handle_disconnect", WAIT, Event::is_disconnect)
        .await;
    let (reason, attempt) = event.disconnect().unwrap();
    assert_eq!(attempt, 1);
    match reason {
        DisconnectReason::ClientClosed(close) => {
            assert_eq!(close.code, CloseCode::NORMAL);
            assert_eq!(close.reason, "bye");
        }
        other => panic!("expected ClientClosed(1000, bye), got {other:?}"),
    }
}

#[actix_rt::test]
async fn a_stop_reply_closes_and_terminates_with_requested() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let handler = handler.on_frame(|frame| match frame.as_text() {
        Some("stop") => Reply::stop("done"),
        _ => Reply::Continue,
    });
    let addr = Client::start(handler);
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    let sent = addr.send(SendFrame(Frame::text("stop"))).await;
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");

    assert!(
        server
            .wait_event(server_close_code(1000), WAIT)
            .await
            .is_some(),
        "server events: {:?}",
        server.events()
    );
    let event = events
        .wait_for("terminate", WAIT, Event::is_terminate)
        .await;
    assert!(
        matches!(&event, Event::Terminate(StopReason::Requested(r)) if r == "done"),
        "{event:?}"
    );
    events
        .assert_none(
            "a reconnect after Stop",
            Duration::from_millis(300),
            Event::is_connect,
        )
        .await;
}

#[actix_rt::test]
async fn stop_from_the_context_closes_and_terminates_with_requested() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler);
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    addr.send(Info(Cmd::Stop("from the context".into())))
        .await
        .expect("mailbox");

    assert!(
        server
            .wait_event(server_close_code(1000), WAIT)
            .await
            .is_some(),
        "server events: {:?}",
        server.events()
    );
    let event = events
        .wait_for("terminate", WAIT, Event::is_terminate)
        .await;
    assert!(
        matches!(&event, Event::Terminate(StopReason::Requested(r)) if r == "from the context"),
        "{event:?}"
    );
}

// ---- handle_info ---------------------------------------------------------------------------

#[actix_rt::test]
async fn handle_info_runs_while_disconnected_and_while_connected() {
    // Disconnected: the only attempt failed and the next one is far away.
    let (handler, mut offline) = Recorder::new(format!("ws://127.0.0.1:{}/", closed_port()));
    let offline_addr = Client::start(handler.policy(Policy::Reconnect(NEVER)));
    offline
        .wait_for("the failed attempt", WAIT, Event::is_disconnect)
        .await;
    offline_addr
        .send(Info(Cmd::Note("offline".into())))
        .await
        .expect("mailbox");
    let event = offline
        .wait_for("handle_info", WAIT, |e| matches!(e, Event::Info { .. }))
        .await;
    assert!(
        matches!(&event, Event::Info { note, connected: false } if note == "offline"),
        "{event:?}"
    );

    // Connected: handle_info runs and its reply is sent.
    let server = TestServer::start();
    let (handler, mut online) = Recorder::new(server.url("/echo"));
    let online_addr = Client::start(handler);
    online
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    online_addr.do_send(Info(Cmd::Note("online".into())));
    let event = online
        .wait_for("handle_info", WAIT, |e| matches!(e, Event::Info { .. }))
        .await;
    assert!(
        matches!(&event, Event::Info { note, connected: true } if note == "online"),
        "{event:?}"
    );
    online_addr.do_send(Info(Cmd::Reply(Reply::Send(Frame::text("from info")))));
    online
        .wait_for("the echo of the info reply", WAIT, |e| {
            e.is_text("from info")
        })
        .await;
    assert_eq!(server.texts(), ["from info"]);

    close_client(&offline_addr).await;
    close_client(&online_addr).await;
}

#[actix_rt::test]
async fn send_info_after_delivers_later() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler);
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    let started = Instant::now();
    addr.do_send(Info(Cmd::After(
        Duration::from_millis(400),
        Box::new(Cmd::Reply(Reply::Send(Frame::text("scheduled")))),
    )));
    events
        .assert_none(
            "the scheduled info too early",
            Duration::from_millis(200),
            |e| matches!(e, Event::Info { .. }),
        )
        .await;
    events
        .wait_for("the scheduled info", WAIT, |e| {
            matches!(e, Event::Info { .. })
        })
        .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(380),
        "delivered after {elapsed:?}"
    );
    // Its reply, sent from a scheduled message, is written without further prodding.
    events
        .wait_for("the scheduled reply's echo", Duration::from_secs(2), |e| {
            e.is_text("scheduled")
        })
        .await;
    close_client(&addr).await;
}

#[actix_rt::test]
async fn a_reply_from_handle_info_while_disconnected_goes_to_handle_error() {
    let (handler, mut events) = Recorder::new(format!("ws://127.0.0.1:{}/", closed_port()));
    let addr = Client::start(handler.policy(Policy::Reconnect(NEVER)));
    events
        .wait_for("the failed attempt", WAIT, Event::is_disconnect)
        .await;
    addr.do_send(Info(Cmd::Reply(Reply::Send(Frame::text("nowhere")))));
    let event = events
        .wait_for("handle_error", WAIT, |e| matches!(e, Event::Error(_)))
        .await;
    assert!(
        matches!(event, Event::Error(Error::Send(SendError::NotConnected))),
        "{event:?}"
    );
    close_client(&addr).await;
}

// ---- failures before connecting ------------------------------------------------------------

#[actix_rt::test]
async fn an_init_error_stops_the_client_without_connecting() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler.fail_init("no credentials"));
    let event = events
        .wait_for("terminate", WAIT, Event::is_terminate)
        .await;
    assert!(
        matches!(&event, Event::Terminate(StopReason::InitFailed(e)) if e.to_string() == "no credentials"),
        "{event:?}"
    );
    events
        .assert_none(
            "a connect call",
            Duration::from_millis(300),
            Event::is_connect,
        )
        .await;
    assert_eq!(events.count(|e| matches!(e, Event::Init)), 1);
    assert_eq!(server.request_count("/echo"), 0);
    let sent = addr.send(SendFrame(Frame::text("x"))).await;
    assert!(matches!(sent, Ok(Err(SendError::Stopped))), "{sent:?}");
}

#[actix_rt::test]
async fn malformed_urls_are_invalid_url_and_stop_by_default() {
    for url in ["not a url", "http://x"] {
        // handle_disconnect sees the reason.
        let (handler, mut events) = Recorder::new(url);
        let _addr = Client::start(handler.policy(Policy::Stop));
        let event = events
            .wait_for("handle_disconnect", WAIT, Event::is_disconnect)
            .await;
        let (reason, attempt) = event.disconnect().unwrap();
        assert_eq!(attempt, 1);
        match reason.error() {
            Some(error @ Error::InvalidUrl { .. }) => assert!(error.is_config()),
            other => panic!("{url:?}: expected Error::InvalidUrl, got {other:?}"),
        }

        // The default handle_disconnect stops the client instead of retrying.
        let (handler, mut events) = Defaults::new(url);
        let _addr = Client::start(handler);
        let event = events
            .wait_for("terminate", WAIT, Event::is_terminate)
            .await;
        assert!(
            matches!(
                &event,
                Event::Terminate(StopReason::Disconnected(DisconnectReason::Error(
                    Error::InvalidUrl { .. }
                )))
            ),
            "{url:?}: {event:?}"
        );
        events
            .assert_none(
                "a second attempt",
                Duration::from_millis(300),
                Event::is_connect,
            )
            .await;
        assert_eq!(events.count(Event::is_connect), 1);
    }
}

#[actix_rt::test]
async fn a_header_value_with_crlf_is_invalid_header_without_the_value() {
    let server = TestServer::start();
    let secret = "s3cr3t-token\r\nx-evil: 1";
    let request = ConnectRequest::new(server.url("/headers")).header("x-custom", secret);
    let (handler, mut events) = Recorder::new(request.clone());
    let _addr = Client::start(handler.policy(Policy::Stop));
    let event = events
        .wait_for("handle_disconnect", WAIT, Event::is_disconnect)
        .await;
    let error = event.disconnect_error().cloned();
    match &error {
        Some(Error::InvalidHeader { name, .. }) => assert_eq!(name, "x-custom"),
        other => panic!("expected Error::InvalidHeader, got {other:?}"),
    }
    let error = error.unwrap();
    for shown in [error.to_string(), format!("{error:?}")] {
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(!shown.contains("x-evil"), "{shown}");
    }
    assert!(error.is_config());

    // By default: stop, do not retry.
    let (handler, mut events) = Defaults::new(request);
    let _addr = Client::start(handler);
    let event = events
        .wait_for("terminate", WAIT, Event::is_terminate)
        .await;
    assert!(
        matches!(
            &event,
            Event::Terminate(StopReason::Disconnected(DisconnectReason::Error(
                Error::InvalidHeader { .. }
            )))
        ),
        "{event:?}"
    );
    actix_rt::time::sleep(FAST).await;
    assert_eq!(server.request_count("/headers"), 0);
}

#[actix_rt::test]
async fn a_cancelled_send_info_after_never_arrives() {
    let (handler, mut events) = Recorder::new(format!("ws://127.0.0.1:{}/", closed_port()));
    let addr = Client::start(handler.policy(Policy::Reconnect(NEVER)));
    addr.do_send(Info(Cmd::AfterThenCancel(
        Duration::from_millis(100),
        Box::new(Cmd::Note("cancelled one".into())),
    )));
    let event = events
        .wait_for("the cancel", WAIT, |e| matches!(e, Event::Info { .. }))
        .await;
    assert!(
        matches!(&event, Event::Info { note, .. } if note == "cancelled: true"),
        "{event:?}"
    );
    events
        .assert_none(
            "the cancelled info",
            Duration::from_millis(400),
            |e| matches!(e, Event::Info { note, .. } if note == "cancelled one"),
        )
        .await;
    close_client(&addr).await;
}

#[actix_rt::test]
async fn sending_a_close_frame_starts_the_close_handshake() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler.policy(Policy::Stop));
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    let sent = addr.send(SendFrame(Frame::close(4000, "app done"))).await;
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    assert!(
        server
            .wait_event(server_close(4000, "app done"), WAIT)
            .await
            .is_some(),
        "server events: {:?}",
        server.events()
    );
    let event = events
        .wait_for("handle_disconnect", WAIT, Event::is_disconnect)
        .await;
    assert!(
        matches!(
            event.disconnect(),
            Some((DisconnectReason::ClientClosed(close), 1)) if close.code == CloseCode(4000)
        ),
        "{event:?}"
    );
}

#[actix_rt::test]
async fn an_invalid_frame_is_refused_and_the_connection_stays_usable() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler);
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    // RFC 6455 5.5: control frame payloads are at most 125 bytes.
    let too_big = addr.send(SendFrame(Frame::ping(vec![0u8; 126]))).await;
    assert!(
        matches!(too_big, Ok(Err(SendError::InvalidFrame(_)))),
        "{too_big:?}"
    );
    let ok = addr.send(SendFrame(Frame::text("still fine"))).await;
    assert!(matches!(ok, Ok(Ok(()))), "{ok:?}");
    events
        .wait_for("the echo", WAIT, |e| e.is_text("still fine"))
        .await;
    assert!(!server
        .events()
        .iter()
        .any(|e| matches!(e, ServerEvent::Ping(_) | ServerEvent::Error { .. })));
    close_client(&addr).await;
}

#[actix_rt::test]
async fn a_frame_that_could_not_be_written_resolves_connection_lost() {
    let server = TestServer::start();
    let proxy = Proxy::start(server.port());
    let (handler, mut events) = Recorder::new(proxy.url("/echo"));
    let addr = Client::start(handler.policy(Policy::Reconnect(NEVER)));
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;

    // Nothing flows: a 32 MiB frame cannot fit in the kernel buffers, so it stays pending.
    proxy.pause();
    let pending = actix_rt::spawn(addr.send(SendFrame(Frame::binary(vec![7u8; 32 << 20]))));
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pending.is_finished(),
        "SendFrame resolved while nothing could be written"
    );

    proxy.reset_all();
    let result = actix_rt::time::timeout(WAIT, pending)
        .await
        .expect("SendFrame resolves after the connection broke")
        .expect("task");
    assert!(
        matches!(result, Ok(Err(SendError::ConnectionLost))),
        "{result:?}"
    );
    let event = events
        .wait_for("handle_disconnect", WAIT, Event::is_disconnect)
        .await;
    assert!(
        matches!(event.disconnect(), Some((DisconnectReason::Error(_), 1))),
        "{event:?}"
    );
    assert!(server.binaries().is_empty());
    close_client(&addr).await;
}

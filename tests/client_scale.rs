//! Hundreds of actor clients in one process against one server.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use minch::{
    Client, ClientContext, Close, ConnectRequest, DisconnectReason, Frame, MinchHandler, Reconnect,
    Reply, Response, SendFrame, StopReason,
};
use support::TestServer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

const CLIENTS: usize = 300;
const BOUND: Duration = Duration::from_secs(30);

#[derive(Debug)]
enum Ev {
    Connected,
    Text(String),
    Disconnected(DisconnectReason),
    Terminated(StopReason),
}

struct Member {
    id: usize,
    url: String,
    events: UnboundedSender<(usize, Ev)>,
}

impl MinchHandler for Member {
    type Info = ();

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.url.as_str().into()
    }

    fn handle_connect(&mut self, response: &Response, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        assert_eq!(response.status.as_u16(), 101);
        let _ = self.events.send((self.id, Ev::Connected));
        Reply::Continue
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        if let Some(text) = frame.as_text() {
            let _ = self.events.send((self.id, Ev::Text(text.to_owned())));
        }
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        _attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        // Any disconnect is a failure of this test: report it and stop.
        let _ = self
            .events
            .send((self.id, Ev::Disconnected(reason.clone())));
        Reconnect::Stop
    }

    fn terminate(&mut self, reason: &StopReason, _ctx: &mut ClientContext<'_, Self>) {
        let _ = self.events.send((self.id, Ev::Terminated(reason.clone())));
    }
}

/// Takes events until `done(state)` holds; panics on a disconnect or when `BOUND` passes.
async fn collect(
    rx: &mut UnboundedReceiver<(usize, Ev)>,
    what: &str,
    mut take: impl FnMut(usize, Ev) -> bool,
) {
    let deadline = Instant::now() + BOUND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match actix_rt::time::timeout(left, rx.recv()).await {
            Ok(Some((id, Ev::Disconnected(reason)))) => {
                panic!("client {id} disconnected while waiting for {what}: {reason}")
            }
            Ok(Some((id, event))) => {
                if take(id, event) {
                    return;
                }
            }
            Ok(None) => panic!("event channel closed while waiting for {what}"),
            Err(_) => panic!("timed out after {BOUND:?} waiting for {what}"),
        }
    }
}

#[actix_rt::test]
async fn three_hundred_clients_connect_echo_and_close() {
    let server = TestServer::start();
    let (tx, mut rx) = unbounded_channel();
    let started = Instant::now();
    let addrs: Vec<_> = (0..CLIENTS)
        .map(|id| {
            Client::start(Member {
                id,
                url: server.url("/echo"),
                events: tx.clone(),
            })
        })
        .collect();

    let mut connected = HashSet::new();
    collect(&mut rx, "every handle_connect", |id, event| {
        assert!(matches!(event, Ev::Connected), "client {id}: {event:?}");
        assert!(connected.insert(id), "client {id} connected twice");
        connected.len() == CLIENTS
    })
    .await;
    eprintln!("{CLIENTS} clients connected in {:?}", started.elapsed());
    assert!(
        server.wait_live_connections(CLIENTS, BOUND).await,
        "server has {} live connections",
        server.live_connections()
    );
    assert_eq!(server.upgrades(), CLIENTS);

    // Every client sends its own message at once; each gets its own echo back.
    let sends = join_all(
        addrs
            .iter()
            .enumerate()
            .map(|(id, addr)| addr.send(SendFrame(Frame::text(format!("client {id}"))))),
    );
    let results = actix_rt::time::timeout(BOUND, sends)
        .await
        .expect("every SendFrame resolves");
    for (id, result) in results.into_iter().enumerate() {
        assert!(matches!(result, Ok(Ok(()))), "client {id}: {result:?}");
    }
    let mut echoes = HashMap::new();
    collect(&mut rx, "every echo", |id, event| {
        match event {
            Ev::Text(text) => assert!(echoes.insert(id, text).is_none(), "client {id}: two echoes"),
            other => panic!("client {id}: unexpected {other:?}"),
        }
        echoes.len() == CLIENTS
    })
    .await;
    for (id, text) in &echoes {
        assert_eq!(text, &format!("client {id}"));
    }
    assert_eq!(server.texts().len(), CLIENTS);

    // Close them all.
    let closes = join_all(addrs.iter().map(|addr| addr.send(Close)));
    let results = actix_rt::time::timeout(BOUND, closes)
        .await
        .expect("every Close resolves");
    assert!(results.iter().all(Result::is_ok));
    let mut terminated = HashSet::new();
    collect(&mut rx, "every terminate", |id, event| {
        assert!(
            matches!(event, Ev::Terminated(StopReason::Closed)),
            "client {id}: {event:?}"
        );
        terminated.insert(id);
        terminated.len() == CLIENTS
    })
    .await;
    assert!(
        server.wait_live_connections(0, BOUND).await,
        "server still has {} live connections",
        server.live_connections()
    );
    let closes = server.log().count(|e| {
        matches!(
            e,
            support::ServerEvent::Close {
                code: Some(1000),
                ..
            }
        )
    });
    assert_eq!(closes, CLIENTS);
    eprintln!("whole run: {:?}", started.elapsed());
}

/// Clients spread over other arbiters (threads) work like local ones, and their addresses can be
/// used from the test's thread.
#[actix_rt::test]
async fn clients_started_on_other_arbiters_connect_echo_and_close() {
    const SPREAD: usize = 20;
    let server = TestServer::start();
    let arbiters = [actix_rt::Arbiter::new(), actix_rt::Arbiter::new()];
    let (tx, mut rx) = unbounded_channel();
    let addrs: Vec<_> = (0..SPREAD)
        .map(|id| {
            let url = server.url("/echo");
            let events = tx.clone();
            Client::start_in_arbiter(&arbiters[id % 2].handle(), move || Member {
                id,
                url,
                events,
            })
        })
        .collect();

    let mut connected = HashSet::new();
    collect(&mut rx, "every handle_connect", |id, event| {
        assert!(matches!(event, Ev::Connected), "client {id}: {event:?}");
        connected.insert(id);
        connected.len() == SPREAD
    })
    .await;
    for (id, addr) in addrs.iter().enumerate() {
        let sent = addr
            .send(SendFrame(Frame::text(format!("client {id}"))))
            .await;
        assert!(matches!(sent, Ok(Ok(()))), "client {id}: {sent:?}");
    }
    let mut echoes = HashMap::new();
    collect(&mut rx, "every echo", |id, event| {
        if let Ev::Text(text) = event {
            assert_eq!(text, format!("client {id}"));
            echoes.insert(id, text);
        }
        echoes.len() == SPREAD
    })
    .await;
    for addr in &addrs {
        addr.send(Close).await.expect("Close resolves");
    }
    assert!(server.wait_live_connections(0, BOUND).await);
    for arbiter in arbiters {
        arbiter.stop();
    }
}

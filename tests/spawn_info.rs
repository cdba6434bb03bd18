//! `ClientContext::spawn_info`: a future spawned from a callback delivers its output to
//! `handle_info`; it keeps running across a reconnect; one spawned from `connect` can fetch the
//! token the next attempt uses; and one still pending at the final stop is dropped, without a
//! callback after `terminate` and without a panic. The outputs hold an `Rc`: `H::Info` need not
//! be `Send`.

mod support;

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::{Arc, Mutex},
    thread::{self, ThreadId},
    time::{Duration, Instant},
};

use minch::{
    Client, ClientContext, Close, ConnectRequest, DisconnectReason, Frame, MinchHandler, Reconnect,
    Reply, Response, StopReason,
};
use support::{ServerEvent, TestServer};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Connect { token: Option<String> },
    Connected,
    Disconnected,
    Info(String),
    Terminate,
}

/// What the handler spawns, and when.
#[derive(Clone, Copy)]
enum Plan {
    /// In the first `handle_connect`: a future that answers after the delay.
    AfterConnect(Duration),
    /// In the first `handle_connect`: a future that answers after the delay; then close the
    /// connection at once, so that the client reconnects before the answer.
    AcrossAReconnect(Duration),
    /// In `connect`, while there is no token: fetch one; connect to a route that refuses the
    /// upgrade until then.
    TokenFromConnect,
    /// In `init`: a future that would answer after the delay, holding a guard that records
    /// when it is dropped.
    PendingAtStop(Duration),
}

/// A future's output; the `Rc` makes it `!Send`.
struct Msg(Rc<String>);

struct Spawner {
    server: String,
    plan: Plan,
    seen: Rc<RefCell<Vec<Seen>>>,
    token: Option<String>,
    fetching: bool,
    connected_once: bool,
    dropped_at: Rc<Cell<Option<Instant>>>,
    spawned_at: Rc<Cell<Option<Instant>>>,
}

impl Spawner {
    fn new(server: &TestServer, plan: Plan) -> Spawner {
        Spawner {
            server: server.url(""),
            plan,
            seen: Rc::default(),
            token: None,
            fetching: false,
            connected_once: false,
            dropped_at: Rc::default(),
            spawned_at: Rc::default(),
        }
    }

    fn record(&self, seen: Seen) {
        self.seen.borrow_mut().push(seen);
    }
}

/// Sets `dropped_at` when the future holding it is dropped, finished or not.
struct DropGuard(Rc<Cell<Option<Instant>>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.set(Some(Instant::now()));
    }
}

async fn answer_after(delay: Duration, text: &str) -> Msg {
    actix_rt::time::sleep(delay).await;
    Msg(Rc::new(text.to_owned()))
}

impl MinchHandler for Spawner {
    type Info = Msg;

    fn init(
        &mut self,
        ctx: &mut ClientContext<'_, Self>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Plan::PendingAtStop(delay) = self.plan {
            let guard = DropGuard(self.dropped_at.clone());
            self.spawned_at.set(Some(Instant::now()));
            ctx.spawn_info(async move {
                let _guard = guard;
                answer_after(delay, "too late").await
            });
        }
        Ok(())
    }

    fn connect(&mut self, ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.record(Seen::Connect {
            token: self.token.clone(),
        });
        match (&self.plan, &self.token) {
            (Plan::TokenFromConnect, None) => {
                if !self.fetching {
                    self.fetching = true;
                    ctx.spawn_info(answer_after(Duration::from_millis(30), "t0k3n"));
                }
                format!("{}reject401", self.server).into()
            }
            (_, Some(token)) => ConnectRequest::new(format!("{}headers", self.server))
                .header("x-token", token.clone()),
            (_, None) => format!("{}echo", self.server).into(),
        }
    }

    fn handle_connect(&mut self, _: &Response, ctx: &mut ClientContext<'_, Self>) -> Reply {
        self.record(Seen::Connected);
        let first = !self.connected_once;
        self.connected_once = true;
        match self.plan {
            Plan::AfterConnect(delay) if first => {
                ctx.spawn_info(answer_after(delay, "after connect"));
                Reply::Continue
            }
            Plan::AcrossAReconnect(delay) if first => {
                ctx.spawn_info(answer_after(delay, "across a reconnect"));
                Reply::close(1000, "reconnect, please")
            }
            _ => Reply::Continue,
        }
    }

    fn handle_frame(&mut self, _: Frame, _: &mut ClientContext<'_, Self>) -> Reply {
        Reply::Continue
    }

    fn handle_info(&mut self, Msg(text): Msg, _: &mut ClientContext<'_, Self>) -> Reply {
        self.record(Seen::Info(text.to_string()));
        if let Plan::TokenFromConnect = self.plan {
            self.token = Some(text.to_string());
        }
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        _: &DisconnectReason,
        _: u32,
        _: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        self.record(Seen::Disconnected);
        Reconnect::After(Duration::from_millis(20))
    }

    fn terminate(&mut self, _: &StopReason, _: &mut ClientContext<'_, Self>) {
        self.record(Seen::Terminate);
    }
}

/// Waits (bounded) until `done` holds for what the handler saw; returns it.
async fn wait_seen(seen: &Rc<RefCell<Vec<Seen>>>, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = seen.borrow().clone();
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; the handler saw {now:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_info(seen: &Seen) -> bool {
    matches!(seen, Seen::Info(_))
}

#[actix_rt::test]
async fn a_spawned_futures_output_reaches_handle_info() {
    let server = TestServer::start();
    let handler = Spawner::new(&server, Plan::AfterConnect(Duration::from_millis(50)));
    let seen = handler.seen.clone();
    let client = Client::start(handler);
    let now = wait_seen(&seen, |seen| seen.iter().any(is_info)).await;
    assert_eq!(
        now,
        [
            Seen::Connect { token: None },
            Seen::Connected,
            Seen::Info("after connect".into()),
        ]
    );
    client.send(Close).await.expect("the client answers Close");
}

#[actix_rt::test]
async fn a_future_spawned_before_a_reconnect_answers_after_it() {
    let server = TestServer::start();
    let handler = Spawner::new(&server, Plan::AcrossAReconnect(Duration::from_millis(400)));
    let seen = handler.seen.clone();
    let client = Client::start(handler);
    let now = wait_seen(&seen, |seen| seen.iter().any(is_info)).await;
    // The connection the future was spawned on ended, the client restarted and connected
    // again, and the answer still came, once.
    assert_eq!(
        now,
        [
            Seen::Connect { token: None },
            Seen::Connected,
            Seen::Disconnected,
            Seen::Connect { token: None },
            Seen::Connected,
            Seen::Info("across a reconnect".into()),
        ]
    );
    assert_eq!(server.upgrades(), 2);
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen.borrow().iter().filter(|s| is_info(s)).count(), 1);
    client.send(Close).await.expect("the client answers Close");
}

#[actix_rt::test]
async fn a_token_fetched_from_connect_is_used_by_a_later_attempt() {
    let server = TestServer::start();
    let handler = Spawner::new(&server, Plan::TokenFromConnect);
    let seen = handler.seen.clone();
    let client = Client::start(handler);
    let now = wait_seen(&seen, |seen| seen.contains(&Seen::Connected)).await;
    assert_eq!(now.first(), Some(&Seen::Connect { token: None }));
    assert_eq!(
        now.iter().filter(|s| is_info(s)).count(),
        1,
        "one fetch: {now:?}"
    );
    assert_eq!(
        now[now.len() - 2..],
        [
            Seen::Connect {
                token: Some("t0k3n".into())
            },
            Seen::Connected
        ]
    );
    let upgraded = server
        .wait_event(|e| matches!(e, ServerEvent::Upgraded { .. }), WAIT)
        .await;
    let Some(ServerEvent::Upgraded { path, headers }) = upgraded else {
        panic!("no upgrade: {upgraded:?}");
    };
    assert_eq!(path, "/headers");
    assert!(
        headers.contains(&("x-token".to_string(), "t0k3n".to_string())),
        "{headers:?}"
    );
    client.send(Close).await.expect("the client answers Close");
}

#[actix_rt::test]
async fn a_future_pending_at_the_final_stop_is_dropped_without_a_callback() {
    let server = TestServer::start();
    let delay = Duration::from_millis(500);
    let handler = Spawner::new(&server, Plan::PendingAtStop(delay));
    let seen = handler.seen.clone();
    let (spawned_at, dropped_at) = (handler.spawned_at.clone(), handler.dropped_at.clone());
    let client = Client::start(handler);
    wait_seen(&seen, |seen| seen.contains(&Seen::Connected)).await;
    client.send(Close).await.expect("the client answers Close");
    // Aborted at the stop: dropped long before it would have answered.
    let deadline = Instant::now() + WAIT;
    while dropped_at.get().is_none() {
        assert!(Instant::now() < deadline, "the future was never dropped");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let lived = dropped_at.get().unwrap() - spawned_at.get().expect("spawned in init");
    assert!(
        lived < delay,
        "dropped only after {lived:?}, when it was done"
    );
    // Past the time it would have answered: no handle_info after terminate, no panic.
    actix_rt::time::sleep(delay + Duration::from_millis(100)).await;
    assert_eq!(
        *seen.borrow(),
        [
            Seen::Connect { token: None },
            Seen::Connected,
            Seen::Terminate
        ]
    );
    drop(client);
    actix_rt::time::sleep(Duration::from_millis(50)).await;
}

/// Records on which thread its spawned future ran and on which `handle_info` ran.
struct OnArbiter {
    url: String,
    seen: Arc<Mutex<Vec<(ThreadId, ThreadId)>>>,
}

impl MinchHandler for OnArbiter {
    type Info = ThreadId;

    fn connect(&mut self, _: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.url.clone().into()
    }

    fn handle_connect(&mut self, _: &Response, ctx: &mut ClientContext<'_, Self>) -> Reply {
        ctx.spawn_info(async { thread::current().id() });
        Reply::Continue
    }

    fn handle_frame(&mut self, _: Frame, _: &mut ClientContext<'_, Self>) -> Reply {
        Reply::Continue
    }

    fn handle_info(&mut self, ran_on: ThreadId, _: &mut ClientContext<'_, Self>) -> Reply {
        let pair = (ran_on, thread::current().id());
        self.seen.lock().unwrap().push(pair);
        Reply::Continue
    }
}

#[actix_rt::test]
async fn a_client_on_another_arbiter_runs_its_futures_on_that_arbiter() {
    let server = TestServer::start();
    let arbiter = actix_rt::Arbiter::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (url, recorded) = (server.url("/echo"), seen.clone());
    let client = Client::start_in_arbiter(&arbiter.handle(), move || OnArbiter {
        url,
        seen: recorded,
    });
    let deadline = Instant::now() + WAIT;
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no handle_info");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let (future_ran_on, handler_ran_on) = seen.lock().unwrap()[0];
    assert_eq!(future_ran_on, handler_ran_on);
    assert_ne!(handler_ran_on, thread::current().id());
    client.send(Close).await.expect("the client answers Close");
    arbiter.stop();
}

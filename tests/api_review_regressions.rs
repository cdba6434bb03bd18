//! From a cold review of issue 14's library changes (`spawn_info`, `BackoffOptions`), probed at
//! their edges. Every wait is bounded.
//!
//! The `spawn_info` tests passed on the reviewed code: completion order, delivery while waiting
//! to reconnect, futures spawned in `terminate`, in `handle_disconnect` before a stop or 500
//! pending at the stop all dropped, a panicking future, a client whose address was dropped.
//! Two `backoff` tests failed there and are regressions now: attempt 0 gave `min` or `max` for
//! a factor of 0, below 0 or NaN, and a negative factor made the delays shrink to 0.

mod support;

use std::{
    cell::{Cell, RefCell},
    net::TcpListener,
    rc::Rc,
    time::Duration,
};

use minch::{
    backoff, backoff_with_jitter, BackoffOptions, Client, ClientContext, Close, ConnectRequest,
    DisconnectReason, Frame, Jitter, MinchHandler, Reconnect, Reply, Response, StopReason,
};
use support::{wait_until, TestServer};

const WAIT: Duration = Duration::from_secs(10);

fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// Sets the cell when dropped: tells when a spawned future was dropped.
struct DropGuard(Rc<Cell<bool>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plan {
    /// handle_connect spawns futures that finish after 60, 20 and 40 ms.
    Order,
    /// The first attempt fails; handle_disconnect spawns a 50 ms future and waits 1.5 s.
    DuringBackoff,
    /// terminate spawns a future that never ends.
    FromTerminate,
    /// handle_disconnect spawns a future that never ends and stops.
    FromDisconnectThenStop,
    /// init spawns 500 futures that never end; the client is closed.
    ManyPending,
    /// handle_connect spawns a future that panics, then one that answers.
    Panics,
    /// handle_connect spawns one that answers in 50 ms; the test drops its address.
    AddressDropped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Connect,
    Connected,
    Disconnected,
    Info(String),
    Terminate,
}

struct Probe {
    url: String,
    plan: Plan,
    seen: Rc<RefCell<Vec<Seen>>>,
    dropped: Rc<Cell<bool>>,
    dropped_count: Rc<Cell<usize>>,
    attempts: u32,
}

struct CountOnDrop(Rc<Cell<usize>>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

impl Probe {
    fn new(url: String, plan: Plan) -> Probe {
        Probe {
            url,
            plan,
            seen: Rc::default(),
            dropped: Rc::default(),
            dropped_count: Rc::default(),
            attempts: 0,
        }
    }
}

async fn after(ms: u64, text: &'static str) -> String {
    actix_rt::time::sleep(Duration::from_millis(ms)).await;
    text.to_owned()
}

impl MinchHandler for Probe {
    type Info = String;

    fn init(
        &mut self,
        ctx: &mut ClientContext<'_, Self>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.plan == Plan::ManyPending {
            for _ in 0..500 {
                let guard = CountOnDrop(self.dropped_count.clone());
                ctx.spawn_info(async move {
                    let _guard = guard;
                    std::future::pending::<String>().await
                });
            }
        }
        Ok(())
    }

    fn connect(&mut self, _: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.seen.borrow_mut().push(Seen::Connect);
        self.attempts += 1;
        if self.plan == Plan::DuringBackoff && self.attempts == 1 {
            return format!("ws://127.0.0.1:{}/", closed_port()).into();
        }
        self.url.clone().into()
    }

    fn handle_connect(&mut self, _: &Response, ctx: &mut ClientContext<'_, Self>) -> Reply {
        self.seen.borrow_mut().push(Seen::Connected);
        match self.plan {
            Plan::Order => {
                ctx.spawn_info(after(60, "60"));
                ctx.spawn_info(after(20, "20"));
                ctx.spawn_info(after(40, "40"));
            }
            Plan::Panics => {
                ctx.spawn_info(async {
                    actix_rt::time::sleep(Duration::from_millis(10)).await;
                    panic!("a spawned future panicked (expected by the test)");
                });
                ctx.spawn_info(after(100, "after the panic"));
            }
            Plan::AddressDropped => ctx.spawn_info(after(50, "answer")),
            _ => {}
        }
        Reply::Continue
    }

    fn handle_frame(&mut self, _: Frame, _: &mut ClientContext<'_, Self>) -> Reply {
        Reply::Continue
    }

    fn handle_info(&mut self, info: String, _: &mut ClientContext<'_, Self>) -> Reply {
        self.seen.borrow_mut().push(Seen::Info(info));
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        _: &DisconnectReason,
        _: u32,
        ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        self.seen.borrow_mut().push(Seen::Disconnected);
        match self.plan {
            Plan::DuringBackoff => {
                ctx.spawn_info(after(50, "during the backoff"));
                Reconnect::After(Duration::from_millis(1500))
            }
            Plan::FromDisconnectThenStop => {
                let guard = DropGuard(self.dropped.clone());
                ctx.spawn_info(async move {
                    let _guard = guard;
                    std::future::pending::<String>().await
                });
                Reconnect::Stop
            }
            _ => Reconnect::After(Duration::from_millis(20)),
        }
    }

    fn terminate(&mut self, _: &StopReason, ctx: &mut ClientContext<'_, Self>) {
        self.seen.borrow_mut().push(Seen::Terminate);
        if self.plan == Plan::FromTerminate {
            let guard = DropGuard(self.dropped.clone());
            ctx.spawn_info(async move {
                let _guard = guard;
                std::future::pending::<String>().await
            });
        }
    }
}

fn infos(seen: &Rc<RefCell<Vec<Seen>>>) -> Vec<String> {
    seen.borrow()
        .iter()
        .filter_map(|s| match s {
            Seen::Info(text) => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[actix_rt::test]
async fn outputs_arrive_in_the_order_the_futures_finish() {
    let server = TestServer::start();
    let probe = Probe::new(server.url("/echo"), Plan::Order);
    let seen = probe.seen.clone();
    let client = Client::start(probe);
    assert!(
        wait_until(WAIT, || infos(&seen).len() == 3).await,
        "{:?}",
        seen.borrow()
    );
    assert_eq!(infos(&seen), ["20", "40", "60"]);
    client.send(Close).await.unwrap();
}

#[actix_rt::test]
async fn an_output_ready_while_waiting_to_reconnect_is_delivered_before_the_next_attempt() {
    let server = TestServer::start();
    let probe = Probe::new(server.url("/echo"), Plan::DuringBackoff);
    let seen = probe.seen.clone();
    let client = Client::start(probe);
    assert!(
        wait_until(WAIT, || seen.borrow().contains(&Seen::Connected)).await,
        "{:?}",
        seen.borrow()
    );
    assert_eq!(
        *seen.borrow(),
        [
            Seen::Connect,
            Seen::Disconnected,
            Seen::Info("during the backoff".into()),
            Seen::Connect,
            Seen::Connected
        ]
    );
    client.send(Close).await.unwrap();
}

#[actix_rt::test]
async fn a_future_spawned_in_terminate_is_dropped() {
    let server = TestServer::start();
    let probe = Probe::new(server.url("/echo"), Plan::FromTerminate);
    let (seen, dropped) = (probe.seen.clone(), probe.dropped.clone());
    let client = Client::start(probe);
    assert!(wait_until(WAIT, || seen.borrow().contains(&Seen::Connected)).await);
    client.send(Close).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || dropped.get()).await,
        "a future spawned in terminate still runs after the final stop"
    );
    drop(client);
}

#[actix_rt::test]
async fn a_future_spawned_in_handle_disconnect_before_a_stop_is_dropped() {
    let probe = Probe::new(
        format!("ws://127.0.0.1:{}/", closed_port()),
        Plan::FromDisconnectThenStop,
    );
    let (seen, dropped) = (probe.seen.clone(), probe.dropped.clone());
    let client = Client::start(probe);
    assert!(wait_until(WAIT, || seen.borrow().contains(&Seen::Terminate)).await);
    assert!(
        wait_until(Duration::from_secs(2), || dropped.get()).await,
        "a future spawned before the stop still runs"
    );
    assert_eq!(
        *seen.borrow(),
        [Seen::Connect, Seen::Disconnected, Seen::Terminate]
    );
    drop(client);
}

#[actix_rt::test]
async fn many_pending_futures_are_all_dropped_at_the_stop() {
    let server = TestServer::start();
    let probe = Probe::new(server.url("/echo"), Plan::ManyPending);
    let (seen, dropped) = (probe.seen.clone(), probe.dropped_count.clone());
    let client = Client::start(probe);
    assert!(wait_until(WAIT, || seen.borrow().contains(&Seen::Connected)).await);
    client.send(Close).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || dropped.get() == 500).await,
        "{} of 500 dropped",
        dropped.get()
    );
}

#[actix_rt::test]
async fn a_panicking_future_leaves_the_client_working() {
    let server = TestServer::start();
    let probe = Probe::new(server.url("/echo"), Plan::Panics);
    let seen = probe.seen.clone();
    let client = Client::start(probe);
    assert!(
        wait_until(WAIT, || !infos(&seen).is_empty()).await,
        "{:?}",
        seen.borrow()
    );
    assert_eq!(infos(&seen), ["after the panic"]);
    client.send(Close).await.unwrap();
    assert!(seen.borrow().contains(&Seen::Terminate));
}

#[actix_rt::test]
async fn an_output_reaches_a_client_whose_address_was_dropped() {
    let server = TestServer::start();
    let probe = Probe::new(server.url("/echo"), Plan::AddressDropped);
    let seen = probe.seen.clone();
    drop(Client::start(probe));
    assert!(
        wait_until(WAIT, || !infos(&seen).is_empty()).await,
        "{:?}",
        seen.borrow()
    );
    server.close_all(Some(1000), "bye");
}

// ---- BackoffOptions ----------------------------------------------------------------------

#[test]
fn backoff_attempt_zero_is_zero_whatever_the_factor() {
    // The docs of `backoff`: "Attempt 0 gives 0."
    for factor in [2.0, 1.0, 0.5, 0.0, -1.0, f64::NAN] {
        let options = BackoffOptions::default().factor(factor);
        assert_eq!(backoff(0, options), 0, "factor {factor}");
    }
}

#[test]
fn backoff_edges_do_not_panic() {
    for options in [
        BackoffOptions::new(0, 0, 2.0),
        BackoffOptions::new(1000, 100, 2.0),
        BackoffOptions::new(u64::MAX, u64::MAX, 2.0),
        BackoffOptions::new(200, 30_000, f64::INFINITY),
        BackoffOptions::new(200, 30_000, f64::NEG_INFINITY),
        BackoffOptions::new(200, 30_000, -3.0),
        BackoffOptions::new(200, 30_000, f64::NAN),
    ] {
        for attempt in [0, 1, 2, 100, u32::MAX] {
            let plain = backoff(attempt, options);
            assert!(plain <= options.max, "{options:?} {attempt}: {plain}");
            let _ = backoff_with_jitter(attempt, options, Jitter::Full);
            let _ = backoff_with_jitter(attempt, options, Jitter::Equal);
        }
    }
}

#[test]
fn backoff_never_shrinks_as_attempts_grow() {
    // "the delay grows as `min * attempt^factor`, up to `max`". BackoffOptions takes any
    // factor: a negative one (a sign slip) makes the delays shrink to 0, a reconnect storm,
    // and nothing (no validation, no error) says so.
    let options = BackoffOptions::default().factor(-1.0);
    let delays: Vec<u64> = (1..=500).map(|attempt| backoff(attempt, options)).collect();
    assert!(
        delays.windows(2).all(|pair| pair[0] <= pair[1]),
        "delays shrink: {:?}…, attempt 500: {} ms",
        &delays[..5],
        delays[499]
    );
}

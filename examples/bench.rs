//! Benchmark: minch against raw awc and tokio-tungstenite, on one machine, in one run.
//!
//! ```sh
//! cargo run --release --example bench                 # everything: 3 runs, medians, ratios
//! cargo run --release --example bench -- --quick      # a smoke run with small counts
//! cargo run --release --example bench -- --scenario rtt,pipeline --runs 5 --raw
//! cargo run --release --example bench -- server --port 9001   # only the echo server
//! cargo run --release --example bench -- --url ws://127.0.0.1:9001/ --clients minch-actor \
//!     --scenario pipeline --runs 1 --pin off          # clients only, e.g. under a profiler
//! ```
//!
//! The echo server runs in a **process of its own** (this binary re-executed with `server`):
//! tokio-tungstenite on a *current-thread* tokio runtime, so that it uses one core and the client
//! under test the other. It echoes text and binary messages (replies are fed and flushed once
//! the read side has nothing more ready), and answers a text message `frag4m` with a 4 MiB binary
//! message sent as 65 536 fragments of 64 bytes (the shape of Autobahn case 9.3.1). It listens
//! on 127.0.0.1 only, with a backlog of 4 096, and exits when the bench does.
//!
//! Clients, all driven from one actix (single-thread tokio) runtime in this process:
//! - `minch-actor`: `minch::Client` with a handler; the driver hands it the job as an `Info`
//!   message and sends the first window with `SendFrame` to the address, then `handle_frame`
//!   replies with the next message (`Reply::Send`) and reports the result over a channel;
//! - `minch-addr`: the same actor client driven from outside through its address, as a program
//!   that owns a client does: each message goes out with a fire-and-forget
//!   `do_send(SendFrame)`, and `handle_frame` hands each echo over a channel to the program,
//!   which runs the stream clients' loop;
//! - `minch-simple`: `minch::connect` → `(Connection, Frames)`, the `Connection` as a `Sink`
//!   of frames (`feed`, `flush`) and `Frames` as a `Stream` (`next`, `now_or_never` to see
//!   whether an echo is ready);
//! - `minch-blocking`: `minch::blocking::connect` on threads of its own, one producer and one
//!   consumer: the producer sends as many messages as the window has room for with one
//!   `send_frames`, the consumer takes the echoes with `receive_frame` (blocking for one, then
//!   whatever else is ready) and hands the window's credits back in bulk; the runtime only
//!   awaits the result. Its fanout connects and echoes from `concurrency` worker threads
//!   (whose leftovers count in its memory per connection);
//! - `raw-awc`: `awc` `ws(url).connect()` and its `Framed` sink and stream (frame limit raised
//!   to 16 MiB; one `awc::Client` with `Connector::limit(0)`, since awc's default pool of 100
//!   would stall the fanout);
//! - `tokio-tungstenite`: `connect_async` with its defaults and the `WebSocketStream`.
//!
//! The stream clients feed messages and flush when the read side has nothing ready, as the
//! server does; with one message in flight (rtt) they `send` then `next`.
//!
//! Scenarios (one connection each, set up before the clock starts; a warm-up first):
//! - `rtt`: one 16 B text message in flight: msgs/s, p50 and p99 send-to-echo latency;
//! - `pipeline`: a window of 1 000 16 B messages in flight: msgs/s;
//! - `bulk`: 1 000 binary messages of 1 MiB, window 4: MB/s of echoed payload;
//! - `fragmented`: 100 messages of 4 MiB from the server in 64 B fragments, 2 requested at a
//!   time: MB/s;
//! - `fanout`: 10 000 connections opened 256 at a time, 3 echoes each, then idle; each client in
//!   a fresh child process (`bench fanout ...`): connect-all time, and KiB per connection: (VmRSS
//!   with all connections idle − VmRSS before) / connections, and the same with VmHWM. Children raise RLIMIT_NOFILE to the hard limit through `sh -c
//!   'ulimit -n ...'`; one untimed fanout warms the server up first.
//!
//! rtt and pipeline run with bench and server pinned to CPU 0 (`[cpu0]`: `taskset -a -p -c 0`
//! on both running processes, every thread) and unpinned (`[2 cpus]`); `--pin on|off` keeps one
//! of the two. The other scenarios run unpinned. An untimed warm-up (every client, every echo
//! scenario, `--quick` counts) comes first. Clients take turns, in an order that rotates
//! from run to run; the table shows medians over `--runs` (3). A job that fails or stalls (15 s)
//! is reported, tried once more, and left out of the medians.

#[path = "bench/clients/mod.rs"]
mod clients;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/server.rs"]
mod server;
#[path = "bench/sys.rs"]
mod sys;

use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    time::{Duration, Instant},
};

use clients::{ClientKind, FanoutParams, Job, Payload};
use report::{Cell, Results, Row};

/// One scenario variant: what it runs and whether client and server share CPU 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Rtt,
    Pipeline,
    Bulk,
    Fragmented,
    Fanout,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Rtt,
        Scenario::Pipeline,
        Scenario::Bulk,
        Scenario::Fragmented,
        Scenario::Fanout,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Rtt => "rtt",
            Scenario::Pipeline => "pipeline",
            Scenario::Bulk => "bulk",
            Scenario::Fragmented => "fragmented",
            Scenario::Fanout => "fanout",
        }
    }

    fn small_messages(self) -> bool {
        matches!(self, Scenario::Rtt | Scenario::Pipeline)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PinMode {
    /// rtt and pipeline both pinned and unpinned.
    Both,
    /// rtt and pipeline pinned only.
    On,
    /// Nothing pinned.
    Off,
}

#[derive(Clone)]
struct Options {
    quick: bool,
    runs: usize,
    scenarios: Vec<Scenario>,
    clients: Vec<ClientKind>,
    pin: PinMode,
    raw: bool,
    fanout_conns: Option<usize>,
    /// Use a running server instead of starting one (e.g. to profile the client alone).
    url: Option<String>,
}

/// Counts for one scenario: the full run and `--quick`.
struct Sizes {
    rtt_warmup: usize,
    rtt_measured: usize,
    pipeline_warmup: usize,
    pipeline_measured: usize,
    pipeline_window: usize,
    bulk_warmup: usize,
    bulk_measured: usize,
    bulk_window: usize,
    frag_warmup: usize,
    frag_measured: usize,
    frag_window: usize,
    fanout_conns: usize,
    fanout_echoes: usize,
    fanout_concurrency: usize,
}

impl Sizes {
    fn new(options: &Options) -> Self {
        let mut sizes = if options.quick {
            Sizes {
                rtt_warmup: 200,
                rtt_measured: 2_000,
                pipeline_warmup: 2_000,
                pipeline_measured: 20_000,
                pipeline_window: 1_000,
                bulk_warmup: 4,
                bulk_measured: 20,
                bulk_window: 4,
                frag_warmup: 1,
                frag_measured: 3,
                frag_window: 2,
                fanout_conns: 1_000,
                fanout_echoes: 3,
                fanout_concurrency: 256,
            }
        } else {
            Sizes {
                rtt_warmup: 2_000,
                rtt_measured: 20_000,
                pipeline_warmup: 20_000,
                pipeline_measured: 200_000,
                pipeline_window: 1_000,
                bulk_warmup: 20,
                bulk_measured: 1_000,
                bulk_window: 4,
                frag_warmup: 4,
                frag_measured: 100,
                frag_window: 2,
                fanout_conns: 10_000,
                fanout_echoes: 3,
                fanout_concurrency: 256,
            }
        };
        if let Some(conns) = options.fanout_conns {
            sizes.fanout_conns = conns;
        }
        sizes
    }

    fn job(&self, scenario: Scenario) -> Job {
        const SMALL: &str = "0123456789abcdef"; // 16 bytes
        match scenario {
            Scenario::Rtt => Job {
                warmup: self.rtt_warmup,
                measured: self.rtt_measured,
                window: 1,
                payload: Payload::Text(SMALL),
                record_latency: true,
            },
            Scenario::Pipeline => Job {
                warmup: self.pipeline_warmup,
                measured: self.pipeline_measured,
                window: self.pipeline_window,
                payload: Payload::Text(SMALL),
                record_latency: false,
            },
            Scenario::Bulk => Job {
                warmup: self.bulk_warmup,
                measured: self.bulk_measured,
                window: self.bulk_window,
                payload: Payload::Binary(bytes::Bytes::from(vec![0x5A; 1 << 20])),
                record_latency: false,
            },
            Scenario::Fragmented => Job {
                warmup: self.frag_warmup,
                measured: self.frag_measured,
                window: self.frag_window,
                payload: Payload::Text(server::FRAG_REQUEST),
                record_latency: false,
            },
            Scenario::Fanout => unreachable!("fanout is not an echo job"),
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage:\n  bench [--quick] [--runs N] [--scenario rtt,pipeline,bulk,fragmented,fanout]\n        \
         [--clients minch-actor,minch-addr,minch-simple,minch-blocking,raw-awc,tokio-tungstenite] [--pin both|on|off]\n        \
         [--conns N] [--raw] [--url ws://HOST:PORT/ (a running bench server)]\n  \
         bench server [--port P]\n  \
         bench fanout --client NAME --url URL --conns N --echoes K --concurrency C"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("server") => {
            let port =
                flag_value(&args, "--port").map_or(0, |p| p.parse().unwrap_or_else(|_| usage()));
            if let Err(error) = server::run(port) {
                eprintln!("bench server: {error}");
                std::process::exit(1);
            }
        }
        Some("fanout") => fanout_child(&args),
        _ => orchestrate(parse_options(&args)),
    }
}

fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|arg| arg == flag).map(|at| {
        args.get(at + 1)
            .map(String::as_str)
            .unwrap_or_else(|| usage())
    })
}

fn parse_options(args: &[String]) -> Options {
    let mut options = Options {
        quick: false,
        runs: 3,
        scenarios: Scenario::ALL.to_vec(),
        clients: ClientKind::available(),
        pin: PinMode::Both,
        raw: false,
        fanout_conns: None,
        url: None,
    };
    let mut at = 0;
    while at < args.len() {
        let value = |at: usize| {
            args.get(at + 1)
                .map(String::as_str)
                .unwrap_or_else(|| usage())
        };
        match args[at].as_str() {
            "--quick" => options.quick = true,
            "--raw" => options.raw = true,
            "--runs" => {
                options.runs = value(at).parse().unwrap_or_else(|_| usage());
                at += 1;
            }
            "--url" => {
                options.url = Some(value(at).to_owned());
                at += 1;
            }
            "--conns" => {
                options.fanout_conns = Some(value(at).parse().unwrap_or_else(|_| usage()));
                at += 1;
            }
            "--scenario" | "--scenarios" => {
                options.scenarios = value(at)
                    .split(',')
                    .map(|name| {
                        *Scenario::ALL
                            .iter()
                            .find(|s| s.name() == name)
                            .unwrap_or_else(|| {
                                eprintln!("unknown scenario {name:?}");
                                usage()
                            })
                    })
                    .collect();
                at += 1;
            }
            "--clients" | "--client" => {
                options.clients = value(at)
                    .split(',')
                    .map(|name| {
                        ClientKind::from_name(name).unwrap_or_else(|| {
                            eprintln!("unknown or unavailable client {name:?}");
                            usage()
                        })
                    })
                    .collect();
                at += 1;
            }
            "--pin" => match args.get(at + 1).map(String::as_str) {
                Some("both") => {
                    options.pin = PinMode::Both;
                    at += 1;
                }
                Some("on") => {
                    options.pin = PinMode::On;
                    at += 1;
                }
                Some("off") => {
                    options.pin = PinMode::Off;
                    at += 1;
                }
                _ => options.pin = PinMode::On,
            },
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other:?}");
                usage()
            }
        }
        at += 1;
    }
    if options.runs == 0 {
        usage();
    }
    options
}

/// The echo server child process; killed when dropped (and it exits by itself when its stdin,
/// held here, closes).
struct ServerProcess {
    child: Child,
    _stdin: ChildStdin,
    _stdout: BufReader<ChildStdout>,
    port: u16,
}

impl ServerProcess {
    fn spawn() -> ServerProcess {
        let mut child = sys::command_with_nofile(&["server", "--port", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("could not start the echo server process");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("reading the server's port");
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("the echo server said {line:?}, not its port"));
        ServerProcess {
            child,
            _stdin: stdin,
            _stdout: stdout,
            port,
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn orchestrate(options: Options) {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off"))
        .try_init();
    let sizes = Sizes::new(&options);
    let server = options.url.is_none().then(ServerProcess::spawn);
    let url = match (&options.url, &server) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => format!("ws://127.0.0.1:{}/", server.port),
        (None, None) => unreachable!(),
    };
    let all_cpus = sys::allowed_cpus();
    let me = std::process::id();
    let server_pid = server.as_ref().map(|server| server.child.id());

    let taskset_ok = sys::taskset_available();
    let pin_variants: Vec<bool> = match (options.pin, taskset_ok) {
        (_, false) | (PinMode::Off, _) => vec![false],
        (PinMode::On, true) => vec![true],
        (PinMode::Both, true) => vec![true, false],
    };

    println!(
        "minch bench: {} run(s){}, echo server {} on {url} (tokio-tungstenite, current-thread runtime)",
        options.runs,
        if options.quick { " (--quick)" } else { "" },
        server_pid.map_or("given by --url".to_owned(), |pid| format!("pid {pid}")),
    );
    println!(
        "machine: {} CPU(s) allowed ({all_cpus}), RLIMIT_NOFILE {} (children raise it to the hard limit){}",
        sys::cpu_count(),
        sys::nofile_limit().map_or("?".into(), |n| n.to_string()),
        if taskset_ok { "" } else { "; taskset not found: nothing pinned" }
    );
    println!(
        "clients: {}",
        options
            .clients
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut results = Results::default();
    let mut failures: Vec<String> = Vec::new();
    let system = actix_rt::System::new();
    // Untimed warm-up: every client runs every echo scenario once with --quick counts, so that
    // the first measured run does not pay for the process's heap growing.
    let warmup_sizes = Sizes::new(&Options {
        quick: true,
        ..options.clone()
    });
    eprintln!("warm-up: each client once per echo scenario, --quick counts, untimed");
    for &scenario in options.scenarios.iter().filter(|s| **s != Scenario::Fanout) {
        for &client in &options.clients {
            let job = warmup_sizes.job(scenario);
            let _ = system.block_on(async { clients::run_job(client, &url, &job).await });
        }
    }
    if options.scenarios.contains(&Scenario::Fanout) {
        // The server's first 10 000 connections cost it more (its heap grows): warm it up so
        // that the first client measured is not the one that pays for it.
        eprintln!("warm-up: one untimed fanout (raw-awc)");
        if let Err(error) = run_fanout_child(ClientKind::RawAwc, &url, &sizes) {
            eprintln!("warm-up fanout failed: {error}");
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    for run in 0..options.runs {
        for &scenario in &options.scenarios {
            let pins: &[bool] = if scenario.small_messages() {
                &pin_variants
            } else {
                &[false]
            };
            for &pinned in pins {
                let row = Row::new(scenario.name(), pinned);
                if pinned {
                    sys::set_affinity(me, "0");
                    if let Some(pid) = server_pid {
                        sys::set_affinity(pid, "0");
                    }
                }
                // Alternate the order of the clients from run to run.
                let n = options.clients.len();
                for i in 0..n {
                    let client = options.clients[(i + run) % n];
                    // A failed attempt (error or stall) is reported and tried once more.
                    for attempt in 1..=2 {
                        let started = Instant::now();
                        let cell = if scenario == Scenario::Fanout {
                            run_fanout_child(client, &url, &sizes)
                        } else {
                            let job = sizes.job(scenario);
                            system
                                .block_on(async { clients::run_job(client, &url, &job).await })
                                .map(|result| Cell::from_job(&result))
                        };
                        // Let the server drop the connection before the next client starts.
                        std::thread::sleep(Duration::from_millis(
                            if scenario == Scenario::Fanout {
                                1500
                            } else {
                                100
                            },
                        ));
                        match cell {
                            Ok(cell) => {
                                eprintln!(
                                    "run {}/{} {:<18} {:<18} {}  ({:.1} s)",
                                    run + 1,
                                    options.runs,
                                    row.label(),
                                    client.name(),
                                    cell.summary(),
                                    started.elapsed().as_secs_f64()
                                );
                                results.push(row.clone(), client, cell);
                                break;
                            }
                            Err(error) => {
                                let failure = format!(
                                    "run {}/{} {} {} attempt {attempt}: {error}",
                                    run + 1,
                                    options.runs,
                                    row.label(),
                                    client.name()
                                );
                                eprintln!("FAILED {failure}");
                                failures.push(failure);
                            }
                        }
                    }
                }
                if pinned {
                    sys::set_affinity(me, &all_cpus);
                    if let Some(pid) = server_pid {
                        sys::set_affinity(pid, &all_cpus);
                    }
                }
            }
        }
    }
    drop(system);

    report::print(
        &results,
        &options.clients,
        options.runs,
        options.raw,
        options.quick,
    );
    if !failures.is_empty() {
        println!();
        println!(
            "Failed attempts ({}), left out of the medians:",
            failures.len()
        );
        for failure in &failures {
            println!("  {failure}");
        }
    }
    drop(server);
}

/// Runs one client's fanout in a fresh child process, so that RSS numbers do not mix.
fn run_fanout_child(client: ClientKind, url: &str, sizes: &Sizes) -> Result<Cell, String> {
    let conns = sizes.fanout_conns.to_string();
    let echoes = sizes.fanout_echoes.to_string();
    let concurrency = sizes.fanout_concurrency.to_string();
    let output = sys::command_with_nofile(&[
        "fanout",
        "--client",
        client.name(),
        "--url",
        url,
        "--conns",
        &conns,
        "--echoes",
        &echoes,
        "--concurrency",
        &concurrency,
    ])
    .stdin(Stdio::null())
    .stderr(Stdio::inherit())
    .output()
    .map_err(|error| format!("could not run the fanout child: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with("FANOUT "))
        .ok_or_else(|| {
            format!(
                "the fanout child printed no result ({}): {stdout}",
                output.status
            )
        })?;
    Cell::from_fanout_line(line)
}

/// `bench fanout ...`: one client's fanout, in this fresh process; prints one `FANOUT` line.
fn fanout_child(args: &[String]) {
    let get = |flag: &str| flag_value(args, flag).unwrap_or_else(|| usage());
    let client = ClientKind::from_name(get("--client")).unwrap_or_else(|| usage());
    let url = get("--url").to_owned();
    let params = FanoutParams {
        conns: get("--conns").parse().unwrap_or_else(|_| usage()),
        echoes: get("--echoes").parse().unwrap_or_else(|_| usage()),
        concurrency: get("--concurrency").parse().unwrap_or_else(|_| usage()),
    };
    let system = actix_rt::System::new();
    let result = system.block_on(async move { clients::fanout(client, &url, &params).await });
    match result {
        Ok(fanout) => {
            println!(
                "FANOUT conns={} failed={} connect_ms={:.1} ready_ms={:.1} base_kib={} idle_kib={} hwm_kib={}",
                fanout.connected,
                fanout.failed,
                fanout.connect_all.as_secs_f64() * 1e3,
                fanout.all_echoed.as_secs_f64() * 1e3,
                fanout.base_rss_kib,
                fanout.idle_rss_kib,
                fanout.hwm_kib
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
            // Skip tearing 10 000 connections down one by one: the kernel closes them.
            std::process::exit(0);
        }
        Err(error) => {
            eprintln!("fanout {}: {error}", client.name());
            std::process::exit(1);
        }
    }
}

//! Benchmark: minch against raw awc and tokio-tungstenite, on one machine, in one run.
//!
//! ```sh
//! cargo run --release --example bench                 # everything: 3 runs, medians, ratios
//! cargo run --release --example bench -- --quick      # a smoke run with small counts
//! cargo run --release --example bench -- --scenario rtt,pipeline --runs 5 --raw
//! cargo run --release --example bench -- --scenario compressed --clients minch-actor,minch-simple,yawc
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
//! - `minch-addr-batch`: the same, with the messages fed between two flushes sent as one
//!   `do_send(SendFrames)`;
//! - `minch-sender`, `minch-sender-batch`: the same actor fed through a `FrameSender` taken
//!   from its address, one `send` per message, or one `send_all` per flush;
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
//! - `compressed` (issue 11): permessage-deflate, against a second, deflate-capable echo server
//!   (`bench server --deflate`: yawc's server side on a current-thread runtime, level 1; see
//!   `bench/deflate_server.rs`), with the clients that can negotiate deflate (minch's four, and
//!   `yawc`, offering minch's defaults: client window 15 bits, level 1, threshold 64 B; raw awc
//!   and tokio-tungstenite cannot). Messages are 1 KiB JSON trade batches (512 different ones,
//!   same keys and symbols, varying numbers). It stands for six rows:
//!   - `deflate-rtt` (one in flight) and `deflate-pipeline` (window 1 000): msgs/s, payload
//!     MB/s, client CPU µs per message (this process's CPU time, all threads, from
//!     /proc/self/task/*/schedstat, over the timed part), and bytes on the wire per 100 bytes of
//!     payload each way (counted by the server on its sockets);
//!   - `deflate-pipeline-nct`: the same without context takeover (the server's path
//!     `/no-context-takeover` imposes it both ways);
//!   - `deflate-fanout-idle`, `deflate-fanout`, `deflate-fanout-nct`: the fanout with deflate
//!     negotiated: no message at all; 3 echoes of 1 KiB ticks, context kept; the same without
//!     context takeover: KiB per connection.
//!
//! rtt and pipeline (and the compressed rtt and pipeline rows) run with bench and server pinned to CPU 0 (`[cpu0]`: `taskset -a -p -c 0`
//! on both running processes, every thread) and unpinned (`[2 cpus]`); `--pin on|off` keeps one
//! of the two. The other scenarios run unpinned. An untimed warm-up (every client, every echo
//! scenario, `--quick` counts) comes first. Clients take turns, in an order that rotates
//! from run to run; the table shows medians over `--runs` (3). A job that fails or stalls (15 s)
//! is reported, tried once more, and left out of the medians.

#[path = "bench/clients/mod.rs"]
mod clients;
#[path = "bench/deflate_server.rs"]
mod deflate_server;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/server.rs"]
mod server;
#[path = "bench/sys.rs"]
mod sys;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use clients::{ClientKind, FanoutParams, Job, Payload, Ticks};
use report::{Cell, Results, Row};

/// One scenario variant: what it runs and whether client and server share CPU 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Rtt,
    Pipeline,
    Bulk,
    Fragmented,
    Fanout,
    /// The compressed scenarios below, together (`--scenario compressed`).
    Compressed,
    DeflateRtt,
    DeflatePipeline,
    DeflatePipelineNoContext,
    DeflateFanoutIdle,
    DeflateFanout,
    DeflateFanoutNoContext,
}

impl Scenario {
    /// What a run without `--scenario` runs.
    const ALL: [Scenario; 6] = [
        Scenario::Rtt,
        Scenario::Pipeline,
        Scenario::Bulk,
        Scenario::Fragmented,
        Scenario::Fanout,
        Scenario::Compressed,
    ];

    const COMPRESSED: [Scenario; 6] = [
        Scenario::DeflateRtt,
        Scenario::DeflatePipeline,
        Scenario::DeflatePipelineNoContext,
        Scenario::DeflateFanoutIdle,
        Scenario::DeflateFanout,
        Scenario::DeflateFanoutNoContext,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Rtt => "rtt",
            Scenario::Pipeline => "pipeline",
            Scenario::Bulk => "bulk",
            Scenario::Fragmented => "fragmented",
            Scenario::Fanout => "fanout",
            Scenario::Compressed => "compressed",
            Scenario::DeflateRtt => "deflate-rtt",
            Scenario::DeflatePipeline => "deflate-pipeline",
            Scenario::DeflatePipelineNoContext => "deflate-pipeline-nct",
            Scenario::DeflateFanoutIdle => "deflate-fanout-idle",
            Scenario::DeflateFanout => "deflate-fanout",
            Scenario::DeflateFanoutNoContext => "deflate-fanout-nct",
        }
    }

    /// The scenarios a name given to `--scenario` stands for.
    fn expand(self) -> Vec<Scenario> {
        if self == Scenario::Compressed {
            Scenario::COMPRESSED.to_vec()
        } else {
            vec![self]
        }
    }

    /// Run pinned and unpinned.
    fn small_messages(self) -> bool {
        matches!(
            self,
            Scenario::Rtt
                | Scenario::Pipeline
                | Scenario::DeflateRtt
                | Scenario::DeflatePipeline
                | Scenario::DeflatePipelineNoContext
        )
    }

    /// Runs against the deflate server, with the clients that can negotiate deflate.
    fn compressed(self) -> bool {
        Scenario::COMPRESSED.contains(&self) || self == Scenario::Compressed
    }

    /// Connects to the deflate server's path that imposes no context takeover.
    fn no_context_takeover(self) -> bool {
        matches!(
            self,
            Scenario::DeflatePipelineNoContext | Scenario::DeflateFanoutNoContext
        )
    }

    fn fanout(self) -> bool {
        matches!(
            self,
            Scenario::Fanout
                | Scenario::DeflateFanoutIdle
                | Scenario::DeflateFanout
                | Scenario::DeflateFanoutNoContext
        )
    }

    fn runs_client(self, client: ClientKind) -> bool {
        if self.compressed() {
            client.deflates()
        } else {
            client.plain()
        }
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
    deflate_rtt_warmup: usize,
    deflate_rtt_measured: usize,
    deflate_pipeline_warmup: usize,
    deflate_pipeline_measured: usize,
    deflate_pipeline_window: usize,
    /// The compressed scenarios' messages, shared by every job.
    ticks: Arc<Ticks>,
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
                deflate_rtt_warmup: 200,
                deflate_rtt_measured: 2_000,
                deflate_pipeline_warmup: 2_000,
                deflate_pipeline_measured: 10_000,
                deflate_pipeline_window: 1_000,
                ticks: Arc::new(Ticks::new()),
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
                deflate_rtt_warmup: 2_000,
                deflate_rtt_measured: 20_000,
                deflate_pipeline_warmup: 10_000,
                deflate_pipeline_measured: 100_000,
                deflate_pipeline_window: 1_000,
                ticks: Arc::new(Ticks::new()),
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
            Scenario::DeflateRtt => Job {
                warmup: self.deflate_rtt_warmup,
                measured: self.deflate_rtt_measured,
                window: 1,
                payload: Payload::Ticks(self.ticks.clone()),
                record_latency: true,
            },
            Scenario::DeflatePipeline | Scenario::DeflatePipelineNoContext => Job {
                warmup: self.deflate_pipeline_warmup,
                measured: self.deflate_pipeline_measured,
                window: self.deflate_pipeline_window,
                payload: Payload::Ticks(self.ticks.clone()),
                record_latency: false,
            },
            Scenario::Fanout
            | Scenario::Compressed
            | Scenario::DeflateFanoutIdle
            | Scenario::DeflateFanout
            | Scenario::DeflateFanoutNoContext => unreachable!("not an echo job"),
        }
    }

    /// A fanout's echoes per connection and what they carry.
    fn fanout_echoes(&self, scenario: Scenario) -> (usize, Payload) {
        match scenario {
            Scenario::DeflateFanoutIdle => (0, Payload::Ticks(self.ticks.clone())),
            Scenario::DeflateFanout | Scenario::DeflateFanoutNoContext => {
                (self.fanout_echoes, Payload::Ticks(self.ticks.clone()))
            }
            _ => (self.fanout_echoes, Payload::Text(clients::FANOUT_MESSAGE)),
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage:\n  bench [--quick] [--runs N] [--scenario rtt,pipeline,bulk,fragmented,fanout,compressed]\n        \
         [--clients minch-actor,minch-addr,minch-addr-batch,minch-sender,minch-sender-batch,minch-simple,minch-blocking,raw-awc,tokio-tungstenite,yawc] [--pin both|on|off]\n        \
         [--conns N] [--raw] [--url ws://HOST:PORT/ (a running bench server; for compressed scenarios, `server --deflate`)]\n  \
         compressed = deflate-rtt,deflate-pipeline,deflate-pipeline-nct,deflate-fanout-idle,deflate-fanout,deflate-fanout-nct\n  \
         bench server [--port P] [--deflate]\n  \
         bench fanout --client NAME --url URL --conns N --echoes K --concurrency C [--ticks] [--settle SECS]"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("server") => {
            let port =
                flag_value(&args, "--port").map_or(0, |p| p.parse().unwrap_or_else(|_| usage()));
            let result = if args.iter().any(|arg| arg == "--deflate") {
                deflate_server::run(port)
            } else {
                server::run(port)
            };
            if let Err(error) = result {
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
                            .chain(&Scenario::COMPRESSED)
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
    let mut scenarios = Vec::new();
    for scenario in options.scenarios.iter().flat_map(|s| s.expand()) {
        if !scenarios.contains(&scenario) {
            scenarios.push(scenario);
        }
    }
    options.scenarios = scenarios;
    options
}

/// The echo server child process; killed when dropped (and it exits by itself when its stdin,
/// held here, closes).
struct ServerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl ServerProcess {
    /// The tokio-tungstenite server, or with `deflate` the deflate-capable one.
    fn spawn(deflate: bool) -> ServerProcess {
        let mut args = vec!["server", "--port", "0"];
        if deflate {
            args.push("--deflate");
        }
        let mut child = sys::command_with_nofile(&args)
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
            stdin,
            stdout,
            port,
        }
    }

    /// The deflate server's count of bytes read and written on its connections so far.
    fn bytes(&mut self) -> Option<(u64, u64)> {
        writeln!(self.stdin, "BYTES").ok()?;
        self.stdin.flush().ok()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).ok()?;
        let mut fields = line.trim().strip_prefix("BYTES ")?.split(' ');
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
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
    let wants_plain = options.scenarios.iter().any(|s| !s.compressed());
    let wants_deflate = options.scenarios.iter().any(|s| s.compressed());
    let server = (options.url.is_none() && wants_plain).then(|| ServerProcess::spawn(false));
    let mut deflate_server =
        (options.url.is_none() && wants_deflate).then(|| ServerProcess::spawn(true));
    let url = match (&options.url, &server) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => format!("ws://127.0.0.1:{}/", server.port),
        (None, None) => String::new(),
    };
    let deflate_base = match (&options.url, &deflate_server) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(server)) => format!("ws://127.0.0.1:{}", server.port),
        (None, None) => String::new(),
    };
    // The URL a scenario's clients connect to.
    let url_for = |scenario: Scenario| -> String {
        if !scenario.compressed() {
            url.clone()
        } else if scenario.no_context_takeover() {
            format!("{deflate_base}{}", deflate_server::NO_CONTEXT_PATH)
        } else {
            format!("{deflate_base}/")
        }
    };
    let all_cpus = sys::allowed_cpus();
    let me = std::process::id();
    let server_pid = server.as_ref().map(|server| server.child.id());
    let deflate_pid = deflate_server.as_ref().map(|server| server.child.id());

    let taskset_ok = sys::taskset_available();
    let pin_variants: Vec<bool> = match (options.pin, taskset_ok) {
        (_, false) | (PinMode::Off, _) => vec![false],
        (PinMode::On, true) => vec![true],
        (PinMode::Both, true) => vec![true, false],
    };

    println!(
        "minch bench: {} run(s){}, echo server {}",
        options.runs,
        if options.quick { " (--quick)" } else { "" },
        match (&options.url, server_pid) {
            (Some(url), _) => format!("given by --url: {url}"),
            (None, Some(pid)) =>
                format!("pid {pid} on {url} (tokio-tungstenite, current-thread runtime)"),
            (None, None) => "none (compressed scenarios only)".to_owned(),
        },
    );
    if let Some(pid) = deflate_pid {
        println!(
            "deflate echo server pid {pid} on {deflate_base}/ (yawc, current-thread runtime, level 1; \
             {} imposes no context takeover)",
            deflate_server::NO_CONTEXT_PATH
        );
    }
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
    for &scenario in options.scenarios.iter().filter(|s| !s.fanout()) {
        for &client in options.clients.iter().filter(|c| scenario.runs_client(**c)) {
            let job = warmup_sizes.job(scenario);
            let url = url_for(scenario);
            let _ = system.block_on(async { clients::run_job(client, &url, &job).await });
        }
    }
    for (scenario, warm_client) in [
        (Scenario::Fanout, ClientKind::RawAwc),
        (Scenario::DeflateFanout, ClientKind::MinchActor),
    ] {
        let fanouts = |s: &Scenario| s.fanout() && s.compressed() == scenario.compressed();
        if options.scenarios.iter().any(fanouts) {
            // The server's first 10 000 connections cost it more (its heap grows): warm it up
            // so that the first client measured is not the one that pays for it.
            eprintln!(
                "warm-up: one untimed {} ({})",
                scenario.name(),
                warm_client.name()
            );
            if let Err(error) = run_fanout_child(warm_client, &url_for(scenario), &sizes, scenario)
            {
                eprintln!("warm-up fanout failed: {error}");
            }
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
    for run in 0..options.runs {
        for &scenario in &options.scenarios {
            let pins: &[bool] = if scenario.small_messages() {
                &pin_variants
            } else {
                &[false]
            };
            let scenario_url = url_for(scenario);
            let pid = if scenario.compressed() {
                deflate_pid
            } else {
                server_pid
            };
            let clients: Vec<ClientKind> = options
                .clients
                .iter()
                .copied()
                .filter(|c| scenario.runs_client(*c))
                .collect();
            for &pinned in pins {
                let row = Row::new(scenario.name(), pinned);
                if pinned {
                    sys::set_affinity(me, "0");
                    if let Some(pid) = pid {
                        sys::set_affinity(pid, "0");
                    }
                }
                // Alternate the order of the clients from run to run.
                let n = clients.len();
                for i in 0..n {
                    let client = clients[(i + run) % n];
                    // A failed attempt (error or stall) is reported and tried once more.
                    for attempt in 1..=2 {
                        let started = Instant::now();
                        let cell = if scenario.fanout() {
                            run_fanout_child(client, &scenario_url, &sizes, scenario)
                        } else {
                            let job = sizes.job(scenario);
                            let before = deflate_server
                                .as_mut()
                                .filter(|_| scenario.compressed())
                                .and_then(ServerProcess::bytes);
                            let result = system.block_on(async {
                                clients::run_job(client, &scenario_url, &job).await
                            });
                            let after = deflate_server
                                .as_mut()
                                .filter(|_| scenario.compressed())
                                .and_then(ServerProcess::bytes);
                            result.map(|result| {
                                let mut cell = Cell::from_job(&result);
                                if let (Some(before), Some(after)) = (before, after) {
                                    // Every message of the job, warm-up included, each way.
                                    let payload = (job.warmup + job.measured) as f64
                                        * job.payload.len() as f64;
                                    cell.set_wire(
                                        (after.0 - before.0) as f64 / payload * 100.0,
                                        (after.1 - before.1) as f64 / payload * 100.0,
                                    );
                                }
                                cell
                            })
                        };
                        // Let the server drop the connection before the next client starts.
                        std::thread::sleep(Duration::from_millis(if scenario.fanout() {
                            1500
                        } else {
                            100
                        }));
                        match cell {
                            Ok(cell) => {
                                eprintln!(
                                    "run {}/{} {:<26} {:<18} {}  ({:.1} s)",
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
                    if let Some(pid) = pid {
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
    drop(deflate_server);
}

/// Runs one client's fanout in a fresh child process, so that RSS numbers do not mix.
fn run_fanout_child(
    client: ClientKind,
    url: &str,
    sizes: &Sizes,
    scenario: Scenario,
) -> Result<Cell, String> {
    let conns = sizes.fanout_conns.to_string();
    let (echoes, payload) = sizes.fanout_echoes(scenario);
    let echoes = echoes.to_string();
    let concurrency = sizes.fanout_concurrency.to_string();
    let mut args = vec![
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
    ];
    if matches!(payload, Payload::Ticks(_)) {
        args.push("--ticks");
    }
    let output = sys::command_with_nofile(&args)
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
        payload: if args.iter().any(|arg| arg == "--ticks") {
            Payload::Ticks(Arc::new(Ticks::new()))
        } else {
            Payload::Text(clients::FANOUT_MESSAGE)
        },
    };
    // `--settle S`: wait S seconds with every connection idle before reading the memory
    // (minch gives deflate state back after a keepalive interval without compressed messages).
    let settle = flag_value(args, "--settle").map(|s| s.parse::<f64>().unwrap_or_else(|_| usage()));
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        let mut result = clients::fanout(client, &url, &params).await;
        if let (Some(secs), Ok(fanout)) = (settle, &mut result) {
            actix_rt::time::sleep(Duration::from_secs_f64(secs)).await;
            fanout.idle_rss_kib = sys::status_kib("VmRSS");
        }
        result
    });
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

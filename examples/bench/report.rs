//! Results: one cell per (scenario row, client, run), medians, ratios and the project's targets.

use std::collections::BTreeMap;

use crate::clients::{ClientKind, JobResult};

/// A table row: a scenario, pinned to CPU 0 or not.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub scenario: &'static str,
    pub pinned: bool,
}

impl Row {
    pub fn new(scenario: &'static str, pinned: bool) -> Row {
        Row { scenario, pinned }
    }

    pub fn label(&self) -> String {
        if self.pinned {
            format!("{} [cpu0]", self.scenario)
        } else if matches!(
            self.scenario,
            "rtt" | "pipeline" | "deflate-rtt" | "deflate-pipeline" | "deflate-pipeline-nct"
        ) {
            format!("{} [2 cpus]", self.scenario)
        } else {
            self.scenario.to_owned()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    MsgsPerSec,
    MbPerSec,
    P50Us,
    P99Us,
    ConnectAllMs,
    IdleKibPerConn,
    PeakKibPerConn,
    CpuUsPerMsg,
    /// Bytes on the wire (WebSocket frames) from client to server per 100 bytes of payload.
    WireSentPer100,
    /// The same from server to client.
    WireReceivedPer100,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::MsgsPerSec => "msgs/s",
            Metric::MbPerSec => "MB/s",
            Metric::P50Us => "p50 µs",
            Metric::P99Us => "p99 µs",
            Metric::ConnectAllMs => "connect-all ms",
            Metric::IdleKibPerConn => "KiB/conn idle",
            Metric::PeakKibPerConn => "KiB/conn peak",
            Metric::CpuUsPerMsg => "client CPU µs/msg",
            Metric::WireSentPer100 => "wire B/100 B sent",
            Metric::WireReceivedPer100 => "wire B/100 B received",
        }
    }

    fn for_scenario(scenario: &str) -> &'static [Metric] {
        match scenario {
            "rtt" => &[Metric::MsgsPerSec, Metric::P50Us, Metric::P99Us],
            "pipeline" => &[Metric::MsgsPerSec],
            "bulk" | "fragmented" => &[Metric::MbPerSec],
            "fanout" | "deflate-fanout-idle" | "deflate-fanout" | "deflate-fanout-nct" => &[
                Metric::ConnectAllMs,
                Metric::IdleKibPerConn,
                Metric::PeakKibPerConn,
            ],
            "deflate-rtt" => &[
                Metric::MsgsPerSec,
                Metric::MbPerSec,
                Metric::P50Us,
                Metric::P99Us,
                Metric::CpuUsPerMsg,
                Metric::WireSentPer100,
                Metric::WireReceivedPer100,
            ],
            "deflate-pipeline" | "deflate-pipeline-nct" => &[
                Metric::MsgsPerSec,
                Metric::MbPerSec,
                Metric::CpuUsPerMsg,
                Metric::WireSentPer100,
                Metric::WireReceivedPer100,
            ],
            _ => &[],
        }
    }

    fn format(self, value: f64) -> String {
        match self {
            Metric::MsgsPerSec => group_thousands(value.round() as u64),
            Metric::MbPerSec
            | Metric::P50Us
            | Metric::P99Us
            | Metric::IdleKibPerConn
            | Metric::PeakKibPerConn
            | Metric::WireSentPer100
            | Metric::WireReceivedPer100 => {
                format!("{value:.1}")
            }
            Metric::ConnectAllMs => format!("{value:.0}"),
            Metric::CpuUsPerMsg => format!("{value:.2}"),
        }
    }
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(digit);
    }
    out
}

/// One measurement of one client in one scenario.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    values: BTreeMap<Metric, f64>,
}

impl Cell {
    pub fn from_job(result: &JobResult) -> Cell {
        let secs = result.elapsed.as_secs_f64().max(1e-9);
        let mut values = BTreeMap::new();
        values.insert(Metric::MsgsPerSec, result.messages as f64 / secs);
        values.insert(Metric::MbPerSec, result.bytes as f64 / secs / 1e6);
        if !result.latencies_ns.is_empty() {
            let mut sorted = result.latencies_ns.clone();
            sorted.sort_unstable();
            let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
            values.insert(Metric::P50Us, at(0.50) as f64 / 1e3);
            values.insert(Metric::P99Us, at(0.99) as f64 / 1e3);
        }
        if let Some(cpu_ns) = result.cpu_ns.filter(|_| result.messages > 0) {
            values.insert(
                Metric::CpuUsPerMsg,
                cpu_ns as f64 / result.messages as f64 / 1e3,
            );
        }
        Cell { values }
    }

    /// Wire bytes per 100 payload bytes, each way (counted by the deflate server).
    pub fn set_wire(&mut self, sent: f64, received: f64) {
        self.values.insert(Metric::WireSentPer100, sent);
        self.values.insert(Metric::WireReceivedPer100, received);
    }

    /// Parses the `FANOUT key=value ...` line of a fanout child.
    pub fn from_fanout_line(line: &str) -> Result<Cell, String> {
        let field = |key: &str| -> Result<f64, String> {
            line.split_whitespace()
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .and_then(|value| value.parse().ok())
                .ok_or_else(|| format!("no {key} in {line:?}"))
        };
        let conns = field("conns")?;
        if conns == 0.0 {
            return Err("no connection succeeded".into());
        }
        let base = field("base_kib")?;
        let mut values = BTreeMap::new();
        values.insert(Metric::ConnectAllMs, field("connect_ms")?);
        values.insert(Metric::IdleKibPerConn, (field("idle_kib")? - base) / conns);
        values.insert(Metric::PeakKibPerConn, (field("hwm_kib")? - base) / conns);
        Ok(Cell { values })
    }

    pub fn summary(&self) -> String {
        self.values
            .iter()
            .filter(|(metric, _)| !(**metric == Metric::MbPerSec && self.values[metric] < 1.0))
            // Shown for the compressed scenarios only (the table shows it for those only).
            .filter(|(metric, _)| {
                **metric != Metric::CpuUsPerMsg || self.values.contains_key(&Metric::WireSentPer100)
            })
            .map(|(metric, value)| format!("{} {}", metric.format(*value), metric.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Default)]
pub struct Results {
    cells: Vec<(Row, ClientKind, Cell)>,
}

impl Results {
    pub fn push(&mut self, row: Row, client: ClientKind, cell: Cell) {
        self.cells.push((row, client, cell));
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = Vec::new();
        for (row, _, _) in &self.cells {
            if !rows.contains(row) {
                rows.push(row.clone());
            }
        }
        rows
    }

    fn values(&self, row: &Row, client: ClientKind, metric: Metric) -> Vec<f64> {
        self.cells
            .iter()
            .filter(|(r, c, _)| r == row && *c == client)
            .filter_map(|(_, _, cell)| cell.values.get(&metric).copied())
            .collect()
    }

    fn median(&self, row: &Row, client: ClientKind, metric: Metric) -> Option<f64> {
        let mut values = self.values(row, client, metric);
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        Some(if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        })
    }
}

/// The ratio columns: minch's actor and simple clients over the baselines, then minch's simple
/// and blocking APIs over its actor.
fn ratio_pairs(clients: &[ClientKind]) -> Vec<(ClientKind, ClientKind)> {
    use ClientKind::{
        MinchActor, MinchAddr, MinchAddrBatch, MinchBlocking, MinchSender, MinchSenderBatch,
        MinchSimple, RawAwc, Tungstenite, Yawc,
    };
    let mut pairs = Vec::new();
    for minch in [
        MinchActor,
        MinchAddr,
        MinchAddrBatch,
        MinchSender,
        MinchSenderBatch,
        MinchSimple,
    ] {
        for base in [RawAwc, Tungstenite] {
            pairs.push((minch, base));
        }
    }
    // The compressed scenarios' baseline.
    pairs.push((MinchActor, Yawc));
    pairs.push((MinchSimple, Yawc));
    pairs.push((MinchSimple, MinchActor));
    pairs.push((MinchBlocking, MinchActor));
    pairs.retain(|(of, over)| clients.contains(of) && clients.contains(over));
    pairs
}

/// A target the project set: `numerator / denominator >= min` on a metric, or an absolute
/// ceiling.
enum Target {
    Ratio {
        scenario: &'static str,
        metric: Metric,
        of: ClientKind,
        over: ClientKind,
        min: f64,
    },
    AtMost {
        scenario: &'static str,
        metric: Metric,
        of: ClientKind,
        max: f64,
    },
}

/// The targets against the baselines, for one of minch's clients.
fn targets(of: ClientKind) -> Vec<Target> {
    use ClientKind::{RawAwc, Tungstenite, Yawc};
    let ratio = |scenario, metric, over, min| Target::Ratio {
        scenario,
        metric,
        of,
        over,
        min,
    };
    vec![
        ratio("rtt", Metric::MsgsPerSec, RawAwc, 0.95),
        ratio("bulk", Metric::MbPerSec, RawAwc, 0.95),
        ratio("pipeline", Metric::MsgsPerSec, RawAwc, 0.90),
        ratio("rtt", Metric::MsgsPerSec, Tungstenite, 1.30),
        ratio("pipeline", Metric::MsgsPerSec, Tungstenite, 1.30),
        // Issue 13: an idle connection costs less than raw awc's own (about 10.5 KiB).
        Target::AtMost {
            scenario: "fanout",
            metric: Metric::IdleKibPerConn,
            of,
            max: 8.0,
        },
        // Issue 11: compressed, at least as fast as yawc (with the same window bits), and
        // 10 000 connections with deflate negotiated in a few hundred MiB.
        ratio("deflate-rtt", Metric::MsgsPerSec, Yawc, 1.0),
        ratio("deflate-pipeline", Metric::MsgsPerSec, Yawc, 1.0),
        ratio("deflate-pipeline-nct", Metric::MsgsPerSec, Yawc, 1.0),
        Target::AtMost {
            scenario: "deflate-fanout-idle",
            metric: Metric::IdleKibPerConn,
            of,
            max: 30.0,
        },
    ]
}

/// The targets of minch's simple and blocking APIs against its actor (issue 10), and of the
/// actor driven through its address against raw awc (issue 13).
fn api_targets() -> Vec<Target> {
    use ClientKind::{
        MinchActor, MinchAddr, MinchAddrBatch, MinchBlocking, MinchSender, MinchSenderBatch,
        MinchSimple, RawAwc,
    };
    let ratio = |scenario, of, over, min| Target::Ratio {
        scenario,
        metric: Metric::MsgsPerSec,
        of,
        over,
        min,
    };
    vec![
        ratio("pipeline", MinchSimple, MinchActor, 0.90),
        ratio("rtt", MinchSimple, MinchActor, 0.95),
        ratio("pipeline", MinchBlocking, MinchActor, 0.50),
        ratio("rtt", MinchAddr, RawAwc, 1.0),
        ratio("pipeline", MinchAddr, RawAwc, 1.0),
        ratio("pipeline", MinchAddrBatch, RawAwc, 1.2),
        ratio("rtt", MinchSender, RawAwc, 1.0),
        ratio("pipeline", MinchSender, RawAwc, 1.0),
        ratio("pipeline", MinchSenderBatch, RawAwc, 1.2),
    ]
}

pub fn print(results: &Results, clients: &[ClientKind], runs: usize, raw: bool, quick: bool) {
    let pairs = ratio_pairs(clients);
    let rows = results.rows();

    println!();
    println!(
        "Medians over {runs} run(s). [cpu0]: bench and server pinned to CPU 0 with taskset; \
         [2 cpus]/others: unpinned."
    );
    println!(
        "Ratios are minch / baseline of the medians, and simple/actor, blocking/actor: minch's \
         simple and blocking APIs over its actor; addr: the actor driven through its address \
         (a do_send per message, echoes over a channel), sender: the same fed through a \
         FrameSender (throughput: higher is better; latency \
         and memory: lower is better). MB = 10^6 bytes of echoed payload."
    );
    println!();

    let label_width = rows
        .iter()
        .flat_map(|row| {
            Metric::for_scenario(row.scenario)
                .iter()
                .map(move |metric| row.label().chars().count() + 1 + metric.name().chars().count())
        })
        .max()
        .unwrap_or(0)
        .max(34)
        + 2;
    let col = 20;
    let ratio_col = pairs
        .iter()
        .map(|(of, over)| of.short().len() + over.short().len() + 3)
        .max()
        .unwrap_or(0)
        .max(12);
    let mut header = format!("{:<label_width$}", "scenario / metric");
    for client in clients {
        header += &format!("{:>col$}", client.name());
    }
    for (of, over) in &pairs {
        header += &format!("{:>ratio_col$}", format!("{}/{}", of.short(), over.short()));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.chars().count()));

    for row in &rows {
        for &metric in Metric::for_scenario(row.scenario) {
            let mut line = format!(
                "{:<label_width$}",
                format!("{} {}", row.label(), metric.name())
            );
            for &client in clients {
                let value = results.median(row, client, metric);
                let count = results.values(row, client, metric).len();
                let shown = match value {
                    None => "-".to_owned(),
                    // Fewer results than runs: some attempts failed (listed below the table).
                    Some(v) if count < runs => format!("{} ({count}/{runs})", metric.format(v)),
                    Some(v) => metric.format(v),
                };
                line += &format!("{shown:>col$}");
            }
            for &(of, over) in &pairs {
                let ratio = match (
                    results.median(row, of, metric),
                    results.median(row, over, metric),
                ) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                    _ => "-".into(),
                };
                line += &format!("{ratio:>ratio_col$}");
            }
            println!("{line}");
        }
    }

    if raw {
        println!();
        println!("All runs:");
        for row in &rows {
            for &metric in Metric::for_scenario(row.scenario) {
                for &client in clients {
                    let values: Vec<String> = results
                        .values(row, client, metric)
                        .iter()
                        .map(|v| metric.format(*v))
                        .collect();
                    println!(
                        "  {:<48} {:<18} {}",
                        format!("{} {}", row.label(), metric.name()),
                        client.name(),
                        values.join(" | ")
                    );
                }
            }
        }
    }

    println!();
    if quick {
        println!(
            "Targets (--quick: small counts and 1 000 fanout connections; judge on a full run):"
        );
    } else {
        println!("Targets:");
    }
    let mut all_targets: Vec<(Target, &str)> = Vec::new();
    for of in [ClientKind::MinchActor, ClientKind::MinchSimple] {
        if !clients.contains(&of) {
            continue;
        }
        let note = if of == ClientKind::MinchActor {
            ""
        } else {
            "  (informational)"
        };
        all_targets.extend(targets(of).into_iter().map(|target| (target, note)));
    }
    all_targets.extend(
        api_targets()
            .into_iter()
            .filter(|target| match target {
                Target::Ratio { of, over, .. } => clients.contains(of) && clients.contains(over),
                Target::AtMost { of, .. } => clients.contains(of),
            })
            .map(|target| (target, "")),
    );
    for (target, note) in all_targets {
        match target {
            Target::Ratio {
                scenario,
                metric,
                of,
                over,
                min,
            } => {
                for row in rows.iter().filter(|row| row.scenario == scenario) {
                    let (a, Some(b)) = (
                        results.median(row, of, metric),
                        results.median(row, over, metric),
                    ) else {
                        continue;
                    };
                    let Some(a) = a else {
                        println!(
                            "  MISS  {:<22} {} {}: no result, every attempt failed{note}",
                            row.label(),
                            metric.name(),
                            of.name()
                        );
                        continue;
                    };
                    let ratio = a / b;
                    println!(
                        "  {:<5} {:<22} {} {} / {} = {:.3}x (target >= {:.2}x){note}",
                        if ratio >= min { "PASS" } else { "MISS" },
                        row.label(),
                        metric.name(),
                        of.name(),
                        over.name(),
                        ratio,
                        min
                    );
                }
            }
            Target::AtMost {
                scenario,
                metric,
                of,
                max,
            } => {
                for row in rows.iter().filter(|row| row.scenario == scenario) {
                    let Some(value) = results.median(row, of, metric) else {
                        println!(
                            "  MISS  {:<22} {} {}: no result, every attempt failed{note}",
                            row.label(),
                            metric.name(),
                            of.name()
                        );
                        continue;
                    };
                    println!(
                        "  {:<5} {:<22} {} {} = {:.1} (target <= {:.1}){note}",
                        if value <= max { "PASS" } else { "MISS" },
                        row.label(),
                        of.name(),
                        metric.name(),
                        value,
                        max
                    );
                }
            }
        }
    }
}

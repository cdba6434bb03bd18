//! `ConnectOptions::tcp_nodelay`: a frame sent while the one before is still unacknowledged goes
//! out at once. With Nagle's algorithm on, it waits for the server's ACK, which a server that
//! is busy answering (and so delays its ACKs, hoping to carry them on its next answer) sends
//! only after its delayed-ACK timer: up to 40 ms on Linux, for every such pair of frames.

mod common;
mod support;

use std::time::{Duration, Instant};

use minch::{ConnectOptions, Frame};
use support::{close_frame, scripted_ws_server, text_frame, Step};

/// The median time of `rounds` rounds against a server that answers every second frame: the
/// client sends two small frames (two writes), then waits for the answer.
async fn median_round(options: ConnectOptions, rounds: usize) -> Duration {
    let mut script = Vec::new();
    for _ in 0..rounds {
        script.push(Step::ReadFrames(2, Duration::from_secs(5)));
        script.push(Step::Send(text_frame("done")));
    }
    script.push(Step::WaitClose(Duration::from_secs(5)));
    script.push(Step::Send(close_frame(Some(1000), "")));
    let server = scripted_ws_server(script);
    let (connection, mut frames) = actix_rt::time::timeout(
        common::WAIT,
        minch::connect(server.url("/"), Vec::<(String, String)>::new(), options),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");
    let mut times = Vec::with_capacity(rounds);
    for n in 0..rounds {
        let started = Instant::now();
        for part in ["header", "body"] {
            connection
                .send_frame(Frame::text(format!("{part} {n}")))
                .await
                .expect("the frame is written");
        }
        let answer = frames
            .receive_frame(Duration::from_secs(5))
            .await
            .expect("the server answers");
        assert_eq!(answer.as_text(), Some("done"));
        times.push(started.elapsed());
    }
    connection.close().await;
    times.sort();
    times[rounds / 2]
}

#[actix_rt::test]
async fn a_frame_after_an_unacknowledged_one_is_not_held_back() {
    let median = median_round(ConnectOptions::default(), 40).await;
    // Held back, each round takes the server's delayed-ACK time (tens of milliseconds); sent
    // at once, it crosses loopback twice in well under one.
    assert!(
        median < Duration::from_millis(15),
        "median round: {median:?}"
    );
}

#[actix_rt::test]
async fn with_nagle_left_on_frames_still_go_out() {
    // Nagle's algorithm delays, never loses: how much it delays is the kernel's business, so
    // only delivery is checked here.
    let median = median_round(ConnectOptions::default().tcp_nodelay(false), 3).await;
    assert!(median < Duration::from_secs(5), "median round: {median:?}");
}

//! A burst of frames that ends exactly where the client's per-wake-up frame budget does must
//! not leave the rest unread: the client handles every frame that has arrived, however the
//! frames line up with its read buffer.

mod support;

use std::time::Duration;

use minch::{ConnectOptions, Frame};
use support::{frame_bytes, opcode, scripted_ws_server, Step};

/// Sends `count` small text frames in one write, then (after a pause) one more.
async fn burst_then_one_more(count: usize) {
    let burst: Vec<u8> = (0..count)
        .flat_map(|n| frame_bytes(true, opcode::TEXT, n.to_string().as_bytes()))
        .collect();
    let server = scripted_ws_server(vec![
        Step::Send(burst),
        Step::Sleep(Duration::from_millis(100)),
        Step::Send(frame_bytes(true, opcode::TEXT, b"last")),
        Step::Sleep(Duration::from_secs(10)),
    ]);
    let (_connection, mut frames) = minch::connect(
        server.url("/"),
        Vec::<(String, String)>::new(),
        ConnectOptions::default(),
    )
    .await
    .expect("the scripted server upgrades");
    for n in 0..count {
        let frame = frames
            .receive_frame(Duration::from_secs(5))
            .await
            .unwrap_or_else(|error| panic!("frame {n} of {count} did not arrive: {error}"));
        assert_eq!(frame, Frame::text(n.to_string()));
    }
    let last = frames.receive_frame(Duration::from_secs(5)).await;
    assert_eq!(
        last.ok(),
        Some(Frame::text("last")),
        "after a burst of {count}"
    );
}

#[actix_rt::test]
async fn bursts_of_multiples_of_the_frame_budget_are_all_delivered() {
    // The client handles 64 frames per wake-up; try bursts on and around multiples of it.
    for count in [63, 64, 65, 128, 192, 1000] {
        burst_then_one_more(count).await;
    }
}

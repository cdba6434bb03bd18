//! The simple API: connect, send the current monotonic time as text, receive it back, print the
//! round trip, close. No handler type, no reconnects.
//!
//! ```sh
//! cargo run --example ping                    # offline: starts its own echo server
//! cargo run --example ping -- ws://host/echo  # or any echo server
//! ```

use std::time::{Duration, Instant};

use minch::{ConnectOptions, Frame};

#[path = "support/echo_server.rs"]
mod echo_server;

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = echo_server::url_from_args_or_start()?;

    let (connection, mut frames) = minch::connect(
        url,
        Vec::<(String, String)>::new(),
        ConnectOptions::default(),
    )
    .await?;

    // Instants cannot travel as text, so send the nanoseconds since a local origin.
    let origin = Instant::now();
    let sent_at = origin.elapsed().as_nanos();
    connection
        .send_frame(Frame::text(sent_at.to_string()))
        .await?;

    let echo = frames.receive_frame(Duration::from_secs(5)).await?;
    let echoed: u128 = echo.as_text().ok_or("expected a text frame")?.parse()?;
    let round_trip = origin.elapsed().as_nanos() - echoed;
    println!("round trip: {:.3} ms", round_trip as f64 / 1e6);

    connection.close().await;
    Ok(())
}

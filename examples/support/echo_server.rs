//! A small echo server for the examples, so they run offline: actix-web and actix-ws on
//! 127.0.0.1, echoing text and binary messages and answering pings.
// Each example includes this file; not every example uses every function.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};

use actix_web::{dev::ServerHandle, web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt as _;

/// Starts the server on `address` (port 0 for any) in the current actix System.
pub fn start(address: SocketAddr) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    let server = HttpServer::new(|| App::new().route("/echo", web::get().to(echo)))
        .workers(1)
        .shutdown_timeout(0)
        .listen(listener)?
        .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((bound, handle))
}

async fn echo(req: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut messages) = actix_ws::handle(&req, body)?;
    actix_rt::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let sent = match message {
                actix_ws::Message::Text(text) => session.text(text).await,
                actix_ws::Message::Binary(data) => session.binary(data).await,
                actix_ws::Message::Ping(data) => session.pong(&data).await,
                actix_ws::Message::Close(reason) => {
                    let _ = session.close(reason).await;
                    return;
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Ok(response)
}

/// The URL given as the first argument, or that of an embedded echo server started for the
/// example (its handle is returned so that it lives as long as the caller keeps it).
pub fn url_from_args_or_start() -> std::io::Result<(String, Option<ServerHandle>)> {
    if let Some(url) = std::env::args().nth(1) {
        return Ok((url, None));
    }
    let (address, handle) = start(([127, 0, 0, 1], 0).into())?;
    Ok((format!("ws://{address}/echo"), Some(handle)))
}

//! Small proxies on 127.0.0.1 that follow a script, for what a real proxy rarely does: std::net,
//! a thread per connection, every read bounded by a timeout. Unlike [`Proxy`](super::Proxy), a
//! plain TCP forwarder, these speak (or misspeak) a proxy's protocol:
//!
//! * [`forwarding_proxy`]: an HTTP CONNECT proxy that records each request head, answers with
//!   the bytes it is given, then forwards the connection;
//! * [`answering_proxy`]: one that answers every request head with the same bytes (a refusal,
//!   or nothing at all) and forwards nothing;
//! * [`scripted_proxy`]: one that reads a fixed number of bytes (an HTTP head's start, or a
//!   SOCKS5 greeting) and answers fixed bytes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The request heads a proxy received, in order.
pub type Heads = Arc<Mutex<Vec<String>>>;

/// Reads an HTTP request head (up to the blank line) from `stream`, a byte at a time so that
/// nothing after it is taken. None on an error, an early end, or a head over 64 KiB.
pub fn read_head(stream: &mut impl Read) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// An HTTP CONNECT proxy on 127.0.0.1 that records each request head, answers `answer`, then
/// forwards the connection to 127.0.0.1:`target` (whatever the CONNECT line names).
pub fn forwarding_proxy(answer: &'static [u8], target: u16) -> (u16, Heads) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads: Heads = Arc::default();
    let seen = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut client) = stream else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
                let Some(head) = read_head(&mut client) else {
                    return;
                };
                seen.lock().unwrap().push(head);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                if client.write_all(answer).is_err() {
                    return;
                }
                pipe(client, server);
            });
        }
    });
    (port, heads)
}

/// Copies both ways until either side closes (bounded by read timeouts).
fn pipe(a: TcpStream, b: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        let _ = from.set_read_timeout(Some(Duration::from_secs(20)));
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    };
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    std::thread::spawn(move || copy(a2, b2));
    copy(b, a);
}

/// A proxy from [`answering_proxy`].
pub struct AnsweringProxy {
    port: u16,
    accepted: Arc<AtomicUsize>,
    heads: Heads,
}

impl AnsweringProxy {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far (whether or not a whole head came).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The request heads received so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// An HTTP proxy on 127.0.0.1 that reads each request head, answers `answer` (nothing if it is
/// empty) and holds the connection for a while; it never opens a tunnel.
pub fn answering_proxy(answer: &'static [u8]) -> AnsweringProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads: Heads = Arc::default();
    let (counted, seen) = (accepted.clone(), heads.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let Some(head) = read_head(&mut stream) else {
                    return;
                };
                seen.lock().unwrap().push(head);
                if !answer.is_empty() {
                    let _ = stream.write_all(answer);
                }
                std::thread::sleep(Duration::from_secs(5));
            });
        }
    });
    AnsweringProxy {
        port,
        accepted,
        heads,
    }
}

/// A proxy on 127.0.0.1 that reads what the client sends first (`read_first` bytes) and
/// answers `answer` (nothing at all if it is empty), then keeps the connection open for a
/// while. Returns the port.
pub fn scripted_proxy(answer: &'static [u8], read_first: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut seen = vec![0u8; read_first];
                if stream.read_exact(&mut seen).is_err() {
                    return;
                }
                if !answer.is_empty() {
                    let _ = stream.write_all(answer);
                }
                std::thread::sleep(Duration::from_secs(10));
            });
        }
    });
    port
}

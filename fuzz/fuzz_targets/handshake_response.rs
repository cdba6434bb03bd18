//! The server's answer to the upgrade request as the client sees it: the response head parsed
//! by awc's HTTP/1 codec (actix-http's `ClientCodec`), then minch's checks (status, subprotocol
//! and extension negotiation), against a model of RFC 6455 §4.1.
//!
//! Input: 1 byte, the number of subprotocols offered (0–3, from a fixed list), then the
//! response bytes. (awc checks `Upgrade`, `Connection` and `Sec-WebSocket-Accept` itself,
//! inside its connect future, before minch sees the response: that is awc's code, not fuzzed
//! here.)
#![no_main]

use actix_codec::Decoder;
use actix_http::{h1::ClientCodec, ServiceConfig};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use minch::{
    fuzz_api::{check_handshake_response, rejection_from_reads},
    http::{header, HeaderMap, StatusCode},
    Error, Rejection,
};

thread_local! {
    /// awc's HTTP/1 settings. Building them starts a date-keeping task, so they are built once,
    /// in an actix runtime that stays (the task never needs to run for decoding).
    static CONFIG: (actix_rt::SystemRunner, ServiceConfig) = {
        let system = actix_rt::System::new();
        let config = system.block_on(async { ServiceConfig::default() });
        (system, config)
    };
}

const OFFERS: [&str; 3] = ["chat", "v2.json", "superchat"];

fuzz_target!(|data: &[u8]| {
    let Some((&offer, response)) = data.split_first() else {
        return;
    };
    let offered: Vec<String> = OFFERS[..usize::from(offer % 4)]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut buf = BytesMut::from(response);
    let codec = CONFIG.with(|(_, config)| ClientCodec::new(config.clone()));
    let Ok(Some(head)) = { codec }.decode(&mut buf) else {
        return;
    };
    let status = head.status;
    let headers = head.headers().clone();

    let result = check_handshake_response(status, headers.clone(), &offered);
    // Whatever the outcome, it can be shown.
    match &result {
        Ok(response) => {
            let _ = format!("{response:?}");
            let _ = response.subprotocol();
        }
        Err(error) => {
            let _ = (error.to_string(), format!("{error:?}"), error.is_config());
        }
    }

    if status != StatusCode::SWITCHING_PROTOCOLS {
        assert!(
            matches!(&result, Err(Error::Rejected { status: s, .. }) if *s == status),
            "status {status} not reported as a rejection: {result:?}"
        );
        check_rejection(status, &headers, response, offer);
        return;
    }

    // RFC 6455 §4.1: at most one subprotocol, one that was offered; no extension, since none
    // was offered.
    let protocols: Vec<_> = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).collect();
    let protocol_ok = match protocols.as_slice() {
        [] => true,
        [one] => offered.iter().any(|o| o.as_bytes() == one.as_bytes()),
        _ => false,
    };
    // The extension list syntax allows empty elements (`, ,`) with spaces and tabs around
    // them; anything else names an extension.
    let extensions_ok = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .all(|value| {
            value
                .as_bytes()
                .iter()
                .all(|b| matches!(b, b' ' | b'\t' | b','))
        });
    let minch_accepts = protocol_ok && extensions_ok;
    assert_eq!(
        result.is_ok(),
        minch_accepts,
        "protocols {protocols:?}, extensions {:?}, offered {offered:?}: {result:?}",
        headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .collect::<Vec<_>>()
    );
    if let Ok(response) = &result {
        assert_eq!(response.status, status);
        if let Some(chosen) = response.subprotocol() {
            assert!(
                offered.iter().any(|o| o == chosen),
                "{chosen:?} not offered"
            );
        }
    }
});

/// The rejection minch reports from the same bytes (its own parse of the head, then the body
/// as its framing says): the head awc accepted parses, to the same headers; the body kept is
/// at most 64 KiB; and it does not depend on where the reads end.
fn check_rejection(status: StatusCode, awc_headers: &HeaderMap, response: &[u8], seed: u8) {
    let whole = rejection_from_reads(status, response, &[usize::MAX])
        .expect("a head awc parsed parses for the rejection too");
    let (headers, body, complete) = &whole;
    let pairs = |map: &HeaderMap| {
        let mut pairs: Vec<(String, Vec<u8>)> = map
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect();
        pairs.sort();
        pairs
    };
    assert_eq!(
        pairs(headers),
        pairs(awc_headers),
        "the headers differ from awc's"
    );
    assert!(body.len() <= Rejection::MAX_BODY);
    if *complete {
        assert!(body.len() <= response.len());
    }
    for reads in [
        vec![1],
        vec![usize::from(seed % 7) + 2, 3],
        vec![usize::from(seed) + 1],
    ] {
        let split = rejection_from_reads(status, response, &reads).unwrap();
        assert_eq!(
            split.1, whole.1,
            "the body depends on the reads ({reads:?})"
        );
        assert_eq!(
            split.2, whole.2,
            "completeness depends on the reads ({reads:?})"
        );
    }
}

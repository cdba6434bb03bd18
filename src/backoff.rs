//! Reconnect delays: Minch's `backoff/2`, exactly, plus an opt-in jittered variant.

use std::time::Duration;

/// Parameters of [`backoff`]: the delay grows as `min * attempt^factor`, up to `max`.
///
/// The defaults are Minch's: `min` 200 ms, `max` 30 000 ms, `factor` 2. Build other values
/// with [`new`](Self::new) or from the default with the builder methods; the struct is
/// `#[non_exhaustive]`, so it cannot be written as a literal outside this crate.
///
/// ```
/// use minch::BackoffOptions;
///
/// let gentle = BackoffOptions::new(100, 10_000, 1.5);
/// assert_eq!(gentle, BackoffOptions::default().min(100).max(10_000).factor(1.5));
/// assert_eq!(gentle.max, 10_000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct BackoffOptions {
    /// The delay for attempt 1, in milliseconds. Default: 200.
    pub min: u64,
    /// The largest delay, in milliseconds. Default: 30 000.
    pub max: u64,
    /// The exponent applied to the attempt number. Default: 2.0. A negative or NaN factor
    /// counts as 0 (every delay `min`).
    pub factor: f64,
}

impl BackoffOptions {
    /// Options with these values: the delay for attempt 1 and the largest delay, in
    /// milliseconds, and the exponent applied to the attempt number.
    pub fn new(min: u64, max: u64, factor: f64) -> Self {
        BackoffOptions { min, max, factor }
    }

    /// Sets [`min`](Self::min), the delay for attempt 1, in milliseconds.
    pub fn min(mut self, min: u64) -> Self {
        self.min = min;
        self
    }

    /// Sets [`max`](Self::max), the largest delay, in milliseconds.
    pub fn max(mut self, max: u64) -> Self {
        self.max = max;
        self
    }

    /// Sets [`factor`](Self::factor), the exponent applied to the attempt number.
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }
}

impl Default for BackoffOptions {
    fn default() -> Self {
        BackoffOptions {
            min: 200,
            max: 30_000,
            factor: 2.0,
        }
    }
}

/// The reconnect delay in milliseconds for the `attempt`-th consecutive failure:
/// `round(min * attempt^factor)`, capped at `max`. Attempt 0 gives 0. A negative or NaN
/// `factor` counts as 0, so delays never shrink as attempts grow; a `max` below `min` caps
/// every delay at `max`.
///
/// This reproduces the tables in Minch's documentation:
///
/// | attempt | defaults (200, 30 000, 2) | min 100, max 10 000, factor 1.5 |
/// |--------:|--------------------------:|--------------------------------:|
/// | 1       | 200                       | 100                             |
/// | 2       | 800                       | 283                             |
/// | 3       | 1 800                     | 520                             |
/// | 4       | 3 200                     | 800                             |
/// | 5       | 5 000                     | 1 118                           |
/// | 6       | 7 200                     | 1 470                           |
/// | 7       | 9 800                     | 1 852                           |
/// | 8       | 12 800                    | 2 263                           |
/// | 9       | 16 200                    | 2 700                           |
/// | 10      | 20 000                    | 3 162                           |
/// | 11      | 24 200                    | 3 648                           |
/// | 12      | 28 800                    | 4 157                           |
/// | 13      | 30 000                    | 4 687                           |
/// | 14      | 30 000                    | 5 238                           |
/// | 15      | 30 000                    | 5 809                           |
/// | 16      | 30 000                    | 6 400                           |
/// | 17      | 30 000                    | 7 009                           |
/// | 18      | 30 000                    | 7 637                           |
/// | 19      | 30 000                    | 8 282                           |
/// | 20      | 30 000                    | 8 944                           |
///
/// ```
/// use minch::{backoff, BackoffOptions};
///
/// assert_eq!(backoff(3, BackoffOptions::default()), 1800);
/// let gentle = BackoffOptions::new(100, 10_000, 1.5);
/// assert_eq!(backoff(2, gentle), 283);
/// ```
pub fn backoff(attempt: u32, options: BackoffOptions) -> u64 {
    if attempt == 0 {
        return 0;
    }
    // Delays never shrink as attempts grow: a negative factor (a sign slip) or NaN would make
    // them fall to 0, a reconnect storm, so it counts as 0 (every delay `min`).
    let factor = if options.factor >= 0.0 {
        options.factor
    } else {
        0.0
    };
    let delay = (options.min as f64 * f64::from(attempt).powf(factor)).round();
    // A float beyond u64's range saturates in the cast; the cap applies either way.
    (delay as u64).min(options.max)
}

/// [`backoff`] as a [`Duration`].
pub fn backoff_duration(attempt: u32, options: BackoffOptions) -> Duration {
    Duration::from_millis(backoff(attempt, options))
}

/// The delay before reconnect attempt `attempt` after `error`: [`backoff_duration`], or, when
/// the server refused the upgrade with 429 (Too Many Requests) or 503 (Service Unavailable)
/// and said when to come back in `Retry-After`, that wait if it is longer, capped at
/// `options.max`. This is what the default
/// [`handle_disconnect`](crate::MinchHandler::handle_disconnect) waits.
///
/// ```
/// use std::time::Duration;
/// use minch::{
///     reconnect_delay, BackoffOptions, ClientContext, DisconnectReason, Error, MinchHandler,
///     Reconnect,
/// };
/// # use minch::{ConnectRequest, Frame, Reply};
///
/// // Not a rejection: the backoff schedule.
/// assert_eq!(reconnect_delay(None, 1, BackoffOptions::default()), Duration::from_millis(200));
///
/// # struct Feed;
/// impl MinchHandler for Feed {
/// #   type Info = ();
/// #   fn connect(&mut self, _: &mut ClientContext<'_, Self>) -> ConnectRequest { "ws://127.0.0.1:1".into() }
/// #   fn handle_frame(&mut self, _: Frame, _: &mut ClientContext<'_, Self>) -> Reply { Reply::Continue }
///     fn handle_disconnect(
///         &mut self,
///         reason: &DisconnectReason,
///         attempt: u32,
///         _ctx: &mut ClientContext<'_, Self>,
///     ) -> Reconnect {
///         if let Some(Error::Rejected { status, response }) = reason.error() {
///             log::warn!(
///                 "upgrade refused: {status}: {}",
///                 String::from_utf8_lossy(response.body())
///             );
///             if status.as_u16() == 401 {
///                 return Reconnect::Stop;
///             }
///         }
///         // At least as long as a 429 or 503 asked, at most 60 s.
///         let backoff = BackoffOptions::default().max(60_000);
///         Reconnect::After(reconnect_delay(reason.error(), attempt, backoff))
///     }
/// }
/// ```
pub fn reconnect_delay(
    error: Option<&crate::Error>,
    attempt: u32,
    options: BackoffOptions,
) -> Duration {
    let delay = backoff_duration(attempt, options);
    let asked = error.filter(|error| {
        error
            .status()
            .is_some_and(|status| status.as_u16() == 429 || status.as_u16() == 503)
    });
    match asked.and_then(crate::Error::retry_after) {
        Some(wait) => delay.max(wait.min(Duration::from_millis(options.max))),
        None => delay,
    }
}

/// How [`backoff_with_jitter`] randomises a delay, so that a fleet of clients cut off at the
/// same moment does not reconnect in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, backoff]`: spreads reconnects the most; a client may retry at once.
    Full,
    /// Uniform in `[backoff / 2, backoff]`: keeps at least half of the delay.
    Equal,
}

/// [`backoff`] with random jitter, in milliseconds. `backoff` itself stays exactly Minch's; use
/// this in [`handle_disconnect`](crate::MinchHandler::handle_disconnect) for fleets of clients.
///
/// ```
/// use minch::{backoff, backoff_with_jitter, BackoffOptions, Jitter};
///
/// let plain = backoff(4, BackoffOptions::default()); // 3200
/// let jittered = backoff_with_jitter(4, BackoffOptions::default(), Jitter::Equal);
/// assert!((plain / 2..=plain).contains(&jittered));
/// ```
pub fn backoff_with_jitter(attempt: u32, options: BackoffOptions, jitter: Jitter) -> u64 {
    let delay = backoff(attempt, options);
    let floor = match jitter {
        Jitter::Full => 0,
        Jitter::Equal => delay / 2,
    };
    rand::random_range(floor..=delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_documented_bounds() {
        let options = BackoffOptions::default();
        for attempt in 0..=20 {
            let plain = backoff(attempt, options);
            for _ in 0..200 {
                let full = backoff_with_jitter(attempt, options, Jitter::Full);
                assert!(full <= plain, "full jitter {full} > {plain}");
                let equal = backoff_with_jitter(attempt, options, Jitter::Equal);
                assert!(
                    (plain / 2..=plain).contains(&equal),
                    "equal jitter {equal} for {plain}"
                );
            }
        }
        // Jitter does spread: 200 draws of full jitter at 30 s are not all the same.
        let draws: std::collections::HashSet<u64> = (0..200)
            .map(|_| backoff_with_jitter(20, options, Jitter::Full))
            .collect();
        assert!(draws.len() > 100);
    }

    #[test]
    fn default_table_matches_minch() {
        let expected = [
            200, 800, 1800, 3200, 5000, 7200, 9800, 12800, 16200, 20000, 24200, 28800, 30000,
            30000, 30000, 30000, 30000, 30000, 30000, 30000,
        ];
        let actual: Vec<u64> = (1..=20)
            .map(|a| backoff(a, BackoffOptions::default()))
            .collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn custom_table_matches_minch() {
        let options = BackoffOptions {
            min: 100,
            max: 10_000,
            factor: 1.5,
        };
        let expected = [
            100, 283, 520, 800, 1118, 1470, 1852, 2263, 2700, 3162, 3648, 4157, 4687, 5238, 5809,
            6400, 7009, 7637, 8282, 8944,
        ];
        let actual: Vec<u64> = (1..=20).map(|a| backoff(a, options)).collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn attempt_zero_is_immediate_and_huge_attempts_are_capped() {
        assert_eq!(backoff(0, BackoffOptions::default()), 0);
        assert_eq!(backoff(u32::MAX, BackoffOptions::default()), 30_000);
        let steep = BackoffOptions {
            factor: 1e6,
            ..BackoffOptions::default()
        };
        assert_eq!(backoff(7, steep), 30_000);
    }
}

//! Pacing per connection: the calls of one connection share one limiter, so that a remote service that throttles
//! (HTTP 429, reported by its connector as `rate-limited`) is sent what it accepts instead of a wave of resends.
//!
//! A connection sends freely until its service first says it is rate limited. From then on its calls go through a
//! token bucket whose rate adapts, additive increase and multiplicative decrease (AIMD):
//!
//! - a `rate-limited` answer pauses the whole connection, for the service's Retry-After when it said one (else a
//!   backoff that doubles while the throttling goes on), and lowers the rate to [`DECREASE`] of what the service
//!   accepted over the last second (at most once per pause, as many calls in flight are refused together);
//! - while calls are waiting for tokens (the connection is busy) and none is refused, the rate grows by
//!   [`INCREASE`] of itself per second, and by at least [`MIN_INCREASE`] calls per second, so after a short probe
//!   the connection sends at what the service accepts. The floor matters at low rates: a refusal that comes while
//!   little is being sent (or a service that refuses a few calls at random) sets a rate of a few calls per second,
//!   from which growth in proportion alone would take minutes to climb back.
//!
//! When the service also says how much of its limit is used (a connector reports it with each answer, through
//! WIT 0.2.0's `pacing.report-usage` or a `rate-limited` error's `percentage-used`), the percentage steers the
//! rate before any refusal:
//!
//! - at [`NEAR_LIMIT`] % or more, the connection starts being paced (if it was not) and its rate is lowered to
//!   [`SLOW_DOWN`] of what the service accepted over the last second, at most once per [`SLOW_EVERY`] while the
//!   figure stays that high: it slows before a 429 instead of after it;
//! - below [`HEADROOM`] %, a busy connection's rate grows by [`USAGE_INCREASE`] of itself per second, faster than
//!   the blind probe, since the service confirms there is room; in between, the rate holds.
//!
//! Without a percentage (a 0.1.0 connector, a service that says nothing) the AIMD above is all there is.
//!
//! Nothing here knows a vendor: the connector says `rate-limited` and, when its service tells, how long to wait
//! and how much of its limit is used. Each connection has its own limiter, so one connection's throttling never
//! slows another.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The rate after a refusal, as a fraction of what the service accepted over the last second.
pub const DECREASE: f64 = 0.9;
/// How much the rate grows per second of busy sending without a refusal, as a fraction of itself.
pub const INCREASE: f64 = 0.03;
/// The least the rate grows per second of busy sending while it grows at all, in calls per second.
pub const MIN_INCREASE: f64 = 1.0;
/// A usage (percent of the service's limit) from which the connection slows down before a refusal.
pub const NEAR_LIMIT: u8 = 95;
/// The rate after a usage of [`NEAR_LIMIT`] or more, as a fraction of what the service accepted over the last
/// second (or of the rate, if lower): as a refusal's [`DECREASE`], so that one step takes a connection that
/// overshot back under the limit before the service refuses.
pub const SLOW_DOWN: f64 = 0.9;
/// How often a usage that stays at [`NEAR_LIMIT`] or more lowers the rate again (many answers say it together).
const SLOW_EVERY: Duration = Duration::from_millis(500);
/// A usage below which a busy connection's rate grows by [`USAGE_INCREASE`] instead of [`INCREASE`].
pub const HEADROOM: u8 = 90;
/// How much the rate grows per second of busy sending while the service reports a usage below [`HEADROOM`].
pub const USAGE_INCREASE: f64 = 0.1;
/// The slowest a paced connection sends, in calls per second.
const MIN_RATE: f64 = 1.0;
/// Tokens a paced connection may gather, in seconds of its rate: the burst it sends after a pause (the service's
/// own window has drained by then).
const BURST_SECS: f64 = 0.5;
/// The pause after a refusal without Retry-After; it doubles while refusals go on, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A connection counts as throttled (in `/healthz`) for this long after its last refusal.
const THROTTLED_FOR: Duration = Duration::from_secs(10);
/// The window over which the send rate is measured.
const WINDOW: Duration = Duration::from_secs(1);

/// The limiters of every connection of a host, by connection name. Flows that name the same connection share its
/// limiter.
#[derive(Debug)]
pub struct Pacing {
    enabled: bool,
    pacers: Mutex<HashMap<String, Arc<Pacer>>>,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing::new(true)
    }
}

impl Pacing {
    /// `enabled` false: connections are never paced (refusals are still counted), so that each run resends on
    /// its own schedule — for comparison (the rate-limit bench runs both).
    pub fn new(enabled: bool) -> Self {
        Pacing { enabled, pacers: Mutex::new(HashMap::new()) }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The limiter of the connection `name`, created on first use.
    pub fn pacer(&self, name: &str) -> Arc<Pacer> {
        lock(&self.pacers).entry(name.to_string()).or_insert_with(|| Arc::new(Pacer::new(name, self.enabled))).clone()
    }

    /// Every connection's state, by name.
    pub fn status(&self) -> BTreeMap<String, PacerStatus> {
        let pacers: Vec<Arc<Pacer>> = lock(&self.pacers).values().cloned().collect();
        pacers.iter().map(|p| (p.name.clone(), p.status())).collect()
    }
}

/// What a call may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send at once.
    Go,
    /// A slot is reserved for the call: send after this wait.
    Wait(Duration),
    /// The connection is paused or busy for longer than the caller would wait: nothing is reserved; try again
    /// after this.
    TooLong(Duration),
}

/// One connection's limiter.
#[derive(Debug)]
pub struct Pacer {
    name: String,
    enabled: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Calls per second; `None` until the service first refuses a call.
    rate: Option<f64>,
    /// Tokens in the bucket; negative when calls have reserved slots ahead.
    tokens: f64,
    /// When `tokens` was last brought up to date (the end of the pause, while paused).
    refilled: Instant,
    paused_until: Option<Instant>,
    /// The pause a refusal without Retry-After gets next.
    backoff: Duration,
    last_refusal: Option<Instant>,
    /// When the rate was last lowered: one decrease per pause.
    decreased: Option<Instant>,
    /// When the rate last grew.
    increased: Instant,
    /// Whether calls had to wait for tokens since the rate last grew.
    busy: bool,
    /// The calls the service accepted over the last [`WINDOW`].
    accepted: VecDeque<Instant>,
    refusals: u64,
    paused_total: Duration,
    /// The percentage of its limit the service last said was used.
    usage: Option<u8>,
}

/// A connection's pacing, for `/metrics` and `/healthz`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PacerStatus {
    /// Calls the service accepted over the last second.
    pub send_rate: f64,
    /// The rate the connection is held to, in calls per second; absent while it is not paced (never refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    /// Calls the service refused as rate limited, since the start.
    pub throttled: u64,
    /// Time the connection spent paused after refusals, in seconds, since the start.
    pub paused_seconds: f64,
    /// Milliseconds left of the current pause (0 when not paused).
    pub paused_for_ms: u64,
    /// Whether the service refused a call in the last 10 seconds, or the connection is paused.
    pub throttled_now: bool,
    /// The percentage of its rate limit the service last said was used (as its connector reported it); absent
    /// when it never said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_percent: Option<u8>,
}

impl Pacer {
    fn new(name: &str, enabled: bool) -> Self {
        let now = Instant::now();
        Pacer {
            name: name.to_string(),
            enabled,
            state: Mutex::new(State {
                rate: None,
                tokens: 0.0,
                refilled: now,
                paused_until: None,
                backoff: FIRST_BACKOFF,
                last_refusal: None,
                decreased: None,
                increased: now,
                busy: false,
                accepted: VecDeque::new(),
                refusals: 0,
                paused_total: Duration::ZERO,
                usage: None,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks to send one call. A call that is told to wait has its slot reserved: it sends after the wait
    /// (and after [`Pacer::pause_left`], should a refusal pause the connection meanwhile). One that would wait
    /// longer than `max_wait` reserves nothing.
    pub fn admit(&self, max_wait: Duration) -> Admission {
        if !self.enabled {
            return Admission::Go;
        }
        let now = Instant::now();
        let mut s = lock(&self.state);
        let pause = s.paused_until.map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        let Some(rate) = s.rate else {
            return if pause.is_zero() { Admission::Go } else { wait_or_refuse(pause, max_wait) };
        };
        s.refill(now, rate);
        let short = (1.0 - s.tokens).max(0.0);
        let wait = pause + Duration::from_secs_f64(short / rate);
        if wait > max_wait {
            return Admission::TooLong(wait);
        }
        s.tokens -= 1.0;
        if short > 0.0 {
            s.busy = true;
        }
        if wait.is_zero() { Admission::Go } else { Admission::Wait(wait) }
    }

    /// What is left of the connection's pause.
    pub fn pause_left(&self) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        let s = lock(&self.state);
        s.paused_until.map_or(Duration::ZERO, |until| until.saturating_duration_since(Instant::now()))
    }

    /// The service accepted a call (anything but a rate limit answered: the call reached it and was not refused
    /// for its rate), saying (or not) how much of its limit is used.
    pub fn accepted(&self, usage: Option<u8>) {
        let now = Instant::now();
        let mut s = lock(&self.state);
        s.accepted.push_back(now);
        s.trim(now);
        s.backoff = FIRST_BACKOFF;
        if usage.is_some() {
            s.usage = usage;
        }
        if !self.enabled {
            return;
        }
        if usage.is_some_and(|used| used >= NEAR_LIMIT) {
            s.slow_down(now);
            return;
        }
        if let Some(rate) = s.rate {
            let since = now.saturating_duration_since(s.increased);
            let calm =
                [s.last_refusal, s.decreased].iter().flatten().all(|at| now.saturating_duration_since(*at) >= WINDOW);
            if since >= Duration::from_millis(100) {
                let increase = match usage {
                    None => INCREASE,
                    Some(used) if used < HEADROOM => USAGE_INCREASE,
                    // Close to the limit: hold.
                    Some(_) => 0.0,
                };
                if s.busy && calm && increase > 0.0 {
                    let per_second = (rate * increase).max(MIN_INCREASE);
                    s.rate = Some(rate + per_second * since.as_secs_f64());
                }
                s.increased = now;
                s.busy = false;
            }
        }
    }

    /// The service refused a call for its rate, asking (or not) to wait `retry_after`, and saying (or not) how
    /// much of its limit is used. Pauses the whole connection and lowers its rate; returns the pause.
    pub fn refused(&self, retry_after: Option<Duration>, usage: Option<u8>) -> Duration {
        let now = Instant::now();
        let mut s = lock(&self.state);
        s.refusals += 1;
        s.last_refusal = Some(now);
        if usage.is_some() {
            s.usage = usage;
        }
        if !self.enabled {
            return Duration::ZERO;
        }
        s.trim(now);
        let pause = match retry_after {
            Some(after) => after,
            None => {
                let pause = s.backoff;
                s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
                pause
            }
        };
        let until = now + pause;
        let current = s.paused_until.filter(|u| *u > now);
        // Lower the rate once per pause: the calls in flight when the service started refusing come back
        // refused together.
        if current.is_none() && s.decreased.is_none_or(|at| now.saturating_duration_since(at) >= WINDOW) {
            let accepted = s.accepted.len() as f64 / WINDOW.as_secs_f64();
            let base = match s.rate {
                Some(rate) => rate.min(accepted.max(MIN_RATE)),
                None => accepted,
            };
            s.rate = Some((base * DECREASE).max(MIN_RATE));
            s.decreased = Some(now);
        }
        let rate = s.rate.unwrap_or(MIN_RATE);
        if current.is_none_or(|c| until > c) {
            s.paused_total += until.saturating_duration_since(current.unwrap_or(now));
            s.paused_until = Some(until);
            // No tokens gather during the pause; its end allows a burst (the service's own window has drained by
            // then), unless calls have reserved slots ahead, which keep them.
            if s.tokens >= 0.0 {
                s.tokens = rate * BURST_SECS;
            }
            s.refilled = until;
        }
        pause
    }

    pub fn status(&self) -> PacerStatus {
        let now = Instant::now();
        let mut s = lock(&self.state);
        s.trim(now);
        let paused_for = s.paused_until.map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        // Pause time still to come is not spent yet.
        let paused_total = s.paused_total.saturating_sub(paused_for);
        PacerStatus {
            send_rate: s.accepted.len() as f64 / WINDOW.as_secs_f64(),
            limit: s.rate.map(|r| (r * 10.0).round() / 10.0),
            throttled: s.refusals,
            paused_seconds: paused_total.as_secs_f64(),
            paused_for_ms: paused_for.as_millis() as u64,
            throttled_now: !paused_for.is_zero()
                || s.last_refusal.is_some_and(|at| now.saturating_duration_since(at) < THROTTLED_FOR),
            usage_percent: s.usage,
        }
    }
}

impl State {
    /// The service says its limit is nearly used: pace the connection (from now, if it was not) below what the
    /// service accepted over the last second; once per [`SLOW_EVERY`], as many answers say it together.
    fn slow_down(&mut self, now: Instant) {
        if self.decreased.is_some_and(|at| now.saturating_duration_since(at) < SLOW_EVERY) {
            return;
        }
        let accepted = (self.accepted.len() as f64 / WINDOW.as_secs_f64()).max(MIN_RATE);
        let base = self.rate.map_or(accepted, |rate| rate.min(accepted));
        if self.rate.is_none() {
            // Tokens start gathering now, not when the connection was first used.
            self.tokens = 0.0;
            self.refilled = now;
        }
        self.rate = Some((base * SLOW_DOWN).max(MIN_RATE));
        self.decreased = Some(now);
        self.increased = now;
        self.busy = false;
    }

    fn refill(&mut self, now: Instant, rate: f64) {
        if now > self.refilled {
            let gained = now.duration_since(self.refilled).as_secs_f64() * rate;
            self.tokens = (self.tokens + gained).min(rate * BURST_SECS).max(self.tokens);
            self.refilled = now;
        }
    }

    fn trim(&mut self, now: Instant) {
        while self.accepted.front().is_some_and(|at| now.saturating_duration_since(*at) > WINDOW) {
            self.accepted.pop_front();
        }
    }
}

fn wait_or_refuse(wait: Duration, max_wait: Duration) -> Admission {
    if wait > max_wait { Admission::TooLong(wait) } else { Admission::Wait(wait) }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn a_connection_is_free_until_its_service_refuses() {
        let pacer = Pacer::new("crm", true);
        for _ in 0..1000 {
            assert_eq!(pacer.admit(LONG), Admission::Go);
        }
        assert_eq!(pacer.status().limit, None);
        assert!(!pacer.status().throttled_now);
    }

    #[test]
    fn a_refusal_pauses_the_whole_connection_and_sets_the_rate_from_what_was_accepted() {
        let pacer = Pacer::new("crm", true);
        for _ in 0..200 {
            pacer.accepted(None);
        }
        assert_eq!(pacer.refused(Some(Duration::from_secs(2)), None), Duration::from_secs(2));
        let status = pacer.status();
        assert_eq!(status.limit, Some(180.0), "90 % of the 200 accepted over the last second");
        assert!(status.throttled_now);
        assert!(status.paused_for_ms > 1900, "{status:?}");
        // Every call waits for the pause: the first ones (the burst) at its end, the rest paced after it.
        let Admission::Wait(first) = pacer.admit(LONG) else { panic!() };
        assert!(first > Duration::from_millis(1900) && first <= Duration::from_secs(2), "{first:?}");
        let mut last = first;
        for _ in 0..189 {
            let Admission::Wait(wait) = pacer.admit(LONG) else { panic!() };
            // (The pause part shrinks by the microseconds between two calls.)
            assert!(wait + Duration::from_millis(1) >= last, "{wait:?} {last:?}");
            last = wait;
        }
        // 90 calls of burst, then 100 more at 180/s: about 0.55 s after the pause.
        let after = last - first;
        assert!(after > Duration::from_millis(500) && after < Duration::from_millis(600), "{after:?}");
        // A caller that would wait longer than it wants to reserves nothing.
        assert!(matches!(pacer.admit(Duration::from_secs(1)), Admission::TooLong(_)));
        // Refusals of calls that were in flight together lower the rate once.
        pacer.refused(Some(Duration::from_secs(1)), None);
        assert_eq!(pacer.status().limit, Some(180.0));
        assert_eq!(pacer.status().throttled, 2);
    }

    #[test]
    fn without_retry_after_the_pause_backs_off_and_the_service_accepting_resets_it() {
        let pacer = Pacer::new("crm", true);
        assert_eq!(pacer.refused(None, None), Duration::from_secs(1));
        assert_eq!(pacer.refused(None, None), Duration::from_secs(2));
        assert_eq!(pacer.refused(None, None), Duration::from_secs(4));
        assert_eq!(pacer.status().limit, Some(MIN_RATE), "nothing accepted yet: the slowest rate");
        pacer.accepted(None);
        assert_eq!(pacer.refused(None, None), Duration::from_secs(1));
    }

    #[test]
    fn the_rate_grows_while_the_connection_is_busy_and_not_refused() {
        let pacer = Pacer::new("crm", true);
        for _ in 0..100 {
            pacer.accepted(None);
        }
        pacer.refused(Some(Duration::ZERO), None);
        let start = pacer.status().limit.unwrap();
        assert_eq!(start, 90.0);
        // Pretend the refusal was long ago and calls wait for tokens.
        {
            let mut s = lock(&pacer.state);
            s.last_refusal = Some(Instant::now() - Duration::from_secs(5));
            s.decreased = s.last_refusal;
            s.increased = Instant::now() - Duration::from_secs(2);
            s.busy = true;
        }
        pacer.accepted(None);
        let grown = pacer.status().limit.unwrap();
        assert!(grown > start * 1.05 && grown < start * 1.07, "{grown}");
        // An idle connection's rate does not grow.
        {
            let mut s = lock(&pacer.state);
            s.increased = Instant::now() - Duration::from_secs(2);
            s.busy = false;
        }
        pacer.accepted(None);
        assert_eq!(pacer.status().limit.unwrap(), grown);
    }

    #[test]
    fn a_rate_cut_low_climbs_back_in_seconds_not_minutes() {
        // A refusal while little was sent (one call in the last second) sets the slowest rate.
        let pacer = Pacer::new("crm", true);
        pacer.accepted(None);
        pacer.refused(Some(Duration::ZERO), None);
        assert_eq!(pacer.status().limit, Some(MIN_RATE));
        // Ten seconds of busy sending without a refusal: at least one more call per second, each second (3 % a
        // second alone would give 1.3).
        for _ in 0..10 {
            busy_for(&pacer, 1);
            pacer.accepted(None);
        }
        let limit = pacer.status().limit.unwrap();
        assert!(limit > 10.9, "{limit}");
        // The same floor under a usage with headroom; none while the usage says to hold.
        busy_for(&pacer, 1);
        pacer.accepted(Some(50));
        assert!(pacer.status().limit.unwrap() > limit + 0.9);
        let held = pacer.status().limit;
        busy_for(&pacer, 1);
        pacer.accepted(Some(HEADROOM + 2));
        assert_eq!(pacer.status().limit, held);
    }

    #[test]
    fn pacing_off_never_waits_but_counts_refusals() {
        let pacer = Pacer::new("crm", false);
        assert_eq!(pacer.refused(Some(Duration::from_secs(30)), None), Duration::ZERO);
        assert_eq!(pacer.admit(Duration::ZERO), Admission::Go);
        assert_eq!(pacer.pause_left(), Duration::ZERO);
        assert_eq!(pacer.status().throttled, 1);
    }

    #[test]
    fn one_connection_s_throttling_does_not_touch_another() {
        let pacing = Pacing::new(true);
        pacing.pacer("a").refused(Some(Duration::from_secs(60)), None);
        assert_eq!(pacing.pacer("b").admit(Duration::ZERO), Admission::Go);
        assert!(matches!(pacing.pacer("a").admit(Duration::from_secs(1)), Admission::TooLong(_)));
        assert!(Arc::ptr_eq(&pacing.pacer("a"), &pacing.pacer("a")), "one limiter per connection");
        let status = pacing.status();
        assert!(status["a"].throttled_now && !status["b"].throttled_now);
    }

    /// Moves the pacer's clocks back as if `secs` had passed since the rate last changed and calls had waited.
    fn busy_for(pacer: &Pacer, secs: u64) {
        let mut s = lock(&pacer.state);
        let then = Instant::now() - Duration::from_secs(secs);
        s.last_refusal = s.last_refusal.map(|_| then - Duration::from_secs(5));
        s.decreased = s.decreased.map(|_| then - Duration::from_secs(5));
        s.increased = then;
        s.busy = true;
    }

    #[test]
    fn a_usage_near_the_limit_paces_the_connection_before_any_refusal() {
        let pacer = Pacer::new("crm", true);
        for _ in 0..199 {
            pacer.accepted(Some(40));
        }
        assert_eq!(pacer.status().limit, None, "room left: not paced");
        pacer.accepted(Some(NEAR_LIMIT));
        let status = pacer.status();
        assert_eq!(status.limit, Some(180.0), "90 % of the 200 accepted over the last second");
        assert_eq!((status.throttled, status.paused_for_ms, status.throttled_now), (0, 0, false), "{status:?}");
        assert_eq!(status.usage_percent, Some(NEAR_LIMIT));
        // Many answers say it together: the rate is lowered once per half second, not once per answer.
        for _ in 0..50 {
            pacer.accepted(Some(99));
        }
        assert_eq!(pacer.status().limit, Some(180.0));
        // Paced from now: the tokens of the time before do not make a burst.
        assert!(matches!(pacer.admit(LONG), Admission::Wait(_)));
    }

    #[test]
    fn a_usage_still_near_the_limit_half_a_second_later_lowers_the_rate_again() {
        let pacer = Pacer::new("crm", true);
        for _ in 0..100 {
            pacer.accepted(None);
        }
        pacer.refused(Some(Duration::ZERO), None);
        assert_eq!(pacer.status().limit, Some(90.0));
        {
            let mut s = lock(&pacer.state);
            s.decreased = Some(Instant::now() - SLOW_EVERY);
        }
        pacer.accepted(Some(100));
        // 90 % of the rate (below what was accepted over the last second, 101).
        assert_eq!(pacer.status().limit, Some(81.0));
        assert_eq!(pacer.status().throttled, 1, "slowing down is not a refusal");
    }

    #[test]
    fn a_usage_with_headroom_grows_the_rate_faster_than_the_blind_probe_and_one_close_to_the_limit_holds_it() {
        let grown = |usage: Option<u8>| {
            let pacer = Pacer::new("crm", true);
            for _ in 0..100 {
                pacer.accepted(None);
            }
            pacer.refused(Some(Duration::ZERO), None);
            busy_for(&pacer, 1);
            pacer.accepted(usage);
            pacer.status().limit.unwrap()
        };
        let blind = grown(None);
        let with_room = grown(Some(50));
        let close = grown(Some(HEADROOM + 2));
        assert!(blind > 92.0 && blind < 93.5, "3 % a second: {blind}");
        assert!(with_room > 98.5 && with_room < 99.5, "10 % a second: {with_room}");
        assert_eq!(close, 90.0, "between {HEADROOM} and {NEAR_LIMIT} % the rate holds");
    }

    #[test]
    fn the_usage_of_a_refusal_is_kept_and_the_decrease_is_the_refusal_s() {
        let pacer = Pacer::new("crm", true);
        for _ in 0..100 {
            pacer.accepted(None);
        }
        pacer.refused(Some(Duration::from_secs(1)), Some(120));
        let status = pacer.status();
        assert_eq!((status.limit, status.usage_percent), (Some(90.0), Some(120)));
        // A refusal without a figure keeps the last one.
        pacer.refused(None, None);
        assert_eq!(pacer.status().usage_percent, Some(120));
    }

    #[test]
    fn pacing_off_shows_the_usage_but_never_paces_for_it() {
        let pacer = Pacer::new("crm", false);
        for _ in 0..10 {
            pacer.accepted(Some(100));
        }
        assert_eq!(pacer.status().limit, None);
        assert_eq!(pacer.status().usage_percent, Some(100));
        assert_eq!(pacer.admit(Duration::ZERO), Admission::Go);
    }
}

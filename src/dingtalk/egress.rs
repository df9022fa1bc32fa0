//! The egress to DingTalk as a whole, beyond one robot or one app's call budget: what
//! DingTalk's gateway and the organisation's quota hold back. An anti-abuse answer
//! ([`Kind::AntiAbuse`]) holds every call, webhooks included, for the `wait` it asks; the
//! monthly API quota ([`Kind::QuotaExhausted`]) holds the metered calls ([`Api::metered`]:
//! everything made with the app's token, not the custom robots' webhooks) until DingTalk's
//! month turns ([`QUOTA_ZONE`]). A hold this process starts is kept for the others on the
//! database through a [`Book`] before its caller hears of it; theirs come in with
//! [`Egress::adopt`], which merges by the later end: only an explicit lift (`ding-channel
//! dingtalk resume`, counted in [`Kept::lifts`]) ends a hold early. The calls DingTalk answered
//! are counted here, per month and API, until they are written to the database.

use super::error::{Api, Class, DingTalkError, Kind, GATEWAY_WAIT_DEFAULT};
use crate::clock::Zone;
use crate::metrics::Metrics;
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Where DingTalk's month turns, for its quota and for the calls counted per month.
pub const QUOTA_ZONE: &str = "Asia/Shanghai";
/// How long a quota answer holds calls on the 1st of a month: DingTalk's count may turn later
/// than midnight in Asia/Shanghai, and a whole month must not be lost to the last one's answer.
const FIRST_DAY_HOLD_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// DingTalk's anti-abuse pause: every call.
    Pause,
    /// The organisation's monthly quota: the metered calls.
    Quota,
}

impl Scope {
    /// The hold `e` (a refusal, or [`Egress::held`]'s answer) stands for, if any.
    pub fn of(e: &DingTalkError) -> Option<Self> {
        match e.kind {
            Kind::AntiAbuse => Some(Self::Pause),
            Kind::QuotaExhausted => Some(Self::Quota),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Quota => "quota",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pause, Self::Quota]
            .into_iter()
            .find(|x| x.name() == s)
    }
}

/// One hold: until when, and DingTalk's answer that started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub scope: Scope,
    pub until: i64,
    pub code: String,
    pub message: String,
}

/// A hold as the book keeps it, with how many times its scope was lifted so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub hold: Hold,
    pub lifts: i64,
}

/// Where holds are kept for every process (the outbox's database).
pub trait Book: Send + Sync {
    /// Keeps `hold`, taken when its scope had been lifted `lifts` times (the later end wins;
    /// a hold from before a lift since is dropped); answers once it is kept, or could not be.
    fn keep(&self, hold: Hold, lifts: i64) -> BoxFuture<'static, ()>;

    /// Every hold kept (`None`: the book cannot be read now).
    fn read(&self) -> BoxFuture<'static, Option<Vec<Kept>>>;
}

/// A hold longer than this is read again from the [`Book`] before a delivery is deferred on
/// it ([`Egress::confirm`]): it may have been lifted by another process a moment ago.
pub const CONFIRM_AFTER_MS: i64 = 5_000;

/// A scope as this process knows it: its hold, and its lifts as last read.
type Known = BTreeMap<Scope, Kept>;

pub struct Egress {
    holds: Mutex<Known>,
    /// The end of the quota hold this process last told the admin of.
    announced: Mutex<i64>,
    calls: Mutex<BTreeMap<(String, &'static str), u64>>,
    book: OnceLock<Arc<dyn Book>>,
    metrics: Arc<Metrics>,
    month_zone: Zone,
    /// Where the times in messages are shown.
    shown: Zone,
}

impl Egress {
    pub fn new(metrics: Arc<Metrics>, shown: Zone) -> Self {
        Self {
            holds: Mutex::default(),
            announced: Mutex::new(0),
            calls: Mutex::default(),
            book: OnceLock::new(),
            metrics,
            month_zone: Zone::parse(QUOTA_ZONE).expect("the bundled tz database has it"),
            shown,
        }
    }

    /// Keeps the holds this process starts in `book` (set once).
    pub fn keep_in(&self, book: Arc<dyn Book>) {
        let _ = self.book.set(book);
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why a call of `api` may not be made now, if a hold covers it: the error its caller gets
    /// instead of DingTalk's answer, retryable when the hold ends.
    pub fn held(&self, api: Api, now: i64) -> Option<DingTalkError> {
        let hold = self
            .known()
            .values()
            .map(|k| &k.hold)
            .filter(|h| h.until > now && (h.scope == Scope::Pause || api.metered()))
            .max_by_key(|h| h.until)
            .cloned()?;
        Some(self.error(api, &hold, now))
    }

    /// Reads the book again when a hold in effect ends more than [`CONFIRM_AFTER_MS`] after
    /// `now`: before deliveries are deferred on it, a hold lifted elsewhere (`ding-channel
    /// dingtalk resume`) is seen at once, not at the next sync.
    pub async fn confirm(&self, now: i64) {
        let long = self
            .holds(now)
            .iter()
            .any(|h| h.until - now > CONFIRM_AFTER_MS);
        if let (true, Some(book)) = (long, self.book.get()) {
            if let Some(kept) = book.read().await {
                self.adopt(kept, now);
            }
        }
    }

    /// The holds in effect at `now`.
    pub fn holds(&self, now: i64) -> Vec<Hold> {
        self.known()
            .values()
            .map(|k| &k.hold)
            .filter(|h| h.until > now)
            .cloned()
            .collect()
    }

    /// What a refusal means for the egress: an anti-abuse answer or the quota starts (or
    /// extends) a hold, kept for every process; answers the error, retryable when the hold
    /// ends (the quota's explaining when that is and what to do). Other errors pass as they
    /// are.
    pub async fn observe(&self, e: DingTalkError, now: i64) -> DingTalkError {
        let (scope, until) = match e.kind {
            Kind::AntiAbuse => {
                let wait = e.retry_after().unwrap_or(GATEWAY_WAIT_DEFAULT);
                (Scope::Pause, now + wait.as_millis() as i64)
            }
            Kind::QuotaExhausted => (Scope::Quota, self.quota_until(now)),
            _ => return e,
        };
        let hold = Hold {
            scope,
            until,
            code: e.code.clone(),
            message: e.message.clone(),
        };
        let (in_effect, taken) = self.take(hold, now);
        if let (Some(kept), Some(book)) = (taken, self.book.get()) {
            book.keep(kept.hold, kept.lifts).await;
        }
        let mut e = e;
        let after = Duration::from_millis((in_effect.until - now).max(0) as u64);
        e.class = Class::Retryable { after: Some(after) };
        if scope == Scope::Quota {
            e.explanation = explain(&in_effect, &self.shown);
        }
        e
    }

    /// Notes `hold`: answers the hold in effect for its scope, and `hold` again when it is new
    /// or ends later than the one before (to be kept for the other processes).
    fn take(&self, hold: Hold, now: i64) -> (Hold, Option<Kept>) {
        let mut known = self.known();
        let lifts = known.get(&hold.scope).map_or(0, |k| k.lifts);
        let before = known
            .get(&hold.scope)
            .map(|k| k.hold.clone())
            .filter(|h| h.until > now);
        if let Some(b) = before.as_ref().filter(|b| b.until >= hold.until) {
            return (b.clone(), None);
        }
        let kept = Kept { hold, lifts };
        known.insert(kept.hold.scope, kept.clone());
        drop(known);
        let hold = &kept.hold;
        match hold.scope {
            Scope::Pause if before.is_none() => {
                self.metrics.egress_paused();
                tracing::warn!(code = %hold.code, message = %hold.message, "{}", explain(hold, &self.shown));
            }
            Scope::Pause => {}
            Scope::Quota => {
                self.announce(hold, now);
            }
        }
        (hold.clone(), Some(kept))
    }

    /// The quota's one ERROR line per process and hold: what stops, until when, what to do.
    /// Answers whether it was logged now.
    fn announce(&self, hold: &Hold, now: i64) -> bool {
        let mut announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        let news = *announced <= now;
        if news {
            tracing::error!(code = %hold.code, message = %hold.message, "{}", explain(hold, &self.shown));
        }
        *announced = (*announced).max(hold.until);
        news
    }

    /// Takes in the holds the book keeps (every process's). A scope lifted since this process
    /// last read it (`ding-channel dingtalk resume`) takes the book's hold as it is — lifted, or
    /// one started after the lift; otherwise the later end wins, so a hold of this process
    /// not yet kept (the book's write still on its way, or failed) stays.
    pub fn adopt(&self, kept: Vec<Kept>, now: i64) {
        let mut known = self.known();
        let mut lifted = false;
        for k in kept {
            match known.get_mut(&k.hold.scope) {
                Some(mine) if k.lifts > mine.lifts => {
                    lifted |= k.hold.scope == Scope::Quota;
                    *mine = k;
                }
                Some(mine) if k.hold.until <= mine.hold.until => {}
                Some(mine) => mine.hold = k.hold,
                None => {
                    known.insert(k.hold.scope, k);
                }
            }
        }
        let quota = known
            .get(&Scope::Quota)
            .map(|k| k.hold.clone())
            .filter(|h| h.until > now);
        drop(known);
        if lifted {
            // A quota hold after the lift is news to the admin again.
            *self.announced.lock().unwrap_or_else(|p| p.into_inner()) = 0;
        }
        if let Some(q) = quota {
            self.announce(&q, now);
        }
    }

    /// When a quota answer at `now` lets calls go again: the next month, or on a month's first
    /// day in an hour.
    fn quota_until(&self, now: i64) -> i64 {
        let next = self.month_zone.next_month(now);
        let (_, _, day, ..) = self.month_zone.civil(now);
        if day == 1 {
            next.min(now + FIRST_DAY_HOLD_MS)
        } else {
            next
        }
    }

    fn error(&self, api: Api, hold: &Hold, now: i64) -> DingTalkError {
        let kind = match hold.scope {
            Scope::Pause => Kind::AntiAbuse,
            Scope::Quota => Kind::QuotaExhausted,
        };
        let after = Duration::from_millis((hold.until - now).max(0) as u64);
        DingTalkError::new(
            api,
            (Class::Retryable { after: Some(after) }, kind),
            hold.code.clone(),
            hold.message.clone(),
            explain(hold, &self.shown),
        )
    }

    /// The month `now` falls in, as DingTalk counts it (`2026-12`).
    pub fn month(&self, now: i64) -> String {
        self.month_zone.month(now)
    }

    /// The month before that one.
    pub fn month_before(&self, now: i64) -> String {
        let (y, m, ..) = self.month_zone.civil(now);
        let (y, m) = if m == 1 { (y - 1, 12) } else { (y, m - 1) };
        format!("{y:04}-{m:02}")
    }

    /// Counts one call of `api` DingTalk answered.
    pub fn count(&self, api: Api, now: i64) {
        let month = self.month(now);
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((month, api.name()))
            .or_default() += 1;
    }

    /// The calls counted since the last time, by month and API: to be written to the database.
    pub fn take_counts(&self) -> Vec<(String, &'static str, u64)> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .map(|((month, api), n)| (month, api, n))
            .collect()
    }

    /// The calls counted and not yet taken, by month and API.
    pub fn counted(&self) -> Vec<(String, &'static str, u64)> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((month, api), n)| (month.clone(), *api, *n))
            .collect()
    }

    /// Counts that could not be written, to be written with the next ones.
    pub fn give_back(&self, counts: Vec<(String, &'static str, u64)>) {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        for (month, api, n) in counts {
            *calls.entry((month, api)).or_default() += n;
        }
    }
}

/// What `hold` means, in words an admin can act on; times of the quota in [`QUOTA_ZONE`], of
/// the pause in `shown`.
pub fn explain(hold: &Hold, shown: &Zone) -> String {
    match hold.scope {
        Scope::Pause => format!(
            "DingTalk's gateway asked this server to slow down (anti-abuse, per-IP flow control): no call to DingTalk, robots included, until {}; then sending resumes",
            shown.format(hold.until)
        ),
        Scope::Quota => {
            let month_zone = Zone::parse(QUOTA_ZONE).expect("the bundled tz database has it");
            format!(
                "the organisation's monthly DingTalk API call quota is used up: the app's calls (single chat, work notifications, phone lookups, the directory sync) wait until {} {QUOTA_ZONE}, group robots keep sending; queued messages wait and fail only at their maximum age (DING_CHANNEL_MAX_AGE_S). To resume sooner, raise the quota (DingTalk developer console, 资源管理 / an upgrade), then run `ding-channel dingtalk resume`",
                month_zone.format(hold.until)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dingtalk::error::{classify_oapi, gateway_refusal, Context};

    /// 2026-12-15 10:00 in Shanghai.
    const MID_DECEMBER: i64 = 1_797_300_000_000;
    /// 2027-01-01 00:00 in Shanghai.
    const JANUARY: i64 = 1_798_732_800_000;

    fn egress() -> Egress {
        Egress::new(Arc::default(), Zone::utc())
    }

    fn anti_abuse(wait: u64) -> DingTalkError {
        let body = format!(r#"{{"status":1111,"wait":{wait},"punish":"deny"}}"#);
        gateway_refusal(Api::Webhook, 200, false, body.as_bytes()).unwrap()
    }

    fn quota() -> DingTalkError {
        classify_oapi(
            Api::GetByMobile,
            90020,
            "您的企业本月api调用量已超过限制",
            Context::default(),
        )
    }

    #[tokio::test]
    async fn a_pause_holds_every_call_and_the_quota_only_the_metered_ones() {
        let e = egress();
        let t = MID_DECEMBER;
        let held = e.observe(anti_abuse(5), t).await;
        assert!(held.holds_egress());
        assert_eq!(held.retry_after(), Some(Duration::from_secs(5)));
        for api in [Api::Webhook, Api::BatchSend, Api::Token] {
            let h = e.held(api, t + 4_999).unwrap();
            assert_eq!(h.kind, Kind::AntiAbuse);
            assert_eq!(h.retry_after(), Some(Duration::from_millis(1)));
        }
        assert!(
            e.held(Api::Webhook, t + 5_000).is_none(),
            "the wait is over"
        );

        let held = e.observe(quota(), t).await;
        assert_eq!(held.kind, Kind::QuotaExhausted);
        assert_eq!(
            held.retry_after(),
            Some(Duration::from_millis((JANUARY - t) as u64))
        );
        assert!(
            held.to_string()
                .contains("wait until 2027-01-01 00:00:00 Asia/Shanghai"),
            "{held}"
        );
        assert!(
            held.to_string().contains("ding-channel dingtalk resume"),
            "{held}"
        );
        assert!(
            e.held(Api::Webhook, t + 10_000).is_none(),
            "robots are not metered"
        );
        assert!(e.held(Api::BatchSend, JANUARY - 1).is_some());
        assert!(
            e.held(Api::WorkNotice, JANUARY).is_none(),
            "the month turned"
        );
        assert_eq!(
            e.metrics
                .render_egress(&Default::default())
                .matches("egress_pauses_total 1")
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn on_a_months_first_day_the_quota_holds_an_hour_only() {
        let e = egress();
        let first = JANUARY + 5 * 3_600_000;
        let held = e.observe(quota(), first).await;
        assert_eq!(held.retry_after(), Some(Duration::from_secs(3600)));
    }

    /// A book in memory, as the database keeps holds.
    #[derive(Default)]
    struct Memory(Mutex<BTreeMap<Scope, Kept>>, Mutex<Vec<Hold>>);

    impl Book for Arc<Memory> {
        fn keep(&self, hold: Hold, lifts: i64) -> BoxFuture<'static, ()> {
            self.1.lock().unwrap().push(hold.clone());
            let mut rows = self.0.lock().unwrap();
            let row = rows.entry(hold.scope).or_insert(Kept {
                hold: Hold {
                    until: 0,
                    ..hold.clone()
                },
                lifts: 0,
            });
            if row.lifts <= lifts && hold.until > row.hold.until {
                row.hold = hold;
            }
            Box::pin(async {})
        }

        fn read(&self) -> BoxFuture<'static, Option<Vec<Kept>>> {
            let rows = self.0.lock().unwrap().values().cloned().collect();
            Box::pin(async { Some(rows) })
        }
    }

    impl Memory {
        /// `ding-channel dingtalk resume`.
        fn lift(&self) {
            for k in self.0.lock().unwrap().values_mut() {
                k.hold.until = 0;
                k.lifts += 1;
            }
        }
    }

    fn quota_hold(until: i64) -> Hold {
        Hold {
            scope: Scope::Quota,
            until,
            code: "90020".into(),
            message: String::new(),
        }
    }

    #[tokio::test]
    async fn holds_are_kept_in_the_book_once_and_the_later_end_wins() {
        let book = Arc::new(Memory::default());
        let e = egress();
        e.keep_in(Arc::new(book.clone()));
        let t = MID_DECEMBER;
        e.observe(anti_abuse(30), t).await;
        let shorter = e.observe(anti_abuse(5), t + 1000).await;
        assert_eq!(
            shorter.retry_after(),
            Some(Duration::from_secs(29)),
            "the longer pause holds"
        );
        e.observe(anti_abuse(60), t + 1000).await;
        let ends: Vec<i64> = book.1.lock().unwrap().iter().map(|h| h.until).collect();
        assert_eq!(ends, [t + 30_000, t + 61_000]);
    }

    #[tokio::test]
    async fn a_hold_not_yet_in_the_book_stays_and_only_a_lift_ends_one_early() {
        let e = egress();
        let t = MID_DECEMBER;
        e.observe(quota(), t).await;
        // Its write has not reached the book (or failed): the book's older state doesn't
        // drop it, nor count the pause twice.
        e.observe(anti_abuse(10), t).await;
        e.adopt(vec![], t);
        e.adopt(
            vec![Kept {
                hold: Hold {
                    until: t - 1,
                    ..quota_hold(0)
                },
                lifts: 0,
            }],
            t,
        );
        assert!(e.held(Api::BatchSend, t).is_some());
        assert!(e.held(Api::Webhook, t).is_some());
        e.observe(anti_abuse(10), t + 1).await;
        assert!(e
            .metrics
            .render_egress(&Default::default())
            .contains("egress_pauses_total 1\n"));
        // Another process's longer hold comes in.
        let theirs = quota_hold(JANUARY + 1);
        e.adopt(
            vec![Kept {
                hold: theirs.clone(),
                lifts: 0,
            }],
            t,
        );
        assert_eq!(e.holds(t + 20_000), [theirs]);
        // Lifted elsewhere (`dingtalk resume`): lifted here.
        e.adopt(
            vec![Kept {
                hold: quota_hold(0),
                lifts: 1,
            }],
            t,
        );
        let scopes: Vec<Scope> = e.holds(t).iter().map(|h| h.scope).collect();
        assert_eq!(scopes, [Scope::Pause], "the quota lifted, not the pause");
    }

    #[tokio::test]
    async fn a_long_hold_is_confirmed_from_the_book_and_a_hold_from_before_a_lift_is_not_kept() {
        let book = Arc::new(Memory::default());
        let e = egress();
        e.keep_in(Arc::new(book.clone()));
        let t = MID_DECEMBER;
        e.observe(quota(), t).await;
        book.lift();
        assert!(e.held(Api::BatchSend, t).is_some(), "not read yet");
        e.confirm(t).await;
        assert!(e.held(Api::BatchSend, t).is_none(), "lifted");

        // A process that has not seen the lift keeps its hold to itself.
        let late = egress();
        late.keep_in(Arc::new(book.clone()));
        book.lift();
        late.observe(quota(), t).await;
        assert!(book.0.lock().unwrap()[&Scope::Quota].hold.until < t);
    }

    #[tokio::test]
    async fn the_quota_is_announced_again_after_a_lift() {
        let e = egress();
        let t = MID_DECEMBER;
        e.observe(quota(), t).await;
        let hold = quota_hold(JANUARY);
        assert!(!e.announce(&hold, t + 1), "said once");
        e.adopt(
            vec![Kept {
                hold: quota_hold(0),
                lifts: 1,
            }],
            t,
        );
        assert!(e.announce(&hold, t + 1), "lifted: the next hold is news");
    }

    #[test]
    fn calls_are_counted_in_dingtalks_month() {
        let e = egress();
        e.count(Api::BatchSend, JANUARY - 1);
        e.count(Api::BatchSend, JANUARY);
        e.count(Api::BatchSend, JANUARY + 1);
        e.count(Api::Webhook, JANUARY);
        let counts = e.take_counts();
        assert_eq!(
            counts,
            [
                ("2026-12".to_owned(), "batch_send", 1),
                ("2027-01".to_owned(), "batch_send", 2),
                ("2027-01".to_owned(), "robot_send", 1),
            ]
        );
        assert!(e.take_counts().is_empty());
        e.give_back(counts);
        assert_eq!(e.take_counts().len(), 3);
    }
}

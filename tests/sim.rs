//! The lifecycle simulator: determinism (seed, threads, modes), the digest,
//! coverage of every event kind, and lifecycle invariants checked on the
//! event log alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

use devicelink::sim::{run, EventKind, Refusal, SimConfig, SimEvent, SimMode, SimReport, What};
use devicelink::{DeviceIndex, LogoutReason};
use ring::digest;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn config(accounts: u64, days: u32, seed: u64, mode: SimMode) -> SimConfig {
    SimConfig {
        accounts,
        days,
        seed,
        mode,
        ..SimConfig::default()
    }
}

/// Runs and keeps the whole log.
fn collect(config: &SimConfig) -> Result<(SimReport, Vec<SimEvent>)> {
    let mut events = Vec::new();
    let report = run(config, |e| events.push(*e))?;
    Ok((report, events))
}

fn text(events: &[SimEvent]) -> String {
    let mut s = String::new();
    for e in events {
        e.write_canonical(&mut s);
    }
    s
}

/// The full-crypto run several tests look at (computed once).
fn full_crypto_run() -> &'static (SimReport, Vec<SimEvent>) {
    static RUN: OnceLock<(SimReport, Vec<SimEvent>)> = OnceLock::new();
    RUN.get_or_init(|| collect(&config(300, 60, 1, SimMode::FullCrypto)).expect("full-crypto run"))
}

fn lifecycle_run() -> &'static (SimReport, Vec<SimEvent>) {
    static RUN: OnceLock<(SimReport, Vec<SimEvent>)> = OnceLock::new();
    RUN.get_or_init(|| {
        collect(&config(3_000, 60, 1, SimMode::LifecycleOnly)).expect("lifecycle-only run")
    })
}

#[test]
fn same_seed_gives_the_same_log_and_digest() -> Result<()> {
    let c = config(1_000, 60, 42, SimMode::LifecycleOnly);
    let (a, la) = collect(&c)?;
    let (b, lb) = collect(&c)?;
    assert_eq!(la, lb);
    assert_eq!(text(&la), text(&lb));
    assert_eq!(a, b);
    assert!(a.events() > 10_000, "{a:?}");
    Ok(())
}

#[test]
fn different_seeds_give_different_digests() -> Result<()> {
    let a = run(&config(200, 30, 1, SimMode::LifecycleOnly), |_| {})?;
    let b = run(&config(200, 30, 2, SimMode::LifecycleOnly), |_| {})?;
    assert_ne!(a.digest, b.digest);
    assert_ne!(a.counts, b.counts);
    Ok(())
}

#[test]
fn the_digest_is_the_sha256_of_the_canonical_log() -> Result<()> {
    let (report, events) = lifecycle_run();
    assert_eq!(events.len() as u64, report.events());
    let d = digest::digest(&digest::SHA256, text(events).as_bytes());
    assert_eq!(d.as_ref(), report.digest);
    assert_eq!(report.digest_hex().len(), 64);
    // One line per event, ASCII, "<account> <unix ms> <kind> ...".
    let first = events.first().ok_or("empty log")?.canonical_line();
    assert!(first.is_ascii() && first.ends_with('\n'));
    assert_eq!(first.split(' ').nth(2), Some(EventKind::OfferShown.name()));
    // Nothing to log hashes to SHA-256 of the empty string.
    let empty = run(&config(0, 60, 1, SimMode::FullCrypto), |_| {})?;
    assert_eq!(empty.digest, digest::digest(&digest::SHA256, b"").as_ref());
    assert_eq!(
        run(&config(10, 0, 1, SimMode::FullCrypto), |_| {})?.events(),
        0
    );
    Ok(())
}

#[test]
fn thread_count_does_not_change_the_log() -> Result<()> {
    // 1 500 accounts are 6 chunks: every thread count interleaves differently.
    let mut c = config(1_500, 45, 9, SimMode::LifecycleOnly);
    let mut logs = Vec::new();
    for threads in [1, 2, 3, 0] {
        c.threads = threads;
        logs.push(collect(&c)?);
    }
    for other in &logs[1..] {
        assert_eq!(other.0, logs[0].0);
        assert_eq!(other.1, logs[0].1);
    }
    let (report, events) = full_crypto_run();
    let mut c = config(300, 60, 1, SimMode::FullCrypto);
    c.threads = 1;
    let (single, single_events) = collect(&c)?;
    assert_eq!(&single, report);
    assert_eq!(&single_events, events);
    Ok(())
}

#[test]
fn both_modes_exercise_every_event_kind() {
    for (report, _) in [full_crypto_run(), lifecycle_run()] {
        for (kind, count) in report.counts.iter() {
            assert!(count > 0, "{} run never produced {kind}", report.mode);
        }
    }
    let small = run(&config(300, 60, 1, SimMode::LifecycleOnly), |_| {}).expect("run");
    for (kind, count) in small.counts.iter() {
        assert!(
            count > 0,
            "300 lifecycle-only accounts never produced {kind}"
        );
    }
}

#[test]
fn lifecycle_only_writes_the_same_log_as_full_crypto() -> Result<()> {
    let (full, full_events) = full_crypto_run();
    let (lifecycle, lifecycle_events) = collect(&config(300, 60, 1, SimMode::LifecycleOnly))?;
    assert_eq!(lifecycle_events, *full_events);
    assert_eq!(lifecycle.digest, full.digest);
    assert_eq!(lifecycle.counts, full.counts);
    Ok(())
}

#[test]
fn lifecycle_invariants_hold_in_the_log() {
    for (report, events) in [full_crypto_run(), lifecycle_run()] {
        let checked = check_invariants(events);
        assert!(checked.races > 0);
        assert_eq!(checked.races, report.counts.get(EventKind::RaceLost));
        assert!(checked.full_repairs > 0, "{checked:?}");
    }
}

const DAY: u64 = 86_400_000;

/// Per-account facts the checker follows.
#[derive(Default)]
struct AccountState {
    /// Index → (companion, granted at): the indices holding a slot. A
    /// companion re-pairing with its own key holds two (its old one and the
    /// pending new one) but one slot: the limit counts companions.
    holders: BTreeMap<DeviceIndex, (u32, u64)>,
    last_activity: Option<u64>,
    quiet_since: Option<u64>,
    shown: HashMap<u32, u64>,
    /// A PrimaryOffline logout at this instant: every slot must be freed
    /// before time moves on.
    offline_at: Option<u64>,
}

impl AccountState {
    /// Distinct companions holding a slot, other than `except`.
    fn slots(&self, except: Option<u32>) -> usize {
        let companions: BTreeSet<u32> = self
            .holders
            .values()
            .map(|(c, _)| *c)
            .filter(|c| Some(*c) != except)
            .collect();
        companions.len()
    }

    /// The indices `companion` holds, oldest first.
    fn indices_of(&self, companion: u32) -> Vec<DeviceIndex> {
        self.holders
            .iter()
            .filter(|(_, (c, _))| *c == companion)
            .map(|(i, _)| *i)
            .collect()
    }
}

/// What the checker counted.
#[derive(Debug, Default)]
struct Checked {
    /// Races for the last slot.
    races: u64,
    /// Re-pairs granted while every slot was taken (v2: not refused).
    full_repairs: u64,
}

/// Checks the lifecycle rules on the log alone.
fn check_invariants(events: &[SimEvent]) -> Checked {
    let policy = SimConfig::default().policy;
    let limit = policy.max_companions() as usize;
    let offline = policy.primary_offline_limit().as_millis() as u64;
    assert_eq!(offline, 14 * DAY);
    let confirm = policy.confirmation_timeout().as_millis() as u64;
    let idle = policy
        .companion_idle_limit()
        .expect("idle rule on")
        .as_millis() as u64;
    let first = policy.first_offer_lifetime().as_millis() as u64;
    let rotated = policy.rotated_offer_lifetime().as_millis() as u64;
    let rotations = u64::from(policy.max_rotations());

    let mut checked = Checked::default();
    let mut st = AccountState::default();
    for (i, e) in events.iter().enumerate() {
        let t = e.at.as_unix_millis();
        let prev = i.checked_sub(1).map(|p| events[p]);
        if prev.is_none_or(|p| p.account != e.account) {
            if let Some(p) = prev {
                assert!(p.account < e.account, "accounts out of order at {e}");
            }
            st = AccountState::default();
        } else if let Some(p) = prev {
            assert!(p.at <= e.at, "time went backwards at {e}");
        }
        if st.offline_at.is_some_and(|o| o != t) {
            assert!(
                st.holders.is_empty(),
                "a companion survived a PrimaryOffline logout: {e}"
            );
            st.offline_at = None;
        }
        match e.what {
            What::OfferShown { companion, .. } => {
                st.shown.insert(companion, t);
            }
            What::OfferRotated {
                companion,
                rotation,
            } => {
                let shown = st.shown[&companion];
                assert_eq!(
                    t,
                    shown + first + rotated * (u64::from(rotation) - 1),
                    "{e}"
                );
            }
            What::OfferTimedOut { companion } => {
                assert_eq!(t, st.shown[&companion] + first + rotated * rotations, "{e}");
            }
            What::Scanned { companion, .. } => {
                assert!(
                    st.quiet_since.is_none(),
                    "scanned while the phone is quiet: {e}"
                );
                assert!(
                    t < st.shown[&companion] + first + rotated * rotations,
                    "{e}"
                );
            }
            What::Refused {
                companion,
                reason: Refusal::DeviceLimitReached,
            } => {
                // A companion re-pairing with its own key is never refused.
                assert!(
                    st.slots(Some(companion)) >= limit,
                    "refused with a free slot: {e}"
                );
                assert!(st.indices_of(companion).is_empty(), "{e}");
            }
            What::Refused { .. } => {}
            What::RaceStarted { companion, rival } => {
                checked.races += 1;
                assert_eq!(
                    st.slots(None),
                    limit - 1,
                    "a race needs exactly one free slot: {e}"
                );
                // Exactly one winner and one loser, at once.
                let (g, l) = (events[i + 1], events[i + 2]);
                assert!(
                    g.account == e.account
                        && g.at == e.at
                        && l.account == e.account
                        && l.at == e.at
                );
                let What::Granted { companion: w, .. } = g.what else {
                    panic!("a race without a winner: {g}");
                };
                let What::RaceLost { companion: lost } = l.what else {
                    panic!("a race without a loser: {l}");
                };
                assert!([companion, rival].contains(&w) && [companion, rival].contains(&lost));
                assert_ne!(w, lost);
                if let Some(n) = events.get(i + 3) {
                    assert!(
                        !matches!(n.what, What::Granted { .. } if n.account == e.account && n.at == e.at)
                    );
                }
            }
            What::RaceLost { companion } => {
                assert_eq!(
                    st.slots(Some(companion)),
                    limit,
                    "a race lost with a free slot: {e}"
                );
            }
            What::Granted { companion, index } => {
                assert!(
                    st.slots(Some(companion)) < limit,
                    "a grant beyond the limit: {e}"
                );
                // A re-pair is granted beside the old index (replaced only
                // at the confirm): at most one old index, older than this.
                let old = st.indices_of(companion);
                assert!(old.len() <= 1, "a third index for one companion: {e}");
                assert!(old.iter().all(|o| *o < index), "{e}");
                if !old.is_empty() && st.slots(None) == limit {
                    checked.full_repairs += 1;
                }
                assert!(
                    st.quiet_since.is_none(),
                    "granted while the phone is quiet: {e}"
                );
                assert!(
                    st.holders.insert(index, (companion, t)).is_none(),
                    "index reused: {e}"
                );
                st.last_activity = Some(t);
            }
            What::Linked { companion, index } => {
                let (c, granted) = st.holders[&index];
                assert_eq!(c, companion);
                assert!(
                    t < granted + confirm,
                    "linked after the confirmation timeout: {e}"
                );
            }
            What::Heartbeat => {
                assert!(st.quiet_since.is_none() || st.quiet_since == Some(t), "{e}");
                st.last_activity = Some(t);
            }
            What::PrimaryQuiet { until } => {
                assert!(until.as_unix_millis() > t);
                st.quiet_since = Some(t);
            }
            What::PrimaryBack => st.quiet_since = None,
            What::LoggedOut {
                companion,
                index,
                reason,
            } => {
                let (c, granted) = st
                    .holders
                    .remove(&index)
                    .unwrap_or_else(|| panic!("logged out a device without a slot: {e}"));
                assert_eq!(c, companion);
                match reason {
                    LogoutReason::PrimaryOffline => {
                        // Exactly one offline limit after the last primary
                        // activity, which was the instant the phone went quiet.
                        assert_eq!(Some(t - offline), st.last_activity, "{e}");
                        assert_eq!(Some(t - offline), st.quiet_since, "{e}");
                        st.offline_at = Some(t);
                    }
                    LogoutReason::ConfirmationTimedOut => assert_eq!(t, granted + confirm, "{e}"),
                    LogoutReason::CompanionIdle => assert!(t >= granted + idle, "{e}"),
                    LogoutReason::Revoked => {
                        assert!(st.quiet_since.is_none(), "revoked while quiet: {e}");
                        st.last_activity = Some(t);
                    }
                    LogoutReason::Replaced => {
                        // v2: replaced when the re-pair's new index is
                        // confirmed: right after that Linked, same instant.
                        let linked = events[..i]
                            .iter()
                            .rev()
                            .find(|p| {
                                !matches!(
                                    p.what,
                                    What::LoggedOut {
                                        reason: LogoutReason::Replaced,
                                        companion: c2,
                                        ..
                                    } if c2 == companion
                                )
                            })
                            .unwrap_or_else(|| panic!("a replacement without a link: {e}"));
                        let What::Linked {
                            companion: c2,
                            index: new,
                        } = linked.what
                        else {
                            panic!(
                                "a replacement not at the new index's confirm: {e} after {linked}"
                            );
                        };
                        assert!(
                            c2 == companion
                                && linked.account == e.account
                                && linked.at == e.at
                                && new > index,
                            "a replacement by another link: {e} after {linked}"
                        );
                        assert_eq!(st.indices_of(companion), vec![new], "{e}");
                    }
                }
            }
        }
        assert!(st.slots(None) <= limit, "over the limit after {e}");
    }
    checked
}

#[test]
fn the_invariant_checker_catches_tampered_logs() {
    let (_, events) = lifecycle_run();
    let caught =
        |tampered: Vec<SimEvent>| std::panic::catch_unwind(|| check_invariants(&tampered)).is_err();
    let find = |pred: &dyn Fn(&What) -> bool| {
        events
            .iter()
            .position(|e| pred(&e.what))
            .expect("the log has such an event")
    };

    // A PrimaryOffline logout one millisecond late.
    let mut t = events.clone();
    let i = find(&|w| {
        matches!(
            w,
            What::LoggedOut {
                reason: LogoutReason::PrimaryOffline,
                ..
            }
        )
    });
    t[i].at = devicelink::Timestamp::from_unix_millis(t[i].at.as_unix_millis() + 1);
    assert!(caught(t));

    // A race whose loser is missing.
    let mut t = events.clone();
    let i = find(&|w| matches!(w, What::RaceLost { .. }));
    t.remove(i);
    assert!(caught(t));

    // A replacement at grant time (v1's rule): the old index logged out as
    // `Replaced` just before the re-pair's grant rather than at its confirm.
    let mut t = events.clone();
    let i = find(&|w| {
        matches!(
            w,
            What::LoggedOut {
                reason: LogoutReason::Replaced,
                ..
            }
        )
    });
    let replaced = t.remove(i);
    let What::Linked { index: new, .. } = t[i - 1].what else {
        panic!("a replacement right after its link");
    };
    let g = t[..i]
        .iter()
        .rposition(|p| matches!(p.what, What::Granted { index, .. } if index == new))
        .expect("the re-pair's grant");
    t.insert(
        g,
        SimEvent {
            at: t[g].at,
            ..replaced
        },
    );
    assert!(caught(t));

    // A fifth companion granted while four hold a slot.
    let mut t = events.clone();
    let i = find(&|w| matches!(w, What::RaceLost { .. }));
    let lost = t[i];
    t[i].what = What::Granted {
        companion: lost.what.companion().unwrap_or(0),
        index: DeviceIndex(u32::MAX),
    };
    assert!(caught(t));
}

#[test]
fn policies_without_room_for_the_behaviour_are_refused_up_front() {
    use devicelink::sim::SimError;
    use devicelink::Policy;
    use std::time::Duration;
    let tight = Policy::builder()
        .approval_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut c = config(10, 5, 1, SimMode::LifecycleOnly);
    c.policy = tight;
    assert!(matches!(run(&c, |_| {}), Err(SimError::Setup(_))));
}

#[test]
fn absurd_thread_counts_are_clamped() -> Result<()> {
    let mut c = config(50, 10, 4, SimMode::LifecycleOnly);
    let (one, _) = collect(&c)?;
    c.threads = usize::MAX;
    let (many, _) = collect(&c)?;
    assert_eq!(one.digest, many.digest);
    Ok(())
}

#[test]
fn modes_agree_under_other_policies() -> Result<()> {
    use devicelink::Policy;
    for policy in [
        Policy::builder().max_companions(1).build().unwrap(),
        Policy::builder().max_rotations(0).build().unwrap(),
        Policy::builder()
            .primary_offline_limit(devicelink::time::days(3))
            .warn_before(devicelink::time::days(1))
            .companion_idle_limit(None)
            .build()
            .unwrap(),
    ] {
        let mut full = config(60, 40, 7, SimMode::FullCrypto);
        full.policy = policy.clone();
        let mut lifecycle = config(60, 40, 7, SimMode::LifecycleOnly);
        lifecycle.policy = policy;
        assert_eq!(collect(&full)?.0.digest, collect(&lifecycle)?.0.digest);
    }
    Ok(())
}

//! One scenario per rule, over simulated time.

use outrider_alerting::config::{DNS_CHECK, GateRule};
use outrider_alerting::model::{ResolveCause, UpdateOutcome};
use outrider_alerting::silence::{Field, Matcher, Op, Pattern, SilenceSpec};
use outrider_alerting::{
    Action, Config, Error, Event, MuteReason, NotificationKind as K, Status, Subject,
};

use crate::{MIN, SEC, Sim, T0};
use Status::{Critical as C, Ok as O};

const HOUR: u64 = 60 * MIN;

fn silence(matchers: Vec<Matcher>, from: u64, until: u64) -> SilenceSpec {
    SilenceSpec {
        matchers,
        starts_ms: from,
        ends_ms: until,
        author: "ops@example".into(),
        comment: "maintenance".into(),
        expire_on_resolve: false,
    }
}

fn agent_is(agent: &str) -> Matcher {
    Matcher {
        field: Field::Agent,
        op: Op::Equal(agent.into()),
    }
}

#[test]
fn a_check_critical_three_times_fires_once_then_resolves_once() {
    let mut sim = Sim::new(Config::default());
    sim.connect("web-1", &[]);
    sim.results("web-1", "disk", &[C], 3, 10 * SEC);
    // Still critical for 10 minutes: no second notification.
    sim.results("web-1", "disk", &[C], 60, 10 * SEC);
    sim.results("web-1", "disk", &[O], 2, 10 * SEC);
    sim.advance(10 * MIN);
    let n = sim.notifications();
    assert_eq!(sim.kinds(), vec![K::Firing, K::Resolved]);
    // Fired group_wait (30 s) after the third result (at +20 s).
    assert_eq!(n[0].0, T0 + 20 * SEC + 30 * SEC);
    assert_eq!(n[0].1.title, "disk CRITICAL on web-1");
    assert_eq!(n[1].1.resolve_cause, Some(ResolveCause::Recovered));
    assert_eq!(n[1].1.status, Status::Ok);
    // One incident: same key, seq 1 then 2.
    assert_eq!(n[0].1.incident_key(), n[1].1.incident_key());
    assert_eq!((n[0].1.seq, n[1].1.seq), (1, 2));
}

#[test]
fn gates_hold_back_what_is_not_yet_a_problem() {
    // (name, results every 10 s, then nothing) → expected notifications.
    let table: Vec<(&str, Vec<Status>, usize)> = vec![
        ("two failures", vec![C, C, O, O], 0),
        (
            "failures broken by an OK",
            vec![C, C, O, C, C, O, C, C, O],
            0,
        ),
        (
            "a problem shorter than group_wait",
            vec![C, C, C, O, O, O],
            0,
        ),
        ("a real problem", vec![C, C, C, C, C, C, C], 1),
    ];
    for (name, results, want) in table {
        let mut sim = Sim::new(Config::default());
        sim.connect("a", &[]);
        sim.results("a", "load", &results, results.len(), 10 * SEC);
        sim.advance(2 * MIN);
        assert_eq!(sim.notifications().len(), want, "{name}");
    }
}

#[test]
fn reconfigured_rules_apply_to_the_next_result_and_bad_ones_are_refused() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    sim.results("a", "load", &[C], 1, 10 * SEC);
    sim.advance(MIN);
    assert!(sim.notifications().is_empty(), "one result is not three");
    let mut config = Config::default();
    config.checks.insert(
        "load".into(),
        outrider_alerting::config::CheckRules {
            gate: GateRule::Consecutive { count: 2 },
            ..Default::default()
        },
    );
    sim.engine.reconfigure(config.clone()).unwrap();
    sim.results("a", "load", &[C], 1, 10 * SEC);
    sim.advance(MIN);
    assert_eq!(sim.kinds(), vec![K::Firing]);
    config.check_defaults.recover_after = 0;
    assert!(matches!(
        sim.engine.reconfigure(config),
        Err(Error::InvalidConfig { .. })
    ));
    assert_eq!(sim.engine.config().check_defaults.recover_after, 2);
}

#[test]
fn a_duration_gate_fires_after_its_duration_without_new_results() {
    let mut config = Config::default();
    let mut rules = config.check_defaults;
    rules.gate = GateRule::Duration { for_ms: 2 * MIN };
    config.checks.insert("api".into(), rules);
    let mut sim = Sim::new(config);
    sim.connect("a", &[]);
    sim.result("a", "api", C);
    sim.advance(2 * MIN + 29 * SEC);
    assert!(
        sim.notifications().is_empty(),
        "not before 2 min + group_wait"
    );
    sim.advance(SEC);
    assert_eq!(sim.kinds(), vec![K::Firing]);
}

#[test]
fn an_agent_without_a_session_for_down_for_is_down_and_resolves_on_reconnect() {
    let mut sim = Sim::new(Config::default());
    sim.connect("db-1", &[]);
    sim.lose("db-1");
    sim.advance(2 * MIN + 29 * SEC);
    assert!(sim.notifications().is_empty());
    sim.advance(SEC);
    let n = sim.notifications();
    assert_eq!(sim.kinds(), vec![K::Firing]);
    assert_eq!(n[0].1.title, "agent db-1 down");
    sim.connect("db-1", &[]);
    sim.advance(6 * MIN);
    assert_eq!(sim.kinds(), vec![K::Firing, K::Resolved]);
}

#[test]
fn blips_shorter_than_down_for_never_notify() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    for _ in 0..20 {
        sim.lose("a");
        sim.advance(110 * SEC); // a SIGSTOP, a reconnect storm: < 2 min
        sim.connect("a", &[]);
        sim.advance(5 * SEC);
    }
    sim.advance(HOUR);
    assert!(sim.notifications().is_empty(), "{:?}", sim.kinds());
}

#[test]
fn no_agent_down_during_the_restart_grace() {
    // The server restarts: the agent was connected in the stored state.
    let mut before = Sim::new(Config::default());
    before.connect("a", &[]);
    before.connect("b", &[]);
    let state = before.engine.state().clone();
    let restarted = before.now + 5 * SEC;
    let engine = outrider_alerting::Engine::restore(Config::default(), state, restarted).unwrap();
    let mut sim = Sim {
        engine,
        now: restarted,
        actions: Vec::new(),
        lazy: false,
    };
    // `a` comes back after 170 s: past down_for but inside down_for + 60 s.
    sim.advance(170 * SEC);
    sim.connect("a", &[]);
    sim.advance(HOUR);
    // `b` never came back: down once the grace is over (180 s), + group_wait.
    let n = sim.notifications();
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].1.subject, Subject::Agent { agent: "b".into() });
    assert_eq!(n[0].0, restarted + 180 * SEC + 30 * SEC);
}

#[test]
fn a_deregistered_agent_never_alerts_and_resolves_only_what_was_notified() {
    // Problems not yet notified: resolved silently.
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    sim.results("a", "disk", &[C], 3, 10 * SEC); // in group_wait now
    sim.goodbye("a");
    sim.lose("a"); // the socket closes after the Goodbye
    sim.advance(HOUR);
    assert!(sim.notifications().is_empty(), "{:?}", sim.kinds());

    // A notified problem: its resolve is sent, saying why.
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    sim.results("a", "disk", &[C], 3, 10 * SEC);
    sim.advance(MIN);
    sim.goodbye("a");
    sim.results("a", "disk", &[C], 10, 10 * SEC); // late results ignored
    sim.advance(HOUR);
    let n = sim.notifications();
    assert_eq!(sim.kinds(), vec![K::Firing, K::Resolved]);
    assert_eq!(n[1].1.resolve_cause, Some(ResolveCause::Deregistered));

    // Coming back re-registers: alerting resumes.
    sim.connect("a", &[]);
    sim.results("a", "disk", &[C], 3, 10 * SEC);
    sim.advance(6 * MIN);
    assert_eq!(sim.kinds(), vec![K::Firing, K::Resolved, K::Firing]);
}

#[test]
fn agent_down_mutes_its_checks() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    sim.results("a", "disk", &[C], 3, 5 * SEC); // problem, in group_wait
    sim.lose("a");
    sim.advance(HOUR);
    let n = sim.notifications();
    assert_eq!(n.len(), 1, "{:?}", sim.kinds());
    assert_eq!(n[0].1.subject, Subject::Agent { agent: "a".into() });
    let muted = sim.actions.iter().any(|(_, a)| {
        matches!(
            a,
            Action::Muted {
                subject: Subject::Check { .. },
                reason: MuteReason::AgentDown { .. }
            }
        )
    });
    assert!(muted, "the check shows why it is muted");
}

#[test]
fn a_site_outage_is_one_incident_and_mutes_the_agents() {
    let mut sim = Sim::new(Config::default());
    for i in 0..10 {
        sim.connect(&format!("paris-{i}"), &["paris"]);
    }
    sim.connect("lyon-0", &["lyon"]);
    // 4 of 10 (40 %) lost within 45 s.
    for i in 0..4 {
        sim.lose(&format!("paris-{i}"));
        sim.advance(15 * SEC);
    }
    sim.advance(HOUR);
    let n = sim.notifications();
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(
        n[0].1.subject,
        Subject::Site {
            tag: "paris".into()
        }
    );
    assert_eq!(n[0].1.title, "site outage: paris");
    assert!(
        n[0].1.summary.starts_with("4 of 10 agents"),
        "{}",
        n[0].1.summary
    );
    let site_muted = sim
        .actions
        .iter()
        .filter(|(_, a)| {
            matches!(
                a,
                Action::Muted {
                    reason: MuteReason::SiteOutage { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(site_muted, 4);
    // They come back: one resolve for the site.
    for i in 0..4 {
        sim.connect(&format!("paris-{i}"), &["paris"]);
    }
    sim.advance(10 * MIN);
    assert_eq!(sim.kinds(), vec![K::Firing, K::Resolved]);
}

#[test]
fn two_agents_of_a_site_are_two_agent_incidents() {
    let mut sim = Sim::new(Config::default());
    for i in 0..4 {
        sim.connect(&format!("s-{i}"), &["small"]);
    }
    sim.lose("s-0");
    sim.lose("s-1");
    sim.advance(HOUR);
    let subjects: Vec<Subject> = sim
        .notifications()
        .into_iter()
        .map(|(_, n)| n.subject)
        .collect();
    assert_eq!(
        subjects,
        vec![
            Subject::Agent {
                agent: "s-0".into()
            },
            Subject::Agent {
                agent: "s-1".into()
            }
        ]
    );
}

#[test]
fn dns_broken_is_named_and_shorter_than_down_for_is_silent() {
    // The agent reconnects by its fallback address and reports the resolver
    // failing once; DNS comes back after 90 s: nothing.
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    sim.result("a", DNS_CHECK, C);
    sim.advance(90 * SEC);
    sim.result("a", DNS_CHECK, O);
    sim.advance(HOUR);
    assert!(sim.notifications().is_empty());

    // Broken for 10 minutes: one "DNS broken", one resolve.
    sim.result("a", DNS_CHECK, C);
    sim.advance(10 * MIN);
    sim.result("a", DNS_CHECK, O);
    sim.advance(10 * MIN);
    let n = sim.notifications();
    assert_eq!(sim.kinds(), vec![K::Firing, K::Resolved]);
    assert_eq!(n[0].1.title, "DNS broken on a");

    // Lost the server with the resolver failing: the agent-down says so.
    let mut sim = Sim::new(Config::default());
    sim.connect("b", &[]);
    sim.event(Event::CheckResult {
        agent: "b".into(),
        check: DNS_CHECK.into(),
        status: C,
        summary: "lookup of outrider.example failed".into(),
        at_ms: sim.now,
    });
    sim.lose("b");
    sim.advance(HOUR);
    let n = sim.notifications();
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].1.title, "DNS broken: agent b cannot reach the server");
    assert!(n[0].1.summary.contains("lookup of outrider.example failed"));
}

#[test]
fn silences_mute_firing_but_never_a_resolve() {
    // A silenced problem is not sent; when the silence ends it is.
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &["prod"]);
    sim.event(Event::AddSilence(silence(
        vec![agent_is("a")],
        T0,
        T0 + 10 * MIN,
    )));
    sim.results("a", "disk", &[C], 30, 10 * SEC);
    assert!(sim.notifications().is_empty());
    sim.results("a", "disk", &[C], 30, 10 * SEC);
    assert!(
        sim.notifications().is_empty(),
        "group_wait starts when the silence ends"
    );
    sim.advance(30 * SEC);
    assert_eq!(sim.kinds(), vec![K::Firing]);
    assert_eq!(sim.notifications()[0].0, T0 + 10 * MIN + 30 * SEC);

    // Silenced after it was notified: the resolve still goes out.
    let tag = Matcher {
        field: Field::Tag,
        op: Op::Regex(Pattern::new("pro.").unwrap()),
    };
    sim.event(Event::AddSilence(silence(
        vec![tag],
        sim.now,
        sim.now + HOUR,
    )));
    sim.results("a", "disk", &[O], 2, 10 * SEC);
    sim.advance(10 * MIN);
    assert_eq!(sim.kinds(), vec![K::Firing, K::Resolved]);
}

#[test]
fn expire_on_resolve_ends_the_silence_when_its_problem_recovers() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    let mut spec = silence(vec![agent_is("a")], T0, T0 + 24 * HOUR);
    spec.expire_on_resolve = true;
    sim.event(Event::AddSilence(spec));
    sim.results("a", "disk", &[C], 3, 10 * SEC);
    sim.results("a", "disk", &[O], 2, 10 * SEC);
    let expired: Vec<u64> = sim
        .actions
        .iter()
        .filter_map(|(_, a)| match a {
            Action::SilenceExpired { id } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(expired, vec![1]);
    // The next problem is not silenced.
    sim.results("a", "disk", &[C], 3, 10 * SEC);
    sim.advance(MIN);
    assert_eq!(sim.kinds(), vec![K::Firing]);
}

#[test]
fn operator_mistakes_get_typed_errors() {
    let mut sim = Sim::new(Config::default());
    let err = sim
        .engine
        .handle(Event::ExpireSilence { id: 7 }, T0)
        .unwrap_err();
    assert!(matches!(err, Error::UnknownSilence { id: 7 }), "{err}");
    let bad = silence(vec![], T0, T0 + 1);
    let err = sim.engine.handle(Event::AddSilence(bad), T0).unwrap_err();
    assert!(matches!(err, Error::InvalidSilence { .. }), "{err}");
    let backwards = silence(vec![agent_is("a")], T0, T0);
    assert!(matches!(
        sim.engine.handle(Event::AddSilence(backwards), T0),
        Err(Error::InvalidSilence { .. })
    ));
    assert!(
        sim.engine.silences().next().is_none(),
        "nothing stored on error"
    );
}

#[test]
fn a_problem_still_firing_repeats_every_repeat_interval() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    sim.result("a", "disk", C);
    sim.result("a", "disk", C);
    sim.result("a", "disk", C);
    sim.advance(9 * HOUR);
    let n = sim.notifications();
    assert_eq!(sim.kinds(), vec![K::Firing, K::Repeat, K::Repeat]);
    assert_eq!(n[1].0 - n[0].0, 4 * HOUR);
    assert_eq!(n[2].0 - n[1].0, 4 * HOUR);
}

#[test]
fn update_failures_fire_and_a_healthy_update_resolves() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    for _ in 0..200 {
        sim.update("a", UpdateOutcome::Applied); // hot swaps
    }
    sim.advance(HOUR);
    assert!(sim.notifications().is_empty());
    sim.update("a", UpdateOutcome::RolledBack);
    sim.advance(MIN);
    sim.update("a", UpdateOutcome::Applied);
    sim.advance(10 * MIN);
    let n = sim.notifications();
    assert_eq!(sim.kinds(), vec![K::Firing, K::Resolved]);
    assert_eq!(n[0].1.title, "update failed on a");
}

/// A check failing half the time, in runs long enough to pass the gate (3
/// critical, 3 OK, every 10 s), for an hour, then steady: exactly two
/// notifications, flapping started and flapping stopped.
#[test]
fn a_check_flapping_at_50_percent_for_an_hour_sends_exactly_two_notifications() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    sim.results("a", "api", &[C, C, C, O, O, O], 360, 10 * SEC);
    sim.results("a", "api", &[O], 60, 10 * SEC);
    sim.advance(HOUR);
    let n = sim.notifications();
    assert_eq!(
        sim.kinds(),
        vec![K::FlappingStarted, K::FlappingStopped],
        "{n:?}"
    );
    // Flapping from the 8th flap record (`flap.rs`), the recovery at
    // +160 s; the group has been waiting since that cycle's problem at
    // +140 s, so it goes out group_wait after that.
    assert_eq!(n[0].0, T0 + 170 * SEC);
    assert_eq!(n[1].1.status, Status::Ok, "it settled OK");
    assert_eq!(n[0].1.incident_key(), n[1].1.incident_key());
    let flapping_muted = sim.actions.iter().any(|(_, a)| {
        matches!(
            a,
            Action::Muted {
                reason: MuteReason::Flapping,
                ..
            }
        )
    });
    assert!(flapping_muted);
}

#[test]
fn flapping_that_settles_on_a_problem_says_so_and_resolves_later() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    sim.results("a", "api", &[C, C, C, O, O, O], 120, 10 * SEC);
    sim.results("a", "api", &[C], 120, 10 * SEC);
    sim.results("a", "api", &[O], 10, 10 * SEC);
    sim.advance(HOUR);
    let n = sim.notifications();
    assert_eq!(
        sim.kinds(),
        vec![K::FlappingStarted, K::FlappingStopped, K::Resolved]
    );
    assert_eq!(n[1].1.status, C);
}

#[test]
fn state_round_trips_through_json_and_a_newer_version_is_refused() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &["x"]);
    sim.results("a", "disk", &[C], 5, 10 * SEC);
    sim.event(Event::AddSilence(silence(
        vec![agent_is("b")],
        T0,
        T0 + HOUR,
    )));
    let state = sim.engine.state().clone();
    let json = serde_json::to_string(&state).unwrap();
    let back: outrider_alerting::State = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);

    let mut newer: serde_json::Value = serde_json::from_str(&json).unwrap();
    newer["version"] = 99.into();
    let newer: outrider_alerting::State = serde_json::from_value(newer).unwrap();
    let err = outrider_alerting::Engine::restore(Config::default(), newer, T0).unwrap_err();
    assert!(
        matches!(
            err,
            Error::StateVersion {
                found: 99,
                supported: 1
            }
        ),
        "{err}"
    );
}

#[test]
fn a_restored_engine_keeps_what_receivers_were_told() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    sim.results("a", "disk", &[C], 3, 10 * SEC);
    sim.advance(MIN);
    assert_eq!(sim.kinds(), vec![K::Firing]);
    let state = sim.engine.state().clone();
    let restarted = sim.now + 10 * SEC;
    let engine = outrider_alerting::Engine::restore(Config::default(), state, restarted).unwrap();
    let mut sim = Sim {
        engine,
        now: restarted,
        actions: Vec::new(),
        lazy: false,
    };
    sim.connect("a", &[]);
    sim.results("a", "disk", &[C], 30, 10 * SEC);
    assert!(
        sim.notifications().is_empty(),
        "no second firing after a restart"
    );
    sim.results("a", "disk", &[O], 2, 10 * SEC);
    sim.advance(10 * MIN);
    assert_eq!(sim.kinds(), vec![K::Resolved]);
}

/// Sleeping until `next_wake_ms` instead of ticking every second gives the
/// same notifications at the same times.
#[test]
fn ticking_at_next_wake_matches_ticking_every_second() {
    type Script = fn(&mut Sim);
    let scripts: Vec<(&str, Script)> = vec![
        ("check critical then ok", |sim| {
            sim.connect("a", &[]);
            sim.results("a", "disk", &[C], 3, 10 * SEC);
            sim.results("a", "disk", &[C], 30, 10 * SEC);
            sim.results("a", "disk", &[O], 2, 10 * SEC);
        }),
        ("agent lost, dns broken, site", |sim| {
            for i in 0..5 {
                sim.connect(&format!("n{i}"), &["dc"]);
            }
            sim.result("n4", DNS_CHECK, C);
            for i in 0..3 {
                sim.lose(&format!("n{i}"));
                sim.advance(10 * SEC);
            }
            sim.advance(10 * MIN);
            sim.connect("n0", &["dc"]);
        }),
        ("silence window and repeats", |sim| {
            sim.connect("a", &[]);
            sim.event(Event::AddSilence(silence(
                vec![agent_is("a")],
                T0 + MIN,
                T0 + 7 * MIN,
            )));
            sim.results("a", "disk", &[C], 3, 10 * SEC);
            sim.advance(9 * HOUR);
        }),
    ];
    for (name, script) in scripts {
        let mut every_second = Sim::new(Config::default());
        script(&mut every_second);
        every_second.advance(10 * HOUR);
        let mut lazy = Sim::new(Config::default());
        lazy.lazy = true;
        script(&mut lazy);
        lazy.advance(10 * HOUR);
        assert!(
            !every_second.notifications().is_empty(),
            "{name}: sends something"
        );
        assert_eq!(lazy.notifications(), every_second.notifications(), "{name}");
    }
}

#[test]
fn open_lists_problems_with_why_they_are_muted() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    sim.connect("b", &[]);
    sim.results("a", "disk", &[C], 3, 10 * SEC);
    sim.event(Event::AddSilence(silence(
        vec![agent_is("b")],
        T0,
        T0 + HOUR,
    )));
    sim.results("b", "load", &[C], 3, 10 * SEC);
    sim.lose("a");
    sim.advance(3 * MIN);
    let open = sim.engine.open();
    let check = |agent: &str, name: &str| Subject::Check {
        agent: agent.into(),
        name: name.into(),
    };
    assert_eq!(
        open,
        vec![
            (Subject::Agent { agent: "a".into() }, None),
            (
                check("a", "disk"),
                Some(MuteReason::AgentDown { agent: "a".into() })
            ),
            (check("b", "load"), Some(MuteReason::Silenced { id: 1 })),
        ]
    );
}

#[test]
fn subjects_per_agent_are_bounded() {
    use outrider_alerting::engine::MAX_SUBJECTS_PER_AGENT;
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    for i in 0..MAX_SUBJECTS_PER_AGENT + 50 {
        for _ in 0..3 {
            sim.result("a", &format!("c{i}"), C);
        }
    }
    sim.advance(MIN);
    // The agent's own subject plus MAX - 1 checks.
    assert_eq!(sim.engine.open().len(), MAX_SUBJECTS_PER_AGENT - 1);
    let sent: usize = sim.notifications().len();
    assert_eq!(
        sent,
        MAX_SUBJECTS_PER_AGENT - 1,
        "one group, one notification each"
    );
}

#[test]
fn time_never_runs_backwards_inside_the_engine() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    sim.lose("a");
    sim.advance(2 * MIN + 30 * SEC);
    assert_eq!(sim.kinds(), vec![K::Firing]);
    // The clock steps back an hour (NTP): the agent does not look lost for
    // less, and nothing is re-sent or resolved.
    let acts = sim.engine.tick(sim.now - HOUR);
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(sim.engine.state().now_ms, sim.now);
}

#[test]
fn a_collector_failing_is_gated_like_a_check() {
    let mut sim = Sim::new(Config::default());
    sim.connect("a", &[]);
    let status = |sim: &mut Sim, status| {
        sim.event(Event::CollectorStatus {
            agent: "a".into(),
            name: "collectd".into(),
            status,
            detail: "exited 1, restarting".into(),
        });
        sim.advance(10 * SEC);
    };
    status(&mut sim, C);
    status(&mut sim, C);
    status(&mut sim, O);
    sim.advance(MIN);
    assert!(
        sim.notifications().is_empty(),
        "two failures are not a problem"
    );
    for s in [C, C, C, C, C, C, O, O] {
        status(&mut sim, s);
    }
    sim.advance(10 * MIN);
    let n = sim.notifications();
    assert_eq!(sim.kinds(), vec![K::Firing, K::Resolved]);
    assert_eq!(n[0].1.title, "collector collectd failing on a");
}

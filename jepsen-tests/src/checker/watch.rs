//! Checks watch histories against etcd's documented watch guarantees, using the
//! post-run reference replay as the ground truth:
//!
//! - **ordered**: a watcher sees revisions in increasing order, across responses and
//!   across resumed sessions;
//! - **unique**: no event is delivered twice;
//! - **atomic**: all events of one revision arrive in one response, complete;
//! - **reliable**: within the range a session covers (from its start revision to the
//!   last revision it saw or was promised by a progress notification) no revision is
//!   missing;
//! - **resumable**: a session resumed from revision N starts exactly at the first
//!   revision ≥ N;
//! - **bookmarkable**: progress notifications never go backwards, and no event at or
//!   below a notified revision arrives after it;
//! - every acknowledged write is in the reference at the revision it was acknowledged
//!   with, and nothing appears that no write could have produced.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{CheckError, Report, Verdict};
use crate::history::{self, Event, Kind};
use crate::workload::watch::{WatchCall, WatchEvent};

/// The first violation found, if any.
fn first<T>(v: &mut Vec<String>, anomaly: T)
where
    T: Into<String>,
{
    v.push(anomaly.into());
}

/// An acknowledged write: its revision, its puts, and its invoke event's index.
struct Acked<'a> {
    rev: i64,
    puts: &'a [(String, String)],
    index: u64,
}

/// Checks a watch history.
pub fn check(events: &[Event<WatchCall>]) -> Result<Report, CheckError> {
    let mut anomalies: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // Paired records: writes and the reference.
    let paired: Vec<Event<WatchCall>> = events
        .iter()
        .filter(|e| matches!(e.op, WatchCall::Write { .. } | WatchCall::Reference { .. }))
        .cloned()
        .collect();
    let pairs = history::pair(&paired)?;
    let mut reference: Option<(i64, i64, &[WatchEvent], bool)> = None;
    let mut acked: Vec<Acked<'_>> = Vec::new();
    // Values a watcher may legitimately see: from ok or indeterminate writes.
    let mut possible: HashMap<(&str, &str), ()> = HashMap::new();
    let mut failed: HashMap<(&str, &str), ()> = HashMap::new();
    for p in &pairs {
        match (&p.invoke.op, p.kind(), p.completion.map(|c| &c.op)) {
            (
                WatchCall::Reference { .. },
                Kind::Ok,
                Some(WatchCall::Reference {
                    from_rev,
                    to_rev,
                    events,
                    complete,
                }),
            ) => {
                reference = Some((*from_rev, *to_rev, events, *complete));
            }
            (WatchCall::Write { puts, .. }, kind, completion) => {
                let target = if kind == Kind::Fail {
                    &mut failed
                } else {
                    &mut possible
                };
                for (k, v) in puts {
                    target.insert((k.as_str(), v.as_str()), ());
                }
                if kind == Kind::Ok {
                    match completion {
                        Some(WatchCall::Write {
                            revision: Some(r),
                            puts,
                        }) => acked.push(Acked {
                            rev: *r,
                            puts,
                            index: p.invoke.index,
                        }),
                        _ => {
                            return Err(CheckError::Malformed(format!(
                                "ok write {} without a revision",
                                p.invoke.index
                            )))
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let Some((from_rev, to_rev, ref_events, complete)) = reference else {
        return Ok(Report {
            verdict: Verdict::Unknown {
                reason: "no reference replay in the history (the cluster did not recover?)".into(),
            },
            notes,
        });
    };
    if !complete {
        notes.push(format!(
            "reference replay incomplete: it reached revision {} of {to_rev}",
            ref_events.last().map_or(from_rev - 1, |e| e.rev)
        ));
    }
    let ref_last = ref_events.last().map_or(from_rev - 1, |e| e.rev);

    // The reference itself: ordered, and only values some write produced.
    let mut by_rev: BTreeMap<i64, Vec<&WatchEvent>> = BTreeMap::new();
    let mut prev = from_rev - 1;
    for e in ref_events {
        if e.rev < prev {
            first(
                &mut anomalies,
                format!(
                    "reference replay out of order: revision {} after {prev}",
                    e.rev
                ),
            );
        }
        prev = e.rev;
        if !e.delete && !possible.contains_key(&(e.key.as_str(), e.value.as_str())) {
            let what = if failed.contains_key(&(e.key.as_str(), e.value.as_str())) {
                "a failed write"
            } else {
                "no write"
            };
            first(
                &mut anomalies,
                format!(
                    "revision {} holds {}={} which {what} produced",
                    e.rev, e.key, e.value
                ),
            );
        }
        by_rev.entry(e.rev).or_default().push(e);
    }

    // Every acknowledged write is there, at its revision, complete.
    let mut revs_seen = BTreeSet::new();
    for Acked {
        rev,
        puts,
        index: idx,
    } in &acked
    {
        if !revs_seen.insert(*rev) {
            first(
                &mut anomalies,
                format!("two acknowledged writes share revision {rev} (write op #{idx})"),
            );
        }
        if *rev > ref_last {
            if complete {
                first(&mut anomalies, format!("lost write: op #{idx} acknowledged at revision {rev}, beyond the final revision {ref_last}"));
            }
            continue;
        }
        let got: BTreeSet<(&str, &str)> = by_rev
            .get(rev)
            .map(|v| {
                v.iter()
                    .map(|e| (e.key.as_str(), e.value.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let want: BTreeSet<(&str, &str)> =
            puts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if got != want {
            first(&mut anomalies, format!("lost write: op #{idx} acknowledged at revision {rev} with {want:?}, but the final history has {got:?} there"));
        }
    }

    // Each watcher, session by session.
    let mut watchers: BTreeMap<u64, Vec<&Event<WatchCall>>> = BTreeMap::new();
    for e in events {
        match &e.op {
            WatchCall::Start { watcher, .. }
            | WatchCall::Response { watcher, .. }
            | WatchCall::End { watcher, .. } => watchers.entry(*watcher).or_default().push(e),
            _ => {}
        }
    }
    let mut sessions = 0;
    let mut delivered = 0;
    for (w, recs) in &watchers {
        let mut last_rev = 0i64; // last event revision in the current session
        let mut seen: BTreeSet<(i64, String)> = BTreeSet::new();
        let mut session: Option<(u64, i64, i64, i64)> = None; // (id, start, covered_to, last progress)
        let close = |session: &mut Option<(u64, i64, i64, i64)>,
                     observed: &BTreeSet<i64>,
                     anomalies: &mut Vec<String>| {
            if let Some((s, start, covered, _)) = session.take() {
                let covered = covered.min(ref_last);
                if covered < start {
                    return;
                }
                for r in by_rev.range(start..=covered).map(|(r, _)| *r) {
                    if !observed.contains(&r) {
                        first(anomalies, format!("gap: watcher {w} session {s} (from revision {start}) covered up to {covered} but never saw revision {r}"));
                        break;
                    }
                }
            }
        };
        let mut observed: BTreeSet<i64> = BTreeSet::new();
        for rec in recs {
            match &rec.op {
                WatchCall::Start {
                    session: s,
                    start_rev,
                    ..
                } => {
                    close(&mut session, &observed, &mut anomalies);
                    observed.clear();
                    // A session asked for a (possibly earlier) start revision, so order
                    // and uniqueness restart; `resume` checks the new start is honoured.
                    seen.clear();
                    last_rev = 0;
                    sessions += 1;
                    session = Some((*s, *start_rev, *start_rev - 1, 0));
                }
                WatchCall::End { .. } => {
                    close(&mut session, &observed, &mut anomalies);
                    observed.clear();
                }
                WatchCall::Response {
                    session: s,
                    header_rev,
                    progress,
                    events: evs,
                    ..
                } => {
                    let Some((cur, start, covered, last_progress)) = session.as_mut() else {
                        first(
                            &mut anomalies,
                            format!("watcher {w}: response outside a session"),
                        );
                        continue;
                    };
                    if *s != *cur {
                        first(
                            &mut anomalies,
                            format!("watcher {w}: response for session {s} during session {cur}"),
                        );
                        continue;
                    }
                    if *progress {
                        if *header_rev < *last_progress {
                            first(&mut anomalies, format!("bookmark went backwards: watcher {w} session {s} got progress {header_rev} after {last_progress}"));
                        }
                        *last_progress = (*last_progress).max(*header_rev);
                        *covered = (*covered).max(*header_rev);
                        continue;
                    }
                    delivered += evs.len();
                    let resp_first = evs.first().map_or(0, |e| e.rev);
                    if resp_first < *start {
                        first(&mut anomalies, format!("resume: watcher {w} session {s} started at revision {start} but received revision {resp_first}"));
                    }
                    if resp_first <= *last_progress {
                        first(&mut anomalies, format!("bookmark violated: watcher {w} session {s} received revision {resp_first} after a progress notification at {last_progress}"));
                    }
                    let redelivered = evs.iter().any(|e| seen.contains(&(e.rev, e.key.clone())));
                    if resp_first == last_rev && observed.contains(&resp_first) && !redelivered {
                        first(&mut anomalies, format!("atomicity: watcher {w} session {s} received revision {resp_first} split across responses"));
                    } else if resp_first <= last_rev {
                        let kind = if redelivered { "duplicate" } else { "order" };
                        first(&mut anomalies, format!("{kind}: watcher {w} session {s} received revision {resp_first} after revision {last_rev}"));
                    }
                    let mut in_resp: BTreeMap<i64, Vec<&WatchEvent>> = BTreeMap::new();
                    let mut prev_in_resp = 0;
                    for e in evs {
                        if e.rev < prev_in_resp {
                            first(&mut anomalies, format!("order: watcher {w} session {s} got revision {} after {prev_in_resp} in one response", e.rev));
                        }
                        prev_in_resp = e.rev;
                        if !seen.insert((e.rev, e.key.clone())) {
                            first(
                                &mut anomalies,
                                format!(
                                    "duplicate: watcher {w} received {}@{} twice",
                                    e.key, e.rev
                                ),
                            );
                        }
                        in_resp.entry(e.rev).or_default().push(e);
                    }
                    for (rev, got) in &in_resp {
                        observed.insert(*rev);
                        last_rev = last_rev.max(*rev);
                        *covered = (*covered).max(*rev);
                        if *rev > ref_last {
                            continue;
                        }
                        let want = by_rev.get(rev).cloned().unwrap_or_default();
                        if want.is_empty() {
                            first(&mut anomalies, format!("watcher {w} session {s} received revision {rev}, which the final history does not contain"));
                        } else if got.len() < want.len() {
                            first(&mut anomalies, format!("atomicity: watcher {w} session {s} received {} of the {} events of revision {rev} in one response", got.len(), want.len()));
                        } else if *got != want {
                            first(&mut anomalies, format!("watcher {w} session {s} saw revision {rev} as {got:?}, the final history has {want:?}"));
                        }
                    }
                }
                _ => {}
            }
        }
        close(&mut session, &observed, &mut anomalies);
    }

    notes.insert(0, format!(
        "watch guarantees over {} watchers, {sessions} sessions, {delivered} delivered events; reference has {} revisions ({from_rev}..={ref_last}); {} acknowledged writes",
        watchers.len(), by_rev.len(), acked.len()
    ));
    let verdict = match anomalies.first() {
        Some(a) => Verdict::Invalid { anomaly: a.clone() },
        None if !complete => Verdict::Unknown {
            reason: "the reference replay did not reach the final revision".into(),
        },
        None => Verdict::Valid,
    };
    notes.extend(anomalies.into_iter().skip(1).take(10));
    Ok(Report { verdict, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: i64, key: &str, value: &str) -> WatchEvent {
        WatchEvent {
            rev,
            key: key.into(),
            value: value.into(),
            delete: false,
        }
    }

    /// Builds a history: writes at revisions 2, 3 (two keys), 4, a reference, and the
    /// given watcher records.
    fn history(watch: Vec<WatchCall>) -> Vec<Event<WatchCall>> {
        let mut recs: Vec<(u64, Kind, WatchCall)> = Vec::new();
        let writes: Vec<(i64, Vec<(&str, &str)>)> = vec![
            (2, vec![("a", "1")]),
            (3, vec![("a", "2"), ("b", "3")]),
            (4, vec![("b", "4")]),
        ];
        for (rev, puts) in &writes {
            let puts: Vec<(String, String)> = puts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            recs.push((
                1,
                Kind::Invoke,
                WatchCall::Write {
                    puts: puts.clone(),
                    revision: None,
                },
            ));
            recs.push((
                1,
                Kind::Ok,
                WatchCall::Write {
                    puts,
                    revision: Some(*rev),
                },
            ));
        }
        for w in watch {
            recs.push((100, Kind::Ok, w));
        }
        let reference = vec![
            ev(2, "a", "1"),
            ev(3, "a", "2"),
            ev(3, "b", "3"),
            ev(4, "b", "4"),
        ];
        recs.push((
            9,
            Kind::Invoke,
            WatchCall::Reference {
                from_rev: 2,
                to_rev: 4,
                events: vec![],
                complete: false,
            },
        ));
        recs.push((
            9,
            Kind::Ok,
            WatchCall::Reference {
                from_rev: 2,
                to_rev: 4,
                events: reference,
                complete: true,
            },
        ));
        recs.into_iter()
            .enumerate()
            .map(|(i, (p, k, op))| Event {
                index: i as u64,
                time_ns: i as u64,
                process: p,
                kind: k,
                op,
                error: None,
            })
            .collect()
    }
    fn start(s: u64, rev: i64) -> WatchCall {
        WatchCall::Start {
            watcher: 0,
            session: s,
            start_rev: rev,
        }
    }
    fn resp(s: u64, events: Vec<WatchEvent>) -> WatchCall {
        WatchCall::Response {
            watcher: 0,
            session: s,
            header_rev: 4,
            progress: false,
            events,
        }
    }
    fn progress(s: u64, rev: i64) -> WatchCall {
        WatchCall::Response {
            watcher: 0,
            session: s,
            header_rev: rev,
            progress: true,
            events: vec![],
        }
    }
    fn end(s: u64) -> WatchCall {
        WatchCall::End {
            watcher: 0,
            session: s,
            reason: "test".into(),
        }
    }
    fn verdict(watch: Vec<WatchCall>) -> Verdict {
        check(&history(watch)).unwrap().verdict
    }

    #[test]
    fn table() {
        let all = || {
            vec![
                ev(2, "a", "1"),
                ev(3, "a", "2"),
                ev(3, "b", "3"),
                ev(4, "b", "4"),
            ]
        };
        let cases: Vec<(&str, Vec<WatchCall>, Option<&str>)> = vec![
            (
                "everything in one response",
                vec![start(1, 2), resp(1, all()), end(1)],
                None,
            ),
            (
                "resumed after a disconnect",
                vec![
                    start(1, 2),
                    resp(1, vec![ev(2, "a", "1")]),
                    end(1),
                    start(2, 3),
                    resp(2, vec![ev(3, "a", "2"), ev(3, "b", "3")]),
                    resp(2, vec![ev(4, "b", "4")]),
                    end(2),
                ],
                None,
            ),
            (
                "a session that ends early only covers what it saw",
                vec![start(1, 2), resp(1, vec![ev(2, "a", "1")]), end(1)],
                None,
            ),
            (
                "resumed after a progress notification",
                vec![
                    start(1, 2),
                    resp(1, vec![ev(2, "a", "1"), ev(3, "a", "2"), ev(3, "b", "3")]),
                    progress(1, 3),
                    end(1),
                    start(2, 4),
                    resp(2, vec![ev(4, "b", "4")]),
                    end(2),
                ],
                None,
            ),
            (
                "gap",
                vec![
                    start(1, 2),
                    resp(1, vec![ev(2, "a", "1"), ev(4, "b", "4")]),
                    end(1),
                ],
                Some("gap"),
            ),
            (
                "gap promised by a progress notification",
                vec![
                    start(1, 2),
                    resp(1, vec![ev(2, "a", "1")]),
                    progress(1, 4),
                    end(1),
                ],
                Some("gap"),
            ),
            (
                "resume redelivers what came before its start",
                vec![
                    start(1, 2),
                    resp(1, vec![ev(2, "a", "1")]),
                    end(1),
                    start(2, 3),
                    resp(2, vec![ev(2, "a", "1")]),
                    end(2),
                ],
                Some("resume"),
            ),
            (
                "resume skips the first revision after its start",
                vec![
                    start(1, 2),
                    resp(1, vec![ev(2, "a", "1")]),
                    end(1),
                    start(2, 3),
                    resp(2, vec![ev(4, "b", "4")]),
                    end(2),
                ],
                Some("gap"),
            ),
            (
                "duplicate within a session",
                vec![
                    start(1, 2),
                    resp(1, vec![ev(2, "a", "1")]),
                    resp(1, vec![ev(2, "a", "1")]),
                    end(1),
                ],
                Some("duplicate"),
            ),
            (
                "reordered",
                vec![
                    start(1, 2),
                    resp(1, vec![ev(3, "a", "2"), ev(3, "b", "3")]),
                    resp(1, vec![ev(2, "a", "1")]),
                    end(1),
                ],
                Some("order"),
            ),
            (
                "revision split across responses",
                vec![
                    start(1, 2),
                    resp(1, vec![ev(2, "a", "1"), ev(3, "a", "2")]),
                    resp(1, vec![ev(3, "b", "3"), ev(4, "b", "4")]),
                    end(1),
                ],
                Some("atomicity"),
            ),
            (
                "partial revision",
                vec![
                    start(1, 2),
                    resp(1, vec![ev(2, "a", "1"), ev(3, "a", "2"), ev(4, "b", "4")]),
                    end(1),
                ],
                Some("atomicity"),
            ),
            (
                "progress notification goes backwards",
                vec![
                    start(1, 2),
                    resp(1, all()),
                    progress(1, 4),
                    progress(1, 3),
                    end(1),
                ],
                Some("bookmark"),
            ),
            (
                "event below a progress notification",
                vec![start(1, 2), progress(1, 3), resp(1, all()), end(1)],
                Some("bookmark"),
            ),
            (
                "wrong value",
                vec![start(1, 2), resp(1, vec![ev(2, "a", "9")]), end(1)],
                Some("final history has"),
            ),
        ];
        for (name, watch, want) in cases {
            match (verdict(watch), want) {
                (Verdict::Valid, None) => {}
                (Verdict::Invalid { anomaly }, Some(w)) => {
                    assert!(anomaly.contains(w), "{name}: wanted {w:?}, got {anomaly}")
                }
                (v, _) => panic!("{name}: unexpected {v:?}"),
            }
        }
    }

    #[test]
    fn lost_acknowledged_write() {
        let mut h = history(vec![]);
        // Rewrite the reference so revision 4 is missing.
        if let Some(Event {
            op: WatchCall::Reference { events, to_rev, .. },
            ..
        }) = h.last_mut()
        {
            events.pop();
            *to_rev = 3;
        }
        let v = check(&h).unwrap().verdict;
        assert!(
            matches!(&v, Verdict::Invalid { anomaly } if anomaly.contains("lost write")),
            "{v:?}"
        );
    }

    #[test]
    fn missing_reference_is_unknown() {
        let h: Vec<Event<WatchCall>> = history(vec![])
            .into_iter()
            .filter(|e| !matches!(e.op, WatchCall::Reference { .. }))
            .collect();
        assert!(matches!(
            check(&h).unwrap().verdict,
            Verdict::Unknown { .. }
        ));
    }
}

//! Pure status logic of the pod state machine, table-tested: what to do with a container
//! given how its last run ended ([`decide`]), its `ContainerStatus` ([`ContainerView`]),
//! and the pod's phase ([`phase`]) by the kubelet's rules.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::backoff;

/// A container's current (or last) state as the agent observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Current {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: DateTime<Utc>,
    },
    Terminated(Terminated),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
}

impl Terminated {
    /// The reason Kubernetes shows: OOMKilled, Completed or Error.
    pub fn reason_for(exit_code: i32, oom_killed: bool) -> &'static str {
        if oom_killed {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// Everything a container's status is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub current: Current,
    pub last: Option<Terminated>,
    pub restart_count: u32,
    pub ready: bool,
    pub started: Option<bool>,
    pub container_id: Option<String>,
}

fn time(t: DateTime<Utc>) -> Time {
    // Kubernetes' Time has second precision on the wire.
    Time(DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t))
}

fn terminated(t: &Terminated, id: Option<&str>) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: t.started_at.map(time),
        finished_at: Some(time(t.finished_at)),
        container_id: id.map(String::from),
    }
}

impl ContainerView {
    pub fn to_status(&self) -> ContainerStatus {
        let id = self.container_id.as_deref();
        let state = match &self.current {
            Current::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            Current::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(time(*started_at)),
                }),
                ..Default::default()
            },
            Current::Terminated(t) => ContainerState {
                terminated: Some(terminated(t, id)),
                ..Default::default()
            },
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: String::new(),
            container_id: id.map(String::from),
            state: Some(state),
            last_state: Some(
                self.last
                    .as_ref()
                    .map(|t| ContainerState {
                        terminated: Some(terminated(t, None)),
                        ..Default::default()
                    })
                    .unwrap_or_default(),
            ),
            ready: self.ready,
            restart_count: self.restart_count as i32,
            started: self.started,
        }
    }
}

/// What to do about a container whose last run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start the next attempt now.
    Restart,
    /// Restart once the crash-loop backoff has passed: wait this long.
    BackOff(Duration),
    /// Leave it terminated.
    Stay,
}

/// The restart decision for a container that has restarted `restarts` times and whose
/// last run ended as `t` (init containers never restart after success).
pub fn decide(
    restart_policy: &str,
    is_init: bool,
    t: &Terminated,
    restarts: u32,
    now: DateTime<Utc>,
) -> Decision {
    let restart = match restart_policy {
        "Never" => false,
        "OnFailure" => t.exit_code != 0,
        _ => !is_init || t.exit_code != 0,
    };
    if !restart || (is_init && t.exit_code == 0) {
        return Decision::Stay;
    }
    let ran = t
        .started_at
        .map(|s| crate_since(t.finished_at, s))
        .unwrap_or_default();
    let delay = backoff::delay(restarts, ran);
    let waited = crate_since(now, t.finished_at);
    if waited >= delay {
        Decision::Restart
    } else {
        Decision::BackOff(delay - waited)
    }
}

fn crate_since(a: DateTime<Utc>, b: DateTime<Utc>) -> Duration {
    controlplane::clock::since(a, b)
}

/// The pod phase from its containers, as the kubelet's getPhase computes it.
pub fn phase(restart_policy: &str, init: &[ContainerView], app: &[ContainerView]) -> &'static str {
    let init_failed_for_good = init.iter().any(|c| {
        matches!(&c.current, Current::Terminated(t) if t.exit_code != 0)
            && restart_policy == "Never"
    });
    if init_failed_for_good {
        return "Failed";
    }
    let initialized = init
        .iter()
        .all(|c| matches!(&c.current, Current::Terminated(t) if t.exit_code == 0));
    if !initialized {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in app {
        match &c.current {
            Current::Running { .. } => running += 1,
            Current::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            Current::Waiting { .. } => {
                if c.last.is_some() {
                    stopped += 1;
                } else {
                    waiting += 1;
                }
            }
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn exited(code: i32, started: i64, finished: i64) -> Terminated {
        Terminated {
            exit_code: code,
            signal: None,
            reason: Terminated::reason_for(code, false).into(),
            message: None,
            started_at: Some(at(started)),
            finished_at: at(finished),
        }
    }

    #[test]
    fn restart_decisions() {
        let s = Duration::from_secs;
        // (policy, init, exit code, restarts so far, seconds since exit, want)
        let cases = [
            ("Always", false, 1, 0, 0, Decision::Restart),
            ("Always", false, 0, 0, 0, Decision::Restart),
            ("Always", false, 1, 1, 3, Decision::BackOff(s(7))),
            ("Always", false, 1, 1, 10, Decision::Restart),
            ("Always", false, 1, 3, 5, Decision::BackOff(s(35))),
            ("Always", false, 1, 9, 0, Decision::BackOff(s(300))),
            ("OnFailure", false, 0, 0, 0, Decision::Stay),
            ("OnFailure", false, 2, 2, 0, Decision::BackOff(s(20))),
            ("Never", false, 1, 0, 100, Decision::Stay),
            ("Always", true, 0, 0, 0, Decision::Stay),
            ("Always", true, 1, 0, 0, Decision::Restart),
            ("Never", true, 1, 0, 0, Decision::Stay),
        ];
        for (policy, init, code, restarts, since, want) in cases {
            let t = exited(code, 0, 1);
            assert_eq!(
                decide(policy, init, &t, restarts, at(1 + since)),
                want,
                "{policy} init={init} code={code} restarts={restarts} since={since}"
            );
        }
        // A run longer than 10 minutes resets the backoff.
        let long = exited(1, 0, 700);
        assert_eq!(
            decide("Always", false, &long, 8, at(700)),
            Decision::Restart
        );
    }

    fn view(current: Current, last: bool) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "busybox".into(),
            current,
            last: last.then(|| exited(1, 0, 1)),
            restart_count: last as u32,
            ready: false,
            started: None,
            container_id: None,
        }
    }

    #[test]
    fn phases() {
        let running = || view(Current::Running { started_at: at(0) }, false);
        let waiting = || {
            view(
                Current::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                },
                false,
            )
        };
        let backoff = || {
            view(
                Current::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: None,
                },
                true,
            )
        };
        let ok = || view(Current::Terminated(exited(0, 0, 1)), false);
        let failed = || view(Current::Terminated(exited(1, 0, 1)), false);
        let cases: Vec<(&str, Vec<ContainerView>, Vec<ContainerView>, &str)> = vec![
            ("Always", vec![], vec![waiting()], "Pending"),
            ("Always", vec![], vec![running()], "Running"),
            ("Always", vec![], vec![running(), waiting()], "Pending"),
            ("Always", vec![], vec![backoff()], "Running"),
            ("Always", vec![], vec![failed()], "Running"),
            ("Never", vec![], vec![ok()], "Succeeded"),
            ("Never", vec![], vec![ok(), failed()], "Failed"),
            ("OnFailure", vec![], vec![failed()], "Running"),
            ("OnFailure", vec![], vec![ok()], "Succeeded"),
            ("Always", vec![running()], vec![waiting()], "Pending"),
            ("Always", vec![ok()], vec![running()], "Running"),
            ("Never", vec![failed()], vec![waiting()], "Failed"),
            ("Always", vec![failed()], vec![waiting()], "Pending"),
        ];
        for (policy, init, app, want) in cases {
            assert_eq!(
                phase(policy, &init, &app),
                want,
                "{policy} {init:?} {app:?}"
            );
        }
    }

    #[test]
    fn status_rendering() {
        let mut v = view(
            Current::Terminated(Terminated {
                exit_code: 137,
                signal: Some(9),
                reason: Terminated::reason_for(137, true).into(),
                message: None,
                started_at: Some(at(0)),
                finished_at: at(5),
            }),
            true,
        );
        v.container_id = Some("runc://x".into());
        let s = v.to_status();
        let t = s.state.unwrap().terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));
        assert_eq!(s.restart_count, 1);
        assert_eq!(s.last_state.unwrap().terminated.unwrap().exit_code, 1);
    }
}

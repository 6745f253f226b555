//! Nemeses: what faults to inject, when, and how to undo them. A seeded [`Schedule`]
//! alternates healthy periods and faults; [`run`] applies each fault to a
//! [`FaultTarget`] (the real [`Cluster`], or a fake in tests), holds it, heals it, and
//! at the end heals everything, so the cluster can recover before final reads.
//!
//! Faults: kill -9 (random member or the leader) then restart; SIGSTOP/SIGCONT (random
//! member or leader); network partitions (majority/minority, isolated leader, bridge);
//! membership change (remove a member, later add it back empty); disk loss (kill, wipe
//! the data dir, replace the member through the membership API); lost un-fsynced writes
//! (a power loss of the whole cluster on [`lazyfs`](crate::lazyfs) disks).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::cluster::{Cluster, ClusterError};
use crate::proxy::Partition;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    Kill,
    KillLeader,
    Pause,
    PauseLeader,
    /// A random one of the partition shapes below.
    Partition,
    PartitionHalves,
    PartitionLeader,
    PartitionBridge,
    Member,
    DiskLoss,
    LoseUnsynced,
}

const ALL: &[(&str, FaultKind)] = &[
    ("kill", FaultKind::Kill),
    ("kill-leader", FaultKind::KillLeader),
    ("pause", FaultKind::Pause),
    ("pause-leader", FaultKind::PauseLeader),
    ("partition", FaultKind::Partition),
    ("partition-halves", FaultKind::PartitionHalves),
    ("partition-leader", FaultKind::PartitionLeader),
    ("partition-bridge", FaultKind::PartitionBridge),
    ("member", FaultKind::Member),
    ("disk-loss", FaultKind::DiskLoss),
    ("lose-unsynced", FaultKind::LoseUnsynced),
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        ALL.iter().find(|(_, k)| *k == self).map_or("?", |(n, _)| n)
    }

    /// The fewest members the fault makes sense with.
    pub fn min_members(self) -> usize {
        match self {
            FaultKind::Kill
            | FaultKind::KillLeader
            | FaultKind::Pause
            | FaultKind::PauseLeader
            | FaultKind::LoseUnsynced => 1,
            _ => 3,
        }
    }
}

/// The `--nemesis` argument: `none`, `all`, or a comma-separated list of fault names.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NemesisSpec {
    pub faults: Vec<FaultKind>,
}

impl FromStr for NemesisSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "none" || s.is_empty() {
            return Ok(NemesisSpec::default());
        }
        if s == "all" {
            return Ok(NemesisSpec {
                faults: vec![
                    FaultKind::Kill,
                    FaultKind::KillLeader,
                    FaultKind::Pause,
                    FaultKind::PauseLeader,
                    FaultKind::Partition,
                    FaultKind::Member,
                    FaultKind::DiskLoss,
                    FaultKind::LoseUnsynced,
                ],
            });
        }
        let mut faults = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let kind = ALL
                .iter()
                .find(|(n, _)| *n == part)
                .map(|(_, k)| *k)
                .ok_or_else(|| {
                    let names: Vec<&str> = ALL.iter().map(|(n, _)| *n).collect();
                    format!(
                        "unknown nemesis {part:?}; use none, all, or a comma-separated list of {}",
                        names.join(", ")
                    )
                })?;
            if !faults.contains(&kind) {
                faults.push(kind);
            }
        }
        Ok(NemesisSpec { faults })
    }
}

impl fmt::Display for NemesisSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.faults.is_empty() {
            return write!(f, "none");
        }
        let names: Vec<&str> = self.faults.iter().map(|k| k.name()).collect();
        write!(f, "{}", names.join(","))
    }
}

impl NemesisSpec {
    /// Refuses faults that make no sense for the cluster size.
    pub fn validate(&self, members: usize) -> Result<(), String> {
        for k in &self.faults {
            if members < k.min_members() {
                return Err(format!(
                    "nemesis {} needs --members 3 or more (with {members} member(s) there is no peer network to partition and no quorum to replace a member through); use kill or pause",
                    k.name()
                ));
            }
        }
        Ok(())
    }
}

/// What faults are made of. Implemented by [`Cluster`]; tests use a fake.
#[allow(async_fn_in_trait)]
pub trait FaultTarget {
    fn members(&self) -> usize;
    async fn leader(&self) -> Option<usize>;
    fn kill(&mut self, member: usize) -> Result<(), ClusterError>;
    fn restart(&mut self, member: usize) -> Result<(), ClusterError>;
    fn pause(&mut self, member: usize) -> Result<(), ClusterError>;
    fn resume(&mut self, member: usize) -> Result<(), ClusterError>;
    fn partition(&mut self, p: Partition) -> Result<(), ClusterError>;
    fn wipe(&mut self, member: usize) -> Result<(), ClusterError>;
    async fn remove_member(&mut self, member: usize) -> Result<(), ClusterError>;
    async fn add_member(&mut self, member: usize) -> Result<(), ClusterError>;
    /// Kills every running member and drops their un-fsynced writes; returns the members
    /// hit and a description of what each lost.
    fn power_loss(&mut self) -> Result<Vec<(usize, String)>, ClusterError>;
    /// Undo everything (resume, restart, heal network).
    fn heal_all(&mut self) -> Vec<ClusterError>;
}

impl FaultTarget for Cluster {
    fn members(&self) -> usize {
        self.size()
    }
    async fn leader(&self) -> Option<usize> {
        Cluster::leader(self).await
    }
    fn kill(&mut self, m: usize) -> Result<(), ClusterError> {
        Cluster::kill(self, m)
    }
    fn restart(&mut self, m: usize) -> Result<(), ClusterError> {
        Cluster::restart(self, m)
    }
    fn pause(&mut self, m: usize) -> Result<(), ClusterError> {
        Cluster::pause(self, m)
    }
    fn resume(&mut self, m: usize) -> Result<(), ClusterError> {
        Cluster::resume(self, m)
    }
    fn partition(&mut self, p: Partition) -> Result<(), ClusterError> {
        match self.network() {
            Some(n) => {
                n.apply(p);
                Ok(())
            }
            None => Err(ClusterError::Rpc("no peer proxy (single member)".into())),
        }
    }
    fn wipe(&mut self, m: usize) -> Result<(), ClusterError> {
        Cluster::wipe(self, m)
    }
    async fn remove_member(&mut self, m: usize) -> Result<(), ClusterError> {
        Cluster::remove_member(self, m).await
    }
    async fn add_member(&mut self, m: usize) -> Result<(), ClusterError> {
        Cluster::add_member(self, m).await
    }
    fn power_loss(&mut self) -> Result<Vec<(usize, String)>, ClusterError> {
        Ok(Cluster::power_loss(self)?
            .into_iter()
            .map(|(m, lost)| {
                (
                    m,
                    format!("{} KiB in {} files", lost.bytes / 1024, lost.files),
                )
            })
            .collect())
    }
    fn heal_all(&mut self) -> Vec<ClusterError> {
        Cluster::heal_all(self)
    }
}

/// When to inject what: a seeded sequence of (healthy wait, fault, hold).
#[derive(Debug)]
pub struct Schedule {
    rng: StdRng,
    interval: Duration,
    faults: Vec<FaultKind>,
}

/// One planned fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub wait: Duration,
    pub kind: FaultKind,
    pub hold: Duration,
}

impl Schedule {
    pub fn new(seed: u64, interval: Duration, faults: Vec<FaultKind>) -> Schedule {
        Schedule {
            rng: StdRng::seed_from_u64(seed ^ 0x6E65_6D65_7369_7321),
            interval,
            faults,
        }
    }

    /// The next step, or `None` when there are no (more) faults to inject.
    pub fn next_step(&mut self) -> Option<Step> {
        let kind = *self.faults.choose(&mut self.rng)?;
        let jitter = |rng: &mut StdRng, d: Duration| d.mul_f64(rng.random_range(0.75..1.25));
        Some(Step {
            wait: jitter(&mut self.rng, self.interval),
            kind,
            hold: jitter(&mut self.rng, self.interval),
        })
    }

    /// Stops scheduling `kind` (e.g. the target does not support it).
    pub fn disable(&mut self, kind: FaultKind) {
        self.faults.retain(|k| *k != kind);
    }

    fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }
}

/// How to undo an applied fault.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Undo {
    Restart(usize),
    Resume(usize),
    HealNetwork,
    AddBack(usize),
    Replace(usize),
    RestartAll(Vec<usize>),
}

/// What happened, for the summary and the nemesis log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NemesisEvent {
    pub at: Duration,
    pub kind: FaultKind,
    pub what: String,
    /// Whether this is the fault starting (`true`) or being healed.
    pub start: bool,
}

/// The record of a nemesis run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NemesisLog {
    pub events: Vec<NemesisEvent>,
    /// Faults that could not be applied, and why (e.g. unsupported by the target).
    pub problems: Vec<String>,
}

impl NemesisLog {
    /// Faults applied, by kind name.
    pub fn applied(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut m = std::collections::BTreeMap::new();
        for e in self.events.iter().filter(|e| e.start) {
            *m.entry(e.kind.name()).or_insert(0) += 1;
        }
        m
    }
}

async fn pick(target: &impl FaultTarget, leader: bool, rng: &mut StdRng) -> Option<usize> {
    if leader {
        target.leader().await
    } else {
        (target.members() > 0).then(|| rng.random_range(0..target.members()))
    }
}

async fn apply(
    target: &mut impl FaultTarget,
    kind: FaultKind,
    rng: &mut StdRng,
) -> Result<Option<(Undo, String)>, ClusterError> {
    let n = target.members();
    Ok(Some(match kind {
        FaultKind::Kill | FaultKind::KillLeader => {
            let Some(m) = pick(target, kind == FaultKind::KillLeader, rng).await else {
                return Ok(None);
            };
            target.kill(m)?;
            (Undo::Restart(m), format!("kill -9 m{m}"))
        }
        FaultKind::Pause | FaultKind::PauseLeader => {
            let Some(m) = pick(target, kind == FaultKind::PauseLeader, rng).await else {
                return Ok(None);
            };
            target.pause(m)?;
            (Undo::Resume(m), format!("SIGSTOP m{m}"))
        }
        FaultKind::Partition
        | FaultKind::PartitionHalves
        | FaultKind::PartitionLeader
        | FaultKind::PartitionBridge => {
            let shape = if kind == FaultKind::Partition {
                *[
                    FaultKind::PartitionHalves,
                    FaultKind::PartitionLeader,
                    FaultKind::PartitionBridge,
                ]
                .choose(rng)
                .unwrap_or(&FaultKind::PartitionHalves)
            } else {
                kind
            };
            let p = match shape {
                FaultKind::PartitionLeader => {
                    let Some(l) = target.leader().await else {
                        return Ok(None);
                    };
                    Partition::isolate(l, n)
                }
                FaultKind::PartitionBridge => Partition::bridge(n, rng),
                _ => Partition::majority_minority(n, rng),
            };
            let what = format!("partition {}", p.describe());
            target.partition(p)?;
            (Undo::HealNetwork, what)
        }
        FaultKind::Member => {
            let m = rng.random_range(0..n.max(1));
            target.remove_member(m).await?;
            (Undo::AddBack(m), format!("remove member m{m}"))
        }
        FaultKind::DiskLoss => {
            let m = rng.random_range(0..n.max(1));
            target.kill(m)?;
            target.wipe(m)?;
            (
                Undo::Replace(m),
                format!("kill -9 m{m} and wipe its data dir"),
            )
        }
        FaultKind::LoseUnsynced => {
            let hit = target.power_loss()?;
            let what = hit
                .iter()
                .map(|(m, lost)| format!("m{m} lost {lost}"))
                .collect::<Vec<_>>()
                .join(", ");
            (
                Undo::RestartAll(hit.into_iter().map(|(m, _)| m).collect()),
                format!("power loss: kill -9 all, drop un-fsynced writes ({what})"),
            )
        }
    }))
}

async fn undo(target: &mut impl FaultTarget, u: &Undo) -> Result<String, ClusterError> {
    Ok(match *u {
        Undo::Restart(m) => {
            target.restart(m)?;
            format!("restart m{m}")
        }
        Undo::Resume(m) => {
            target.resume(m)?;
            format!("SIGCONT m{m}")
        }
        Undo::HealNetwork => {
            target.partition(Partition::healed())?;
            "heal network".into()
        }
        Undo::AddBack(m) => {
            target.add_member(m).await?;
            format!("add member m{m} back (empty)")
        }
        Undo::Replace(m) => {
            // etcd remembers the member's identity; an empty data dir cannot rejoin under
            // it, so replace the member through the membership API, as an operator would.
            target.remove_member(m).await?;
            target.add_member(m).await?;
            format!("replace m{m} with an empty member")
        }
        Undo::RestartAll(ref ms) => {
            for &m in ms {
                target.restart(m)?;
            }
            "restart all after power loss".into()
        }
    })
}

/// Sleeps, returning `false` if `stop` fired first.
async fn sleep_unless_stopped(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// Runs the schedule against `target` until `stop`, then heals everything.
pub async fn run(
    target: &mut impl FaultTarget,
    mut schedule: Schedule,
    mut stop: watch::Receiver<bool>,
    started: tokio::time::Instant,
) -> NemesisLog {
    let mut log = NemesisLog::default();
    let mut outstanding: Option<(FaultKind, Undo)> = None;
    while let Some(step) = schedule.next_step() {
        if !sleep_unless_stopped(step.wait, &mut stop).await {
            break;
        }
        match apply(target, step.kind, schedule.rng()).await {
            Ok(Some((u, what))) => {
                tracing::info!(fault = step.kind.name(), %what, "nemesis start");
                log.events.push(NemesisEvent {
                    at: started.elapsed(),
                    kind: step.kind,
                    what,
                    start: true,
                });
                outstanding = Some((step.kind, u));
            }
            Ok(None) => {
                log.problems.push(format!(
                    "{}: no target found (no leader?)",
                    step.kind.name()
                ));
                continue;
            }
            Err(ClusterError::Unsupported {
                target: t,
                what,
                detail,
            }) => {
                let msg = format!(
                    "{}: {t} does not support {what} ({detail}); fault disabled",
                    step.kind.name()
                );
                tracing::warn!("{msg}");
                log.problems.push(msg);
                schedule.disable(step.kind);
                continue;
            }
            Err(e) => {
                log.problems.push(format!("{}: {e}", step.kind.name()));
                // A half-applied fault (e.g. killed but not wiped) must still be undone.
                target.heal_all();
                continue;
            }
        }
        sleep_unless_stopped(step.hold, &mut stop).await;
        if let Some((kind, u)) = outstanding.take() {
            heal_one(target, kind, &u, &mut log, started).await;
        }
    }
    if let Some((kind, u)) = outstanding.take() {
        heal_one(target, kind, &u, &mut log, started).await;
    }
    for e in target.heal_all() {
        log.problems.push(format!("final heal: {e}"));
    }
    log
}

async fn heal_one(
    target: &mut impl FaultTarget,
    kind: FaultKind,
    u: &Undo,
    log: &mut NemesisLog,
    started: tokio::time::Instant,
) {
    match undo(target, u).await {
        Ok(what) => {
            tracing::info!(fault = kind.name(), %what, "nemesis heal");
            log.events.push(NemesisEvent {
                at: started.elapsed(),
                kind,
                what,
                start: false,
            });
        }
        Err(e) => log.problems.push(format!("healing {}: {e}", kind.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nemesis_lists() {
        assert_eq!("none".parse::<NemesisSpec>().unwrap().faults, vec![]);
        assert_eq!(
            "kill,pause-leader".parse::<NemesisSpec>().unwrap().faults,
            vec![FaultKind::Kill, FaultKind::PauseLeader]
        );
        assert!("kill,bogus".parse::<NemesisSpec>().is_err());
        assert_eq!(
            "kill,pause".parse::<NemesisSpec>().unwrap().to_string(),
            "kill,pause"
        );
    }

    #[test]
    fn partitions_need_three_members() {
        let spec: NemesisSpec = "partition".parse().unwrap();
        assert!(spec.validate(1).unwrap_err().contains("--members 3"));
        assert!(spec.validate(3).is_ok());
        assert!("kill,pause"
            .parse::<NemesisSpec>()
            .unwrap()
            .validate(1)
            .is_ok());
    }

    #[test]
    fn schedules_are_reproducible() {
        let plan = |seed| {
            let mut s = Schedule::new(
                seed,
                Duration::from_secs(4),
                vec![FaultKind::Kill, FaultKind::Pause],
            );
            (0..10).map(|_| s.next_step().unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(plan(1), plan(1));
        assert_ne!(plan(1), plan(2));
        for step in plan(3) {
            assert!(step.wait >= Duration::from_secs(3) && step.wait <= Duration::from_secs(5));
        }
        assert!(Schedule::new(1, Duration::from_secs(1), vec![])
            .next_step()
            .is_none());
    }

    /// Records calls instead of touching processes.
    #[derive(Default)]
    struct Fake {
        calls: Vec<String>,
        membership_supported: bool,
    }

    impl FaultTarget for Fake {
        fn members(&self) -> usize {
            3
        }
        async fn leader(&self) -> Option<usize> {
            Some(2)
        }
        fn kill(&mut self, m: usize) -> Result<(), ClusterError> {
            self.calls.push(format!("kill {m}"));
            Ok(())
        }
        fn restart(&mut self, m: usize) -> Result<(), ClusterError> {
            self.calls.push(format!("restart {m}"));
            Ok(())
        }
        fn pause(&mut self, m: usize) -> Result<(), ClusterError> {
            self.calls.push(format!("pause {m}"));
            Ok(())
        }
        fn resume(&mut self, m: usize) -> Result<(), ClusterError> {
            self.calls.push(format!("resume {m}"));
            Ok(())
        }
        fn partition(&mut self, p: Partition) -> Result<(), ClusterError> {
            self.calls.push(format!("partition {}", p.describe()));
            Ok(())
        }
        fn wipe(&mut self, m: usize) -> Result<(), ClusterError> {
            self.calls.push(format!("wipe {m}"));
            Ok(())
        }
        async fn remove_member(&mut self, m: usize) -> Result<(), ClusterError> {
            if !self.membership_supported {
                return Err(ClusterError::Unsupported {
                    target: "fake",
                    what: "membership changes",
                    detail: "Unimplemented".into(),
                });
            }
            self.calls.push(format!("remove {m}"));
            Ok(())
        }
        async fn add_member(&mut self, m: usize) -> Result<(), ClusterError> {
            self.calls.push(format!("add {m}"));
            Ok(())
        }
        fn power_loss(&mut self) -> Result<Vec<(usize, String)>, ClusterError> {
            self.calls.push("power loss".into());
            Ok((0..3).map(|m| (m, format!("{m} KiB"))).collect())
        }
        fn heal_all(&mut self) -> Vec<ClusterError> {
            self.calls.push("heal all".into());
            vec![]
        }
    }

    async fn run_fake(
        faults: Vec<FaultKind>,
        total: Duration,
        membership: bool,
    ) -> (Fake, NemesisLog) {
        let mut fake = Fake {
            membership_supported: membership,
            ..Fake::default()
        };
        let (tx, rx) = watch::channel(false);
        let started = tokio::time::Instant::now();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(total).await;
            let _ = tx.send(true);
        });
        let log = run(
            &mut fake,
            Schedule::new(9, Duration::from_secs(2), faults),
            rx,
            started,
        )
        .await;
        stopper.await.unwrap();
        (fake, log)
    }

    #[tokio::test(start_paused = true)]
    async fn every_fault_is_healed_and_the_end_heals_all() {
        let (fake, log) = run_fake(
            vec![FaultKind::KillLeader, FaultKind::Pause],
            Duration::from_secs(20),
            true,
        )
        .await;
        assert_eq!(fake.calls.last().map(String::as_str), Some("heal all"));
        let starts = log.events.iter().filter(|e| e.start).count();
        let heals = log.events.iter().filter(|e| !e.start).count();
        assert!(starts >= 3, "{log:?}");
        assert_eq!(starts, heals);
        // Faults never overlap: each start is followed by its heal.
        for pair in log.events.chunks(2) {
            assert!(pair[0].start && !pair[1].start, "{:?}", log.events);
        }
        for c in fake.calls.iter().filter(|c| c.starts_with("kill")) {
            assert_eq!(c, "kill 2", "kill-leader must target the leader");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_same_faults() {
        let a = run_fake(
            vec![FaultKind::Kill, FaultKind::Partition, FaultKind::DiskLoss],
            Duration::from_secs(30),
            true,
        )
        .await
        .0
        .calls;
        let b = run_fake(
            vec![FaultKind::Kill, FaultKind::Partition, FaultKind::DiskLoss],
            Duration::from_secs(30),
            true,
        )
        .await
        .0
        .calls;
        assert_eq!(a, b);
        assert!(
            a.iter().any(|c| c.starts_with("wipe")) || a.iter().any(|c| c.starts_with("partition")),
            "{a:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn power_loss_restarts_every_member_it_hit() {
        let (fake, log) =
            run_fake(vec![FaultKind::LoseUnsynced], Duration::from_secs(7), true).await;
        let first = &fake.calls[..4];
        assert_eq!(first, ["power loss", "restart 0", "restart 1", "restart 2"]);
        assert!(log.events[0].what.contains("m1 lost 1 KiB"), "{log:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unsupported_faults_are_disabled_not_fatal() {
        let (fake, log) = run_fake(vec![FaultKind::Member], Duration::from_secs(10), false).await;
        assert_eq!(log.problems.len(), 1, "{log:?}");
        assert!(log.problems[0].contains("does not support"));
        assert_eq!(fake.calls, vec!["heal all"]);
    }
}

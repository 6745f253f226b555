//! The Deployment controller, after kube-controller-manager's: a Deployment owns one
//! ReplicaSet per distinct pod template, named `<deployment>-<pod-template-hash>`. The
//! ReplicaSet whose template equals the Deployment's (ignoring the hash label) is the new
//! one; the rest are old. Strategies:
//!
//! - RollingUpdate: scale the new ReplicaSet up while the total stays within
//!   `replicas + maxSurge`, and old ones down while the available pods stay at least
//!   `replicas - maxUnavailable` (unhealthy old pods go first).
//! - Recreate: scale every old ReplicaSet to 0, wait until their pods are gone, then scale
//!   the new one up.
//!
//! Revisions: each ReplicaSet carries `deployment.kubernetes.io/revision`; a template that
//! becomes new (again, as after `kubectl rollout undo`, which copies an old ReplicaSet's
//! template back into the Deployment) gets the next revision. Old ReplicaSets scaled to 0
//! beyond `revisionHistoryLimit` are deleted. Status: replicas, updated, ready, available,
//! unavailable, observedGeneration, and the Available and Progressing conditions
//! (`kubectl rollout status` reads them), with progressDeadlineSeconds.
//!
//! Safety of rolling updates rests on acting only on a settled view: while any owned
//! ReplicaSet has not yet observed its latest spec (status.observedGeneration <
//! generation), old ReplicaSets are not scaled down, since their status may still count
//! pods that are already going away.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::podutil::{controller_ref, owner_ref};
use super::runtime::{Action, Informer, Reconciler, Store, WorkQueue};
use crate::client::{key_of, Api, ClientError};
use crate::clock::Clock;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotations of the Deployment not copied to its ReplicaSets.
const NOT_COPIED: [&str; 2] = [REVISION, "kubectl.kubernetes.io/last-applied-configuration"];

pub struct DeploymentController<C: Api> {
    api: C,
    clock: Arc<dyn Clock>,
    deployments: Arc<Store<Deployment>>,
    sets: Arc<Store<ReplicaSet>>,
    pods: Arc<Store<Pod>>,
}

/// FNV-1a, 32 bits: the hash Kubernetes uses for pod-template-hash.
fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x01000193)
    })
}

/// The `pod-template-hash` of a template: Kubernetes' alphabet without vowels and
/// look-alikes (`rand.SafeEncodeString`) over the decimal hash.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(&without_hash(template)).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(c.to_string().as_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    fnv32a(&bytes)
        .to_string()
        .bytes()
        .map(|d| ALPHANUMS[usize::from(d) % ALPHANUMS.len()] as char)
        .collect()
}

fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(meta) = t.metadata.as_mut() {
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(HASH_LABEL);
            if labels.is_empty() {
                meta.labels = None;
            }
        }
    }
    t
}

fn revision(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    // Never more than the spec asks for: a status not yet caught up with a scale-down
    // must not count pods that are going away.
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .min(spec_replicas(rs))
}

fn settled(rs: &ReplicaSet) -> bool {
    rs.status.as_ref().and_then(|s| s.observed_generation) >= rs.metadata.generation
}

/// An int-or-percent of `total`, rounded up (surge) or down (unavailable).
fn scaled_value(v: Option<&IntOrString>, total: i32, round_up: bool, default_pct: i32) -> i32 {
    let pct = |p: i32| {
        let x = i64::from(p) * i64::from(total);
        (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
    };
    match v {
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => s
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .map(pct)
            .unwrap_or_else(|| pct(default_pct)),
        None => pct(default_pct),
    }
}

/// (maxSurge, maxUnavailable) resolved against `replicas`; never both 0.
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let ru = spec
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled_value(ru.and_then(|r| r.max_surge.as_ref()), replicas, true, 25);
    let unavailable = scaled_value(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        false,
        25,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(replicas))
    }
}

/// The new ReplicaSet size of one rolling step (Kubernetes' `NewRSNewReplicas`).
pub fn rolling_new_replicas(replicas: i32, surge: i32, all: &[&ReplicaSet], new: i32) -> i32 {
    let current: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let max_total = replicas + surge;
    if current >= max_total {
        return new;
    }
    new + (max_total - current).min(replicas - new).max(0)
}

/// How many old pods a rolling step may scale down (`reconcileOldReplicaSets`' budget).
pub fn rolling_scale_down_budget(
    replicas: i32,
    max_unavailable: i32,
    old: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
) -> i32 {
    let min_available = replicas - max_unavailable;
    let all_available: i32 =
        old.iter().map(|rs| available(rs)).sum::<i32>() + new.map(available).unwrap_or(0);
    (all_available - min_available).max(0)
}

impl<C: Api> DeploymentController<C> {
    pub fn new(
        api: C,
        clock: Arc<dyn Clock>,
        deployments: &Arc<Informer<Deployment>>,
        sets: &Arc<Informer<ReplicaSet>>,
        pods: &Arc<Informer<Pod>>,
        queue: &Arc<WorkQueue>,
    ) -> Self {
        let q = queue.clone();
        deployments.add_handler(move |c| q.add(key_of(&c.object().metadata)));
        let q = queue.clone();
        sets.add_handler(move |c| {
            let rs = c.object();
            if let Some(r) = controller_ref(&rs.metadata).filter(|r| r.kind == "Deployment") {
                let ns = rs.metadata.namespace.as_deref().unwrap_or("");
                q.add(format!("{ns}/{}", r.name));
            }
        });
        // Recreate waits for old pods to be gone: their deletions must wake it.
        let (q, set_store) = (queue.clone(), sets.store.clone());
        pods.add_handler(move |c| {
            let pod = c.object();
            let ns = pod.metadata.namespace.as_deref().unwrap_or("");
            let Some(r) = controller_ref(&pod.metadata).filter(|r| r.kind == "ReplicaSet") else {
                return;
            };
            if let Some(rs) = set_store.get(&format!("{ns}/{}", r.name)) {
                if let Some(d) = controller_ref(&rs.metadata).filter(|r| r.kind == "Deployment") {
                    q.add(format!("{ns}/{}", d.name));
                }
            }
        });
        DeploymentController {
            api,
            clock,
            deployments: deployments.store.clone(),
            sets: sets.store.clone(),
            pods: pods.store.clone(),
        }
    }

    fn owned_sets(&self, d: &Deployment) -> Vec<Arc<ReplicaSet>> {
        let ns = d.metadata.namespace.as_deref().unwrap_or("");
        let uid = d.metadata.uid.as_deref();
        let mut sets: Vec<_> = self
            .sets
            .list_ns(ns)
            .into_iter()
            .filter(|rs| controller_ref(&rs.metadata).map(|r| r.uid.as_str()) == uid)
            .collect();
        sets.sort_by_key(|rs| {
            (
                rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
                rs.metadata.name.clone(),
            )
        });
        sets
    }

    async fn scale(&self, rs: &ReplicaSet, replicas: i32) -> Result<Arc<ReplicaSet>, ClientError> {
        let mut next = rs.clone();
        if let Some(spec) = next.spec.as_mut() {
            spec.replicas = Some(replicas);
        }
        tracing::info!(
            replicaset = %key_of(&rs.metadata),
            from = spec_replicas(rs),
            to = replicas,
            "scaling"
        );
        let ns = rs.metadata.namespace.as_deref();
        let updated = self.api.update(ns, &next).await?;
        Ok(self.sets.apply(updated))
    }

    /// Sets the ReplicaSet's revision (and copies the Deployment's annotations) if needed.
    async fn stamp_revision(
        &self,
        d: &Deployment,
        rs: Arc<ReplicaSet>,
        revision_wanted: i64,
    ) -> Result<Arc<ReplicaSet>, ClientError> {
        if revision(&rs.metadata) >= revision_wanted {
            return Ok(rs);
        }
        let mut next = (*rs).clone();
        let annotations = next.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in d.metadata.annotations.iter().flatten() {
            if !NOT_COPIED.contains(&k.as_str()) {
                annotations.insert(k.clone(), v.clone());
            }
        }
        annotations.insert(REVISION.into(), revision_wanted.to_string());
        let updated = self
            .api
            .update(rs.metadata.namespace.as_deref(), &next)
            .await?;
        Ok(self.sets.apply(updated))
    }

    async fn create_new_set(
        &self,
        d: &Deployment,
        replicas: i32,
        revision_wanted: i64,
    ) -> Result<Arc<ReplicaSet>, ClientError> {
        let spec = d.spec.as_ref().cloned().unwrap_or_default();
        let collision = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collision);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut annotations: BTreeMap<String, String> = d
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        annotations.insert(REVISION.into(), revision_wanted.to_string());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}-{hash}",
                    d.metadata.name.as_deref().unwrap_or("")
                )),
                namespace: d.metadata.namespace.clone(),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                annotations: Some(annotations),
                owner_references: Some(vec![owner_ref("apps/v1", "Deployment", &d.metadata)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        tracing::info!(deployment = %key_of(&d.metadata), replicaset = ?rs.metadata.name, replicas, "creating new replica set");
        let created = self
            .api
            .create(d.metadata.namespace.as_deref(), &rs)
            .await?;
        Ok(self.sets.apply(created))
    }

    /// Whether any pod of these ReplicaSets still exists (Recreate waits for none).
    fn pods_remain(&self, sets: &[Arc<ReplicaSet>]) -> bool {
        let uids: Vec<&str> = sets
            .iter()
            .filter_map(|rs| rs.metadata.uid.as_deref())
            .collect();
        let ns = sets
            .first()
            .and_then(|rs| rs.metadata.namespace.as_deref())
            .unwrap_or("");
        self.pods.list_ns(ns).iter().any(|p| {
            controller_ref(&p.metadata).is_some_and(|r| uids.contains(&r.uid.as_str()))
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
    }

    /// One rolling step; returns the (possibly updated) new and old sets.
    async fn rollout_rolling(
        &self,
        d: &Deployment,
        new: Arc<ReplicaSet>,
        mut old: Vec<Arc<ReplicaSet>>,
    ) -> Result<(), ClientError> {
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let (surge, max_unavailable) = surge_and_unavailable(d);
        // Scale the new set toward the goal within the surge budget.
        let mut new = new;
        let cur = spec_replicas(&new);
        let target = if cur > replicas {
            replicas
        } else {
            let all: Vec<&ReplicaSet> = old
                .iter()
                .map(|r| r.as_ref())
                .chain(std::iter::once(new.as_ref()))
                .collect();
            rolling_new_replicas(replicas, surge, &all, cur)
        };
        if target != cur {
            new = self.scale(&new, target).await?;
        }
        if old.iter().all(|rs| spec_replicas(rs) == 0) {
            return Ok(());
        }
        if !old
            .iter()
            .chain(std::iter::once(&new))
            .all(|rs| settled(rs))
        {
            return Ok(()); // the ReplicaSet status events bring us back
        }
        // Old pods that are not available cost nothing to remove: take those first, but
        // never more than keeps the total above the floor that counts unready new pods.
        let all_pods: i32 =
            old.iter().map(|rs| spec_replicas(rs)).sum::<i32>() + spec_replicas(&new);
        let new_unavailable = spec_replicas(&new) - available(&new);
        let mut cleanup_budget = all_pods - (replicas - max_unavailable) - new_unavailable;
        old.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
        for rs in old.iter_mut() {
            if cleanup_budget <= 0 {
                break;
            }
            let unhealthy = spec_replicas(rs) - available(rs);
            if unhealthy <= 0 {
                continue;
            }
            let n = unhealthy.min(cleanup_budget);
            *rs = self.scale(rs, spec_replicas(rs) - n).await?;
            cleanup_budget -= n;
        }
        // Then available old pods, as far as availability allows.
        let old_refs: Vec<&ReplicaSet> = old.iter().map(|r| r.as_ref()).collect();
        let mut budget =
            rolling_scale_down_budget(replicas, max_unavailable, &old_refs, Some(&new));
        for rs in old.iter() {
            if budget <= 0 {
                break;
            }
            let n = spec_replicas(rs).min(budget);
            if n > 0 {
                self.scale(rs, spec_replicas(rs) - n).await?;
                budget -= n;
            }
        }
        Ok(())
    }

    async fn rollout_recreate(
        &self,
        d: &Deployment,
        new: Option<Arc<ReplicaSet>>,
        old: &[Arc<ReplicaSet>],
        next_revision: i64,
    ) -> Result<(), ClientError> {
        let mut scaled = false;
        for rs in old.iter().filter(|rs| spec_replicas(rs) > 0) {
            self.scale(rs, 0).await?;
            scaled = true;
        }
        if scaled || self.pods_remain(old) {
            return Ok(()); // pod deletions bring us back
        }
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        match new {
            None => {
                self.create_new_set(d, replicas, next_revision).await?;
            }
            Some(rs) if spec_replicas(&rs) != replicas => {
                self.scale(&rs, replicas).await?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Deletes old, empty ReplicaSets beyond revisionHistoryLimit (oldest revisions first).
    async fn cleanup(&self, d: &Deployment, old: &[Arc<ReplicaSet>]) -> Result<(), ClientError> {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let mut empty: Vec<&Arc<ReplicaSet>> = old
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && rs.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
                    && rs.metadata.deletion_timestamp.is_none()
            })
            .collect();
        if empty.len() <= limit {
            return Ok(());
        }
        empty.sort_by_key(|rs| revision(&rs.metadata));
        for rs in &empty[..empty.len() - limit] {
            let ns = rs.metadata.namespace.as_deref();
            match self
                .api
                .delete::<ReplicaSet>(ns, rs.metadata.name.as_deref().unwrap_or(""))
                .await
            {
                Ok(()) => {
                    self.sets.remove(&key_of(&rs.metadata));
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn condition(
        &self,
        previous: &[DeploymentCondition],
        type_: &str,
        status: &str,
        reason: &str,
        message: String,
    ) -> DeploymentCondition {
        let now = Time(self.clock.now());
        match previous.iter().find(|c| c.type_ == type_) {
            Some(c)
                if c.status == status
                    && c.reason.as_deref() == Some(reason)
                    && c.message.as_deref() == Some(&message) =>
            {
                c.clone()
            }
            Some(c) if c.status == status => DeploymentCondition {
                reason: Some(reason.into()),
                message: Some(message),
                last_update_time: Some(now),
                ..c.clone()
            },
            _ => DeploymentCondition {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message),
                last_update_time: Some(now.clone()),
                last_transition_time: Some(now),
            },
        }
    }

    /// The status from the owned sets; the second value asks for a deadline re-check.
    fn status(
        &self,
        d: &Deployment,
        sets: &[Arc<ReplicaSet>],
        new: Option<&ReplicaSet>,
    ) -> (DeploymentStatus, Option<Duration>) {
        let spec = d.spec.as_ref();
        let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
        let sum = |f: &dyn Fn(&ReplicaSet) -> i32| sets.iter().map(|rs| f(rs)).sum::<i32>();
        let status_replicas = sum(&|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0));
        let ready = sum(&|rs| {
            rs.status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
        });
        let avail = sum(&|rs| {
            rs.status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0)
        });
        let total_spec = sum(&spec_replicas);
        let updated = new
            .and_then(|rs| rs.status.as_ref())
            .map(|s| s.replicas)
            .unwrap_or(0);
        let previous = d.status.clone().unwrap_or_default();
        let prev_conditions = previous.conditions.clone().unwrap_or_default();
        let (_, max_unavailable) = surge_and_unavailable(d);
        let available_cond = if avail >= replicas - max_unavailable {
            self.condition(
                &prev_conditions,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            self.condition(
                &prev_conditions,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        };
        let new_name = new
            .and_then(|rs| rs.metadata.name.clone())
            .unwrap_or_default();
        let complete = new.is_some()
            && updated == replicas
            && status_replicas == replicas
            && avail == replicas
            && new.map(available) == Some(replicas);
        let progressed = previous.replicas != Some(status_replicas)
            || previous.updated_replicas != Some(updated)
            || previous.ready_replicas != Some(ready)
            || previous.available_replicas != Some(avail);
        let deadline = spec
            .and_then(|s| s.progress_deadline_seconds)
            .map(|s| chrono::Duration::seconds(s.into()));
        let prev_progressing = prev_conditions.iter().find(|c| c.type_ == "Progressing");
        let mut recheck = None;
        let progressing = if complete {
            self.condition(
                &prev_conditions,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            )
        } else if spec.and_then(|s| s.paused) == Some(true) {
            self.condition(
                &prev_conditions,
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
            )
        } else {
            let last = prev_progressing.and_then(|c| c.last_update_time.as_ref().map(|t| t.0));
            let timed_out = !progressed
                && deadline
                    .zip(last)
                    .is_some_and(|(dl, t)| self.clock.now() - t > dl);
            if timed_out
                || prev_progressing.is_some_and(|c| {
                    c.reason.as_deref() == Some("ProgressDeadlineExceeded") && !progressed
                })
            {
                self.condition(
                    &prev_conditions,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                )
            } else {
                let mut c = self.condition(
                    &prev_conditions,
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{new_name}\" is progressing."),
                );
                if progressed {
                    c.last_update_time = Some(Time(self.clock.now()));
                }
                recheck = deadline
                    .and_then(|dl| dl.to_std().ok())
                    .map(|d| d + Duration::from_secs(1));
                c
            }
        };
        let status = DeploymentStatus {
            observed_generation: d.metadata.generation,
            replicas: Some(status_replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(avail),
            unavailable_replicas: Some((total_spec.max(replicas) - avail).max(0)),
            collision_count: previous.collision_count,
            conditions: Some(vec![available_cond, progressing]),
        };
        (status, recheck)
    }

    async fn sync_status(
        &self,
        d: &Deployment,
        new: Option<&ReplicaSet>,
    ) -> Result<Option<Duration>, ClientError> {
        let sets = self.owned_sets(d);
        let (status, recheck) = self.status(d, &sets, new);
        if d.status.as_ref() != Some(&status) {
            let mut next = d.clone();
            next.status = Some(status);
            let updated = self
                .api
                .update_status(d.metadata.namespace.as_deref(), &next)
                .await?;
            self.deployments.apply(updated);
        }
        Ok(recheck)
    }
}

impl<C: Api> Reconciler for DeploymentController<C> {
    async fn reconcile(&self, key: &str) -> Result<Action, ClientError> {
        let Some(d) = self.deployments.get(key) else {
            return Ok(Action::Done);
        };
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done); // the garbage collector removes what it owns
        }
        let Some(spec) = d.spec.as_ref() else {
            return Ok(Action::Done);
        };
        let sets = self.owned_sets(&d);
        let want = without_hash(&spec.template);
        let (mut news, old): (Vec<_>, Vec<_>) = sets.into_iter().partition(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| without_hash(t) == want)
        });
        // Of several matching sets (a race of two controllers), the oldest is the new one.
        let new = if news.is_empty() {
            None
        } else {
            Some(news.remove(0))
        };
        let old: Vec<_> = old.into_iter().chain(news).collect();
        let max_old_revision = old
            .iter()
            .map(|rs| revision(&rs.metadata))
            .max()
            .unwrap_or(0);
        let next_revision = max_old_revision + 1;
        let new = match new {
            Some(rs) => Some(self.stamp_revision(&d, rs, next_revision).await?),
            None => None,
        };
        if let Some(rs) = &new {
            let r = revision(&rs.metadata).to_string();
            if d.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                != Some(&r)
            {
                let patch = serde_json::json!({"metadata": {"annotations": {REVISION: r}}});
                let ns = d.metadata.namespace.as_deref();
                let updated: Deployment = self
                    .api
                    .patch_merge(ns, d.metadata.name.as_deref().unwrap_or(""), &patch)
                    .await?;
                self.deployments.apply(updated);
                return Ok(Action::RequeueAfter(Duration::ZERO));
            }
        }
        if spec.paused != Some(true) {
            let recreate =
                spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
            if recreate {
                self.rollout_recreate(&d, new.clone(), &old, next_revision)
                    .await?;
            } else {
                let new = match new.clone() {
                    Some(rs) => rs,
                    None => {
                        let replicas = spec.replicas.unwrap_or(1);
                        let (surge, _) = surge_and_unavailable(&d);
                        let old_refs: Vec<&ReplicaSet> = old.iter().map(|r| r.as_ref()).collect();
                        let n = rolling_new_replicas(replicas, surge, &old_refs, 0);
                        self.create_new_set(&d, n, next_revision).await?
                    }
                };
                self.rollout_rolling(&d, new, old.clone()).await?;
            }
            self.cleanup(&d, &old).await?;
        }
        let new = self.owned_sets(&d).into_iter().find(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| without_hash(t) == want)
        });
        let recheck = self.sync_status(&d, new.as_deref()).await?;
        Ok(recheck.map_or(Action::Done, Action::RequeueAfter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment,
    };

    fn rs(replicas: i32, avail: i32) -> ReplicaSet {
        ReplicaSet {
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas,
                available_replicas: Some(avail),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        use IntOrString::{Int, String as S};
        let cases = [
            (4, S("25%".into()), S("25%".into()), (1, 1)),
            (10, S("25%".into()), S("25%".into()), (3, 2)),
            (3, Int(0), Int(0), (0, 1)),
            (3, Int(2), Int(5), (2, 3)),
            (1, S("25%".into()), S("25%".into()), (1, 0)),
        ];
        for (replicas, surge, unavailable, want) in cases {
            let d = deployment(replicas, surge.clone(), unavailable.clone());
            assert_eq!(
                surge_and_unavailable(&d),
                want,
                "{replicas} {surge:?} {unavailable:?}"
            );
        }
    }

    #[test]
    fn rolling_steps_respect_surge_and_availability() {
        // (replicas, surge, old [(spec, available)], new (spec, available)) → (new target, scale-down budget)
        let cases = [
            // Start of a rollout of 4 with surge 1: one new pod, nothing removable yet
            // (all 4 old available, maxUnavailable 1 → 1 may go).
            (4, 1, 1, vec![(4, 4)], (0, 0), 1, 1),
            // Total already at replicas+surge: the new set waits.
            (4, 1, 1, vec![(4, 4)], (1, 0), 1, 1),
            // Old pods unavailable: availability is the floor, nothing more goes.
            (4, 1, 1, vec![(3, 2)], (2, 1), 2, 0),
            // Nearly done: the rest of old may go once new pods are available.
            (4, 1, 1, vec![(1, 1)], (4, 4), 4, 2),
        ];
        for (replicas, surge, unavail, old, new, want_new, want_budget) in cases {
            let old: Vec<ReplicaSet> = old.iter().map(|&(s, a)| rs(s, a)).collect();
            let new_rs = rs(new.0, new.1);
            let mut all: Vec<&ReplicaSet> = old.iter().collect();
            all.push(&new_rs);
            assert_eq!(rolling_new_replicas(replicas, surge, &all, new.0), want_new);
            let old_refs: Vec<&ReplicaSet> = old.iter().collect();
            assert_eq!(
                rolling_scale_down_budget(replicas, unavail, &old_refs, Some(&new_rs)),
                want_budget
            );
        }
    }

    #[test]
    fn template_hash_ignores_the_hash_label_and_changes_with_the_template() {
        let mut t = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            spec: None,
        };
        let h1 = template_hash(&t, None);
        t.metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), h1.clone());
        assert_eq!(template_hash(&t, None), h1);
        assert_ne!(template_hash(&t, Some(1)), h1);
        t.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("tier".into(), "x".into());
        assert_ne!(template_hash(&t, None), h1);
        assert!(h1
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}

//! A fake [`Runtime`] for the reconciler's and the agent's tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controlplane::clock::{Clock, ManualClock};

use super::{CreateRequest, Runtime, RuntimeError, State};
use crate::shim::ExitRecord;

/// A runtime whose containers run until the test makes them exit; it writes exit
/// records into the bundle as the shim does, and fails `create` for argv[0] under
/// `/missing`, as runc does for a missing executable.
#[derive(Clone)]
pub struct FakeRuntime {
    clock: ManualClock,
    pub containers: Arc<Mutex<HashMap<String, (State, PathBuf)>>>,
    pub signals: Arc<Mutex<Vec<(String, i32)>>>,
}

impl FakeRuntime {
    pub fn new(clock: ManualClock) -> FakeRuntime {
        FakeRuntime {
            clock,
            containers: Arc::default(),
            signals: Arc::default(),
        }
    }

    /// Ends the running container whose id starts with `prefix`.
    pub fn exit(&self, prefix: &str, code: i32, oom: bool) {
        let mut cs = self.containers.lock().unwrap();
        let (id, (state, bundle)) = cs
            .iter_mut()
            .find(|(id, (s, _))| id.contains(prefix) && *s == State::Running)
            .unwrap_or_else(|| panic!("no running container {prefix}"));
        let rec = ExitRecord {
            exit_code: code,
            signal: (code > 128).then_some(code - 128),
            oom_killed: oom,
            finished_at: self
                .clock
                .now()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        crate::store::write_json(&bundle.join(crate::shim::EXIT_FILE), &rec).unwrap();
        *state = State::Exited(rec);
        let _ = id;
    }

    pub fn running(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .containers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (s, _))| *s == State::Running)
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
    }
}

impl Runtime for FakeRuntime {
    async fn create(&self, req: &CreateRequest) -> Result<(), RuntimeError> {
        let spec = oci_spec::runtime::Spec::load(req.bundle.join("config.json")).unwrap();
        let argv0 = spec.process().as_ref().unwrap().args().as_ref().unwrap()[0].clone();
        if argv0.starts_with("/missing") {
            return Err(RuntimeError::Create(format!(
                "exec: \"{argv0}\": stat {argv0}: no such file or directory"
            )));
        }
        self.containers
            .lock()
            .unwrap()
            .insert(req.id.clone(), (State::Created, req.bundle.clone()));
        Ok(())
    }
    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(c) = self.containers.lock().unwrap().get_mut(id) {
            c.0 = State::Running;
        }
        Ok(())
    }
    async fn state(&self, id: &str, bundle: &std::path::Path) -> Result<State, RuntimeError> {
        // As runc's: the shim's exit record outlives the runtime's container.
        if let Some(exit) = crate::shim::read_exit(bundle) {
            return Ok(State::Exited(exit));
        }
        Ok(self
            .containers
            .lock()
            .unwrap()
            .get(id)
            .map(|c| c.0.clone())
            .unwrap_or(State::Missing))
    }
    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.signals.lock().unwrap().push((id.to_string(), signal));
        if signal == libc::SIGKILL {
            let running = matches!(
                self.containers.lock().unwrap().get(id),
                Some((State::Running, _))
            );
            if running {
                self.exit(id, 137, false);
            }
        }
        Ok(())
    }
    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.containers.lock().unwrap().remove(id);
        Ok(())
    }
    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.containers.lock().unwrap().keys().cloned().collect())
    }
    async fn exec(&self, _id: &str, _argv: &[String], _t: Duration) -> Result<i32, RuntimeError> {
        Ok(0)
    }
}

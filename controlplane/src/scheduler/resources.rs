//! Resource quantities as the scheduler counts them: CPU in millicores, memory in bytes,
//! and the pod count; parsed from Kubernetes quantity strings ("250m", "1.5", "128Mi",
//! "1G", "1e3").

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.pods += o.pods;
    }
    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.pods -= o.pods;
    }

    /// For scoring: a pod without a CPU or memory request counts as 100m / 200Mi
    /// (Kubernetes' non-zero defaults), so best-effort pods still spread.
    pub fn nonzero(&self) -> Resources {
        Resources {
            milli_cpu: if self.milli_cpu == 0 {
                100
            } else {
                self.milli_cpu
            },
            memory: if self.memory == 0 {
                200 * 1024 * 1024
            } else {
                self.memory
            },
            pods: self.pods,
        }
    }

    /// From a `requests`/`allocatable` map (missing entries are zero).
    pub fn from_map(m: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let get = |k: &str, milli: bool| {
            m.and_then(|m| m.get(k))
                .and_then(|q| parse_quantity(&q.0, milli))
                .unwrap_or(0)
        };
        Resources {
            milli_cpu: get("cpu", true),
            memory: get("memory", false),
            pods: get("pods", false),
        }
    }

    /// What a pod asks for: the sum of its containers' requests, or the largest init
    /// container's if that is more (init containers run one at a time); `pods` is 1.
    pub fn of_pod(pod: &Pod) -> Resources {
        let Some(spec) = &pod.spec else {
            return Resources {
                pods: 1,
                ..Default::default()
            };
        };
        let mut sum = Resources::default();
        for c in &spec.containers {
            sum.add(&Resources::from_map(
                c.resources.as_ref().and_then(|r| r.requests.as_ref()),
            ));
        }
        for c in spec.init_containers.iter().flatten() {
            let r = Resources::from_map(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
            sum.milli_cpu = sum.milli_cpu.max(r.milli_cpu);
            sum.memory = sum.memory.max(r.memory);
        }
        sum.pods = 1;
        sum
    }
}

/// A Kubernetes quantity as an integer: millis (`milli`) or units, rounded up as
/// Kubernetes' `MilliValue`/`Value` do. `None` for malformed strings.
pub fn parse_quantity(s: &str, milli: bool) -> Option<i64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    let v = num * mult * if milli { 1000.0 } else { 1.0 };
    // Tolerate float noise before rounding up ("0.1" * 1000 = 100.00000000000001).
    Some((v - 1e-6).ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        let cases = [
            ("250m", true, Some(250)),
            ("1", true, Some(1000)),
            ("1.5", true, Some(1500)),
            ("0.1", true, Some(100)),
            ("128Mi", false, Some(134_217_728)),
            ("1Gi", false, Some(1 << 30)),
            ("1G", false, Some(1_000_000_000)),
            ("1e3", false, Some(1000)),
            ("100", false, Some(100)),
            ("1k", false, Some(1000)),
            ("abc", false, None),
            ("1Zi", false, None),
        ];
        for (s, milli, want) in cases {
            assert_eq!(parse_quantity(s, milli), want, "{s}");
        }
    }
}

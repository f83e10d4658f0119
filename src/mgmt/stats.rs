//! Management methods on statistics: merged latency histograms and counters per namespace,
//! member device and reactor, and their reset.

use serde_json::{json, Value};

use super::{Managed, RpcError};
use crate::stats::Snapshot;

/// (subsystem NQN, NSID) by namespace statistics index.
pub fn namespace_names(target: &crate::nvmf::subsystem::Target) -> Vec<(String, u32)> {
    let mut names = Vec::new();
    for s in &target.subsystems {
        for n in &s.namespaces {
            if names.len() <= n.stats_index {
                names.resize(n.stats_index + 1, (String::new(), 0));
            }
            names[n.stats_index] = (s.nqn.clone(), n.nsid);
        }
    }
    names
}

/// Every reactor's snapshot merged into one.
pub fn merged(per_reactor: &[Snapshot]) -> Snapshot {
    let mut all = Snapshot::default();
    for s in per_reactor {
        all.merge(s);
    }
    all
}

impl Managed {
    pub(super) fn stats(&self, p: &Value) -> Result<Value, RpcError> {
        let reset = p.get("reset").and_then(Value::as_bool).unwrap_or(false);
        let buckets = p.get("buckets").and_then(Value::as_bool).unwrap_or(false);
        let per_reactor = self.shared.collect_stats(reset);
        let all = merged(&per_reactor);
        let names = namespace_names(&self.target);
        let namespaces: Vec<Value> = all
            .namespaces
            .iter()
            .enumerate()
            .filter(|(_, ops)| !ops.is_empty())
            .map(|(i, ops)| {
                let (nqn, nsid) = names.get(i).cloned().unwrap_or_default();
                json!({"subsystem": nqn, "nsid": nsid, "ops": ops.to_json(buckets)})
            })
            .collect();
        let members: Vec<Value> = all
            .members
            .iter()
            .map(|m| json!({"volume": m.volume, "device": m.device, "ops": m.ops.to_json(buckets)}))
            .collect();
        let reactors: Vec<Value> = per_reactor
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"reactor": i, "ops": s.reactor.to_json(buckets)}))
            .collect();
        Ok(
            json!({"reset": reset, "namespaces": namespaces, "members": members, "reactors": reactors}),
        )
    }
}

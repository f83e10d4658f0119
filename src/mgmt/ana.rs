//! Management methods on Asymmetric Namespace Access: the state each listener (port)
//! reports for each subsystem, and changing it at run time.

use serde_json::{json, Value};
use tracing::info;

use super::{failed, invalid_params, param, Managed, RpcError};
use crate::nvmf::ana::AnaState;
use crate::nvmf::subsystem::{AnaGroupReport, Port, Target};

/// The port a management request names: its id (a number, or digits) or its listen
/// address ("127.0.0.1:4420").
pub fn find_port<'a>(target: &'a Target, p: &Value) -> Result<&'a Port, RpcError> {
    let v = p.get("port").or_else(|| p.get("listener")).ok_or_else(|| {
        invalid_params("missing parameter 'port' (a listener address or port id)")
    })?;
    let id = match v {
        Value::Number(n) => Some(
            n.as_u64()
                .ok_or_else(|| invalid_params(format!("port {n} is not a port id")))?,
        ),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => {
            return Err(invalid_params(
                "'port' must be a listener address or a port id",
            ))
        }
    };
    let found = match (id, v.as_str()) {
        (Some(id), _) => target.ports.iter().find(|port| port.id as u64 == id),
        (None, Some(s)) => {
            let addr: std::net::SocketAddr = s
                .trim()
                .parse()
                .map_err(|e| invalid_params(format!("port '{s}': {e}")))?;
            target.ports.iter().find(|port| port.addr == addr)
        }
        (None, None) => None,
    };
    let listeners = target
        .ports
        .iter()
        .map(|p| format!("{} (id {})", p.addr, p.id))
        .collect::<Vec<_>>()
        .join(", ");
    found.ok_or_else(|| failed(format!("no listener {v} (listeners: {listeners})")))
}

fn group_json(g: &AnaGroupReport) -> Value {
    json!({
        "port": g.port_id,
        "listener": g.addr.to_string(),
        "subsystem": g.subsystem,
        "anagrpid": g.anagrpid,
        "state": g.state.name(),
        "state_code": g.state.code(),
        "change_count": g.change_count,
        "nsids": g.nsids,
        "controllers": g.controllers,
    })
}

impl Managed {
    pub(super) fn ana_call(&self, method: &str, p: &Value) -> Result<Value, RpcError> {
        match method {
            "ana_status" => self.ana_status(p),
            "ana_set" => self.ana_set(p),
            _ => Err(RpcError {
                code: -32601,
                message: format!("unknown method '{method}'"),
            }),
        }
    }

    /// Every (listener, subsystem, group) with its state; `port` and `subsystem` filter.
    fn ana_status(&self, p: &Value) -> Result<Value, RpcError> {
        let named = p
            .get("port")
            .or_else(|| p.get("listener"))
            .is_some_and(|v| !v.is_null());
        let port = if named {
            Some(find_port(&self.target, p)?.id)
        } else {
            None
        };
        let sub = p.get("subsystem").and_then(Value::as_str);
        let groups: Vec<Value> = self
            .target
            .ana_report()
            .iter()
            .filter(|g| {
                port.is_none_or(|id| id == g.port_id) && sub.is_none_or(|n| n == g.subsystem)
            })
            .map(group_json)
            .collect();
        Ok(json!({"change_count": self.target.ana.change_count(), "groups": groups}))
    }

    fn ana_set(&self, p: &Value) -> Result<Value, RpcError> {
        let port = find_port(&self.target, p)?;
        let state = param(p, "state")?
            .parse::<AnaState>()
            .map_err(invalid_params)?;
        let sub = match p.get("subsystem") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| invalid_params("'subsystem' must be a subsystem NQN"))?,
            ),
        };
        let changes = self
            .target
            .set_ana_state(port.id, sub, state)
            .map_err(|e| failed(e.to_string()))?;
        for c in &changes {
            info!(listener = %port.addr, port = port.id, subsystem = c.subsystem, anagrpid = c.anagrpid, from = %c.from, to = %c.to, change_count = c.change_count, notified = c.notified, "ANA state changed");
        }
        let changed: Vec<Value> = changes
            .iter()
            .map(|c| json!({"subsystem": c.subsystem, "anagrpid": c.anagrpid, "from": c.from.name(), "to": c.to.name(), "change_count": c.change_count, "notified": c.notified}))
            .collect();
        let mut status = self.ana_status(&json!({"port": port.id, "subsystem": sub}))?;
        status["changed"] = Value::Array(changed);
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        let ports = vec![
            Port {
                id: 1,
                addr: "127.0.0.1:4420".parse().unwrap(),
            },
            Port {
                id: 2,
                addr: "[::1]:4421".parse().unwrap(),
            },
        ];
        Target::new(vec![], ports, 1, 1)
    }

    #[test]
    fn ports_by_id_or_address() {
        let t = target();
        assert_eq!(find_port(&t, &json!({"port": 2})).unwrap().id, 2);
        assert_eq!(find_port(&t, &json!({"port": "1"})).unwrap().id, 1);
        assert_eq!(find_port(&t, &json!({"port": "[::1]:4421"})).unwrap().id, 2);
        assert_eq!(
            find_port(&t, &json!({"listener": "127.0.0.1:4420"}))
                .unwrap()
                .id,
            1
        );
        let e = find_port(&t, &json!({"port": "127.0.0.1:9999"})).unwrap_err();
        assert!(e.message.contains("127.0.0.1:4420 (id 1)"), "{}", e.message);
        assert_eq!(
            find_port(&t, &json!({"port": "somewhere"}))
                .unwrap_err()
                .code,
            -32602
        );
        assert_eq!(find_port(&t, &json!({"port": 3})).unwrap_err().code, -32000);
        assert!(find_port(&t, &json!({}))
            .unwrap_err()
            .message
            .contains("'port'"));
    }
}

//! Management methods on RAID volumes: status and rebuild progress, failing, replacing and
//! removing members, hot spares, the rebuild rate.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{failed, invalid_params, param, Managed, RpcError};
use crate::bdev::{Bdev, FileBdev};
use crate::volume::raid::{RaidBdev, VolumeError};

fn refused(e: VolumeError) -> RpcError {
    failed(e.to_string())
}

impl Managed {
    pub(super) fn volume_call(&self, method: &str, p: &Value) -> Result<Value, RpcError> {
        match method {
            "volume_status" => Ok(self.volume_status(p.get("name").and_then(Value::as_str))),
            "volume_fail_member" => self.fail_member(p),
            "volume_add_spare" => self.add_spare(p),
            "volume_remove_spare" => {
                let v = self.volume(param(p, "volume")?)?;
                v.remove_spare(param(p, "device")?).map_err(refused)?;
                Ok(self.status_of(v))
            }
            "volume_replace_member" => {
                let v = self.volume(param(p, "volume")?)?;
                v.replace(
                    param(p, "member")?,
                    param(p, "spare")?,
                    p.get("force").and_then(Value::as_bool).unwrap_or(false),
                )
                .map_err(refused)?;
                Ok(self.status_of(v))
            }
            "volume_readd_member" => {
                let v = self.volume(param(p, "volume")?)?;
                let regions = v.readd(param(p, "member")?).map_err(refused)?;
                let mut status = self.status_of(v);
                status["catch_up_regions"] = json!(regions);
                Ok(status)
            }
            "volume_remove_member" => {
                let v = self.volume(param(p, "volume")?)?;
                v.remove_member(param(p, "member")?).map_err(refused)?;
                Ok(self.status_of(v))
            }
            "volume_scrub" => {
                let v = self.volume(param(p, "volume")?)?;
                match p.get("action").and_then(Value::as_str).unwrap_or("start") {
                    "start" => v
                        .start_scrub(p.get("repair").and_then(Value::as_bool).unwrap_or(false))
                        .map_err(refused)?,
                    "stop" => v.scrub().stop(),
                    other => {
                        return Err(invalid_params(format!(
                            "action '{other}': use start or stop"
                        )))
                    }
                }
                if let Some(rate) = p.get("bytes_per_sec").and_then(Value::as_u64) {
                    v.scrub().set_rate(rate);
                }
                Ok(self.status_of(v))
            }
            "volume_rebuild_rate" => {
                let v = self.volume(param(p, "volume")?)?;
                let rate = p
                    .get("bytes_per_sec")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| invalid_params("missing number parameter 'bytes_per_sec'"))?;
                v.health().rebuild.set_rate(rate);
                Ok(self.status_of(v))
            }
            _ => Err(RpcError {
                code: -32601,
                message: format!("unknown method '{method}'"),
            }),
        }
    }

    fn volume(&self, name: &str) -> Result<&Arc<RaidBdev>, RpcError> {
        self.volumes
            .iter()
            .find(|v| v.name() == name)
            .ok_or_else(|| failed(format!("unknown volume '{name}'")))
    }

    fn volume_status(&self, only: Option<&str>) -> Value {
        Value::Array(
            self.volumes
                .iter()
                .filter(|v| only.is_none_or(|n| n == v.name()))
                .map(|v| self.status_of(v))
                .collect(),
        )
    }

    fn status_of(&self, v: &RaidBdev) -> Value {
        let h = v.health();
        let members: Vec<Value> = (0..h.slots())
            .map(|slot| {
                let r = h.slow.report(slot);
                json!({"slot": slot, "device": h.slot_device(slot).bdev.name(), "state": h.state_name(slot), "slow": r.slow, "slow_for_secs": r.slow_for_secs, "latency_us": r.latency_us, "reads_around": r.reads_around, "reads_direct": r.reads_direct})
            })
            .collect();
        let spares: Vec<Value> = h.spares().iter().map(|d| json!(d.bdev.name())).collect();
        let (synced, stripes) = v.resync().progress();
        json!({
            "name": v.name(),
            "level": v.layout().level.spec().name,
            "state": v.state(),
            "resync": {"active": v.resync().active(), "stripes_done": synced, "stripes": stripes},
            "rebuild": h.rebuild_progress(),
            "scrub": v.scrub().report(),
            "block_size": v.block_size(),
            "blocks": v.num_blocks(),
            "strip_bytes": v.layout().strip_blocks * v.member_block_size() as u64,
            "members": members,
            "spares": spares,
        })
    }

    fn fail_member(&self, p: &Value) -> Result<Value, RpcError> {
        let v = self.volume(param(p, "volume")?)?;
        let member = param(p, "member")?;
        let slot = v
            .member_index(member)
            .ok_or_else(|| failed(format!("volume '{}' has no member '{member}'", v.name())))?;
        let h = v.health();
        if h.is_failed(slot) {
            return Err(failed(format!("member '{member}' has already failed")));
        }
        if !v.can_lose(slot) && !p.get("force").and_then(Value::as_bool).unwrap_or(false) {
            return Err(failed(format!(
                "failing '{member}' would take volume '{}' offline (pass force to do it anyway)",
                v.name()
            )));
        }
        h.fail(slot, "failed by the operator");
        Ok(json!({"volume": v.name(), "member": member, "state": "failed"}))
    }

    /// A configured device by name, or a file or block device opened by path now.
    fn spare_device(&self, v: &RaidBdev, p: &Value) -> Result<Arc<dyn Bdev>, RpcError> {
        if let Some(path) = p.get("path").and_then(Value::as_str) {
            let name = p.get("device").and_then(Value::as_str).unwrap_or(path);
            if self.devices.iter().any(|(n, _)| n == name)
                || self.volumes.iter().any(|o| o.health().uses_device(name))
            {
                return Err(failed(format!("a device named '{name}' already exists")));
            }
            let f = FileBdev::open(name, std::path::Path::new(path), v.block_size(), None)
                .map_err(|e| failed(format!("cannot open '{path}': {e}")))?;
            return Ok(Arc::new(f));
        }
        let name = param(p, "device")?;
        let (_, dev) = self
            .devices
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| {
                failed(format!(
                    "no device named '{name}' is configured (or pass path)"
                ))
            })?;
        if self.namespace_devices.iter().any(|n| n == name) {
            return Err(failed(format!("device '{name}' backs a namespace")));
        }
        if let Some(o) = self.volumes.iter().find(|o| o.health().uses_device(name)) {
            return Err(failed(format!(
                "device '{name}' already belongs to volume '{}'",
                o.name()
            )));
        }
        Ok(dev.clone())
    }

    fn add_spare(&self, p: &Value) -> Result<Value, RpcError> {
        let v = self.volume(param(p, "volume")?)?;
        let dev = self.spare_device(v, p)?;
        v.add_spare(dev).map_err(refused)?;
        Ok(self.status_of(v))
    }
}

//! How a stretched volume is put together from the configuration: the link subsystem and
//! listener the peer uses, the two legs to the peer, the stretched device itself.

use std::sync::Arc;
use std::time::Duration;

use super::control::Inbox;
use super::stretch::StretchBdev;
use super::SiteShared;
use crate::bdev::remote::{RemoteBdev, RemoteConfig};
use crate::bdev::Bdev;
use crate::config::{Config, ListenerSection, NamespaceSection, StretchSection, SubsystemSection};

/// One stretched volume's parts.
pub struct Stretch {
    pub cfg: StretchSection,
    pub bdev: Arc<StretchBdev>,
    pub replica: Arc<RemoteBdev>,
    pub forward: Arc<RemoteBdev>,
    pub inbox: Arc<Inbox>,
    /// What the local volume knows of writes in flight at a crash (see `Bdev::crash_ranges`).
    pub crash_ranges: Option<Vec<(u64, u64)>>,
}

/// The configuration with each stretched volume's link listener and link subsystem added,
/// so the rest of the start-up treats them like any other.
pub fn with_site_links(cfg: &Config) -> Config {
    let mut cfg = cfg.clone();
    for s in cfg.stretches.clone() {
        cfg.listeners.push(ListenerSection {
            address: s.link_listener.clone(),
            ana_state: None,
        });
        cfg.subsystems.push(SubsystemSection {
            nqn: s.link_nqn(),
            serial: None,
            model: "nvmf-raid site link".into(),
            // Only the peer site: a host writing the replica would bypass the mirroring.
            allow_any_host: false,
            hosts: vec![site_hostnqn(&s.peer_site)],
            namespaces: vec![
                NamespaceSection {
                    nsid: Some(1),
                    device: format!("{}:replica", s.name),
                    uuid: None,
                },
                NamespaceSection {
                    nsid: Some(2),
                    device: format!("{}:forward", s.name),
                    uuid: None,
                },
            ],
            cntlid_min: crate::nvmf::subsystem::CNTLID_MIN as u32,
            cntlid_max: crate::nvmf::subsystem::CNTLID_MAX as u32,
        });
    }
    cfg
}

/// The host NQN a site presents on its peer's link.
pub fn site_hostnqn(site: &str) -> String {
    format!("nqn.2026-01.io.nvmf-raid:site:{site}")
}

fn leg(s: &StretchSection, nsid: u32) -> RemoteConfig {
    let link = Duration::from_millis(s.link_timeout_ms);
    RemoteConfig {
        addr: s.peer_link.parse().expect("validated peer_link"),
        subnqn: s.link_nqn(),
        nsid,
        hostnqn: site_hostnqn(&s.site),
        queue_depth: 128,
        io_timeout: link,
        keep_alive: (link * 2).max(Duration::from_secs(1)),
        connect_timeout: link,
        reconnect_max: Duration::from_secs(1),
    }
}

/// Open the legs to the peer (the target starts even when the peer is down) and build
/// the stretched device over `local`.
pub fn build(s: &StretchSection, local: Arc<dyn Bdev>) -> std::io::Result<Stretch> {
    let bytes = local.num_blocks() * local.block_size() as u64;
    let crash_ranges = local.crash_ranges();
    let replica = Arc::new(RemoteBdev::open(
        &format!("{}.replica", s.name),
        leg(s, 1),
        local.block_size(),
        Some(bytes),
    )?);
    let forward = Arc::new(RemoteBdev::open(
        &format!("{}.forward", s.name),
        leg(s, 2),
        local.block_size(),
        Some(bytes),
    )?);
    let shared = Arc::new(SiteShared::new(
        &s.name,
        bytes,
        s.leader == s.site,
        s.resync_rate.0,
    ));
    let bdev = Arc::new(StretchBdev::new(
        &s.name,
        local,
        replica.clone(),
        forward.clone(),
        shared,
    )?);
    Ok(Stretch {
        cfg: s.clone(),
        bdev,
        replica,
        forward,
        inbox: Arc::new(Inbox::default()),
        crash_ranges,
    })
}

//! The witness state machine against a real etcd (Debian's etcd-server, started here on
//! loopback): two sites that lose each other, one wins and one fences; a witness that is
//! gone fences both; a dead site's claim lapses with its lease; the winner gives the
//! volume back when its peer returns. Needs the etcd binary: without it (build.rs decides)
//! the tests are reported as ignored with the reason; scripts/test.sh installs it and makes
//! its absence a build error.

use std::time::{Duration, Instant};

use nvmf_raid::witness::{Etcd, Role, Witness};

mod common;

use common::etcd;

#[test]
#[cfg_attr(
    not(have_etcd),
    ignore = "etcd (etcd-server) is not installed: the witness is not tested against a real etcd"
)]
fn when_the_sites_lose_each_other_exactly_one_goes_on() {
    let e = etcd();
    let mut a = Witness::new(Etcd::new(e.addr), "site-a", "vol0", 5);
    let mut b = Witness::new(Etcd::new(e.addr), "site-b", "vol0", 5);
    a.heartbeat().unwrap();
    b.heartbeat().unwrap();
    assert_eq!(
        a.role,
        Role::Mirrored,
        "while the sites see each other nothing is claimed"
    );
    assert_eq!(Etcd::new(e.addr).get(&a.key).unwrap(), None);
    assert_eq!(*a.peer_lost(), Role::Sole);
    assert!(
        matches!(b.peer_lost(), Role::Fenced { why } if why.contains("site-a")),
        "{:?}",
        b.role
    );
    // Asking again changes nothing: the winner keeps it, the loser stays fenced.
    assert_eq!(*a.peer_lost(), Role::Sole);
    assert!(matches!(b.peer_lost(), Role::Fenced { .. }));
    // The peer is back and resynchronised: the volume is given back and both mirror again.
    assert_eq!(*a.peer_back().unwrap(), Role::Mirrored);
    assert_eq!(Etcd::new(e.addr).get(&a.key).unwrap(), None);
    // Next time the other site may win.
    assert_eq!(*b.peer_lost(), Role::Sole);
    assert!(matches!(a.peer_lost(), Role::Fenced { .. }));
}

#[test]
#[cfg_attr(
    not(have_etcd),
    ignore = "etcd (etcd-server) is not installed: the witness is not tested against a real etcd"
)]
fn a_dead_sites_claim_lapses_with_its_lease() {
    let e = etcd();
    let mut a = Witness::new(Etcd::new(e.addr), "site-a", "vol1", 2);
    let mut b = Witness::new(Etcd::new(e.addr), "site-b", "vol1", 2);
    assert_eq!(*a.peer_lost(), Role::Sole);
    // Site A dies: its lease is no longer renewed. B is fenced until the lease expires,
    // then wins.
    assert!(matches!(b.peer_lost(), Role::Fenced { .. }));
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.peer_lost() != &Role::Sole {
        assert!(
            Instant::now() < deadline,
            "the dead site's claim never lapsed: {:?}",
            b.role
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A comes back, renews: its old lease is gone, so it knows it no longer holds the volume.
    a.heartbeat().unwrap();
    assert!(matches!(a.role, Role::Fenced { .. }), "{:?}", a.role);
}

#[test]
#[cfg_attr(
    not(have_etcd),
    ignore = "etcd (etcd-server) is not installed: the witness is not tested against a real etcd"
)]
fn a_site_that_reaches_neither_peer_nor_witness_fences_itself() {
    let e = etcd();
    let mut a = Witness::new(Etcd::new(e.addr), "site-a", "vol2", 5);
    a.heartbeat().unwrap();
    drop(e); // the witness is gone
    assert!(
        matches!(a.peer_lost(), Role::Fenced { why } if why.contains("witness")),
        "{:?}",
        a.role
    );
}

#[test]
#[cfg_attr(
    not(have_etcd),
    ignore = "etcd (etcd-server) is not installed: the witness is not tested against a real etcd"
)]
fn an_orderly_shutdown_gives_the_claim_back() {
    let e = etcd();
    let mut a = Witness::new(Etcd::new(e.addr), "site-a", "vol3", 30);
    let mut b = Witness::new(Etcd::new(e.addr), "site-b", "vol3", 30);
    assert_eq!(*a.peer_lost(), Role::Sole);
    a.shutdown().unwrap();
    assert_eq!(
        *b.peer_lost(),
        Role::Sole,
        "the revoked lease took the claim with it"
    );
}

//! Port allocation for instances: ports come from a configured range (outside the kernel's
//! ephemeral range, so an outgoing connection never takes a port an instance is about to
//! bind), skipping ports already reserved by other instances and ports something else on
//! this machine is listening on.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;

use crate::LocalError;

/// Pick `count` free ports from `range`, avoiding `reserved`.
pub fn allocate(
    range: &RangeInclusive<u16>,
    reserved: &BTreeSet<u16>,
    count: usize,
) -> Result<Vec<u16>, LocalError> {
    let mut picked = Vec::with_capacity(count);
    for port in range.clone() {
        if picked.len() == count {
            break;
        }
        if reserved.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            picked.push(port);
        }
    }
    if picked.len() < count {
        return Err(LocalError::Ports(format!(
            "need {count} free port(s) in {}-{} but only {} are free ({} reserved by instances, \
             the rest in use by other programs); widen the port range in the config",
            range.start(),
            range.end(),
            picked.len(),
            reserved.iter().filter(|p| range.contains(p)).count()
        )));
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_reserved_and_busy_ports_and_says_when_short() {
        // A port held busy here, followed by three that are free right now (other programs
        // on this machine use ephemeral ports too: look until such a run is found).
        let (busy, p) = (0..200)
            .find_map(|_| {
                let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
                let p = busy.local_addr().ok()?.port();
                let free = (1..=3).all(|k| {
                    p.checked_add(k)
                        .is_some_and(|q| TcpListener::bind((Ipv4Addr::LOCALHOST, q)).is_ok())
                });
                free.then_some((busy, p))
            })
            .expect("a busy port followed by three free ones");
        let range = p..=p.saturating_add(3);
        let reserved: BTreeSet<u16> = [p.saturating_add(1)].into();
        let got = allocate(&range, &reserved, 2).unwrap();
        assert!(!got.contains(&p) && !got.contains(&(p + 1)), "{got:?}");
        let err = allocate(&range, &reserved, 3).unwrap_err().to_string();
        assert!(err.contains("need 3 free port(s)"), "{err}");
        drop(busy);
    }
}

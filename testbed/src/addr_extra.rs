//! More link and address operations: deleting addresses, bridges, announcing an address that
//! moved to this host (unsolicited Neighbor Advertisement, gratuitous ARP).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use futures_util::TryStreamExt as _;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use crate::Netns;

async fn index_of(handle: &Handle, name: &str) -> Result<u32, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await? {
        Some(link) => Ok(link.header.index),
        None => Err(rtnetlink::Error::RequestFailed),
    }
}

fn with_context(err: io::Error, what: String) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

impl Netns {
    /// Removes `addr` from interface `name`. Removing an address that is not there is an error.
    pub fn del_address(&self, name: &str, addr: IpAddr) -> io::Result<()> {
        self.netlink(|handle| async move {
            let index = index_of(&handle, name).await?;
            let mut found = handle
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(addr)
                .execute();
            let Some(message) = found.try_next().await? else {
                return Err(rtnetlink::Error::RequestFailed);
            };
            handle.address().del(message).execute().await
        })
        .map_err(|err| {
            with_context(
                err,
                format!("removing {addr} from {name} in {}", self.name()),
            )
        })
    }

    /// Creates bridge `name` (up).
    pub fn add_bridge(&self, name: &str) -> io::Result<()> {
        self.netlink(|handle| async move {
            handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
        })
        .map_err(|err| with_context(err, format!("creating bridge {name} in {}", self.name())))
    }

    /// Makes interface `port` a port of bridge `bridge`.
    pub fn set_controller(&self, port: &str, bridge: &str) -> io::Result<()> {
        self.netlink(|handle| async move {
            let bridge_index = index_of(&handle, bridge).await?;
            handle
                .link()
                .set(
                    LinkUnspec::new_with_name(port)
                        .controller(bridge_index)
                        .build(),
                )
                .execute()
                .await
        })
        .map_err(|err| with_context(err, format!("adding {port} to {bridge} in {}", self.name())))
    }

    /// The Ethernet address of interface `name`.
    pub fn mac_address(&self, name: &str) -> io::Result<[u8; 6]> {
        self.run(|| {
            let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
            addrs
                .filter(|a| a.interface_name == name)
                .filter_map(|a| {
                    a.address
                        .and_then(|s| s.as_link_addr().and_then(|l| l.addr()))
                })
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no MAC on {name}")))
        })
    }

    /// Tells the link that `addr` now lives on interface `name` of this namespace: an
    /// unsolicited Neighbor Advertisement with the Override flag (IPv6) or a gratuitous ARP
    /// request (IPv4). Neighbours that have an entry for `addr` update it at once.
    pub fn announce(&self, name: &str, addr: IpAddr) -> io::Result<()> {
        let mac = self.mac_address(name)?;
        let index = self.link_index(name)?;
        self.announce_from(index, mac, addr)
            .map_err(|err| with_context(err, format!("on {name}")))
    }

    /// [`Netns::announce`] with the interface's index and MAC address already known.
    pub fn announce_from(&self, index: u32, mac: [u8; 6], addr: IpAddr) -> io::Result<()> {
        self.run(|| match addr {
            IpAddr::V6(v6) => unsolicited_na(index, v6, mac),
            IpAddr::V4(v4) => gratuitous_arp(index, v4, mac),
        })
        .map_err(|err| with_context(err, format!("announcing {addr} in {}", self.name())))
    }
}

fn raw_socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2), checked before use.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_to<A>(fd: &OwnedFd, data: &[u8], addr: &A) -> io::Result<()> {
    // SAFETY: `data` and `addr` are live for the call, lengths as passed.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            0,
            (addr as *const A).cast(),
            size_of::<A>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn unsolicited_na(index: u32, target: Ipv6Addr, mac: [u8; 6]) -> io::Result<()> {
    let fd = raw_socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
    let hops: libc::c_int = 255;
    let ifindex = index as libc::c_int;
    for (name, value) in [
        (libc::IPV6_MULTICAST_HOPS, hops),
        (libc::IPV6_MULTICAST_IF, ifindex),
    ] {
        // SAFETY: an int option.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                name,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // Type 136, code 0, checksum (the kernel fills it for ICMPv6 raw sockets), flags O=1,
    // target, target link-layer address option.
    let mut msg = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    msg.extend_from_slice(&target.octets());
    msg.extend_from_slice(&[2, 1]);
    msg.extend_from_slice(&mac);
    // SAFETY: plain data, all-zero valid.
    let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    dst.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
    dst.sin6_scope_id = index;
    send_to(&fd, &msg, &dst)
}

fn gratuitous_arp(index: u32, addr: Ipv4Addr, mac: [u8; 6]) -> io::Result<()> {
    const ETH_P_ARP: u16 = 0x0806;
    let fd = raw_socket(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        i32::from(ETH_P_ARP.to_be()),
    )?;
    // Request with sender = target = addr: receivers treat it as gratuitous and override their
    // entry even within the ARP lock time.
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&addr.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&addr.octets());
    // SAFETY: plain data, all-zero valid.
    let mut dst: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    dst.sll_family = libc::AF_PACKET as u16;
    dst.sll_protocol = ETH_P_ARP.to_be();
    dst.sll_ifindex = index as i32;
    dst.sll_halen = 6;
    dst.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    send_to(&fd, &arp, &dst)
}

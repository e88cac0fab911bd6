//! Links and addresses, configured through rtnetlink from a thread inside the namespace (a
//! netlink socket acts on the namespace it was opened in).

use std::{future::Future, io, net::IpAddr, os::fd::AsRawFd};

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::address::AddressHeaderFlags;
use rtnetlink::{Handle, LinkUnspec, LinkVeth};

use crate::Netns;

impl Netns {
    /// Sets interface `name` up.
    pub fn set_link_up(&self, name: &str) -> io::Result<()> {
        self.netlink(|handle| async move {
            handle
                .link()
                .set(LinkUnspec::new_with_name(name).up().build())
                .execute()
                .await
        })
        .map_err(|err| context(err, format!("setting {name} up in {}", self.name())))
    }

    /// Adds `addr/prefix_len` to interface `name`. IPv6 addresses skip duplicate address
    /// detection (`nodad`) so they can be bound at once.
    pub fn add_address(&self, name: &str, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
        self.netlink(|handle| async move {
            let index = link_index(&handle, name).await?;
            let mut request = handle.address().add(index, addr, prefix_len);
            if addr.is_ipv6() {
                request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            }
            request.execute().await
        })
        .map_err(|err| {
            context(
                err,
                format!("adding {addr}/{prefix_len} to {name} in {}", self.name()),
            )
        })
    }

    /// The index of interface `name` in this namespace.
    pub fn link_index(&self, name: &str) -> io::Result<u32> {
        self.netlink(|handle| async move { link_index(&handle, name).await })
            .map_err(|err| context(err, format!("looking up {name} in {}", self.name())))
    }

    /// Runs a netlink conversation from a thread inside the namespace.
    pub(crate) fn netlink<F, Fut, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce(Handle) -> Fut + Send,
        Fut: Future<Output = Result<R, rtnetlink::Error>>,
        R: Send,
    {
        self.run(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?;
            runtime.block_on(async {
                let (connection, handle, _) = rtnetlink::new_connection()?;
                tokio::spawn(connection);
                f(handle).await.map_err(io::Error::other)
            })
        })
    }
}

/// Creates a veth pair: interface `a_name` in namespace `a`, its peer `b_name` in namespace `b`,
/// both up. The names only need to be unique inside their own namespace.
pub fn veth_pair(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> io::Result<()> {
    let b_fd = b.file().as_raw_fd();
    a.netlink(|handle| async move {
        handle
            .link()
            .add(LinkVeth::new(a_name, b_name).build())
            .execute()
            .await?;
        let peer = link_index(&handle, b_name).await?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(peer).setns_by_fd(b_fd).build())
            .execute()
            .await
    })
    .map_err(|err| {
        context(
            err,
            format!(
                "creating veth {a_name}@{} — {b_name}@{}",
                a.name(),
                b.name()
            ),
        )
    })?;
    a.set_link_up(a_name)?;
    b.set_link_up(b_name)
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await? {
        Some(link) => Ok(link.header.index),
        None => Err(rtnetlink::Error::RequestFailed),
    }
}

fn context(err: io::Error, what: String) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

//! The "do" half: executes [`Op`]s and dumps [`KernelState`] over netlink,
//! one set of sockets per namespace. Dumps and structural requests (links,
//! addresses, routes) go through rtnetlink; entry requests (FDB,
//! neighbours), the bulk, go batched through the `batch` module, FDB and
//! neighbours on two sockets in parallel.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use crate::batch;
use crate::netns::Raw;
use crate::plan::{
    BridgeState, KernelState, Mac, MacDisplay, NeighState, Op, TapState, VxlanState, BRIDGE, TAP,
    VXLAN,
};
use crate::NetError;

const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;
const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;
const EADDRNOTAVAIL: i32 = nix::errno::Errno::EADDRNOTAVAIL as i32;

/// How many times (100 ms apart) VXLAN creation is retried while the VNI
/// is still taken by a device being torn down.
const VXLAN_EEXIST_RETRIES: u32 = 30;

/// Counter making the daemon-side temporary VXLAN names unique.
static TMP_SEQ: AtomicU32 = AtomicU32::new(0);

/// Errno of a netlink error, if it is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn nl(network: &str, what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let network = network.to_string();
    let what = what.into();
    move |source| NetError::Netlink {
        network,
        what,
        source,
    }
}

/// Counts of entry operations that succeeded.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Applied {
    pub fdb_added: usize,
    pub fdb_removed: usize,
    pub fdb_replaced: usize,
    pub neigh_added: usize,
    pub neigh_removed: usize,
    pub neigh_replaced: usize,
}

/// Look a link up by name; `None` if it does not exist.
pub(crate) async fn link_by_name(
    h: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn index_of(network: &str, h: &Handle, name: &str) -> Result<u32, NetError> {
    match link_by_name(h, name)
        .await
        .map_err(nl(network, format!("look up {name}")))?
    {
        Some(m) => Ok(m.header.index),
        None => Err(NetError::DeviceMissing {
            network: network.to_string(),
            device: name.to_string(),
        }),
    }
}

fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_mtu(m: &LinkMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(v) => Some(*v),
            _ => None,
        })
        .unwrap_or(0)
}

fn link_mac(m: &LinkMessage) -> Mac {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(v) => <Mac>::try_from(v.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or_default()
}

fn link_gso_max_size(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::GsoMaxSize(g) => Some(*g),
        _ => None,
    })
}

fn link_controller(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(c) => Some(*c),
        _ => None,
    })
}

fn vxlan_state(m: &LinkMessage) -> VxlanState {
    let mut v = VxlanState {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        mtu: link_mtu(m),
        mac: link_mac(m),
        controller: None,
        vni: 0,
        local: None,
        port: 0,
        learning: true,
        proxy: false,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::Controller(c) => v.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(data)) = i {
                        for d in data {
                            match d {
                                InfoVxlan::Id(x) => v.vni = *x,
                                InfoVxlan::Local(x) => v.local = Some(*x),
                                InfoVxlan::Port(x) => v.port = *x,
                                InfoVxlan::Learning(x) => v.learning = *x,
                                InfoVxlan::Proxy(x) => v.proxy = *x,
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    v
}

fn v4_of(a: &AddressMessage) -> Option<Ipv4Net> {
    a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Address(IpAddr::V4(ip)) => Ipv4Net::new(*ip, a.header.prefix_len).ok(),
        _ => None,
    })
}

async fn bridge_addrs(h: &Handle, index: u32) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
    h.address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
}

fn neigh_dst(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // In AF_BRIDGE (FDB) messages the crate cannot know the
        // destination's family and leaves the raw bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
            <[u8; 4]>::try_from(raw.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn neigh_lladdr(m: &NeighbourMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(v) => <Mac>::try_from(v.as_slice()).ok(),
        _ => None,
    })
}

/// Dump what the kernel holds for one network namespace.
pub(crate) async fn dump(network: &str, h: &Handle) -> Result<KernelState, NetError> {
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl(network, "dump links"))?;
    let mut k = KernelState {
        namespace: true,
        ..Default::default()
    };
    for l in &links {
        match link_name(l) {
            Some(BRIDGE) => {
                let addrs = bridge_addrs(h, l.header.index)
                    .await
                    .map_err(nl(network, "dump addresses of br0"))?;
                k.bridge = Some(BridgeState {
                    index: l.header.index,
                    up: l.header.flags.contains(LinkFlags::Up),
                    mtu: link_mtu(l),
                    addrs: addrs.iter().filter_map(v4_of).collect(),
                });
            }
            Some(VXLAN) => k.vxlan = Some(vxlan_state(l)),
            Some(TAP) => {
                k.tap = Some(TapState {
                    up: l.header.flags.contains(LinkFlags::Up),
                    mtu: link_mtu(l),
                    controller: link_controller(l),
                })
            }
            _ => {}
        }
    }
    let Some(vx) = k.vxlan.as_ref().map(|v| v.index) else {
        return Ok(k);
    };
    // One dump at a time per socket: a second concurrent dump gets EBUSY.
    let fdb: Result<Vec<NeighbourMessage>, _> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await;
    let neigh: Result<Vec<NeighbourMessage>, _> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await;
    for m in fdb.map_err(nl(network, "dump fdb"))? {
        // VXLAN remote entries carry a destination; the bridge's own entries
        // for the port (its MAC, learned MACs) carry NDA_MASTER and none.
        let is_master = m
            .attributes
            .iter()
            .any(|a| matches!(a, NeighbourAttribute::Controller(_)));
        if m.header.ifindex != vx || is_master {
            continue;
        }
        if let (Some(mac), Some(dst)) = (neigh_lladdr(&m), neigh_dst(&m)) {
            k.fdb.entry(mac).or_default().push(dst);
        }
    }
    for m in neigh.map_err(nl(network, "dump neighbours"))? {
        if m.header.ifindex != vx {
            continue;
        }
        if let Some(ip) = neigh_dst(&m) {
            k.neigh.insert(
                ip,
                NeighState {
                    mac: neigh_lladdr(&m).unwrap_or_default(),
                    permanent: m.header.state == NeighbourState::Permanent,
                },
            );
        }
    }
    Ok(k)
}

/// MTU of the daemon-side interface that holds `local`, if any.
pub(crate) async fn underlay_mtu(own: &Handle, local: Ipv4Addr) -> Option<u32> {
    let addrs: Vec<AddressMessage> = own.address().get().execute().try_collect().await.ok()?;
    let index = addrs
        .iter()
        .find(|a| v4_of(a).is_some_and(|n| n.addr() == local))?
        .header
        .index;
    let link = own
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .ok()??;
    Some(link_mtu(&link))
}

/// Where the ops run: the network's namespace (file and connection) and the
/// daemon's own namespace (where VXLAN devices are born).
pub(crate) struct Target<'a> {
    pub network: &'a str,
    pub ns_path: &'a Path,
    pub net: &'a Handle,
    pub raw: &'a [Raw; 2],
    pub own: &'a Handle,
}

/// Apply a plan. Structural ops run in order; then deletions, then
/// additions, each as batches on the raw sockets (FDB and neighbours in
/// parallel). `CreateNamespace` is the caller's job. Every entry is
/// attempted and counted into `applied`; if some fail, the first failure is
/// returned (with the count) after the rest were applied.
pub(crate) async fn apply(
    t: &Target<'_>,
    ops: &[Op],
    applied: &mut Applied,
) -> Result<(), NetError> {
    for op in ops.iter().filter(|o| !o.is_entry()) {
        structural(t, *op).await?;
    }
    let dels: Vec<Op> = ops.iter().copied().filter(Op::is_deletion).collect();
    let adds: Vec<Op> = ops
        .iter()
        .copied()
        .filter(|o| o.is_entry() && !o.is_deletion())
        .collect();
    if dels.is_empty() && adds.is_empty() {
        return Ok(());
    }
    let vx = index_of(t.network, t.net, VXLAN).await?;
    let mut failures = Vec::new();
    for batch in [dels, adds] {
        let (fdb, neigh): (Vec<Op>, Vec<Op>) = batch.into_iter().partition(|o| {
            matches!(
                o,
                Op::AddFdb { .. } | Op::ReplaceFdb { .. } | Op::DelFdb { .. }
            )
        });
        let (a, b) = futures::join!(
            run_raw(t, t.raw[0].clone(), vx, fdb),
            run_raw(t, t.raw[1].clone(), vx, neigh)
        );
        for (op, r) in a?.into_iter().chain(b?) {
            match r {
                Ok(()) => match op {
                    Op::AddFdb { .. } => applied.fdb_added += 1,
                    Op::ReplaceFdb { .. } => applied.fdb_replaced += 1,
                    Op::DelFdb { .. } => applied.fdb_removed += 1,
                    Op::AddNeigh { .. } => applied.neigh_added += 1,
                    Op::ReplaceNeigh { .. } => applied.neigh_replaced += 1,
                    Op::DelNeigh { .. } => applied.neigh_removed += 1,
                    _ => {}
                },
                Err(errno) => failures.push(NetError::Entry {
                    network: t.network.to_string(),
                    what: op.to_string(),
                    source: std::io::Error::from_raw_os_error(errno),
                }),
            }
        }
    }
    let failed = failures.len();
    match failures.into_iter().next() {
        None => Ok(()),
        Some(first) if failed == 1 => Err(first),
        Some(first) => Err(NetError::Entries {
            network: t.network.to_string(),
            failed,
            first: Box::new(first),
        }),
    }
}

type EntryResults = Vec<(Op, Result<(), i32>)>;

/// Program entry ops on one raw socket from a blocking thread. Deleting
/// what is already gone counts as done; an add that meets an entry created
/// since the dump is retried as a replace, so the result converges.
async fn run_raw(
    t: &Target<'_>,
    raw: Raw,
    vx: u32,
    ops: Vec<Op>,
) -> Result<EntryResults, NetError> {
    if ops.is_empty() {
        return Ok(Vec::new());
    }
    let io = |source| NetError::Io {
        path: t.ns_path.to_path_buf(),
        op: "batch netlink requests",
        source,
    };
    tokio::task::spawn_blocking(move || -> std::io::Result<EntryResults> {
        let mut sock = raw
            .lock()
            .map_err(|_| std::io::Error::other("netlink batch socket lock poisoned"))?;
        let (ops, mut msgs): (Vec<Op>, Vec<_>) = ops
            .into_iter()
            .filter_map(|op| batch::entry_request(vx, op).map(|m| (op, m)))
            .unzip();
        let mut results: Vec<Result<(), i32>> = vec![Ok(()); ops.len()];
        let mut retry = Vec::new();
        for (i, errno) in sock.run(&mut msgs)? {
            let Some(op) = ops.get(i) else { continue };
            let is_add = matches!(op, Op::AddFdb { .. } | Op::AddNeigh { .. });
            if errno == EEXIST && is_add {
                retry.push(i);
            } else if !(errno == ENOENT && op.is_deletion()) {
                if let Some(r) = results.get_mut(i) {
                    *r = Err(errno);
                }
            }
        }
        if !retry.is_empty() {
            let mut again: Vec<_> = retry
                .iter()
                .filter_map(|i| {
                    ops.get(*i)
                        .and_then(|op| batch::entry_request(vx, batch::as_replace(*op)))
                })
                .collect();
            for (j, errno) in sock.run(&mut again)? {
                if let Some(r) = retry.get(j).and_then(|i| results.get_mut(*i)) {
                    *r = Err(errno);
                }
            }
        }
        Ok(ops.into_iter().zip(results).collect())
    })
    .await
    .map_err(|e| NetError::Thread {
        path: t.ns_path.to_path_buf(),
        reason: e.to_string(),
    })?
    .map_err(io)
}

async fn structural(t: &Target<'_>, op: Op) -> Result<(), NetError> {
    let what = op.to_string();
    let net = t.net;
    let err = || nl(t.network, what.clone());
    match op {
        Op::CreateNamespace => Ok(()),
        Op::CreateBridge { mtu } => net
            .link()
            .add(LinkBridge::new(BRIDGE).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(err()),
        Op::AddBridgeAddr(a) => {
            let br = index_of(t.network, net, BRIDGE).await?;
            match net
                .address()
                .add(br, IpAddr::V4(a.addr()), a.prefix_len())
                .execute()
                .await
            {
                Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
                r => r.map_err(err()),
            }
        }
        Op::DelBridgeAddr(a) => {
            let br = index_of(t.network, net, BRIDGE).await?;
            let addrs = bridge_addrs(net, br).await.map_err(err())?;
            for m in addrs.into_iter().filter(|m| v4_of(m) == Some(a)) {
                match net.address().del(m).execute().await {
                    Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {}
                    r => r.map_err(err())?,
                }
            }
            Ok(())
        }
        Op::DeleteVxlan => {
            let vx = index_of(t.network, net, VXLAN).await?;
            net.link().del(vx).execute().await.map_err(err())
        }
        Op::CreateVxlan {
            vni,
            local,
            port,
            mtu,
        } => create_vxlan(t, vni, local, port, mtu).await,
        Op::SetMtu { device, mtu } => {
            let i = index_of(t.network, net, &device.to_string()).await?;
            net.link()
                .set(LinkUnspec::new_with_index(i).mtu(mtu).build())
                .execute()
                .await
                .map_err(err())
        }
        Op::SetUp(device) => {
            let i = index_of(t.network, net, &device.to_string()).await?;
            net.link()
                .set(LinkUnspec::new_with_index(i).up().build())
                .execute()
                .await
                .map_err(err())
        }
        Op::AttachVxlan | Op::AttachTap => {
            let dev = if op == Op::AttachTap { TAP } else { VXLAN };
            let br = index_of(t.network, net, BRIDGE).await?;
            let vx = index_of(t.network, net, dev).await?;
            if op == Op::AttachTap {
                // Its TSO frames must seal into one UDP datagram; the
                // bridge carries the limit to the workloads' devices (see
                // `attach`), whose TCP stacks size their frames by it.
                for i in [vx, br] {
                    let gso = LinkAttribute::GsoMaxSize(crate::plan::ENCRYPTED_GSO_MAX_SIZE);
                    net.link()
                        .set(
                            LinkUnspec::new_with_index(i)
                                .append_extra_attribute(gso)
                                .build(),
                        )
                        .execute()
                        .await
                        .map_err(err())?;
                }
            }
            net.link()
                .set(LinkUnspec::new_with_index(vx).controller(br).up().build())
                .execute()
                .await
                .map_err(err())
        }
        Op::DelFdb { .. }
        | Op::DelNeigh { .. }
        | Op::AddFdb { .. }
        | Op::ReplaceFdb { .. }
        | Op::AddNeigh { .. }
        | Op::ReplaceNeigh { .. } => Ok(()),
    }
}

/// Create `vx0` so that its UDP socket lives in the daemon's namespace (the
/// underlay): the device is created here under a unique temporary name,
/// then moved into the network namespace and renamed in the same request
/// (the kernel keeps the socket in the namespace the device was created
/// in), then enslaved to `br0` and brought up.
async fn create_vxlan(
    t: &Target<'_>,
    vni: u32,
    local: Ipv4Addr,
    port: u16,
    mtu: u32,
) -> Result<(), NetError> {
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed) & 0xffff;
    let tmp = format!("shv{vni:06x}{seq:04x}");
    let what =
        format!("create {tmp} (vni {vni} local {local} dstport {port}) in the daemon namespace");
    // EEXIST: a device with this VNI is still registered in the daemon's
    // namespace, typically in a namespace the kernel is still tearing down
    // (that is asynchronous). Wait a little for it to go.
    let mut tries = 0;
    loop {
        let r = t
            .own
            .link()
            .add(
                LinkVxlan::new(&tmp, vni)
                    .local(local)
                    .port(port)
                    .learning(false)
                    .proxy(true)
                    .mtu(mtu)
                    .build(),
            )
            .execute()
            .await;
        match r {
            Err(e) if errno(&e) == Some(EEXIST) && tries < VXLAN_EEXIST_RETRIES => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            r => {
                r.map_err(nl(t.network, what))?;
                break;
            }
        }
    }
    move_in(t, &tmp, VXLAN).await?;
    let br = index_of(t.network, t.net, BRIDGE).await?;
    let vx = index_of(t.network, t.net, VXLAN).await?;
    t.net
        .link()
        .set(LinkUnspec::new_with_index(vx).controller(br).up().build())
        .execute()
        .await
        .map_err(nl(t.network, format!("attach {VXLAN} to {BRIDGE}")))
}

/// Move device `tmp` of the daemon's namespace into the network namespace
/// as `name` (one request); on failure the device is deleted.
async fn move_in(t: &Target<'_>, tmp: &str, name: &str) -> Result<(), NetError> {
    let moved = async {
        let idx = index_of("daemon", t.own, tmp).await?;
        let f = std::fs::File::open(t.ns_path).map_err(|source| NetError::Io {
            path: t.ns_path.to_path_buf(),
            op: "open namespace file",
            source,
        })?;
        t.own
            .link()
            .set(
                LinkUnspec::new_with_index(idx)
                    .setns_by_fd(f.as_raw_fd())
                    .name(name.to_string())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(
                t.network,
                format!("move {tmp} into the namespace as {name}"),
            ))?;
        drop(f);
        Ok::<(), NetError>(())
    }
    .await;
    if moved.is_err() {
        if let Ok(Some(m)) = link_by_name(t.own, tmp).await {
            let _ = t.own.link().del(m.header.index).execute().await;
        }
    }
    moved
}

/// Hand an encrypted network the TAP device `tmp` (created by the data
/// path in the daemon's namespace): a previous `dp0` goes, `tmp` moves in
/// as `dp0`, enslaved to `br0` and up.
pub(crate) async fn adopt_tap(t: &Target<'_>, tmp: &str) -> Result<(), NetError> {
    delete_link(t.network, t.net, TAP).await?;
    move_in(t, tmp, TAP).await?;
    structural(t, Op::AttachTap).await
}

/// Delete a device by name if it exists.
pub(crate) async fn delete_link(network: &str, h: &Handle, name: &str) -> Result<bool, NetError> {
    match link_by_name(h, name)
        .await
        .map_err(nl(network, format!("look up {name}")))?
    {
        Some(m) => match h.link().del(m.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(nl(network, format!("delete {name}"))(e)),
        },
        None => Ok(false),
    }
}

/// Host-side veth name for a workload MAC: unique inside the network
/// namespace because MACs are allocated uniquely per network.
pub(crate) fn veth_names(mac: Mac) -> (String, String) {
    let tail = format!("{:02x}{:02x}{:02x}{:02x}", mac[2], mac[3], mac[4], mac[5]);
    (format!("ve{tail}"), format!("vp{tail}"))
}

/// Create the workload's veth pair: host end on `br0`, peer moved into the
/// workload namespace as `ifname` with the MAC and MTU, then configured
/// there (`lo` and `ifname` up, address, and the default route via
/// `gateway` when `default_route`) through `workload`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn attach(
    network: &str,
    net: &Handle,
    workload_path: &Path,
    workload: &Handle,
    ifname: &str,
    ip: Ipv4Net,
    mac: Mac,
    gateway: Ipv4Addr,
    default_route: bool,
) -> Result<String, NetError> {
    let (host, peer) = veth_names(mac);
    // A leftover pair for the same MAC belongs to a workload that is gone.
    delete_link(network, net, &host).await?;
    delete_link(network, net, &peer).await?;
    let br = match link_by_name(net, BRIDGE)
        .await
        .map_err(nl(network, format!("look up {BRIDGE}")))?
    {
        Some(m) => m,
        None => {
            return Err(NetError::DeviceMissing {
                network: network.to_string(),
                device: BRIDGE.to_string(),
            })
        }
    };
    let mtu = link_mtu(&br);
    net.link()
        .add(LinkVeth::new(&host, &peer).mtu(mtu).build())
        .execute()
        .await
        .map_err(nl(network, format!("create veth {host}/{peer}")))?;
    let configured = async {
        let pi = index_of(network, net, &peer).await?;
        let f = std::fs::File::open(workload_path).map_err(|source| NetError::Io {
            path: workload_path.to_path_buf(),
            op: "open workload namespace",
            source,
        })?;
        // The workload's TCP stack sizes its TSO frames by its device:
        // no larger than what the bridge can pass on (an encrypted
        // network's `dp0` takes at most 60,000).
        let mut moved = LinkUnspec::new_with_index(pi)
            .setns_by_fd(f.as_raw_fd())
            .name(ifname)
            .address(mac.to_vec())
            .mtu(mtu);
        if let Some(gso) = link_gso_max_size(&br).filter(|g| *g < 65_536) {
            moved = moved.append_extra_attribute(LinkAttribute::GsoMaxSize(gso));
        }
        net.link().set(moved.build()).execute().await.map_err(nl(
            network,
            format!(
                "move {peer} into {} as {ifname} (mac {})",
                workload_path.display(),
                MacDisplay(mac)
            ),
        ))?;
        drop(f);
        let hi = index_of(network, net, &host).await?;
        net.link()
            .set(
                LinkUnspec::new_with_index(hi)
                    .controller(br.header.index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(network, format!("attach {host} to {BRIDGE}")))?;
        let wname = workload_path.display().to_string();
        let wl = |what: String| nl(&wname, what);
        for dev in ["lo", ifname] {
            let i = index_of(&wname, workload, dev).await?;
            workload
                .link()
                .set(LinkUnspec::new_with_index(i).up().build())
                .execute()
                .await
                .map_err(wl(format!("set {dev} up")))?;
        }
        let e0 = index_of(&wname, workload, ifname).await?;
        match workload
            .address()
            .add(e0, IpAddr::V4(ip.addr()), ip.prefix_len())
            .execute()
            .await
        {
            Err(e) if errno(&e) == Some(EEXIST) => {}
            r => r.map_err(wl(format!("add address {ip} on {ifname}")))?,
        }
        if default_route {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(e0)
                .build();
            match workload.route().add(route).execute().await {
                Err(e) if errno(&e) == Some(EEXIST) => {}
                r => r.map_err(wl(format!("add default route via {gateway} dev {ifname}")))?,
            }
        }
        Ok::<(), NetError>(())
    }
    .await;
    match configured {
        Ok(()) => Ok(host),
        Err(e) => {
            let _ = delete_link(network, net, &host).await;
            Err(e)
        }
    }
}

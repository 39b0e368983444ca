//! Pod network namespaces and their links made in-process, through rtnetlink, instead of
//! three `ip` processes per pod: on this kind of machine each exec of a dynamically
//! linked program costs about 2 ms of CPU before `main` (the loader's CPU probing), so
//! under a burst of pod starts the `ip` processes were a quarter of the node's CPU.
//!
//! What is done is what `ip netns add` and `ip link add … type veth peer name eth0 netns
//! …` do: a namespace is a bind mount of a thread's `/proc/thread-self/ns/net` on
//! `/run/netns/<name>` (kept shared, so later mount namespaces see it), and links,
//! addresses and routes are RTM_NEW* requests, each acknowledged.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

// From <linux/rtnetlink.h>, <linux/netlink.h>, <linux/if_link.h>, <linux/veth.h>:
// part of the kernel's ABI.
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELNEIGH: u16 = 29;
const NDA_DST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 1;

/// One netlink message being built: a header, a fixed part, then attributes.
struct Message {
    buf: Vec<u8>,
    /// Where each open nested attribute starts.
    nests: Vec<usize>,
}

impl Message {
    fn new(kind: u16, flags: u16) -> Self {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        Self { buf, nests: Vec::new() }
    }

    fn raw(mut self, bytes: &[u8]) -> Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        self.pad();
        self.buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self
    }

    fn name(self, kind: u16, name: &str) -> Self {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data)
    }

    fn open(mut self, kind: u16) -> Self {
        self.pad();
        self.nests.push(self.buf.len());
        self.attr(kind, &[])
    }

    fn close(mut self) -> Self {
        self.pad();
        let start = self.nests.pop().expect("a nest is open");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        self.pad();
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// `struct ifinfomsg` asking for `flags` (of those in `change`) on link `index`.
fn ifinfo(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// A route netlink socket, bound to the network namespace its thread was in when opened.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) }, seq: 0 })
    }

    /// Sends `msg` and waits for its acknowledgement; the index of a link the answer
    /// describes (RTM_GETLINK), if any.
    fn call(&mut self, msg: Message) -> io::Result<Option<i32>> {
        self.seq += 1;
        let bytes = msg.finish(self.seq);
        // SAFETY: `bytes` is a valid buffer of its length; the kernel is the peer (zeroed
        // address of family AF_NETLINK, pid 0).
        let sent = unsafe {
            let mut to: libc::sockaddr_nl = std::mem::zeroed();
            to.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut index = None;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // SAFETY: receiving into a buffer of its own length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut at = 0;
            let n = n as usize;
            while at + 16 <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap());
                if len < 16 || at + len > n {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "a truncated netlink answer"));
                }
                let body = &buf[at + 16..at + len];
                if seq == self.seq {
                    match kind {
                        NLMSG_ERROR if body.len() >= 4 => {
                            let code = i32::from_ne_bytes(body[0..4].try_into().unwrap());
                            return if code == 0 { Ok(index) } else { Err(io::Error::from_raw_os_error(-code)) };
                        }
                        RTM_NEWLINK if body.len() >= 8 => {
                            index = Some(i32::from_ne_bytes(body[4..8].try_into().unwrap()));
                        }
                        _ => {}
                    }
                }
                at += (len + 3) & !3;
            }
        }
    }

    /// The index of link `name` in this socket's namespace.
    pub fn index(&mut self, name: &str) -> io::Result<i32> {
        let msg = Message::new(RTM_GETLINK, 0).raw(&ifinfo(0, 0, 0)).name(IFLA_IFNAME, name);
        self.call(msg)?.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link {name}")))
    }

    /// Deletes link `name` (a veth goes with its peer, at once).
    pub fn delete(&mut self, name: &str) -> io::Result<()> {
        self.call(Message::new(RTM_DELLINK, 0).raw(&ifinfo(0, 0, 0)).name(IFLA_IFNAME, name)).map(|_| ())
    }

    /// Sets link `name` up.
    pub fn up(&mut self, name: &str) -> io::Result<()> {
        self.call(Message::new(RTM_NEWLINK, 0).raw(&ifinfo(0, IFF_UP, IFF_UP)).name(IFLA_IFNAME, name)).map(|_| ())
    }

    /// Link `name` gives itself no IPv6 address when it comes up (`ip link set … addrgenmode
    /// none`). IPv6 stays on (a pod's `::1`, sockets bound to `::`), but a pod's link does
    /// not announce a link-local address: each one's duplicate address detection and
    /// multicast listener reports went to every port of the node's bridge, which under a
    /// burst of 50 new pods a node was work squared and 5% of the machine's CPU.
    pub fn no_ipv6_address(&mut self, name: &str) -> io::Result<()> {
        let msg = Message::new(RTM_NEWLINK, 0)
            .raw(&ifinfo(0, 0, 0))
            .name(IFLA_IFNAME, name)
            .open(IFLA_AF_SPEC)
            .open(libc::AF_INET6 as u16)
            .attr(IFLA_INET6_ADDR_GEN_MODE, &[IN6_ADDR_GEN_MODE_NONE])
            .close()
            .close();
        self.call(msg).map(|_| ())
    }

    /// A veth pair: `host` here, enslaved to link `master`; `peer` in the namespace
    /// `netns` (a descriptor of it); both down.
    pub fn veth(&mut self, host: &str, master: i32, peer: &str, netns: &OwnedFd) -> io::Result<()> {
        let msg = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
            .raw(&ifinfo(0, 0, 0))
            .name(IFLA_IFNAME, host)
            .attr(IFLA_MASTER, &(master as u32).to_ne_bytes())
            .open(IFLA_LINKINFO)
            .attr(IFLA_INFO_KIND, b"veth")
            .open(IFLA_INFO_DATA)
            .open(VETH_INFO_PEER)
            .raw(&ifinfo(0, 0, 0))
            .name(IFLA_IFNAME, peer)
            .attr(IFLA_NET_NS_FD, &(netns.as_raw_fd() as u32).to_ne_bytes())
            .close()
            .close()
            .close();
        self.call(msg).map(|_| ())
    }

    /// A link `name` of `kind` (`bridge`, `dummy`, …) with nothing attached, up.
    pub fn link(&mut self, name: &str, kind: &str) -> io::Result<()> {
        let msg = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
            .raw(&ifinfo(0, IFF_UP, IFF_UP))
            .name(IFLA_IFNAME, name)
            .open(IFLA_LINKINFO)
            .attr(IFLA_INFO_KIND, kind.as_bytes())
            .close();
        self.call(msg).map(|_| ())
    }

    /// Gives link `index` the address `ip/prefix`.
    pub fn address(&mut self, index: i32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        self.call(address_message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, index, ip, prefix)).map(|_| ())
    }

    /// Takes `ip/prefix` off link `index`.
    pub fn remove_address(&mut self, index: i32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        self.call(address_message(RTM_DELADDR, 0, index, ip, prefix)).map(|_| ())
    }

    /// Forgets what link `index` knew of `ip`'s hardware address (its neighbour entry),
    /// if anything: an address given to a new pod has a new MAC, and until a cached
    /// entry for the old one aged out (15–45 s, then probes) the host's packets to the
    /// address went nowhere.
    pub fn forget_neighbour(&mut self, index: i32, ip: Ipv4Addr) -> io::Result<()> {
        let mut nd = [0u8; 12];
        nd[0] = libc::AF_INET as u8;
        nd[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
        match self.call(Message::new(RTM_DELNEIGH, 0).raw(&nd).attr(NDA_DST, &ip.octets())) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The default route, through `gateway`.
    pub fn default_route(&mut self, gateway: Ipv4Addr) -> io::Result<()> {
        let rt = [libc::AF_INET as u8, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST, 0, 0, 0, 0];
        let msg = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL).raw(&rt).attr(RTA_GATEWAY, &gateway.octets());
        self.call(msg).map(|_| ())
    }
}

fn address_message(kind: u16, flags: u16, index: i32, ip: Ipv4Addr, prefix: u8) -> Message {
    let mut ifa = [0u8; 8];
    ifa[0] = libc::AF_INET as u8;
    ifa[1] = prefix;
    ifa[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
    Message::new(kind, flags).raw(&ifa).attr(IFA_LOCAL, &ip.octets()).attr(IFA_ADDRESS, &ip.octets())
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Keeps the folder of named namespaces a shared mount, as `ip` does, so a namespace
/// mounted there later shows in mount namespaces made before.
fn shared_folder(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let d = cstr(dir)?;
    let none = c"none";
    // SAFETY: mount(2) with valid NUL-terminated strings.
    let shared = || unsafe {
        libc::mount(c"".as_ptr(), d.as_ptr(), none.as_ptr(), libc::MS_SHARED | libc::MS_REC, std::ptr::null())
    };
    if shared() == 0 {
        return Ok(());
    }
    if io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    // Not a mount point yet: made one by binding it onto itself.
    // SAFETY: as above.
    check(unsafe {
        libc::mount(d.as_ptr(), d.as_ptr(), none.as_ptr(), libc::MS_BIND | libc::MS_REC, std::ptr::null())
    })?;
    check(shared())
}

/// Runs `f` on a thread of its own inside the named namespace at `path`, made first if
/// it is not there (a fresh namespace, as `ip netns add`). The thread ends with `f`, so
/// no other work ever runs in the pod's namespace.
pub fn in_namespace<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = path.to_path_buf();
    std::thread::spawn(move || -> io::Result<T> {
        if let Ok(ns) = std::fs::File::open(&path) {
            // SAFETY: setns on a descriptor held open; it moves only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                return f();
            }
            // A file left without its mount (a crash between the two): made again.
            drop(ns);
            let _ = std::fs::remove_file(&path);
        }
        shared_folder(path.parent().unwrap_or(Path::new("/run/netns")))?;
        std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        let target = cstr(&path)?;
        // SAFETY: unshare(2) of this thread's network namespace, then mount(2) with valid
        // strings; the thread ends after `f`, so nothing else runs in the namespace.
        let made = unsafe {
            check(libc::unshare(libc::CLONE_NEWNET)).and_then(|_| {
                check(libc::mount(
                    c"/proc/thread-self/ns/net".as_ptr(),
                    target.as_ptr(),
                    c"none".as_ptr(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))
            })
        };
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Removes the named namespace at `path` (as `ip netns del`): it goes once nothing runs
/// in it any more.
pub fn remove_namespace(path: &Path) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: umount2(2) with a valid path.
    if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A descriptor of this thread's network namespace.
pub fn this_namespace() -> io::Result<OwnedFd> {
    Ok(std::fs::File::open("/proc/thread-self/ns/net")?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_laid_out_as_the_kernel_reads_them() {
        let msg = Message::new(RTM_NEWLINK, NLM_F_CREATE)
            .raw(&ifinfo(0, IFF_UP, IFF_UP))
            .name(IFLA_IFNAME, "ab")
            .open(IFLA_LINKINFO)
            .attr(IFLA_INFO_KIND, b"veth")
            .close()
            .finish(7);
        assert!(msg.len().is_multiple_of(4));
        assert_eq!(u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize, msg.len());
        assert_eq!(u16::from_ne_bytes(msg[6..8].try_into().unwrap()), NLM_F_CREATE | NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32::from_ne_bytes(msg[8..12].try_into().unwrap()), 7);
        // ifname: len 4 + "ab\0" = 7, padded to 8.
        assert_eq!(&msg[32..36], &[7, 0, IFLA_IFNAME as u8, 0]);
        assert_eq!(&msg[36..39], b"ab\0");
        // The nest holds its one attribute: 4 + (4 + 4).
        assert_eq!(&msg[40..44], &[12, 0, IFLA_LINKINFO as u8, 0]);
        assert_eq!(&msg[44..52], &[8, 0, IFLA_INFO_KIND as u8, 0, b'v', b'e', b't', b'h']);
    }

    #[test]
    fn a_link_that_is_not_there_is_an_error_from_the_kernel() {
        let mut nl = Netlink::open().expect("a route netlink socket");
        assert_eq!(nl.index("lo").unwrap(), 1);
        let e = nl.index("keelson-none0").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    }
}

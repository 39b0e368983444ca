//! Connect-time balancing in the kernel: a cgroup `connect4` eBPF program that, when any
//! process on the machine connects a TCP socket to a Service address this node serves,
//! rewrites the destination to one of the Service's endpoints (round robin), as Cilium's
//! socket-level load balancer does. The connection then runs straight to the pod, with
//! no proxy between: nothing is copied and nothing is translated per packet.
//!
//! It only accelerates: the user-space listeners stay for what it does not carry
//! (connections from other machines to node ports, UDP, `ClientIP` affinity, Services
//! with more than [`MAX_ENDPOINTS`] endpoints, and agents that are not root). What it
//! gives up is the user-space path's retry of a refusing endpoint: the kernel connects
//! once to the endpoint it picked, from the ready ones.
//!
//! The program is attached through a BPF link on the cgroup v2 root, so it is detached
//! when the link's descriptor closes: when this is dropped, and when the agent dies,
//! even by `kill -9`. Several agents on one machine each attach their own; the first
//! that knows an address rewrites it, and the next sees a pod address it passes.
//!
//! The program is a few instructions assembled here, so no compiler for the BPF
//! target is needed to build keelson.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;

/// The most endpoints one address balances over in the kernel; a Service with more
/// stays on the user-space path.
pub const MAX_ENDPOINTS: usize = 256;
/// The most addresses one node balances in the kernel.
const MAX_ADDRESSES: u32 = 16_384;

// bpf(2) commands, map, program and attach types, from <linux/bpf.h>.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_HASH: u32 = 1;
/// Elements are allocated as they are added (2 KiB each), not all up front.
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;

/// A map element: the Service address (IPv4 and port, both in network order, as the
/// program reads them from `struct bpf_sock_addr`).
const KEY_SIZE: usize = 8;
/// A map value: the endpoint count, the round-robin counter, then the endpoints.
const VALUE_SIZE: usize = 8 + 8 * MAX_ENDPOINTS;

/// The key or endpoint slot for `addr`: the address's octets, then the port in
/// network order padded to 32 bits (`user_port` is a 32-bit field holding a
/// network-order 16-bit port).
fn encode(addr: SocketAddrV4) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&addr.ip().octets());
    out[4..6].copy_from_slice(&addr.port().to_be_bytes());
    out
}

/// The map value for `endpoints` (at most [`MAX_ENDPOINTS`]).
fn value(endpoints: &[SocketAddrV4]) -> Vec<u8> {
    let mut out = vec![0u8; VALUE_SIZE];
    out[..4].copy_from_slice(&(endpoints.len() as u32).to_ne_bytes());
    for (i, e) in endpoints.iter().enumerate() {
        out[8 + 8 * i..16 + 8 * i].copy_from_slice(&encode(*e));
    }
    out
}

/// One eBPF instruction, as `struct bpf_insn` lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct Insn {
    code: u8,
    /// Destination register in the low nibble, source in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

/// The program's assembler: opcodes, and jumps to one shared exit ("pass").
mod asm {
    use super::Insn;

    const LD: u8 = 0x00;
    const LDX: u8 = 0x01;
    const STX: u8 = 0x03;
    const ALU: u8 = 0x04;
    const JMP: u8 = 0x05;
    const ALU64: u8 = 0x07;
    const W: u8 = 0x00;
    const DW: u8 = 0x18;
    const IMM: u8 = 0x00;
    const MEM: u8 = 0x60;
    const ATOMIC: u8 = 0xc0;
    const K: u8 = 0x00;
    const X: u8 = 0x08;
    pub const ADD: u8 = 0x00;
    pub const LSH: u8 = 0x60;
    pub const MOD: u8 = 0x90;
    pub const MOV: u8 = 0xb0;
    pub const JEQ: u8 = 0x10;
    pub const JGE: u8 = 0x30;
    pub const JNE: u8 = 0x50;
    const CALL: u8 = 0x80;
    const EXIT: u8 = 0x90;
    const FETCH: i32 = 0x01;
    const PSEUDO_MAP_FD: u8 = 1;

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn { code, regs: (src << 4) | dst, off, imm }
    }

    /// A program being written; `pass` jumps are patched to the final exit.
    #[derive(Default)]
    pub struct Program {
        pub insns: Vec<Insn>,
        pass_jumps: Vec<usize>,
    }

    impl Program {
        pub fn alu64_imm(&mut self, op: u8, dst: u8, imm: i32) {
            self.insns.push(insn(ALU64 | op | K, dst, 0, 0, imm));
        }
        pub fn alu64_reg(&mut self, op: u8, dst: u8, src: u8) {
            self.insns.push(insn(ALU64 | op | X, dst, src, 0, 0));
        }
        pub fn alu32_reg(&mut self, op: u8, dst: u8, src: u8) {
            self.insns.push(insn(ALU | op | X, dst, src, 0, 0));
        }
        /// `dst = *(u32 *)(src + off)`.
        pub fn load32(&mut self, dst: u8, src: u8, off: i16) {
            self.insns.push(insn(LDX | MEM | W, dst, src, off, 0));
        }
        /// `*(u32 *)(dst + off) = src`.
        pub fn store32(&mut self, dst: u8, off: i16, src: u8) {
            self.insns.push(insn(STX | MEM | W, dst, src, off, 0));
        }
        /// `src = atomic_fetch_add((u32 *)(dst + off), src)`.
        pub fn fetch_add32(&mut self, dst: u8, off: i16, src: u8) {
            self.insns.push(insn(STX | ATOMIC | W, dst, src, off, ADD as i32 | FETCH));
        }
        /// `dst = the map with descriptor fd` (two instruction slots).
        pub fn load_map(&mut self, dst: u8, fd: i32) {
            self.insns.push(insn(LD | IMM | DW, dst, PSEUDO_MAP_FD, 0, fd));
            self.insns.push(insn(0, 0, 0, 0, 0));
        }
        pub fn call(&mut self, helper: i32) {
            self.insns.push(insn(JMP | CALL, 0, 0, 0, helper));
        }
        /// `if dst <op> imm goto pass`.
        pub fn pass_if(&mut self, op: u8, dst: u8, imm: i32) {
            self.pass_jumps.push(self.insns.len());
            self.insns.push(insn(JMP | op | K, dst, 0, 0, imm));
        }
        /// Ends with `pass: r0 = 1 (let the connect go on); exit`.
        pub fn finish(mut self) -> Vec<Insn> {
            let pass = self.insns.len();
            for at in std::mem::take(&mut self.pass_jumps) {
                self.insns[at].off = (pass - at - 1) as i16;
            }
            self.alu64_imm(MOV, 0, 1);
            self.insns.push(insn(JMP | EXIT, 0, 0, 0, 0));
            self.insns
        }
    }
}

/// The `connect4` program over the map `map`: a TCP connect to an address in the map
/// goes to the next of its endpoints instead.
fn program(map: i32) -> Vec<Insn> {
    use asm::*;
    // Offsets in struct bpf_sock_addr.
    const USER_IP4: i16 = 4;
    const USER_PORT: i16 = 24;
    const PROTOCOL: i16 = 36;
    const MAP_LOOKUP_ELEM: i32 = 1;
    const CTX: u8 = 6;
    const FP: u8 = 10;
    let mut p = Program::default();
    p.alu64_reg(MOV, CTX, 1);
    p.load32(2, CTX, PROTOCOL);
    p.pass_if(JNE, 2, libc::IPPROTO_TCP);
    // The key on the stack: the address asked for.
    p.load32(2, CTX, USER_IP4);
    p.store32(FP, -8, 2);
    p.load32(2, CTX, USER_PORT);
    p.store32(FP, -4, 2);
    p.load_map(1, map);
    p.alu64_reg(MOV, 2, FP);
    p.alu64_imm(ADD, 2, -8);
    p.call(MAP_LOOKUP_ELEM);
    p.pass_if(JEQ, 0, 0);
    // r7: the value; r8: its endpoint count; r1: the counter's old value, then the slot.
    p.alu64_reg(MOV, 7, 0);
    p.load32(8, 7, 0);
    p.pass_if(JEQ, 8, 0);
    p.alu64_imm(MOV, 1, 1);
    p.fetch_add32(7, 4, 1);
    p.alu32_reg(MOD, 1, 8);
    // The verifier cannot bound a remainder: say it.
    p.pass_if(JGE, 1, MAX_ENDPOINTS as i32);
    p.alu64_imm(LSH, 1, 3);
    p.alu64_reg(ADD, 7, 1);
    p.load32(2, 7, 8);
    p.store32(CTX, USER_IP4, 2);
    p.load32(2, 7, 12);
    p.store32(CTX, USER_PORT, 2);
    p.finish()
}

/// bpf(2) with `attr` (the command's part of `union bpf_attr`): a new descriptor, or 0.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of union bpf_attr of the
    // size passed; the kernel reads (and for PROG_LOAD's log, writes) only through it
    // and the buffers it points to, which the caller keeps alive across the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a descriptor bpf(2) just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Where the cgroup v2 hierarchy is mounted (its root holds every process).
fn cgroup2_root() -> io::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    mounts
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 hierarchy is mounted"))
}

/// The attached program and its map of Service addresses to endpoints.
pub struct ConnectBalancer {
    map: OwnedFd,
    _program: OwnedFd,
    /// Closing it detaches the program.
    _link: OwnedFd,
    cgroup: PathBuf,
    /// Which owner (Service) each address in the map belongs to.
    owners: Mutex<HashMap<SocketAddrV4, String>>,
}

#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

impl ConnectBalancer {
    /// Loads the program and attaches it to the cgroup v2 root; fails where the agent
    /// may not (not root) or the kernel cannot (no cgroup v2, no BPF).
    pub fn attach() -> io::Result<Self> {
        let mut create = MapCreate {
            map_type: BPF_MAP_TYPE_HASH,
            key_size: KEY_SIZE as u32,
            value_size: VALUE_SIZE as u32,
            max_entries: MAX_ADDRESSES,
            map_flags: BPF_F_NO_PREALLOC,
        };
        let map = owned(bpf(BPF_MAP_CREATE, &mut create)?);
        let insns = program(map.as_raw_fd());
        let license = c"Dual MIT/GPL";
        let mut log = vec![0u8; 16 << 10];
        let mut name = [0u8; 16];
        name[..10].copy_from_slice(b"keelson_lb");
        let mut load = ProgLoad {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: BPF_CGROUP_INET4_CONNECT,
        };
        let program = match bpf(BPF_PROG_LOAD, &mut load) {
            Ok(fd) => owned(fd),
            Err(e) => {
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                let why = String::from_utf8_lossy(&log[..end]);
                let last = why.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
                return Err(io::Error::new(e.kind(), format!("loading the program: {e} ({last})")));
            }
        };
        let cgroup = cgroup2_root()?;
        let dir = std::fs::File::open(&cgroup)?;
        let mut link = LinkCreate {
            prog_fd: program.as_raw_fd() as u32,
            target_fd: dir.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_INET4_CONNECT,
            flags: 0,
        };
        let link = owned(bpf(BPF_LINK_CREATE, &mut link)?);
        Ok(Self { map, _program: program, _link: link, cgroup, owners: Mutex::default() })
    }

    /// The cgroup the program is attached to.
    pub fn cgroup(&self) -> &std::path::Path {
        &self.cgroup
    }

    /// `owner`'s addresses (a Service's) are `wanted` from now on: TCP connects to each
    /// go to its endpoints (round robin), and connects to the owner's other addresses
    /// are left alone again. An address the kernel does not carry is left to the
    /// user-space listener: one with no endpoint (it answers as Kubernetes does), more
    /// than [`MAX_ENDPOINTS`], or any that is not IPv4. Returns the addresses that
    /// could not be set, with why.
    pub fn assign(&self, owner: &str, wanted: &[(SocketAddrV4, &[SocketAddr])]) -> Vec<(SocketAddrV4, io::Error)> {
        let mut owners = self.owners.lock().unwrap();
        let mut failed = Vec::new();
        let mut now = HashSet::new();
        for (addr, endpoints) in wanted {
            match self.set(*addr, endpoints) {
                Ok(true) => {
                    now.insert(*addr);
                    owners.insert(*addr, owner.to_string());
                }
                Ok(false) => {}
                Err(e) => failed.push((*addr, e)),
            }
        }
        let stale: Vec<SocketAddrV4> =
            owners.iter().filter(|(a, o)| o.as_str() == owner && !now.contains(*a)).map(|(a, _)| *a).collect();
        for addr in stale {
            match self.remove(addr) {
                Ok(()) => {
                    owners.remove(&addr);
                }
                Err(e) => failed.push((addr, e)),
            }
        }
        failed
    }

    /// Forgets the addresses of every owner `keep` refuses (Services gone, whose actors
    /// may have died without taking theirs back).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut owners = self.owners.lock().unwrap();
        let gone: Vec<SocketAddrV4> = owners.iter().filter(|(_, o)| !keep(o)).map(|(a, _)| *a).collect();
        for addr in gone {
            match self.remove(addr) {
                Ok(()) => {
                    owners.remove(&addr);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "cannot stop balancing in the kernel"),
            }
        }
    }

    /// Whether the kernel carries `endpoints` (then the map holds them for `service`).
    fn set(&self, service: SocketAddrV4, endpoints: &[SocketAddr]) -> io::Result<bool> {
        let v4: Vec<SocketAddrV4> = endpoints
            .iter()
            .filter_map(|e| match e {
                SocketAddr::V4(a) => Some(*a),
                SocketAddr::V6(_) => None,
            })
            .collect();
        if v4.is_empty() || v4.len() != endpoints.len() || v4.len() > MAX_ENDPOINTS {
            return Ok(false);
        }
        let key = encode(service);
        let value = value(&v4);
        let mut elem = MapElem {
            map_fd: self.map.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags: 0, // BPF_ANY: the element is replaced whole, so no connect sees half a list
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut elem)?;
        Ok(true)
    }

    /// Connects to `service` are no longer rewritten (absent already is fine).
    fn remove(&self, service: SocketAddrV4) -> io::Result<()> {
        let key = encode(service);
        let mut elem =
            MapElem { map_fd: self.map.as_raw_fd() as u32, _pad: 0, key: key.as_ptr() as u64, value: 0, flags: 0 };
        match bpf(BPF_MAP_DELETE_ELEM, &mut elem) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn every_jump_lands_on_the_pass_exit() {
        let p = program(3);
        let pass = p.len() - 2;
        let jumps: Vec<usize> =
            (0..p.len()).filter(|i| p[*i].code & 0x07 == 0x05 && p[*i].code & 0xf0 != 0x80).collect();
        assert!(jumps.len() >= 4);
        for at in jumps.into_iter().filter(|at| p[*at].code != 0x95) {
            assert_eq!(at as i64 + 1 + p[at].off as i64, pass as i64, "jump at {at}");
        }
        assert_eq!((p[pass].code, p[pass].imm, p[pass + 1].code), (0xb7, 1, 0x95));
    }

    #[test]
    fn keys_and_values_are_laid_out_as_the_program_reads_them() {
        let a: SocketAddrV4 = "10.96.1.2:8080".parse().unwrap();
        assert_eq!(encode(a), [10, 96, 1, 2, 0x1f, 0x90, 0, 0]);
        let v = value(&[a, "10.244.0.5:80".parse().unwrap()]);
        assert_eq!(v.len(), VALUE_SIZE);
        assert_eq!(&v[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&v[16..24], &[10, 244, 0, 5, 0, 80, 0, 0]);
    }

    /// Which backend (by its greeting) a connect to `at` reaches, if any.
    fn reached(at: SocketAddrV4) -> Option<u8> {
        let mut s = TcpStream::connect(at).ok()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        Some(b[0])
    }

    /// Needs root (CAP_BPF and CAP_NET_ADMIN) and cgroup v2; says so and passes
    /// otherwise. The Service address is a loopback one nothing listens on, so no
    /// connect of another test is touched and none leaves the machine.
    #[test]
    fn connects_to_a_service_address_go_round_robin_to_its_endpoints_until_dropped() {
        let lb = match ConnectBalancer::attach() {
            Ok(lb) => lb,
            Err(e) if !super::super::is_root() => return eprintln!("skipped: connect-time balancing needs root ({e})"),
            Err(e) => panic!("attaching as root: {e}"),
        };
        let mut backends = Vec::new();
        for id in [b'a', b'b'] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            backends.push(l.local_addr().unwrap());
            std::thread::spawn(move || {
                for mut s in l.incoming().flatten() {
                    let _ = s.write_all(&[id]);
                }
            });
        }
        let port = TcpListener::bind("127.31.7.1:0").unwrap().local_addr().unwrap().port();
        let service = SocketAddrV4::new([127, 31, 7, 1].into(), port);
        assert_eq!(reached(service), None, "nothing listens at the Service address");
        assert!(lb.assign("ns/svc", &[(service, &backends)]).is_empty());
        let got: Vec<Option<u8>> = (0..4).map(|_| reached(service)).collect();
        assert_eq!(got, vec![Some(b'a'), Some(b'b'), Some(b'a'), Some(b'b')]);
        // A new list replaces the old whole.
        assert!(lb.assign("ns/svc", &[(service, &backends[1..])]).is_empty());
        assert!((0..3).all(|_| reached(service) == Some(b'b')));
        assert!(lb.assign("ns/svc", &[(service, &[])]).is_empty(), "no endpoint: left to user space");
        assert_eq!(reached(service), None);
        assert!(lb.assign("ns/svc", &[(service, &backends)]).is_empty());
        assert!(reached(service).is_some());
        lb.retain(|owner| owner != "ns/svc");
        assert_eq!(reached(service), None, "a Service gone is forgotten");
        assert!(lb.assign("ns/svc", &[(service, &backends)]).is_empty());
        assert!(lb.assign("ns/other", &[]).is_empty(), "another owner's change leaves it");
        assert!(reached(service).is_some());
        drop(lb);
        assert_eq!(reached(service), None, "the program is detached with its link");
    }
}

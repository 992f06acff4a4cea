//! Server connection IDs that name their worker (and, optionally, their host), and the classic
//! BPF program that steers each packet to the worker its connection ID names.
//!
//! Layout of every connection ID a server issues, QUIC-LB style (draft-ietf-quic-load-balancers,
//! "plaintext" server IDs):
//!
//! ```text
//! byte 0            1 ..= h          h + 1        h + 2 .. 16
//! first octet       host id (h B)    worker       random nonce (at least 8 bytes)
//! 000 01111         QuicSettings::cid_host_id      unpredictable, as RFC 9000 §5.1 asks
//! ```
//!
//! The first octet is QUIC-LB's: its top three bits are the configuration ID (0, the first
//! configuration; `111` would mean "unroutable"), its low five the length of the rest of the ID
//! (15). A QUIC-LB load balancer configured with a server ID of `h` bytes routes on the host id
//! alone and sees the worker byte as nonce; one configured with `h + 1` bytes can route on
//! (host, worker) pairs. Within the host, the kernel's `SO_REUSEPORT` group does the last step
//! with [`CidLayout::steering_program`].
//!
//! Client connection IDs stay fully random: a client endpoint has one worker and nobody
//! balances the packets it receives.

use crate::connection::LOCAL_CID_LEN;
use crate::error::ConfigError;

/// Most workers one endpoint may have: the worker is one byte of the connection ID.
pub const MAX_WORKERS: usize = 256;

/// Longest host id (`QuicSettings::cid_host_id`): 16 bytes less the first octet, the worker
/// byte and an 8-byte nonce. Eight random bytes keep connection IDs unguessable (RFC 9000 §5.1:
/// an observer must not link them) and collisions among a host's live IDs negligible.
pub const MAX_HOST_ID: usize = LOCAL_CID_LEN - 2 - 8;

/// The first octet: configuration 0, length of the rest (QUIC-LB self-encoded length).
const FIRST_OCTET: u8 = (LOCAL_CID_LEN - 1) as u8;

/// How one server endpoint's connection IDs are laid out, and which worker mints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidLayout {
    host: Vec<u8>,
    workers: usize,
}

impl CidLayout {
    /// A layout for `workers` workers (1..=[`MAX_WORKERS`]) on the host named by `host`
    /// (0..=[`MAX_HOST_ID`] bytes).
    pub fn new(host: &[u8], workers: usize) -> Result<Self, ConfigError> {
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(ConfigError::Invalid {
                field: "workers",
                why: format!(
                    "{workers} is outside 1..={MAX_WORKERS} (a connection ID names its worker \
                     in one byte)"
                ),
            });
        }
        if host.len() > MAX_HOST_ID {
            return Err(ConfigError::Invalid {
                field: "cid_host_id",
                why: format!(
                    "{} bytes is longer than {MAX_HOST_ID} (a 16-byte connection ID keeps 8 \
                     random bytes after the first octet, the host id and the worker)",
                    host.len()
                ),
            });
        }
        Ok(CidLayout {
            host: host.to_vec(),
            workers,
        })
    }

    /// How many workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Where the worker byte is in a short-header packet: after the packet's first byte, the
    /// connection ID's first octet and the host id.
    pub fn worker_offset(&self) -> usize {
        1 + 1 + self.host.len()
    }

    /// A fresh connection ID naming `worker`.
    ///
    /// # Panics
    /// If `worker` is not below [`Self::workers`] (a bug in the caller).
    pub fn mint(&self, worker: usize) -> quiche::ConnectionId<'static> {
        assert!(worker < self.workers, "worker {worker} of {}", self.workers);
        let mut id: [u8; LOCAL_CID_LEN] = rand::random();
        id[0] = FIRST_OCTET;
        id[1..1 + self.host.len()].copy_from_slice(&self.host);
        id[1 + self.host.len()] = worker as u8;
        quiche::ConnectionId::from_vec(id.to_vec())
    }

    /// The worker a connection ID of this layout names; `None` for an ID this host did not
    /// issue (another length, first octet or host id, or a worker it does not have).
    pub fn worker_of(&self, cid: &[u8]) -> Option<usize> {
        if cid.len() != LOCAL_CID_LEN
            || cid[0] != FIRST_OCTET
            || &cid[1..1 + self.host.len()] != self.host.as_slice()
        {
            return None;
        }
        let w = cid[1 + self.host.len()] as usize;
        (w < self.workers).then_some(w)
    }

    /// The `SO_ATTACH_REUSEPORT_CBPF` program: the index (in the reuseport group, which is the
    /// order the workers' sockets were bound) of the socket a UDP payload goes to.
    ///
    /// - Long header (first bit set: Initial, 0-RTT, Handshake, Retry, Version Negotiation):
    ///   `0xffff_ffff`, an index past the group, so the kernel falls back to its 4-tuple hash.
    ///   A new client's Initial carries a destination ID it chose itself, and every long-header
    ///   packet of a handshake comes from that same address, so the hash keeps the handshake
    ///   on the worker that accepted it.
    /// - Short header: the worker byte of the destination connection ID. A byte naming no
    ///   worker (an ID we never issued) is past the group too: hash.
    /// - A datagram too short to hold the byte: a classic BPF load past the end ends the
    ///   program with 0, the first worker, whose receive loop drops it as unparseable.
    pub fn steering_program(&self) -> Vec<Insn> {
        vec![
            // A = payload[0]
            Insn::new(BPF_LD | BPF_B | BPF_ABS, 0, 0, 0),
            // long header: skip the next two, to the fallback; else go on
            Insn::new(BPF_JMP | BPF_JSET | BPF_K, 2, 0, 0x80),
            // A = payload[worker_offset]
            Insn::new(BPF_LD | BPF_B | BPF_ABS, 0, 0, self.worker_offset() as u32),
            // return A
            Insn::new(BPF_RET | BPF_A, 0, 0, 0),
            // return "no such socket": the kernel's hash decides
            Insn::new(BPF_RET | BPF_K, 0, 0, u32::MAX),
        ]
    }
}

/// Where a connection's own connection IDs come from.
#[derive(Debug, Clone)]
pub(crate) enum CidSource {
    /// Fully random (client connections).
    Random,
    /// Naming the server worker that owns the connection.
    Worker {
        layout: std::sync::Arc<CidLayout>,
        worker: usize,
    },
}

impl CidSource {
    /// A fresh connection ID.
    pub(crate) fn mint(&self) -> quiche::ConnectionId<'static> {
        match self {
            CidSource::Random => {
                quiche::ConnectionId::from_vec(rand::random::<[u8; LOCAL_CID_LEN]>().to_vec())
            }
            CidSource::Worker { layout, worker } => layout.mint(*worker),
        }
    }
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

impl Insn {
    const fn new(code: u16, jt: u8, jf: u8, k: u32) -> Self {
        Insn { code, jt, jf, k }
    }
}

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const BPF_LD: u16 = 0x00;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
const BPF_A: u16 = 0x10;

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a program the way the kernel runs a reuseport filter on a UDP payload: only the
    /// instructions `steering_program` uses are known; a load past the end returns 0.
    fn run(prog: &[Insn], payload: &[u8]) -> u32 {
        let mut a: u32 = 0;
        let mut pc = 0;
        loop {
            let i = prog[pc];
            match i.code {
                c if c == BPF_LD | BPF_B | BPF_ABS => match payload.get(i.k as usize) {
                    Some(b) => a = *b as u32,
                    None => return 0,
                },
                c if c == BPF_JMP | BPF_JSET | BPF_K => {
                    pc += if a & i.k != 0 { i.jt } else { i.jf } as usize;
                }
                c if c == BPF_RET | BPF_A => return a,
                c if c == BPF_RET | BPF_K => return i.k,
                other => panic!("opcode {other:#x} not expected"),
            }
            pc += 1;
        }
    }

    fn short_packet(cid: &[u8]) -> Vec<u8> {
        let mut p = vec![0x40];
        p.extend_from_slice(cid);
        p.extend_from_slice(&[0xaa; 30]);
        p
    }

    fn long_packet(dcid: &[u8]) -> Vec<u8> {
        let mut p = vec![0xc0, 0, 0, 0, 1, dcid.len() as u8];
        p.extend_from_slice(dcid);
        p.extend_from_slice(&[0; 1200]);
        p
    }

    #[test]
    fn every_worker_is_named_and_steered_for_one_three_and_the_most_workers() {
        for workers in [1, 3, MAX_WORKERS] {
            for host in [&[][..], &[7, 8, 9][..], &[1; MAX_HOST_ID][..]] {
                let l = CidLayout::new(host, workers).unwrap();
                let prog = l.steering_program();
                for w in [0, workers / 2, workers - 1] {
                    let cid = l.mint(w);
                    assert_eq!(cid.len(), LOCAL_CID_LEN);
                    assert_eq!(
                        l.worker_of(&cid),
                        Some(w),
                        "{workers} workers, host {host:?}"
                    );
                    assert_eq!(run(&prog, &short_packet(&cid)), w as u32);
                    // Long headers always fall back to the kernel's hash.
                    assert_eq!(run(&prog, &long_packet(&cid)), u32::MAX);
                }
            }
        }
    }

    #[test]
    fn nonces_differ_and_keep_eight_random_bytes() {
        let l = CidLayout::new(&[1; MAX_HOST_ID], 2).unwrap();
        let a = l.mint(1);
        let b = l.mint(1);
        assert_ne!(a, b);
        assert_eq!(&a[..LOCAL_CID_LEN - 8], &b[..LOCAL_CID_LEN - 8]);
    }

    #[test]
    fn zero_workers_too_many_workers_and_a_long_host_id_are_refused() {
        for (host, workers, field) in [
            (&[][..], 0, "workers"),
            (&[][..], MAX_WORKERS + 1, "workers"),
            (&[0; MAX_HOST_ID + 1][..], 2, "cid_host_id"),
        ] {
            match CidLayout::new(host, workers) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{workers} workers, host {host:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn foreign_ids_name_no_worker_and_fall_back_to_the_hash() {
        let l = CidLayout::new(&[5, 6], 3).unwrap();
        let prog = l.steering_program();
        let mut other_host = l.mint(1).to_vec();
        other_host[1] = 9;
        let mut no_such_worker = l.mint(1).to_vec();
        no_such_worker[3] = 3;
        let mut other_octet = l.mint(1).to_vec();
        other_octet[0] = 0xe0;
        for cid in [&other_host, &no_such_worker, &other_octet] {
            assert_eq!(l.worker_of(cid), None, "{cid:?}");
        }
        assert_eq!(l.worker_of(&l.mint(2)[..8]), None);
        // The kernel falls back to its hash for any index past the group.
        assert_eq!(run(&prog, &short_packet(&no_such_worker)), 3);
    }

    #[test]
    fn a_datagram_too_short_for_the_worker_byte_goes_to_the_first_worker() {
        let l = CidLayout::new(&[], 2).unwrap();
        let prog = l.steering_program();
        assert_eq!(run(&prog, &[0x40, FIRST_OCTET]), 0);
        assert_eq!(run(&prog, &[]), 0);
    }
}

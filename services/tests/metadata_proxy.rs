//! The metadata proxy in one process: a VM's TCP stack (smoltcp) talks to the proxy
//! through punt ring entries and the proxy's inject entries, as the workers would carry
//! them, and the proxy asks a metadata server listening on loopback.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pollux_dataplane::port::PortId;
use pollux_dataplane::slowpath::{RingHeader, ServiceId, RING_HEADER_LEN};
use pollux_dataplane::snapshot::NetworkUid;
use pollux_services::dispatch::PuntService;
use pollux_services::metadata::sign::sign_instance_id;
use pollux_services::metadata::{
    Limits, MetadataPunt, MetadataService, MetadataTable, NetworkMetadata, PortIdentity, Upstream,
};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpCidr};

const NET: NetworkUid = NetworkUid(5);
const VM_PORT: PortId = PortId(1);
const VM_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const ROUTER_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0, 0, 1];
const VM_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 40, 11);

#[derive(Default)]
struct Wire {
    rx: Vec<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}
struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);
impl smoltcp::phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}
impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        if self.rx.is_empty() {
            return None;
        }
        let p = self.rx.remove(0);
        Some((Rx(p), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1500;
        c
    }
}

/// A metadata server on loopback answering `answers` connections with `reply`, each
/// request it read sent on the channel.
fn server(reply: &'static [u8], delay: Duration) -> (std::net::SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
            std::thread::sleep(delay);
            let _ = s.write_all(reply);
        }
    });
    (addr, rx)
}

fn table(upstream: std::net::SocketAddr, limits: Limits) -> MetadataTable {
    MetadataTable {
        upstream: Some(Upstream {
            addr: upstream,
            secret: "s3cret".into(),
        }),
        limits,
        networks: HashMap::from([(
            NET,
            NetworkMetadata {
                network_id: "net-r".into(),
                routers: vec![(ROUTER_MAC, "r1".into())],
            },
        )]),
        ports: HashMap::from([(
            VM_PORT,
            PortIdentity {
                network: NET,
                device_id: "instance-r1".into(),
                project_id: "project-a".into(),
                fixed_ips: vec![VM_IP],
            },
        )]),
    }
}

/// One VM connection: sends `request`, returns what came back before the proxy closed
/// (or the deadline).
fn exchange(punt: &mut MetadataPunt, request: &[u8], limit: Duration) -> Vec<u8> {
    let mut wire = Wire::default();
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ip),
        &mut wire,
        SmolInstant::from_micros(0),
    );
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(VM_IP.into(), 24));
    });
    let _ = iface
        .routes_mut()
        .add_default_ipv4_route(Ipv4Addr::new(198, 18, 40, 1));
    let mut sockets = SocketSet::new(Vec::new());
    let h = sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 65536]),
        tcp::SocketBuffer::new(vec![0; 65536]),
    ));
    let epoch = Instant::now();
    let now = || SmolInstant::from_micros(epoch.elapsed().as_micros() as i64);
    sockets
        .get_mut::<tcp::Socket>(h)
        .connect(
            iface.context(),
            (Ipv4Addr::new(169, 254, 169, 254), 80),
            40000,
        )
        .unwrap();
    let mut sent = false;
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        iface.poll(now(), &mut wire, &mut sockets);
        let s = sockets.get_mut::<tcp::Socket>(h);
        if s.may_send() && !sent {
            s.send_slice(request).unwrap();
            sent = true;
        }
        while s.can_recv() {
            let mut b = [0u8; 4096];
            let n = s.recv_slice(&mut b).unwrap();
            got.extend_from_slice(&b[..n]);
        }
        if sent && !s.may_recv() {
            s.close();
            if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) || !got.is_empty() {
                iface.poll(now(), &mut wire, &mut sockets);
                for p in wire.tx.drain(..) {
                    feed(punt, &p);
                }
                break;
            }
        }
        if s.state() == tcp::State::Closed && sent {
            break;
        }
        iface.poll(now(), &mut wire, &mut sockets);
        for p in wire.tx.drain(..) {
            feed(punt, &p);
        }
        let mut back = Vec::new();
        punt.poll(&mut |worker, entry| {
            assert_eq!(worker, 0);
            back.push(entry.to_vec());
            true
        });
        for entry in back {
            let (header, frame) = RingHeader::read(&entry).unwrap();
            assert_eq!((header.port, header.network), (VM_PORT, NET));
            assert_eq!(header.service, ServiceId::METADATA);
            assert_eq!(&frame[0..6], &VM_MAC, "to the VM");
            assert_eq!(&frame[6..12], &ROUTER_MAC, "from the MAC it sent to");
            wire.rx.push(frame[14..].to_vec());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    got
}

fn feed(punt: &mut MetadataPunt, packet: &[u8]) {
    let mut entry = vec![0u8; RING_HEADER_LEN];
    RingHeader {
        port: VM_PORT,
        network: NET,
        service: ServiceId::METADATA,
        l3_offset: 14,
    }
    .write(&mut entry);
    entry.extend_from_slice(&ROUTER_MAC);
    entry.extend_from_slice(&VM_MAC);
    entry.extend_from_slice(&[0x08, 0x00]);
    entry.extend_from_slice(packet);
    punt.handle_on(0, &entry, &mut Vec::new());
}

#[test]
fn a_request_is_proxied_with_the_ports_identity() {
    let (addr, requests) = server(
        b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\ninstance-r1",
        Duration::ZERO,
    );
    let service = MetadataService::new(table(addr, Limits::default()));
    let mut punt = service.punt_handler();
    let got = exchange(
        &mut punt,
        b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Instance-ID: forged\r\n\r\n",
        Duration::from_secs(10),
    );
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.ends_with("\r\n\r\ninstance-r1"),
        "{got:?} {:?}",
        service.stats()
    );
    let req = requests.recv_timeout(Duration::from_secs(1)).unwrap();
    let sig = sign_instance_id(b"s3cret", "instance-r1");
    assert_eq!(
        req,
        format!(
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: {addr}\r\n\
             X-Forwarded-For: 198.18.40.11\r\nX-Instance-ID: instance-r1\r\n\
             X-Tenant-ID: project-a\r\nX-Instance-ID-Signature: {sig}\r\n\
             X-Neutron-Router-ID: r1\r\nConnection: close\r\n\r\n"
        )
    );
    let stats = service.stats().counts;
    assert_eq!((stats["proxied"], stats["answered"]), (1, 1), "{stats:?}");
}

#[test]
fn a_slow_server_is_a_504_a_bad_request_a_400() {
    let (addr, _requests) = server(b"HTTP/1.0 200 OK\r\n\r\nlate", Duration::from_secs(3));
    let limits = Limits {
        response_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let service = MetadataService::new(table(addr, limits));
    let mut punt = service.punt_handler();
    let started = Instant::now();
    let got = exchange(
        &mut punt,
        b"GET /x HTTP/1.1\r\n\r\n",
        Duration::from_secs(5),
    );
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 504 "), "{got:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let got = exchange(&mut punt, b"GET x HTTP/1.1\r\n\r\n", Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 400 "));
    let stats = service.stats().counts;
    assert_eq!(
        (stats["upstream_timeout"], stats["bad_request"]),
        (1, 1),
        "{stats:?}"
    );
}

//! Tries every way out to the network. Built for wasm32-wasip2 it imports
//! `wasi:sockets/*` (as every standard component does); insitu runs it and
//! must deny each attempt.
//!
//! Arguments after the contract's `--output`/`--logs`: `TCP_PORT UDP_PORT`,
//! ports the test listens on at 127.0.0.1. Prints one line per attempt:
//! `denied <what>: <error>` or `ALLOWED <what>`.

use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};

fn report<T>(what: &str, r: std::io::Result<T>) {
    match r {
        Ok(_) => println!("ALLOWED {what}"),
        Err(e) => println!("denied {what}: {e}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = |i: usize| -> u16 { args[args.len() - 2 + i].parse().expect("a port") };
    let (tcp, udp) = (port(0), port(1));
    report("name lookup", ("localhost", 80).to_socket_addrs());
    report("tcp connect", TcpStream::connect(("127.0.0.1", tcp)));
    report("tcp connect v6", TcpStream::connect(("::1", tcp)));
    report("tcp listen", TcpListener::bind("127.0.0.1:0"));
    report(
        "udp send",
        UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"leak", ("127.0.0.1", udp))),
    );
}

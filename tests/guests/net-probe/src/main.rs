//! Tries to reach the network. Built for wasm32-wasip2 it imports
//! `wasi:sockets/*`, so insitu must refuse it before it runs.

use std::net::{TcpStream, ToSocketAddrs};

fn main() {
    match ("example.com", 80).to_socket_addrs() {
        Ok(addrs) => println!("ALLOWED name lookup: {:?}", addrs.collect::<Vec<_>>()),
        Err(e) => println!("denied name lookup: {e}"),
    }
    match TcpStream::connect("127.0.0.1:80") {
        Ok(_) => println!("ALLOWED tcp connect"),
        Err(e) => println!("denied tcp connect: {e}"),
    }
}

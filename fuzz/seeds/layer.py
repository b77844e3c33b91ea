"""Writes the seed corpus of the `layer` fuzz target into fuzz/seeds/layer/:
small tar layers, plain and gzip, each holding what registries send and
what an attacker would: the module where it is expected, directories,
symlinks and hard links (inside and escaping), `..` and absolute paths,
devices and FIFOs, whiteouts, PAX and GNU long names, duplicate entries
and a size field larger than the archive. Deterministic (mtime 0).

    python3 fuzz/seeds/layer.py
"""
import gzip
import io
import os
import tarfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "layer")
MODULE = b"\0asm\x01\0\0\0"  # the smallest valid wasm module


def entry(name, kind=tarfile.REGTYPE, data=b"", link="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, 0
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def tar(entries, fmt=tarfile.USTAR_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info, data in entries:
            t.addfile(info, data)
    return buf.getvalue()


SEEDS = {
    "module": [entry("app/module.wasm", data=MODULE)],
    "dirs-and-module": [
        entry("app", tarfile.DIRTYPE, mode=0o755),
        entry("app/module.wasm", data=MODULE),
        entry("app/README", data=b"hello\n"),
    ],
    "dot-slash": [entry("./app/module.wasm", data=MODULE)],
    "symlink-inside": [
        entry("app/real.wasm", data=MODULE),
        entry("app/module.wasm", tarfile.SYMTYPE, link="real.wasm"),
    ],
    "symlink-escape": [
        entry("app/evil", tarfile.SYMTYPE, link="../../../../etc"),
        entry("app/evil/passwd", data=b"root::0:0::/:/bin/sh\n"),
    ],
    "symlink-absolute": [entry("app/module.wasm", tarfile.SYMTYPE, link="/etc/passwd")],
    "hardlink-escape": [entry("app/module.wasm", tarfile.LNKTYPE, link="../../etc/passwd")],
    "hardlink-inside": [
        entry("app/a.wasm", data=MODULE),
        entry("app/module.wasm", tarfile.LNKTYPE, link="app/a.wasm"),
    ],
    "dotdot": [entry("../../escape.txt", data=b"out\n")],
    "dotdot-inner": [entry("app/../../escape.txt", data=b"out\n")],
    "absolute": [entry("/tmp/escape.txt", data=b"out\n")],
    "device": [
        entry("app/dev", tarfile.CHRTYPE),
        entry("app/fifo", tarfile.FIFOTYPE),
        entry("app/module.wasm", data=MODULE),
    ],
    "whiteout": [
        entry("app/.wh.module.wasm"),
        entry("app/.wh..wh..opq"),
        entry("app/module.wasm", data=MODULE),
    ],
    "duplicate": [
        entry("app/module.wasm", data=b"first"),
        entry("app/module.wasm", data=MODULE),
    ],
    "file-then-dir": [
        entry("app", data=b"a file"),
        entry("app/module.wasm", data=MODULE),
    ],
    "setuid": [entry("app/module.wasm", data=MODULE, mode=0o4777)],
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, entries in SEEDS.items():
        raw = tar(entries)
        write(name + ".tar", raw)
        write(name + ".tar.gz", gzip.compress(raw, mtime=0))
    long = "app/" + "d" * 120 + "/" + "m" * 120 + ".wasm"
    write("pax-long-name.tar", tar([entry(long, data=MODULE)], tarfile.PAX_FORMAT))
    write("gnu-long-name.tar", tar([entry(long, data=MODULE)], tarfile.GNU_FORMAT))
    write("gnu-long-link.tar", tar([entry("app/module.wasm", tarfile.SYMTYPE, link="../" * 60 + "etc/passwd")], tarfile.GNU_FORMAT))
    # A header claiming more bytes than follow.
    raw = bytearray(tar([entry("app/module.wasm", data=MODULE)]))
    raw[124:136] = b"77777777777\0"
    header = raw[:512]
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    raw[:512] = header
    write("truncated-size.tar", bytes(raw))
    write("empty.tar", tar([]))
    write("not-gzip.tar.gz", b"\x1f\x8b\x08\0garbage")


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


if __name__ == "__main__":
    main()

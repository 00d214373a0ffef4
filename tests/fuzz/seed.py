#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the seed inputs of a fuzz target into DIR (as files seed-*).

  seed.py safetensors DIR   every fixture of tests/gen_fixtures.py
  seed.py allocstr DIR      allocation strings of docs/plan.md and test-plan.c
  seed.py config DIR        systemd/vramd.conf.example and one line per key
  seed.py gguf DIR          the files of tests/gen_gguf.py up to 16 KiB
  seed.py pickle DIR        the files of tests/gen_torch.py up to 16 KiB, and
                            each one's data.pkl alone (fuzz-pickle's two modes)

fuzz-proto's seeds come from tests/fuzz/proto-seeds.c (the C structs).
tests/fuzz/fuzz.mk runs this for `make fuzz-seed`; the seeds and what the
long runs added are kept in tests/fuzz/corpus/TARGET.
"""
import os
import struct
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))


def put(d, name, data):
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def seed_safetensors(d):
    sys.path.insert(0, os.path.join(TOP, "tests"))
    import gen_fixtures  # noqa: E402 - needs the venv (numpy, safetensors)
    with tempfile.TemporaryDirectory() as tmp:
        saved = sys.argv
        sys.argv = ["gen_fixtures.py", tmp]
        try:
            if gen_fixtures.main() != 0:
                raise SystemExit("seed.py: gen_fixtures.py failed")
        finally:
            sys.argv = saved
        for sub in sorted(os.listdir(tmp)):
            for name in sorted(os.listdir(os.path.join(tmp, sub))):
                if name.endswith(".safetensors"):
                    with open(os.path.join(tmp, sub, name), "rb") as f:
                        put(d, "%s-%s" % (sub, name[:-len(".safetensors")]), f.read())


ALLOC_STRINGS = [
    "cuda:0,2.5gb;cpu,*", "cuda:0,70%;cuda:1,30%", "cuda:0,0.1;cpu,0.5",
    "cuda:0,*;cuda:1,0.5;cpu,5%", "cuda:0,500mb;cuda:1,3.0g;cpu,*", "cuda:0,1073741824;cpu,*",
    "cuda:0,0b;cuda:1,500b;cpu,*", "cuda:0,999999.999999999%;cuda:1,1000000%;cpu,1000000%",
    "cuda:0,0.3k;cpu,*", "cuda:0,12.5%;cpu,*", " cuda:1 , 16MiB ; cpu , * ", "cuda:0,1g;;cpu,*",
    "cuda:0,-5%;cpu,*", "cuda:0,5gb*", "cuda:0,1TiB;cuda:1,0.000000001;cpu,*", "cpu,*",
]


def seed_allocstr(d):
    # byte 0: devices (low 5 bits mod 17), cpu not a remainder taker
    # (0x10), component size shift (top 3 bits); 8 bytes component size,
    # 8 bytes device total; then the string.
    for i, s in enumerate(ALLOC_STRINGS):
        for j, head in enumerate((3, 16 | 0x20, 0x10 | 6)):
            comp = (12 << 30) + i * 4097
            total = (24 << 30) - j
            put(d, "%02d-%d" % (i, j), bytes([head]) + struct.pack("<QQ", comp, total) + s.encode())


CONFIG_LINES = [
    "socket = /run/vramd/vramd.sock", "admin-socket = /run/vramd/admin.sock",
    "state-dir = /var/lib/vramd", "admin-group = vram-admin", "socket-group = vram",
    "sim-gpus = 8GiB,512MiB", "host-pool = 16GiB", "client-max = 12GB", "max-clients = 64",
    "max-grants = 4096", "socket-mode = 0660", "reclaim-deadline-ms = 2000", "cuda = no",
    "fdstore = auto", "verbose = yes", "max-clients-per-uid = 64", "hello-timeout-ms = 5000",
    "cache-max = 50%", "cache-max = 6GiB", "ready-reserve = 25%", "ready-reserve = 1.5GiB",
    "ready-min-free = 5.25%", "ready-refill-rate = 2GiB",
]


def seed_config(d):
    with open(os.path.join(TOP, "systemd", "vramd.conf.example"), "rb") as f:
        put(d, "example", f.read())
    put(d, "all", ("[vramd]\n# every key\n" + "\n".join(CONFIG_LINES) + "\n").encode())
    for i, line in enumerate(CONFIG_LINES):
        put(d, "key%02d" % i, ("[vramd]\n%s\n" % line).encode())


# Larger fixtures are left out: tests/fuzz/run.sh gives these targets a
# max_len of 16 KiB.
MAX_SEED = 16384


def generated(script, *args):
    """Runs tests/SCRIPT TMP ARGS; yields (subdir-name, bytes) of its files."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(TOP, "tests", script), tmp] +
                       [a.replace("TMP", tmp) for a in args], check=True, stdout=subprocess.DEVNULL)
        for sub in sorted(os.listdir(tmp)):
            if not os.path.isdir(os.path.join(tmp, sub)):
                continue
            for name in sorted(os.listdir(os.path.join(tmp, sub))):
                path = os.path.join(tmp, sub, name)
                if os.path.getsize(path) <= MAX_SEED:
                    with open(path, "rb") as f:
                        yield "%s-%s" % (sub, os.path.splitext(name)[0]), f.read()


def seed_gguf(d):
    for name, data in generated("gen_gguf.py"):
        put(d, name, data)


def seed_pickle(d):
    import io
    for name, data in generated("gen_torch.py", "TMP/marker-never-written"):
        put(d, name, data)
        try:
            z = zipfile.ZipFile(io.BytesIO(data))
            pkl = [n for n in z.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pkl) == 1 and z.getinfo(pkl[0]).compress_type == zipfile.ZIP_STORED:
                raw = z.read(pkl[0])
                if not raw.startswith(b"PK\x03\x04"):
                    put(d, name + "-pkl", raw)
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError):
            pass  # a damaged zip: the file itself is the seed


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("safetensors", "allocstr", "config", "gguf", "pickle"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    os.makedirs(sys.argv[2], exist_ok=True)
    globals()["seed_" + sys.argv[1]](sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())

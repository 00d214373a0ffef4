#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The safetensors reader against the reference implementation, on mutated
files: every verdict and every accepted file's contents must agree, except
where a deviation of DEVIATIONS below (the list of docs/safetensors.md)
explains the difference.  Any other disagreement fails the test.

  st_diff.py --helper build-fuzz/st-dump [--cases N] [--seed S] [--keep DIR]
  st_diff.py --helper build-fuzz/st-dump --replay FILE...

The C side is tests/fuzz/st-dump (built with ASan/UBSan by fuzz.mk); the
reference is the safetensors package in the venv (deserialize() for the
verdict, names, dtypes, shapes and each tensor's bytes; safe_open() for
__metadata__).  The files start from tests/fuzz/corpus/safetensors (the
fixtures of tests/gen_fixtures.py and what the fuzzer found) and a few
written here with the reference writer; each case applies one to three
mutations: bytes, JSON tokens, or the JSON tree re-serialised with other
whitespace and escapes, the length and the data kept in step or not.

The seed is printed first; the same seed and corpus give the same cases.
A failing case is written to --keep (build-fuzz/crashes) and named.
"""
import argparse
import json
import os
import random
import re
import select
import struct
import subprocess
import sys
import tempfile

from safetensors import deserialize, safe_open

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus", "safetensors")

DTYPES = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
          "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
          "F64", "I64", "U64"]


# ----------------------------------------------------------------------
# The documented deviations (docs/safetensors.md, "Deviations from the
# reference"): where vramd rejects a file the reference accepts.  Each is
# (name, what our message says, a check of the header that it applies).
# ----------------------------------------------------------------------

class Obj(list):
    """A JSON object as its list of (key, value) pairs, duplicates kept."""


class Raw(bytes):
    """A token written as it is (b"-0", b"1e400")."""


def parse(header, ints=None):
    """The header as Obj/list/values, or None when Python cannot parse it."""
    def hook_int(s):
        if ints is not None:
            ints.append(int(s))
        return int(s)
    try:
        return json.loads(header.decode("utf-8"), object_pairs_hook=Obj, parse_int=hook_int)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def walk(v):
    yield v
    if isinstance(v, Obj):
        for _, x in v:
            yield from walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from walk(x)


def has_duplicate_keys(header):
    root = parse(header)
    return any(isinstance(v, Obj) and len({k for k, _ in v}) != len(v) for v in walk(root))


def has_int_outside_i64(header):
    ints = []
    parse(header, ints)
    return any(i < -2**63 or i >= 2**63 for i in ints)


def has_nul_in_names(header):
    """A NUL in any object key, or in a __metadata__ value."""
    root = parse(header)
    if not isinstance(root, Obj):
        return False
    if any(isinstance(v, Obj) and any("\0" in k for k, _ in v) for v in walk(root)):
        return True
    return any(k == "__metadata__" and isinstance(v, Obj) and
               any(isinstance(mv, str) and "\0" in mv for _, mv in v) for k, v in root)


DEVIATIONS = [
    ("duplicate keys are rejected everywhere",
     re.compile(r"\(vramd rejects duplicate keys\)"), has_duplicate_keys),
    ("integers must fit in a signed 64-bit integer",
     re.compile(r"outside the signed 64-bit range"), has_int_outside_i64),
    ("no NUL characters in keys or metadata",
     re.compile(r"contains a NUL character \(unsupported\)"), has_nul_in_names),
]


# ----------------------------------------------------------------------
# Files and mutations
# ----------------------------------------------------------------------

def split(blob):
    """(header, data, length field consistent) of a file, or None."""
    if len(blob) < 8:
        return None
    n = struct.unpack("<Q", blob[:8])[0]
    if n == 0 or n > len(blob) - 8:
        return None
    return blob[8:8 + n], blob[8 + n:]


def join(header, data):
    return struct.pack("<Q", len(header)) + header + data


def jstr(s, ascii_only):
    """A JSON string; escaped where it holds a lone surrogate (from the
    file's own escapes), which has no UTF-8."""
    try:
        return json.dumps(s, ensure_ascii=ascii_only).encode()
    except UnicodeEncodeError:
        return json.dumps(s, ensure_ascii=True).encode()


def dumps(v, rng, style):
    """JSON text of v (Obj/list/Raw/values) in one of a few styles:
    whitespace, escaped keys, non-ASCII escaped or not."""
    sp = style["ws"]
    if isinstance(v, Raw):
        return bytes(v)
    if isinstance(v, Obj):
        parts = []
        for k, x in v:
            kt = jstr(k, style["ascii"])
            if style["escape_keys"] and k and rng.random() < 0.3:
                kt = ('"' + "".join("\\u%04x" % ord(c) if c not in '"\\' and 0x20 <= ord(c) < 0x10000
                                    else json.dumps(c)[1:-1] for c in k) + '"').encode()
            parts.append(kt + sp + b":" + sp + dumps(x, rng, style))
        return b"{" + sp + (b"," + sp).join(parts) + sp + b"}"
    if isinstance(v, list):
        return b"[" + (b"," + sp).join(dumps(x, rng, style) for x in v) + b"]"
    if isinstance(v, str):
        return jstr(v, style["ascii"])
    return json.dumps(v).encode()


NUMBERS = [0, 1, 2, 3, 4, 7, 8, 255, 256, 2**31, 2**32, 2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63,
           2**64 - 1, 2**64, -1, -2**63, -2**63 - 1, Raw(b"-0"), Raw(b"1.0"), Raw(b"1e0"),
           Raw(b"1e400"), Raw(b"-1e400"), Raw(b"0.5"), Raw(b"1E2"), Raw(b"1e-400"), Raw(b"-0.0"),
           Raw(b"10000000000000000000000000000000")]
VALUES = NUMBERS + [None, True, False, "", "x", "a\0b", "\ud83d\ude00", [], [[]], Obj(),
                    Obj([("k", 1), ("k", 2)]), Raw(b"[" * 126 + b"]" * 126),
                    Raw(b"[" * 127 + b"]" * 127), Raw(b'"\\ud800"'), Raw(b'"\\udc00\\ud800"')]
TOKENS = [b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\0", b" ", b"\t", b"\n", b"\r", b"\x0c",
          b"-", b"0", b"1", b"e", b".", b"+", b"-0", b"true", b"null", b"\\u0000", b"\xc3\xa9",
          b"\xff", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"/*", b"NaN", b"Infinity", b'"dtype"',
          b'"shape"', b'"data_offsets"', b'"__metadata__"', b'"F16"', b'"f16"']


def rand_value(rng, depth=0):
    if depth < 2 and rng.random() < 0.2:
        if rng.random() < 0.5:
            return [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        return Obj([(rng.choice(["k", "x", "dtype", ""]), rand_value(rng, depth + 1))
                    for _ in range(rng.randint(0, 3))])
    return rng.choice(VALUES)


def tensors_of(root):
    return [i for i, (k, v) in enumerate(root) if k != "__metadata__"]


def mutate_entry(rng, entry):
    """One change to a tensor entry (an Obj, or anything)."""
    if not isinstance(entry, Obj) or rng.random() < 0.05:
        return rand_value(rng)
    keys = [k for k, _ in entry]
    r = rng.random()
    if r < 0.25 and "shape" in keys:
        i = keys.index("shape")
        shape = entry[i][1]
        if isinstance(shape, list):
            shape = list(shape)
            op = rng.random()
            if op < 0.3 and shape:
                shape[rng.randrange(len(shape))] = rng.choice(NUMBERS)
            elif op < 0.5:
                shape.insert(rng.randint(0, len(shape)), rng.choice([0, 1, 2, rng.choice(NUMBERS)]))
            elif op < 0.7 and shape:
                del shape[rng.randrange(len(shape))]
            else:
                shape = rand_value(rng)
        entry[i] = ("shape", shape)
    elif r < 0.5 and "data_offsets" in keys:
        i = keys.index("data_offsets")
        offs = entry[i][1]
        if isinstance(offs, list) and len(offs) == 2 and all(type(x) is int for x in offs):
            op = rng.random()
            if op < 0.4:
                j = rng.randrange(2)
                offs = list(offs)
                offs[j] = max(0, offs[j] + rng.choice([-8, -2, -1, 1, 2, 8])) if rng.random() < 0.8 \
                    else rng.choice(NUMBERS)
            elif op < 0.55:
                offs = [offs[1], offs[0]]
            elif op < 0.7:
                offs = offs + [offs[1]] if rng.random() < 0.5 else offs[:1]
            else:
                offs = [rand_value(rng) if rng.random() < 0.5 else x for x in offs]
        else:
            offs = rand_value(rng)
        entry[i] = ("data_offsets", offs)
    elif r < 0.65 and "dtype" in keys:
        i = keys.index("dtype")
        d = rng.choice(DTYPES)
        d = rng.choice([d, d, d.lower(), d + "FN", "", "F8_E4M3FN", rand_value(rng)])
        entry[i] = ("dtype", d)
    elif r < 0.75 and entry:
        del entry[rng.randrange(len(entry))]
    elif r < 0.85 and entry:
        entry.insert(rng.randint(0, len(entry)), entry[rng.randrange(len(entry))])
    else:
        entry.insert(rng.randint(0, len(entry)), (rng.choice(["x", "extra", "dtype ", "Shape"]),
                                                   rand_value(rng)))
    return entry


def mutate_tree(rng, root):
    """One change to the parsed header; returns whether the data should be
    resized to the largest end offset (keeps the tiling rule in reach)."""
    ts = tensors_of(root)
    r = rng.random()
    if r < 0.45 and ts:
        i = rng.choice(ts)
        root[i] = (root[i][0], mutate_entry(rng, root[i][1]))
        return rng.random() < 0.7
    if r < 0.55:
        metas = [i for i, (k, _) in enumerate(root) if k == "__metadata__"]
        m = Obj([("format", "pt")]) if not metas else root[metas[0]][1]
        op = rng.random()
        if op < 0.5 and isinstance(m, Obj):
            m.append((rng.choice(["k", "format", "a\0", ""]),
                      rng.choice(["v", "", "a\0b", "\u00e9", None, 1, [], Obj()])))
        elif op < 0.8:
            m = rng.choice([None, [], "x", 1, Obj(), Obj([("a", "b"), ("a", "c")])])
        if metas:
            root[metas[0]] = ("__metadata__", m)
        else:
            root.insert(rng.randint(0, len(root)), ("__metadata__", m))
        return False
    if r < 0.65 and ts:
        i = rng.choice(ts)
        name = rng.choice([root[rng.choice(ts)][0], root[i][0] + "\0", root[i][0] + ".0",
                           "__metadata__", "", "model.diffusion_model.x.1.weight", "\u00e9"])
        root[i] = (name, root[i][1])
        return False
    if r < 0.75 and ts:
        del root[rng.choice(ts)]
        return rng.random() < 0.5
    if r < 0.9:
        end = 0
        for i in ts:
            e = root[i][1]
            if isinstance(e, Obj):
                for k, v in e:
                    if k == "data_offsets" and isinstance(v, list) and v and type(v[-1]) is int:
                        end = max(end, v[-1])
        d = rng.choice(DTYPES[4:])
        nb = rng.choice([0, 0, 1, 2, 4, 8])
        bits = {"I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
                "C64": 64, "F64": 64, "I64": 64, "U64": 64}.get(d, 8)
        n = nb * 8 // bits
        if n * bits != nb * 8:
            d, n = "U8", nb
        root.insert(rng.randint(0, len(root)),
                    ("new%d" % rng.randint(0, 9), Obj([("dtype", d), ("shape", [n]), ("data_offsets", [end, end + nb])])))
        return True
    root.insert(rng.randint(0, len(root)), (rng.choice(["x", "t"]), rand_value(rng)))
    return False


def max_end(root):
    end = 0
    for k, v in root:
        if k != "__metadata__" and isinstance(v, Obj):
            for fk, fv in v:
                if fk == "data_offsets" and isinstance(fv, list) and len(fv) == 2 and \
                        all(type(x) is int and 0 <= x < 1 << 20 for x in fv):
                    end = max(end, fv[1])
    return end


def mutate_json(rng, header, data):
    root = parse(header)
    if not isinstance(root, Obj):
        return None
    resize = False
    for _ in range(rng.choice([0, 1, 1, 1, 2])):   # 0: the same tree written anew
        resize |= mutate_tree(rng, root)
    style = {"ws": rng.choice([b"", b"", b" ", b"\n", b"\t", b" \r\n"]), "ascii": rng.random() < 0.5,
             "escape_keys": rng.random() < 0.2}
    try:
        text = dumps(root, rng, style)
    except RecursionError:  # nested deeper than Python's stack: bytes mutations only
        return None
    if rng.random() < 0.2:
        text = rng.choice([b" ", b"\n", b"\t", b"\r"]) * rng.randint(1, 3) + text
    if rng.random() < 0.2:
        text += rng.choice([b" ", b"  ", b"\n"]) * rng.randint(1, 3)
    if resize:
        end = max_end(root)
        data = (data + bytes(rng.randrange(256) for _ in range(max(0, end - len(data)))))[:end]
    return text, data


def mutate_token(rng, header, data):
    spans = [m.span() for m in re.finditer(rb'-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|"(?:[^"\\]|\\.)*"|true|false|null',
                                           header)]
    if not spans:
        return None
    a, b = rng.choice(spans)
    tok = header[a:b]
    if tok.startswith(b'"'):
        new = rng.choice([b'"' + rng.choice(DTYPES).encode() + b'"', b'""', b'"\\u0000"', b'"a\\u0000"',
                          tok[:-1] + b'\\"', b'"\\ud800"', b'"__metadata__"', b'"__metadat\\u0061__"',
                          tok + b":" + tok, tok[:-1]])
    else:
        v = rng.choice(NUMBERS)
        new = bytes(v) if isinstance(v, Raw) else str(v).encode()
        if rng.random() < 0.2:
            new = tok + rng.choice([b"\0", b" ", b"0", b".", b"e", b"x"])
    return header[:a] + new + header[b:], data


def mutate_bytes(rng, header, data):
    h = bytearray(header)
    op = rng.random()
    pos = rng.randint(0, len(h))
    if op < 0.3 and h:
        h[min(pos, len(h) - 1)] = rng.randrange(256)
    elif op < 0.6:
        h[pos:pos] = rng.choice(TOKENS)
    elif op < 0.8 and h:
        del h[pos:pos + rng.randint(1, 4)]
    else:
        a = rng.randint(0, len(h))
        h[pos:pos] = h[a:a + rng.randint(1, 16)]
    return bytes(h), data


def mutate_file(rng, blob):
    """One to three mutations; the length field usually follows the header."""
    parts = split(blob)
    if parts is None:
        return blob + bytes([rng.randrange(256)])
    header, data = parts
    keep_len = rng.random() < 0.95
    for _ in range(rng.choice([1, 1, 1, 1, 2, 3])):
        r = rng.random()
        out = None
        if r < 0.6:
            out = mutate_json(rng, header, data)
        elif r < 0.8:
            out = mutate_token(rng, header, data)
        elif r < 0.95:
            out = mutate_bytes(rng, header, data)
        else:
            op = rng.random()
            if op < 0.4:
                data = data + bytes(rng.randint(1, 8))
            elif op < 0.8 and data:
                data = data[:-rng.randint(1, min(8, len(data)))]
            else:
                keep_len = False
        if out is not None:
            header, data = out
    blob = join(header, data)
    if not keep_len:
        n = len(header) + rng.choice([-8, -1, 1, 2, 8, len(data), len(data) + 1, 2**27, 2**64 - 1])
        blob = struct.pack("<Q", max(0, n) % 2**64) + blob[8:]
    return blob


def base_files(rng):
    """The corpus (sorted by name), and files made here in the reference's
    rules; as (accepted by the reference, rejected by it)."""
    files = []
    if os.path.isdir(CORPUS):
        for name in sorted(os.listdir(CORPUS)):
            with open(os.path.join(CORPUS, name), "rb") as f:
                files.append(f.read())
    words = ["model", "diffusion_model", "input_blocks", "attn", "weight", "0", "1", "\u00e9"]
    for i in range(8):
        h, off = Obj(), 0
        for j in range(rng.randint(1, 5)):
            d = rng.choice(DTYPES)
            n = {"F4": 2, "F6_E2M3": 4, "F6_E3M2": 4}.get(d, 1) * rng.randint(0, 3)
            nb = n * {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}.get(d, 8) // 8
            nb *= {"I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "C64": 8,
                   "F64": 8, "I64": 8, "U64": 8}.get(d, 1)
            h.append((".".join(rng.choice(words) for _ in range(3)) + str(j),
                      Obj([("dtype", d), ("shape", [n]), ("data_offsets", [off, off + nb])])))
            off += nb
        if i % 2:
            h.append(("__metadata__", Obj([("format", "pt")])))
        text = dumps(h, rng, {"ws": b"", "ascii": False, "escape_keys": False})
        files.append(join(text, bytes(rng.randrange(256) for _ in range(off))))
    good, bad = [], []
    for blob in files:
        try:
            deserialize(blob)
            good.append(blob)
        except Exception:  # noqa: BLE001 - any failure is a rejection
            bad.append(blob)
    return good, bad


# ----------------------------------------------------------------------
# The two readers
# ----------------------------------------------------------------------

class Helper:
    def __init__(self, path, errfile):
        self.p = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errfile)

    def open(self, path):
        """("O", dict) or ("E", errno, message); None when the helper died or hung."""
        try:
            self.p.stdin.write(path.encode() + b"\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            return None
        ready, _, _ = select.select([self.p.stdout], [], [], 20)
        line = self.p.stdout.readline() if ready else b""
        if not line:
            return None
        line = line.decode("utf-8", "replace").rstrip("\n")
        if line.startswith("O "):
            return ("O", json.loads(line[2:]))
        _, err, msg = line.split(" ", 2)
        return ("E", int(err), msg)

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=20)


def reference(path, blob):
    """("O", tensors {name: (dtype, shape, bytes)}, metadata dict) or ("E", message)."""
    try:
        ts = {name: (t["dtype"], list(t["shape"]), bytes(t["data"])) for name, t in deserialize(blob)}
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
        return ("O", ts, meta)
    except Exception as e:  # noqa: BLE001 - any failure is a rejection
        return ("E", str(e))


# vram_model_open() picks its reader by the first bytes: a mutation can make
# the file a GGUF or PyTorch one (the corpus of fuzz-safetensors holds such
# files).  Those must not be safetensors files to the reference either.
OTHER_FORMAT = re.compile(r": (?:invalid|unsupported) (GGUF|PyTorch checkpoint): ")


def other_format(ours):
    """The format vramd read the file as, when it is not safetensors."""
    if ours[0] == "O":
        fmt = ours[1].get("format", "safetensors")
        return None if fmt == "safetensors" else fmt
    m = OTHER_FORMAT.search(ours[2])
    return m.group(1) if m else None


def compare(blob, ours, ref):
    """None when they agree, else what differs.  Counts deviations in stats."""
    fmt = other_format(ours)
    if fmt:
        if ref[0] == "O":
            return "the reference reads a safetensors file, vramd reads it as %s" % fmt
        return ("deviation", "read as another format, the reference rejects")
    if ours[0] == "E" and ref[0] == "E":
        return None if ours[1] == -22 else "we fail with %d (not -EINVAL): %s" % (ours[1], ours[2])
    if ours[0] == "O" and ref[0] == "E":
        return "we accept, the reference rejects: %s" % ref[1]
    if ours[0] == "E":
        parts = split(blob)
        header = parts[0] if parts else b""
        reason = ours[2].split("invalid safetensors: ", 1)[-1]
        for name, msg_re, applies in DEVIATIONS:
            if msg_re.search(reason) and applies(header):
                return ("deviation", name)
        return "we reject, the reference accepts: %s" % reason
    ts, meta = ref[1], ref[2]
    mine = {t[0]: t for t in ours[1]["tensors"]}
    if set(mine) != set(ts):
        return "tensor names differ: ours %s, reference %s" % (sorted(mine)[:8], sorted(ts)[:8])
    for name, (dt, shape, data) in ts.items():
        _, mdt, mshape, off, nb = mine[name]
        if (mdt, mshape) != (dt, shape):
            return "tensor %r: ours %s %s, reference %s %s" % (name, mdt, mshape, dt, shape)
        if blob[off:off + nb] != data:
            return "tensor %r: bytes at [%d, %d) differ from the reference's" % (name, off, off + nb)
    mymeta = dict((k, v) for k, v in ours[1]["meta"])
    if mymeta != meta:
        return "metadata: ours %r, reference %r" % (mymeta, meta)
    return None


def replay(helper_path, files):
    """Compares each file as it is (a kept failure, a fuzzer input)."""
    bad = 0
    with tempfile.TemporaryFile() as err:
        helper = Helper(helper_path, err)
        for path in files:
            with open(path, "rb") as f:
                blob = f.read()
            ours = helper.open(os.path.abspath(path))
            if ours is None:
                err.seek(0)
                print("%s: st-dump died or hung:\n%s" % (path, err.read().decode("utf-8", "replace")[-4000:]))
                return 1
            diff = compare(blob, ours, reference(path, blob))
            verdict = "agree" if diff is None else "deviation: %s" % diff[1] if isinstance(diff, tuple) else diff
            bad += not (diff is None or isinstance(diff, tuple))
            print("%s: %s" % (path, verdict))
        helper.close()
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--helper", required=True)
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", default=os.path.join("build-fuzz", "crashes"))
    ap.add_argument("--replay", nargs="+", metavar="FILE", help="compare these files, no mutation")
    a = ap.parse_args()
    if a.replay:
        return replay(a.helper, a.replay)
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "little")
    print("st_diff: seed %d, %d cases (again: make fuzz-smoke ST_DIFF_SEED=%d)" % (seed, a.cases, seed),
          flush=True)
    rng = random.Random(seed)
    good, bad = base_files(rng)
    stats = {"both accept": 0, "both reject": 0}
    failures = []
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as err:
        path = os.path.join(tmp, "case.safetensors")
        helper = Helper(a.helper, err)
        bases = good + bad
        # The base files as they are first (cases 0..len(bases)-1), then mutated.
        for case in range(len(bases) + a.cases):
            if case < len(bases):
                blob = bases[case]
            else:
                blob = mutate_file(rng, rng.choice(good if rng.random() < 0.8 or not bad else bad))
            with open(path, "wb") as f:
                f.write(blob)
            ours = helper.open(path)
            ref = reference(path, blob)
            if ours is None:
                err.seek(0)
                diff = "st-dump died or hung:\n" + err.read().decode("utf-8", "replace")[-4000:]
            else:
                diff = compare(blob, ours, ref)
            if isinstance(diff, tuple):
                stats[diff[1]] = stats.get(diff[1], 0) + 1
            elif diff is None:
                stats["both accept" if ours[0] == "O" else "both reject"] += 1
            else:
                os.makedirs(a.keep, exist_ok=True)
                keep = os.path.join(a.keep, "st-diff-%d-%d.safetensors" % (seed, case))
                with open(keep, "wb") as f:
                    f.write(blob)
                failures.append("case %d (%s): %s" % (case, keep, diff))
                print("st_diff: case %d, kept as %s:\n  %s" % (case, keep, diff), flush=True)
                if ours is None or len(failures) >= 10:
                    break
        if ours is not None:
            helper.close()
    print("st_diff: %s" % ", ".join("%s %d" % kv for kv in stats.items()))
    if failures:
        print("st_diff: FAILED: %d disagreement%s (seed %d)" % (len(failures), "s" * (len(failures) > 1), seed))
        return 1
    print("st_diff: %d files as they are and %d mutated, no disagreement with the reference"
          % (len(good) + len(bad), a.cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())

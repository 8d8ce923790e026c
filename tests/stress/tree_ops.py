#!/usr/bin/env python3
"""One worker of the multi-process stress: random creates, writes, truncates, renames and
deletes in a shared tree, on names this worker owns (prefix w<ID>_), in directories shared by
all workers. Prints its model of the files it owns at the end (JSON: path -> sha256, size).

usage: tree_ops.py ROOT WORKER_ID OPS SEED
"""
import hashlib, json, os, random, sys

root, wid, n_ops, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed * 1000 + wid)
dirs = sorted(d for d in os.listdir(root) if d.startswith("d"))
model = {}  # relative path -> bytearray
counter = 0


def fresh_name():
    global counter
    counter += 1
    return f"{rng.choice(dirs)}/w{wid}_{counter}"


def data(n):
    return bytes(rng.getrandbits(8) for _ in range(min(n, 64))) * (n // 64 + 1)


for _ in range(n_ops):
    op = rng.random()
    if not model or op < 0.25:
        rel = fresh_name()
        content = data(rng.randrange(0, 200_000))[: rng.randrange(0, 200_000)]
        with open(os.path.join(root, rel), "xb") as f:
            f.write(content)
        model[rel] = bytearray(content)
        continue
    rel = rng.choice(sorted(model))
    path = os.path.join(root, rel)
    if op < 0.50:
        # Write at an offset (maybe past the end: a hole).
        cur = model[rel]
        off = rng.randrange(0, len(cur) + 50_000)
        chunk = data(rng.randrange(1, 100_000))[: rng.randrange(1, 100_000)]
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, chunk, off)
        finally:
            os.close(fd)
        if off > len(cur):
            cur.extend(b"\0" * (off - len(cur)))
        cur[off : off + len(chunk)] = chunk
    elif op < 0.62:
        size = rng.randrange(0, len(model[rel]) + 100_000)
        os.truncate(path, size)
        cur = model[rel]
        if size < len(cur):
            del cur[size:]
        else:
            cur.extend(b"\0" * (size - len(cur)))
    elif op < 0.80:
        new = fresh_name()
        os.rename(path, os.path.join(root, new))
        model[new] = model.pop(rel)
    elif op < 0.90:
        os.unlink(path)
        del model[rel]
    else:
        with open(path, "rb") as f:
            got = f.read()
        if got != bytes(model[rel]):
            sys.exit(f"worker {wid}: {rel} reads {len(got)} bytes that differ from the model ({len(model[rel])} bytes)")

print(json.dumps({rel: [hashlib.sha256(bytes(c)).hexdigest(), len(c)] for rel, c in model.items()}))

#!/usr/bin/env python3
"""Hostile clients against `loom serve` (run on a server built with AddressSanitizer: tests/fuzz_serve.sh).

usage: fuzz_serve.py LOOM [N_REQUESTS]

Sends N (10,000) malformed or hostile requests over raw sockets from 8 threads: random bytes, random and
truncated bodies, bodies over the size limit, invalid UTF-8, deep nesting, wrong types, negative and huge
max_tokens, n != 1, unknown paths and methods, wrong keys, clients that stop mid-request, and clients that
leave mid-stream. Each must get a 4xx status or have its connection closed, never a 5xx or a hang; every
200th request is a correct greedy completion whose text must equal the server's first answer. Afterwards
the server must answer /health, exit 0 on SIGTERM (LeakSanitizer runs then), and print no sanitizer
report.
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

LOOM = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
KEY = "fuzz-key"
THREADS = 8
failures = []
lock = threading.Lock()


def fail(msg):
    with lock:
        failures.append(msg)
        if len(failures) <= 20:
            print("FAIL", msg, flush=True)


def http(port, raw, timeout=10.0, read=True):
    """sends raw bytes; returns (status or None if closed without a reply, body bytes)"""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(raw)
        if not read:
            return None, b""
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                n = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                if n and len(body) >= n[0]:
                    break
                if b"chunked" in head.lower() and body.endswith(b"0\r\n\r\n"):
                    break
        if not data:
            return None, b""
        line = data.split(b"\r\n", 1)[0].split()
        return (int(line[1]) if len(line) > 1 and line[1].isdigit() else -1), data
    except (ConnectionResetError, BrokenPipeError):
        return None, b""
    finally:
        s.close()


def post(path, body, key=KEY, extra=b""):
    if isinstance(body, str):
        body = body.encode()
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n" if key is not None else b""
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth + extra +
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


GOOD = {"prompt": "the quick brown fox", "max_tokens": 8, "temperature": 0}


def hostile(rng, i):
    """one hostile request: (raw bytes, whether a reply is expected, whether to read)"""
    kind = i % 16
    if kind == 0:  # random bytes, mostly ended as a header block would be (else the read timeout closes it)
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400)))
        return junk + (b"\r\n\r\n" if i % 160 else b""), False
    if kind == 1:
        return post("/v1/completions", bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))), True
    if kind == 2:  # truncated JSON
        b = json.dumps(dict(GOOD, prompt="x" * rng.randint(0, 50)))
        return post("/v1/completions", b[: rng.randint(0, len(b) - 1)]), True
    if kind == 3:  # invalid UTF-8 inside a string
        return post("/v1/completions", b'{"prompt": "ab\xff\xfe\xc3(", "max_tokens": 2}'), True
    if kind == 4:  # wrong types
        field, val = rng.choice([("prompt", 5), ("prompt", {"a": 1}), ("prompt", []), ("prompt", [1.5]),
                                 ("max_tokens", "x"), ("temperature", "hot"), ("temperature", -1), ("top_p", 0),
                                 ("stop", 7), ("stop", ["a", "b", "c", "d"]), ("stream", "yes"), ("seed", 0.5),
                                 ("stream_options", 3), ("model", 12), ("user", []), ("top_k", -5),
                                 ("presence_penalty", 9), ("prompt", [-1]), ("prompt", [99999999])])
        return post("/v1/completions", json.dumps(dict(GOOD, **{field: val}))), True
    if kind == 5:  # negative or huge max_tokens, n != 1
        field, val = rng.choice([("max_tokens", -1), ("max_tokens", 0), ("max_tokens", 1e30), ("n", 2), ("n", 0),
                                 ("max_completion_tokens", -7)])
        return post("/v1/completions", json.dumps(dict(GOOD, **{field: val}))), True
    if kind == 6:  # chat with bad messages
        msgs = rng.choice([[], "hi", [{"role": "wizard", "content": "x"}], [{"content": "x"}],
                           [{"role": "user", "content": 5}], [{"role": "user", "content": [{"type": "image"}]}]])
        return post("/v1/chat/completions", json.dumps({"messages": msgs})), True
    if kind == 7:  # deep nesting
        d = rng.choice([300, 5000])
        return post("/v1/completions", "[" * d + "]" * d), True
    if kind == 8:  # over the body limit (announced; never sent)
        return (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                b"\r\nContent-Length: 50000000\r\n\r\n{\"prompt\":"), True
    if kind == 9:
        return post("/v1/completions", json.dumps(GOOD), key=rng.choice(["wrong", "", "fuzz-ke", "fuzz-key2"])), True
    if kind == 10:
        return post("/v1/completions", json.dumps(GOOD), key=None), True
    if kind == 11:
        p = rng.choice(["/", "/v1", "/v2/completions", "/v1/completions/x", "/%00", "/" + "a" * 5000])
        return b"GET " + p.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True
    if kind == 12:
        m = rng.choice([b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"FOO"])
        return m + b" /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", True
    if kind == 13:  # header junk
        return (b"POST /v1/completions HTTP/1.1\r\n" + b"X: " + b"y" * rng.randint(70000, 90000) +
                b"\r\n\r\n"), True
    if kind == 14:  # a prompt longer than the context
        return post("/v1/completions", json.dumps(dict(GOOD, prompt="word " * 3000))), True
    if i % 32 == 15:
        return post("/v1/completions", json.dumps(dict(GOOD, prompt=""))), True
    return post("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 3})), True


def main():
    w = tempfile.mkdtemp(prefix="loom_fuzz_serve_")
    corpus = os.path.join(w, "corpus.txt")
    with open(corpus, "w") as f:
        for i in range(100):
            f.write(f"Line {i}: the quick brown fox jumps over the lazy dog.\n")
    run = os.path.join(w, "tiny")
    subprocess.run([LOOM, "-q", "train", "--preset", "demo", "--data", corpus, "--steps", "1", "--batch", "2",
                    "--seq-len", "16", "--threads", "2", "--set", "model.n_layer=1", "--set", "model.d_model=32",
                    "--set", "model.n_head=4", "--set", "model.vocab_size=256", "--set", "model.max_seq_len=128",
                    "--set", "train.progress=0", "--out", run], check=True, stdout=subprocess.DEVNULL)
    err_path = os.path.join(w, "server.err")
    errf = open(err_path, "w")
    srv = subprocess.Popen([LOOM, "serve", "--ckpt", run, "--port", "0", "--api-key", KEY, "--threads", "2",
                            "--kv-memory", "2M", "--max-queue", "64", "--timeout", "2", "--max-body", "65536"],
                           stdout=subprocess.DEVNULL, stderr=errf)
    try:
        port = None
        for _ in range(600):
            time.sleep(0.1)
            with open(err_path) as f:
                for line in f:
                    if "listening on http://" in line:
                        port = int(line.split("http://")[1].split(":")[1].split()[0])
            if port or srv.poll() is not None:
                break
        if not port:
            print("FAIL: the server did not start:\n" + open(err_path).read())
            return 1
        st, ref = http(port, post("/v1/completions", json.dumps(GOOD)))
        if st != 200:
            print(f"FAIL: a correct request got {st}: {ref[:300]!r}")
            return 1
        ref_text = json.loads(ref.partition(b"\r\n\r\n")[2])["choices"][0]["text"]
        counts = {}

        def worker(t):
            rng = random.Random(1000 + t)
            for i in range(t, N, THREADS):
                if i % 200 == 0:  # a correct request among the hostile ones
                    st, data = http(port, post("/v1/completions", json.dumps(GOOD)), timeout=60)
                    txt = json.loads(data.partition(b"\r\n\r\n")[2])["choices"][0]["text"] if st == 200 else None
                    if txt != ref_text:
                        fail(f"request {i}: the correct request got {st}, text {txt!r} (want {ref_text!r})")
                    continue
                if i % 97 == 1:  # a client leaving mid-stream
                    s = socket.create_connection(("127.0.0.1", port), timeout=10)
                    s.sendall(post("/v1/completions", json.dumps(dict(GOOD, max_tokens=64, stream=True))))
                    s.recv(100)
                    s.close()
                    continue
                if i % 251 == 3:  # a client stopping mid-request (the read timeout closes it)
                    s = socket.create_connection(("127.0.0.1", port), timeout=10)
                    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
                    s.settimeout(6)
                    try:
                        closed = s.recv(100) is not None
                    except socket.timeout:
                        closed = False
                    s.close()
                    if not closed:
                        fail(f"request {i}: a stalled client was not closed within 6 s")
                    continue
                raw, reply = hostile(rng, i)
                try:
                    st, data = http(port, raw, timeout=30)
                except socket.timeout:
                    fail(f"request {i} (kind {i % 16}): no answer within 30 s")
                    continue
                except OSError as e:  # the server may close a hostile connection while we still send
                    st, data = None, str(e).encode()
                with lock:
                    counts[st] = counts.get(st, 0) + 1
                if st == 501 and i % 16 == 12:  # a method HTTP does not know: 501 is HTTP's answer
                    continue
                if st is not None and not 400 <= st < 500:
                    fail(f"request {i} (kind {i % 16}) got {st}: {data[:200]!r}")
                if st is None and reply and i % 16 not in (0, 8, 13):
                    fail(f"request {i} (kind {i % 16}): closed without a reply")

        t0 = time.time()
        th = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        print(f"{N} requests in {time.time() - t0:.1f} s; replies by status: "
              f"{dict(sorted(counts.items(), key=lambda kv: str(kv[0])))}")
        st, _ = http(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if st != 200:
            fail(f"/health after the fuzzing: {st}")
        st, data = http(port, post("/v1/completions", json.dumps(GOOD)))
        if st != 200 or json.loads(data.partition(b"\r\n\r\n")[2])["choices"][0]["text"] != ref_text:
            fail("the correct request after the fuzzing")
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            rc = srv.wait(timeout=60)
        except subprocess.TimeoutExpired:
            srv.kill()
            rc = "hung"
        errf.close()
    log = open(err_path).read()
    if rc != 0:
        fail(f"the server exited with {rc} after SIGTERM")
    if "Sanitizer" in log or "runtime error" in log:
        fail("sanitizer report:\n" + log[-4000:])
    print(f"server stderr: {len(log.splitlines())} lines; exit {rc}")
    if failures:
        print(f"FAILED: {len(failures)} checks")
        return 1
    print("OK: every hostile request got a 4xx or a closed connection; the server kept serving")
    return 0


if __name__ == "__main__":
    sys.exit(main())

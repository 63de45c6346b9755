"""Writes bad input into a real pipe between two real processes, for the
bad-input end-to-end tests. Standard library only.

usage: bad_input.py CASE   → prints {"writer": pid, "reader": pid, ...} when done
"""

import json
import os
import signal
import subprocess
import sys
import threading

READER = [sys.executable, "-c", "import sys\nwhile sys.stdin.buffer.read(65536): pass"]


def msg(i, method="tools/call", **params):
    return (json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}) + "\n").encode()


def valid(ids):
    return b"".join(msg(i, name="echo") for i in ids)


def read_fault(w):
    """A write whose buffer is unmapped before it returns: the kernel
    program, which copies a write's bytes when it returns, cannot read
    them. A 128 KiB write into an empty pipe (64 KiB) copies 64 KiB and
    blocks; another thread unmaps its buffer and drains the pipe; the write
    returns 64 KiB, the bytes it copied, from a buffer no longer mapped.
    The pipe then carries a newline and valid messages: the stream goes on."""
    import ctypes
    import fcntl
    import time

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.write.restype = ctypes.c_ssize_t
    libc.write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    r, wp = os.pipe()
    capacity = fcntl.fcntl(wp, 1032)  # F_GETPIPE_SZ
    size = 2 * capacity
    buf = libc.mmap(None, size, 0x3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    assert buf not in (None, ctypes.c_void_p(-1).value)
    text = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x","arguments":{"x":"'
    ctypes.memmove(buf, text + b"x" * (size - len(text)), size)
    os.write(wp, msg(1, name="echo"))  # text first: the kernel keeps the pipe
    assert os.read(r, 65536) == msg(1, name="echo")
    result = {}

    def writer():
        result["tid"] = threading.get_native_id()
        result["n"] = libc.write(wp, buf, size)

    t = threading.Thread(target=writer)
    t.start()
    # Readiness: the writer sleeps in write(2) (syscall 1) with a full pipe.
    deadline = time.monotonic() + 10
    while True:
        tid = result.get("tid")
        if tid:
            with open(f"/proc/self/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/self/task/{tid}/syscall") as f:
                call = f.read().split()[0]
            if state == "S" and call == "1":
                break
        assert time.monotonic() < deadline, "the writer never blocked"
        time.sleep(0.001)
    assert libc.munmap(buf, size) == 0
    got = 0
    while got < capacity:
        got += len(os.read(r, capacity))
    t.join()
    assert result["n"] == capacity, result  # the bytes copied before the unmapped page
    os.write(wp, b"\n" + valid([3]))
    assert os.read(r, 65536) == b"\n" + valid([3])
    os.close(wp)
    os.close(r)
    w.write(valid([4]))  # the reader's pipe, a control
    return {"written_from_unmapped": result["n"]}


def run(case):
    reader = subprocess.Popen(READER, stdin=subprocess.PIPE)
    w = reader.stdin
    out = {"writer": os.getpid(), "reader": reader.pid}
    if case == "garbage":
        junk = bytes(b for b in os.urandom(8192) if b != 0x0A)
        w.write(b"{" + junk + b"\n")
        w.write(valid([1, 2, 3]))
    elif case == "invalid_utf8":
        w.write(b'{"jsonrpc":"2.0","id":9,"method":"\xff\xfe\xfd"}\n')
        w.write(valid([1, 2, 3]))
    elif case == "huge_line":
        line = msg(1, name="big", arguments={"data": "x" * (10 * 1024 * 1024)})
        out["huge_len"] = len(line) - 1
        os.write(w.fileno(), line)  # one write() of 10 MB
        w.write(valid([2]))
    elif case == "unterminated":
        w.write(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"\n')
        w.write(valid([2, 3]))
    elif case == "two_threads":
        w.flush()
        fd = w.fileno()

        def writer(t):
            for i in range(200):
                os.write(fd, msg(f"t{t}-{i}", name="echo"))  # < PIPE_BUF: atomic

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elif case == "killed_mid_message":
        # A child shares the reader's stdin, writes half a message, says so
        # on a separate pipe, and is SIGKILLed before it can finish.
        r, wr = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(r)
            os.write(w.fileno(), b'{"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"slow","arguments":{"x":"')
            os.write(wr, b"!")
            signal.pause()
            os._exit(0)
        os.close(wr)
        assert os.read(r, 1) == b"!"  # readiness: the half message is written
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        out["writer"] = child
    elif case == "fd_reused":
        # Half a message on one pipe, then the fd closed and its number
        # reused (dup2) for a pipe to a second reader, which gets a whole
        # message. The close must end the first stream: its half message
        # is dropped, not glued to the front of the second pipe's.
        fd = w.fileno()
        os.write(fd, b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"cut')
        reader2 = subprocess.Popen(READER, stdin=subprocess.PIPE)
        w.close()  # the fd's number is free now
        reader.wait()
        os.dup2(reader2.stdin.fileno(), fd)
        reader2.stdin.close()
        os.write(fd, msg(2, name="echo"))
        os.close(fd)
        reader2.wait()
        out["fd"] = fd
        out["second_reader"] = reader2.pid
    elif case == "binary_first":
        # This pipe's first bytes hold a NUL: no JSON-RPC text ever does, so
        # the kernel rules the fd out for good and the valid lines after it
        # go uncaptured. A second pipe, text from its first byte, is the
        # control: it is captured.
        w.write(b"\x00\x01\x02\x03\n")
        w.flush()
        w.write(valid([1, 2, 3]))
        control = subprocess.Popen(READER, stdin=subprocess.PIPE)
        control.stdin.write(valid([4, 5, 6]))
        control.stdin.close()
        control.wait()
        out["control_reader"] = control.pid
    elif case == "read_fault":
        out.update(read_fault(w))
    else:
        raise SystemExit(f"unknown case {case}")
    w.close()
    reader.wait()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    run(sys.argv[1])

"""A proof worker: a process of its own that proves the sidecars of programs it is sent, so that
`serve` builds a large policy's messages on one core while the proof runs on another.

The parent writes a program (pickled, length-prefixed) to the worker's standard input and reads the
outcome (a `verify.compose.Composition`, or the worker's error) from its standard output. The two
processes are one program's halves, started together: nothing else writes to the pipe.
"""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import threading

_LENGTH = struct.Struct("!Q")


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream):
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the proof worker closed its pipe")
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the proof worker closed its pipe")
    return pickle.loads(data)


class Worker:
    """The parent's end: `prove(program)` starts a proof and returns a function that waits for it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "anyplane.compiler.prover"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self.lock = threading.Lock()
        self.sent = 0  # programs sent

    def prove(self, program):
        """Send the program (from a thread: pickling and writing overlap the caller's work); the
        returned function gives the Composition, or raises WorkerError when the worker failed."""
        sent: list = []

        def send():
            try:
                _send(self.proc.stdin, program)
            except (OSError, ValueError) as exc:
                sent.append(exc)
        self.lock.acquire()
        self.sent += 1
        writer = threading.Thread(target=send, daemon=True)
        writer.start()

        def result():
            try:
                writer.join()
                if sent:
                    raise WorkerError(f"cannot reach the proof worker: {sent[0]}")
                try:
                    kind, value = _receive(self.proc.stdout)
                except (EOFError, OSError, pickle.UnpicklingError) as exc:
                    raise WorkerError(str(exc)) from None
                if kind == "error":
                    raise WorkerError(value)
                return value
            finally:
                self.lock.release()
        return result

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WorkerError(Exception):
    """The proof worker failed (died, or raised): the proof is made in the parent instead."""


def main() -> None:
    import importlib

    from .api import _prove_program

    importlib.import_module("anyplane.verify.compose")  # ahead: the first proof does not pay for it

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            program = _receive(stdin)
        except EOFError:
            return
        try:
            out = ("ok", _prove_program(program))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which proves again itself
            out = ("error", f"{type(exc).__name__}: {exc}")
        _send(stdout, out)


if __name__ == "__main__":
    main()

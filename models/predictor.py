"""How the judge talks to a model it never imports: the request, the predictor, and the wire between them.

Judging code (pinned). The judge asks for predictions on contexts whose target step and last separator it
has blanked, as uint8 pixels, and gets uint8 frames back, like a camera's. A predictor is either an object
in the judge's process (`models.serve.ModelPredictor`, for tests and tools that hold a model) or, as the
harness runs it, a process of its own in the agent's tree (`PredictorProcess`: `python -m models.serve`),
spoken to over two pipes. A message is

    b"WLP1" | header length (4 bytes, big-endian) | header (JSON) | payload: the arrays, raw, C order

with the header `{"op": ..., "arrays": [[name, dtype, shape], ...], ...}`:

    judge -> predictor   predict  {"seed": int, "hidden": [[start, stop], ...]}
                                  + context (B, H, W, 3) uint8, actions (B, K) int64
                         bye
    predictor -> judge   hello    {"model_kind": str, "parameters": int, "canvas": {...} | null}  (first)
                         prediction  + frames (B, K, H, W_target, 3) uint8
                         error    {"message": str}  (then it exits)

Nothing the predictor sends is trusted: the header is size-limited JSON, arrays are raw bytes of an allowed
dtype whose total size the judge bounds before reading any (never pickle), and every read and write of the
judge has the predictor's deadline, so a hung or crashed model becomes one line saying what happened.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.errors import WorldloopError

MAGIC = b"WLP1"
MAX_HEADER_BYTES = 1 << 20
CHUNK_BYTES = 1 << 20
DTYPES = {"uint8": np.dtype("u1"), "int64": np.dtype("<i8")}
CLOSE_WAIT_S = 5.0


class PredictorError(WorldloopError):
    """The model's predictor failed, broke the protocol, or did not answer in time."""


@dataclass(frozen=True)
class Request:
    """What a model is asked: frames for B contexts under K candidate actions each."""

    context: np.ndarray  # (B, H, W, 3) uint8, the `hidden` columns blanked to mid-gray
    actions: np.ndarray  # (B, K) int64 action ids
    seed: int
    hidden: tuple[tuple[int, int], ...]  # column ranges the judge blanked: target step, last separator

    def header(self) -> dict:
        return {"op": "predict", "seed": self.seed, "hidden": [list(h) for h in self.hidden]}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"context": self.context, "actions": self.actions}

    @classmethod
    def from_message(cls, header: dict, arrays: dict[str, np.ndarray]) -> Request:
        return cls(
            context=arrays["context"],
            actions=arrays["actions"],
            seed=int(header["seed"]),
            hidden=tuple((int(a), int(b)) for a, b in header["hidden"]),
        )

    @property
    def max_reply_bytes(self) -> int:
        """An upper bound of the frames' size: K target steps, each no larger than a whole canvas."""
        return self.context.nbytes * self.actions.shape[1]


class Predictor(Protocol):
    """What the judge needs of a model: who it is, and uint8 frames for a request."""

    @property
    def model_kind(self) -> str: ...

    @property
    def parameters(self) -> int: ...

    @property
    def canvas(self) -> dict | None:
        """The canvas config the model was built for (JSON form), checked against the task's."""

    def predict(self, request: Request) -> np.ndarray:
        """Frames (B, K, H, W_target, 3) uint8 for the request."""


# --------------------------------------------------------------------------------------------- the wire


class WireError(Exception):
    """Base of what can go wrong on a channel."""


class ChannelClosed(WireError):
    """The other end closed its pipe (or died)."""


class ChannelTimeout(WireError):
    """The deadline passed while waiting for the other end."""


class ProtocolError(WireError):
    """Bytes that are not a valid message."""


class Channel:
    """Messages over a pair of pipe file descriptors, each read and write bounded by an optional deadline
    (a `time.monotonic()` value). Blocking or non-blocking descriptors both work."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd

    def send(
        self, header: dict, arrays: dict[str, np.ndarray] | None = None, deadline: float | None = None
    ) -> None:
        wire = {name: _on_the_wire(array) for name, array in (arrays or {}).items()}
        described = [[name, dtype, list(array.shape)] for name, (dtype, array) in wire.items()]
        blob = json.dumps({**header, "arrays": described}).encode()
        self._write(MAGIC + struct.pack(">I", len(blob)) + blob, deadline)
        for _, array in wire.values():
            self._write(memoryview(array).cast("B"), deadline)

    def recv(
        self, deadline: float | None = None, max_payload: int | None = None
    ) -> tuple[dict, dict[str, np.ndarray]]:
        """The next message: its header and arrays. `max_payload` bounds the arrays' total size."""
        prefix = self._read(len(MAGIC) + 4, deadline)
        if prefix[: len(MAGIC)] != MAGIC:
            raise ProtocolError(f"a message starts with {MAGIC!r}, got {bytes(prefix)!r}")
        (length,) = struct.unpack(">I", prefix[len(MAGIC) :])
        if length > MAX_HEADER_BYTES:
            raise ProtocolError(f"a header of {length} bytes (at most {MAX_HEADER_BYTES})")
        try:
            header = json.loads(bytes(self._read(length, deadline)))
            described = [(str(name), DTYPES[dtype], _shape(shape)) for name, dtype, shape in header["arrays"]]
            if not isinstance(header["op"], str):
                raise TypeError("op is not a string")
        except (ValueError, KeyError, TypeError) as err:
            raise ProtocolError(f"a malformed header ({type(err).__name__}: {err})") from None
        sizes = [dtype.itemsize * math.prod(shape) for _, dtype, shape in described]
        if max_payload is not None and sum(sizes) > max_payload:
            raise ProtocolError(f"{sum(sizes)} bytes of arrays where at most {max_payload} can be right")
        arrays = {
            name: np.frombuffer(self._read(size, deadline), dtype).reshape(shape)
            for (name, dtype, shape), size in zip(described, sizes, strict=True)
        }
        return header, arrays

    def _write(self, data: bytes | memoryview, deadline: float | None) -> None:
        view = memoryview(data)
        while view.nbytes:
            _wait(self.write_fd, deadline, write=True)
            try:
                written = os.write(self.write_fd, view[:CHUNK_BYTES])
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise ChannelClosed("the other end closed its pipe") from None
            view = view[written:]

    def _read(self, n: int, deadline: float | None) -> bytearray:
        buffer = bytearray(n)
        view, got = memoryview(buffer), 0
        while got < n:
            _wait(self.read_fd, deadline, write=False)
            try:
                count = os.readv(self.read_fd, [view[got : got + CHUNK_BYTES]])
            except BlockingIOError:
                continue
            if count == 0:
                raise ChannelClosed("the other end closed its pipe")
            got += count
        return buffer


def _on_the_wire(array: np.ndarray) -> tuple[str, np.ndarray]:
    """(dtype name, contiguous array in the wire's byte order) of an array that may travel."""
    for name, dtype in DTYPES.items():
        if np.can_cast(array.dtype, dtype, casting="equiv"):
            return name, np.ascontiguousarray(array, dtype=dtype)
    raise TypeError(f"arrays of dtype {array.dtype} do not travel; only {', '.join(DTYPES)}")


def _shape(values: object) -> tuple[int, ...]:
    if not isinstance(values, list) or len(values) > 8:
        raise ValueError(f"{values!r} is not an array shape")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{values!r} is not an array shape")
    return tuple(values)


def _wait(fd: int, deadline: float | None, write: bool) -> None:
    timeout = None if deadline is None else deadline - time.monotonic()
    if timeout is not None and timeout <= 0:
        raise ChannelTimeout("the deadline passed")
    ready = select.select([], [fd], [], timeout)[1] if write else select.select([fd], [], [], timeout)[0]
    if not ready:
        raise ChannelTimeout("the deadline passed")


# ---------------------------------------------------------------------------------- the predictor process


ATTACHED_ENV = "WORLDLOOP_PREDICTOR"
"""Where the harness's fork server (harness/forkserver.py) tells a judge it started about the predictor it
forked beside it: its pid (the judge's child), its pipes and what it runs. A judge whose predictor would be
exactly that takes it over instead of starting another (saving an interpreter's start, `import torch`
included); any other is ended."""


class _AttachedProcess:
    """A predictor this process did not start with Popen but is the parent of (forked beside the judge), with
    the part of Popen's interface PredictorProcess uses."""

    def __init__(self, pid: int, stdin_fd: int, stdout_fd: int) -> None:
        self.pid = pid
        self.stdin = os.fdopen(stdin_fd, "wb", buffering=0)
        self.stdout = os.fdopen(stdout_fd, "rb", buffering=0)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("models.serve", timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _attached_predictor(args: list[str], root: Path) -> _AttachedProcess | None:
    """The predictor announced in ATTACHED_ENV if it runs `models.serve ARGS` in `root`, else None (an
    announced one that does not is ended). Taken once: the variable is removed."""
    announced = os.environ.pop(ATTACHED_ENV, None)
    if not announced:
        return None
    info = json.loads(announced)
    process = _AttachedProcess(info["pid"], info["stdin"], info["stdout"])
    if (info["module"], info["args"], Path(info["cwd"]).resolve()) == ("models.serve", args, root):
        return process
    process.kill()
    process.wait()
    process.stdin.close()
    process.stdout.close()
    return None


class PredictorProcess:
    """A run's model served by `python -m models.serve RUN_DIR` in `root` (cwd and PYTHONPATH), so the
    model's code is that tree's, in a process the judge only exchanges pixels with.

    `timeout_s` is the predictor's whole time, from its start (or from when this judge took over one the
    fork server started beside it, ATTACHED_ENV): loading the run and every prediction. Its stderr (and
    what it prints) goes to this process's stderr; in the harness, the evaluation log.
    """

    def __init__(
        self,
        run_dir: Path,
        root: Path,
        device: str = "cpu",
        timeout_s: float | None = None,
        python: str = sys.executable,
    ) -> None:
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        root = Path(root).resolve()
        args = [str(Path(run_dir).resolve()), "--device", device]
        self.process = _attached_predictor(args, root)
        if self.process is None:
            command = [python, "-m", "models.serve", *args]
            env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}
            self.process = subprocess.Popen(
                command, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
            )
        os.set_blocking(self.process.stdin.fileno(), False)  # a write waits for the deadline, not forever
        self.channel = Channel(self.process.stdout.fileno(), self.process.stdin.fileno())
        self._hello: dict | None = None

    def __enter__(self) -> PredictorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def hello(self) -> dict:
        """The predictor's first message, once its run is loaded (waited for on first use)."""
        if self._hello is None:
            header, _ = self._exchange("loading the run", None, None)
            if header.get("op") != "hello":
                self._protocol_error("loading the run", f"expected hello, got {header['op']!r}")
            kind, parameters = header.get("model_kind"), header.get("parameters")
            canvas = header.get("canvas")
            if not isinstance(kind, str) or isinstance(parameters, bool) or not isinstance(parameters, int):
                self._protocol_error("loading the run", "hello needs a model_kind (str) and parameters (int)")
            if canvas is not None and not isinstance(canvas, dict):
                self._protocol_error("loading the run", "hello's canvas must be an object or null")
            self._hello = {"model_kind": kind[:100], "parameters": parameters, "canvas": canvas}
        return self._hello

    @property
    def model_kind(self) -> str:
        return self.hello["model_kind"]

    @property
    def parameters(self) -> int:
        return self.hello["parameters"]

    @property
    def canvas(self) -> dict | None:
        return self.hello["canvas"]

    def predict(self, request: Request) -> np.ndarray:
        self.hello  # noqa: B018 -- the hello comes first on the pipe
        header, arrays = self._exchange("predicting", request, request.max_reply_bytes)
        if header.get("op") != "prediction" or set(arrays) != {"frames"}:
            self._protocol_error("predicting", f"expected a prediction with frames, got {header['op']!r}")
        return arrays["frames"]

    def close(self) -> None:
        """Say bye, give the predictor a moment to leave, then make sure it has."""
        if self.process.poll() is None:
            with contextlib.suppress(WireError):
                self.channel.send({"op": "bye"}, deadline=time.monotonic() + 1.0)
            try:
                self.process.wait(timeout=CLOSE_WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()

    def _exchange(
        self, what: str, request: Request | None, max_payload: int | None
    ) -> tuple[dict, dict[str, np.ndarray]]:
        """Send `request` (if any) and read the reply; every failure becomes one PredictorError line."""
        try:
            if request is not None:
                self.channel.send(request.header(), request.arrays(), self.deadline)
            header, arrays = self.channel.recv(self.deadline, max_payload)
        except ChannelTimeout:
            self._kill()
            raise PredictorError(
                f"the model's predictor did not answer within {self.timeout_s:g}s ({what})"
            ) from None
        except ChannelClosed:
            raise PredictorError(f"the model's predictor {self._ended()} while {what}") from None
        except ProtocolError as err:
            self._protocol_error(what, str(err))
        if header["op"] == "error":
            self._kill()
            raise PredictorError(f"the model's predictor failed while {what}: {header.get('message')}")
        return header, arrays

    def _protocol_error(self, what: str, detail: str) -> None:
        self._kill()
        raise PredictorError(f"the model's predictor broke the protocol while {what}: {detail}")

    def _ended(self) -> str:
        try:
            code = self.process.wait(timeout=CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            self._kill()
            return "closed its pipe"
        return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

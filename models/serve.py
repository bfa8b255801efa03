"""The model's side of judging: a world model answering the judge's requests, in pixels.

Judging code (pinned). `ModelPredictor` applies the contract's conventions to a model in the same process:
uint8 contexts become [-1, 1] tensors (the blanked columns exactly mid-gray), torch is seeded with the
request's seed, `predict` is called, and the frames go back as uint8 pixels. As the harness runs it, it is
a process of its own in the tree whose code made the run:

    python -m models.serve RUN_DIR [--device cpu]        (cwd and PYTHONPATH: that tree)

It loads the run with that tree's `models.checkpoint.load_run` (how a run is loaded is the model's
business), says hello, then answers requests (models/predictor.py) until the judge says bye or closes the
pipe. Before any model code is imported the protocol moves to private file descriptors and fd 1 is pointed
at stderr, so a model that prints cannot corrupt a message. A failure is sent to the judge as one line
(the traceback goes to stderr, the judge's log) and ends the process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from models.errors import WorldloopError
from models.pixels import to_tensor, to_uint8
from models.predictor import Channel, ChannelClosed, Request, WireError


class ModelPredictor:
    """A world model (the `WorldModel` contract) in this process, as a `models.predictor.Predictor`."""

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.model_kind = str(model.kind)
        self.parameters = int(model.num_parameters())
        self.canvas = model.canvas.model_dump(mode="json")

    def hello(self) -> dict:
        return {"model_kind": self.model_kind, "parameters": self.parameters, "canvas": self.canvas}

    def predict(self, request: Request) -> np.ndarray:
        torch.manual_seed(request.seed)  # a model drawing from torch's generator is reproducible per request
        with torch.inference_mode():
            context = to_tensor(request.context, self.device)
            for start, stop in request.hidden:
                context[..., start:stop] = 0.0  # mid-gray in model space, exactly
            actions = torch.as_tensor(request.actions, device=self.device)
            frames = self.model.predict(context, actions, seed=request.seed)
            if not isinstance(frames, torch.Tensor):
                raise WorldloopError(f"predict returned a {type(frames).__name__}, not a tensor")
            if not torch.isfinite(frames).all():
                raise WorldloopError("the model predicted non-finite values (NaN or inf)")
            return to_uint8(frames)


def claim_stdio() -> Channel:
    """The judge's pipes (this process's stdin and stdout) moved to private descriptors; then fd 0 reads
    nothing and fd 1 writes to stderr. The new descriptors are not inherited by children."""
    channel = Channel(os.dup(0), os.dup(1))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return channel


def load(run_dir: Path, device: str) -> ModelPredictor:
    """The run's model, loaded by its own tree's code: the first model code this process runs."""
    from models.checkpoint import load_run

    model, _ = load_run(Path(run_dir), ema=True, device=device)
    return ModelPredictor(model, device)


def serve(channel: Channel, predictor: ModelPredictor) -> None:
    """Answer requests until the judge says bye or closes the pipe."""
    while True:
        try:
            header, arrays = channel.recv()
        except ChannelClosed:
            return
        if header["op"] == "bye":
            return
        try:
            frames = predictor.predict(Request.from_message(header, arrays))
        except (Exception, SystemExit) as err:
            fail(channel, err)
        channel.send({"op": "prediction"}, {"frames": frames})


def fail(channel: Channel, err: BaseException) -> NoReturn:
    """Tell the judge what went wrong in one line, leave the traceback on stderr, and exit."""
    traceback.print_exception(err)
    first = (str(err).strip().splitlines() or [""])[0][:300]
    message = first if isinstance(err, WorldloopError) else f"{type(err).__name__}: {first}"
    with contextlib.suppress(WireError):  # the judge may be gone: then nobody is left to tell
        channel.send({"op": "error", "message": message})
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.serve", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    channel = claim_stdio()
    try:
        predictor = load(args.run_dir, args.device)
    except (Exception, SystemExit) as err:
        fail(channel, err)
    with contextlib.suppress(ChannelClosed):  # the judge left (it failed or was stopped): nothing to do
        channel.send({"op": "hello", **predictor.hello()})
        serve(channel, predictor)
    sys.stderr.flush()
    os._exit(0)  # nothing to save: skip the interpreter's teardown (a second of torch's), the judge waits


if __name__ == "__main__":
    main()

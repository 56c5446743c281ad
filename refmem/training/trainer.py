"""Mini-batch training loop with exact (bit-identical) checkpoint/resume.

:class:`Trainer` owns **one** :class:`numpy.random.Generator` (seeded) from which every random
draw of training comes, in a fixed order: the epoch's shuffling permutation at the start of
each epoch, then per mini-batch the weight-noise realisation (if noise-aware training is on)
and the dropout masks (in layer order). A checkpoint stores the parameters and batchnorm
buffers, the optimizer state, the epoch / step counters, the current epoch's permutation and
position in it, the running loss sums, the history and ``Generator.bit_generator.state``, so a
run interrupted at any checkpoint and resumed ends with exactly the same weights (bit for bit)
as an uninterrupted run on the same machine.

Checkpoint file (HDF5, written atomically through ``<name>.partial``)::

    /            attrs: format="refmem-checkpoint", version=1, epoch, step, batch, seed,
                        rng_state (JSON), history (JSON), sums (JSON), optimizer (JSON
                        hyperparameters), noise (JSON or ""), train_seconds, dtype
    /model/<pos>.<name>         parameters and buffers ("03.weight", "04.running_var", …)
    /optim/<key>/<pos>.<name>   optimizer state arrays; attrs t, lr
    /perm                       permutation of the current epoch (absent between epochs)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .losses import LOSSES
from .model import Sequential
from .optim import Optimizer, StepLR

CHECKPOINT_FORMAT = "refmem-checkpoint"
CHECKPOINT_VERSION = 1


class Trainer:
    """Train a :class:`~refmem.training.model.Sequential` with mini-batch SGD / Adam.

    Parameters
    ----------
    model : Sequential
    loss : {"cross_entropy", "mse"} or a loss object (see :mod:`refmem.training.losses`)
    optimizer : Optimizer
        :class:`~refmem.training.optim.SGD` or :class:`~refmem.training.optim.Adam`.
    batch_size : int, default 64
        The last mini-batch of an epoch is smaller when the size does not divide N
        (``drop_last=True`` drops it, needed e.g. when batchnorm could see a single sample).
    seed : int, default 0
        Seed of the trainer's Generator (shuffling, dropout, weight noise).
    lr_schedule : StepLR or None
        Learning rate per epoch (``None``: constant).
    noise : WeightNoise or None
        Noise-aware training (:mod:`refmem.training.noise`).
    progress : bool, default True
        Show a tqdm progress bar with the running loss and accuracy.
    checkpoint : path or None
        Checkpoint file written at the end of every epoch, every ``checkpoint_every`` steps
        and when ``max_steps`` stops a run; :meth:`fit` resumes from it when it exists.
    checkpoint_every : int or None
        Also checkpoint every this many optimizer steps.
    drop_last : bool, default False
    log : callable or None
        Called with a one-line summary after every epoch (e.g. ``print``); default: the line
        is written through tqdm when ``progress`` is on, not at all otherwise.
    """

    def __init__(self, model: Sequential, loss, optimizer: Optimizer, *, batch_size=64, seed=0,
                 lr_schedule=None, noise=None, progress=True, checkpoint=None,
                 checkpoint_every=None, drop_last=False, log=None):
        if not isinstance(model, Sequential):
            raise ConfigError("model must be a refmem.training.Sequential")
        self.model = model
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ConfigError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}")
            loss = LOSSES[loss]()
        self.loss = loss
        if not isinstance(optimizer, Optimizer):
            raise ConfigError("optimizer must be a refmem.training SGD or Adam instance")
        self.optimizer = optimizer
        if int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.lr_schedule = lr_schedule if lr_schedule is not None else StepLR(())
        self.noise = noise
        self.progress = bool(progress)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        if checkpoint_every is not None and (int(checkpoint_every) < 1):
            raise ConfigError("checkpoint_every must be a positive number of steps")
        self.checkpoint_every = None if checkpoint_every is None else int(checkpoint_every)
        self.drop_last = bool(drop_last)
        self.log = log
        # progress state (all restored by a checkpoint)
        self.epoch = 0            # completed epochs
        self.step = 0             # optimizer steps taken
        self.batch = 0            # next mini-batch within the current epoch
        self.perm = None          # permutation of the current epoch (None between epochs)
        self.sums = [0.0, 0, 0]   # running loss sum (x batch size), correct, seen
        self.history = []
        self.train_seconds = 0.0

    # ================================================================== one step
    def train_step(self, xb, yb):
        """One optimizer step on a mini-batch; returns ``(loss, metric)`` at the noisy weights.

        With noise: λ fixed from the clean weights, one noise draw, forward/backward at the
        noisy weights, clean weights restored, gradient applied to them (straight-through).
        """
        model = self.model
        params = model.named_params()
        clean = None
        if self.noise is not None:
            noisy = self.noise.draw(model, self.rng)
            clean = {k: params[k].copy() for k in noisy}
            for k, v in noisy.items():
                params[k][...] = v
        out = model.forward(xb, train=True, rng=self.rng)
        loss, dout = self.loss(out, yb)
        if not np.isfinite(loss):
            raise DataError(f"training diverged: loss is {loss} at step {self.step} "
                            f"(lower the learning rate)")
        model.backward(dout)
        metric = self.loss.metric(out, yb)
        if clean is not None:
            for k, v in clean.items():
                params[k][...] = v
        self.optimizer.step(params, model.named_grads())
        self.step += 1
        return loss, metric

    # ================================================================== the loop
    def _check_data(self, x, y, what="training"):
        x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim < 1 or tuple(x.shape[1:]) != self.model.input_shape:
            raise DataError(f"{what} inputs have shape {x.shape} but the model expects "
                            f"(N, {', '.join(map(str, self.model.input_shape))})")
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{what} inputs have {x.shape[0]} rows but the targets {y.shape[0]}")
        if x.shape[0] == 0:
            raise DataError(f"{what} set is empty")
        return x, y

    def n_batches(self, n):
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def fit(self, x, y, epochs, *, x_val=None, y_val=None, max_steps=None, resume=True):
        """Train until ``epochs`` epochs are completed (or ``max_steps`` optimizer steps).

        Parameters
        ----------
        x : ndarray (N, *input_shape)
            Preprocessed inputs (converted to the model dtype batch by batch).
        y : ndarray (N,) int labels or (N, n_out) / (N,) regression targets
        epochs : int
            Total number of epochs (including epochs done before a resume).
        x_val, y_val : optional evaluation set, evaluated after every epoch (no randomness).
        max_steps : int, optional
            Stop after this many optimizer steps in total (a checkpoint is written); a later
            call resumes exactly.
        resume : bool, default True
            Load ``checkpoint`` first when the file exists.

        Returns
        -------
        history : list of dict
            One entry per epoch: ``epoch``, ``lr``, ``loss``, ``accuracy`` (classification),
            ``val_loss``, ``val_accuracy``, ``seconds``.
        """
        from tqdm.auto import tqdm

        x, y = self._check_data(x, y)
        if x_val is not None:
            x_val, y_val = self._check_data(x_val, y_val, "validation")
        if int(epochs) != epochs or epochs < 0:
            raise ConfigError(f"epochs must be a non-negative integer, got {epochs}")
        if resume and self.checkpoint is not None and self.checkpoint.exists():
            self.load_checkpoint(self.checkpoint)
        N = x.shape[0]
        nb = self.n_batches(N)
        if nb == 0:
            raise ConfigError(f"batch_size {self.batch_size} with drop_last leaves no batch "
                              f"of {N} samples")
        while self.epoch < epochs:
            if max_steps is not None and self.step >= max_steps:
                break
            if self.perm is None:
                self.perm = self.rng.permutation(N)
                self.batch = 0
                self.sums = [0.0, 0, 0]
            lr = self.lr_schedule(self.optimizer.base_lr, self.epoch)
            self.optimizer.lr = lr
            bar = tqdm(total=nb, initial=self.batch, desc=f"epoch {self.epoch + 1}/{epochs}",
                       disable=not self.progress, leave=False, dynamic_ncols=True)
            t0 = time.perf_counter()
            stopped = False
            while self.batch < nb:
                sel = self.perm[self.batch * self.batch_size:(self.batch + 1) * self.batch_size]
                loss, metric = self.train_step(x[sel], y[sel])
                self.batch += 1
                self.sums[0] += loss * len(sel)
                self.sums[1] += metric or 0
                self.sums[2] += len(sel)
                bar.update(1)
                post = {"loss": f"{self.sums[0] / self.sums[2]:.4f}"}
                if self.loss.classification:
                    post["acc"] = f"{self.sums[1] / self.sums[2]:.4f}"
                bar.set_postfix(post, refresh=False)
                if max_steps is not None and self.step >= max_steps:
                    stopped = True
                    break
                if self.checkpoint_every and self.step % self.checkpoint_every == 0 \
                        and self.batch < nb:
                    self.train_seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save_checkpoint()
            bar.close()
            self.train_seconds += time.perf_counter() - t0
            if stopped and self.batch < nb:
                self.save_checkpoint()
                break
            rec = {"epoch": self.epoch + 1, "lr": lr, "loss": self.sums[0] / self.sums[2],
                   "train_seconds": self.train_seconds}
            if self.loss.classification:
                rec["accuracy"] = self.sums[1] / self.sums[2]
            if x_val is not None:
                ev = self.evaluate(x_val, y_val)
                rec.update({f"val_{k}": v for k, v in ev.items()})
            self.history.append(rec)
            self.epoch += 1
            self.perm = None
            self.batch = 0
            line = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in rec.items())
            if self.log is not None:
                self.log(line)
            elif self.progress:
                tqdm.write(line)
            self.save_checkpoint()
        return self.history

    # ================================================================== evaluation
    def predict(self, x, batch_size=256):
        """Evaluation-mode forward (running batchnorm statistics, no dropout, clean weights)."""
        x = np.asarray(x)
        outs = [self.model.forward(x[i:i + batch_size], train=False)
                for i in range(0, x.shape[0], batch_size)]
        return np.concatenate(outs, axis=0)

    def evaluate(self, x, y, batch_size=256) -> dict:
        """``{"loss": …, "accuracy": …}`` (accuracy for classification only)."""
        x, y = self._check_data(x, y, "evaluation")
        out = self.predict(x, batch_size)
        loss, _ = self.loss(out, y)
        res = {"loss": loss}
        if self.loss.classification:
            res["accuracy"] = self.loss.metric(out, y) / x.shape[0]
        return res

    # ================================================================== checkpoints
    def save_checkpoint(self, path=None):
        """Write the full training state (see the module docstring); no-op without a path."""
        path = self.checkpoint if path is None else Path(path)
        if path is None:
            return
        from ..io import write_attrs, write_h5

        def build(f):
            write_attrs(f, {
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "epoch": self.epoch, "step": self.step, "batch": self.batch, "seed": self.seed,
                "rng_state": self.rng.bit_generator.state, "history": self.history,
                "sums": list(self.sums), "optimizer": self.optimizer.hyperparameters(),
                "noise": self.noise.to_dict() if self.noise is not None else "",
                "train_seconds": self.train_seconds, "dtype": str(self.model.dtype)})
            g = f.create_group("model")
            for k, v in self.model.state_arrays().items():
                g.create_dataset(k, data=v)
            o = f.create_group("optim")
            sd = self.optimizer.state_dict()
            o.attrs["t"] = sd.pop("t")
            o.attrs["lr"] = sd.pop("lr")
            for k, v in sd.items():
                o.create_dataset(k, data=v)
            if self.perm is not None:
                f.create_dataset("perm", data=self.perm)

        write_h5(path, CHECKPOINT_FORMAT, build)

    def load_checkpoint(self, path):
        """Restore the state written by :meth:`save_checkpoint` into this trainer and model."""
        import h5py

        path = Path(path)
        if not path.exists():
            raise DataError(f"checkpoint not found: {path}")
        try:
            f = h5py.File(path, "r")
        except OSError:
            raise DataError(f"{path} is not a readable HDF5 checkpoint") from None
        from ..io import decode_attrs

        with f:
            a = decode_attrs(f.attrs)
            fmt = str(a.get("format", ""))
            if fmt != CHECKPOINT_FORMAT or int(a.get("version", -1)) != CHECKPOINT_VERSION:
                raise DataError(f"{path} is not a refmem checkpoint (format {fmt!r})")
            if str(a["dtype"]) != str(self.model.dtype):
                raise DataError(f"{path}: checkpoint dtype {a['dtype']} differs from the model "
                                f"dtype {self.model.dtype}")
            hp = a["optimizer"]
            if hp.get("optimizer") != self.optimizer.name:
                raise DataError(f"{path}: checkpoint optimizer {hp.get('optimizer')!r} differs "
                                f"from {self.optimizer.name!r}")
            self.model.load_state_arrays({k: f["model"][k][()] for k in f["model"]},
                                         where=str(path))
            sd = {"t": int(f["optim"].attrs["t"]), "lr": float(f["optim"].attrs["lr"])}
            for key in f["optim"]:
                for name in f["optim"][key]:
                    sd[f"{key}/{name}"] = f["optim"][key][name][()]
            self.optimizer.load_state_dict(sd)
            self.epoch = int(a["epoch"])
            self.step = int(a["step"])
            self.batch = int(a["batch"])
            self.seed = int(a["seed"])
            self.rng = np.random.default_rng(self.seed)      # state replaced just below
            self.rng.bit_generator.state = a["rng_state"]
            self.history = a["history"]
            s = a["sums"]
            self.sums = [float(s[0]), int(s[1]), int(s[2])]
            self.train_seconds = float(a["train_seconds"])
            self.perm = f["perm"][()] if "perm" in f else None

    def metadata(self) -> dict:
        """Training metadata for the model file's root attributes (JSON-valued where nested)."""
        md = {"training_loss": self.loss.name, "training_optimizer": json.dumps(
            self.optimizer.hyperparameters()), "training_batch_size": self.batch_size,
            "training_seed": self.seed, "training_epochs": self.epoch,
            "training_steps": self.step, "training_seconds": float(self.train_seconds),
            "training_lr_schedule": json.dumps(self.lr_schedule.to_dict()),
            "training_dtype": str(self.model.dtype),
            "training_noise": json.dumps(self.noise.to_dict()) if self.noise else "none",
            "training_history": json.dumps(self.history)}
        return md

"""Resume after SIGKILL, atomic and safe checkpoints, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from monai_mcx.engines.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from monai_mcx.engines.resume import LastCheckpoint

from conftest import CONFIGS, REPO, bundle_overrides


def _flags(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return out


def _train_cmd(overrides: dict) -> list[str]:
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(CONFIGS / "train.json"),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        *_flags(overrides),
    ]


ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _tb_losses(root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for ev in sorted((root / "eval" / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag == "loss" or tag.startswith("loss/"):
                out.setdefault(tag, []).extend((s.step, s.value) for s in acc.Scalars(tag))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_datalist):
    """Two uninterrupted deterministic runs (A, B) and one run killed after its first "last" checkpoint (C),
    started together; then C resumed with ``--resume true``."""
    base = tmp_path_factory.mktemp("resume")
    extra = dict(
        dataset_dir=str(demo_datalist.parent), deterministic=True, ckpt_interval_iters=2, epochs=2, max_items=24
    )
    roots = {name: base / name for name in "ABC"}
    procs = {
        name: subprocess.Popen(
            _train_cmd(bundle_overrides(root, **extra)),
            cwd=REPO,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, root in roots.items()
    }
    last_c = roots["C"] / "models" / "last.pt"
    deadline = time.time() + 300
    while not last_c.exists() and procs["C"].poll() is None and time.time() < deadline:
        time.sleep(0.01)
    procs["C"].send_signal(signal.SIGKILL)
    procs["C"].wait()
    killed = torch.load(last_c, map_location="cpu", weights_only=True)
    for name in "AB":
        _, err = procs[name].communicate(timeout=400)
        assert procs[name].returncode == 0, err[-3000:]
    resumed = subprocess.run(
        _train_cmd(bundle_overrides(roots["C"], **extra, resume=True)),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return roots, killed, resumed.stdout + resumed.stderr


def test_kill_and_resume_equals_uninterrupted_run(runs):
    roots, killed, log = runs
    assert procs_killed_mid_training(killed)
    it = int(killed["trainer"]["iteration"])
    assert (
        f"resumed from {roots['C'] / 'models' / 'last.pt'} at epoch {it // killed['trainer']['epoch_length']}, iteration {it}"
        in log
    )
    ref = torch.load(roots["A"] / "models" / "last.pt", map_location="cpu", weights_only=True)
    res = torch.load(roots["C"] / "models" / "last.pt", map_location="cpu", weights_only=True)
    assert dict(res["trainer"]) == dict(ref["trainer"])
    assert res["lr_scheduler"]["last_epoch"] == ref["lr_scheduler"]["last_epoch"]
    for key, value in ref["model"].items():
        assert torch.equal(value, res["model"][key]), key
    for pid, st in ref["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(res["optimizer"]["state"][pid][k])), (pid, k)
    # the losses after the resume point are the uninterrupted run's, step for step
    start = int(killed["trainer"]["iteration"])
    ref_loss = {s: v for s, v in _tb_losses(roots["A"])["loss"] if s > start}
    res_loss = {s: v for s, v in _tb_losses(roots["C"])["loss"] if s > start}
    assert ref_loss and all(res_loss[s] == v for s, v in ref_loss.items())


def procs_killed_mid_training(killed: dict) -> bool:
    trainer = killed["trainer"]
    return 0 < trainer["iteration"] < trainer["max_epochs"] * trainer["epoch_length"]


def test_two_deterministic_runs_give_identical_losses(runs):
    roots, _, _ = runs
    a, b = _tb_losses(roots["A"]), _tb_losses(roots["B"])
    assert "loss" in a and len(a["loss"]) >= 2
    assert a == b
    wa = torch.load(roots["A"] / "models" / "last.pt", map_location="cpu", weights_only=True)["model"]
    wb = torch.load(roots["B"] / "models" / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------------ safe loading
def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    path = save_checkpoint({"model": _net().state_dict()}, tmp_path / "last.pt")
    data = path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt") as exc:
        load_checkpoint(bad, {"model": _net()})
    assert "corrupt, truncated" in str(exc.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage, {"model": _net()})
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", {"model": _net()})


def test_mismatched_checkpoint_names_keys(tmp_path):
    path = save_checkpoint({"model": _net().state_dict()}, tmp_path / "m.pt")
    other = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 1))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, {"model": other})
    msg = str(exc.value)
    assert "m.pt" in msg and "missing keys: 4.bias, 4.weight" in msg and "shape-mismatched keys: 2.bias" in msg
    with pytest.raises(CheckpointError, match="holds no entry for \\['optimizer'\\]"):
        load_checkpoint(path, {"model": _net(), "optimizer": torch.optim.SGD(_net().parameters(), lr=0.1)})
    # a weights-only model.pt, and a DDP-prefixed one, load into a plain network
    torch.save(_net().state_dict(), tmp_path / "w.pt")
    load_checkpoint(tmp_path / "w.pt", {"model": _net()})
    torch.save({f"module.{k}": v for k, v in _net().state_dict().items()}, tmp_path / "ddp.pt")
    load_checkpoint(tmp_path / "ddp.pt", {"model": _net()})


def test_multichexnet_mismatch_and_config_loader(tmp_path):
    """The bundle's network: a checkpoint of a 3-task network into a classification-only one (non-strict
    allowed, strict names the unexpected head keys); the CheckpointLoader handler raises the same error."""
    from ignite.engine import Engine

    from monai_mcx.engines.checkpoint import SafeCheckpointLoader
    from monai_mcx.networks import MultiCheXNet

    full = MultiCheXNet(encoder="densenet-tiny", class_names=["pneumonia"])
    torch.save(full.state_dict(), tmp_path / "model.pt")
    cls_only = MultiCheXNet(encoder="densenet-tiny", class_names=["pneumonia"], tasks=("classification",))
    with pytest.raises(CheckpointError, match="unexpected keys: localization_head"):
        load_checkpoint(tmp_path / "model.pt", {"model": cls_only})
    load_checkpoint(tmp_path / "model.pt", {"model": cls_only}, strict=False)
    engine = Engine(lambda e, b: None)
    SafeCheckpointLoader(tmp_path / "model.pt", {"model": cls_only}).attach(engine)
    with pytest.raises(CheckpointError, match="model.pt"):
        engine.run([0], max_epochs=1)


def test_resume_from_truncated_last_checkpoint_fails_and_keeps_file(tmp_path):
    from ignite.engine import Engine

    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    good = save_checkpoint({"model": net.state_dict()}, tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(good[:100])
    engine = Engine(lambda e, b: None)
    LastCheckpoint(tmp_path, {"model": net, "optimizer": opt}, resume=True).attach(engine)
    with pytest.raises(CheckpointError, match="last.pt"):
        engine.run([0, 1], max_epochs=1)
    assert (tmp_path / "last.pt").read_bytes() == good[:100], "a failed resume must not overwrite the checkpoint"


KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys, torch
    from monai_mcx.engines import checkpoint as ck
    path = sys.argv[1]
    ck.save_checkpoint({"model": {"w": torch.ones(1000)}, "step": 1}, path)
    real_save = torch.save
    def dying_save(obj, f, *a, **k):   # write part of the new checkpoint, then die as with SIGKILL
        real_save(obj, f, *a, **k)
        f.flush(); f.truncate(200); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    ck.torch.save = dying_save
    ck.save_checkpoint({"model": {"w": torch.zeros(1000)}, "step": 2}, path)
    """
)


def test_kill_during_save_leaves_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, str(path)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(1000))
    stale = list(tmp_path.glob(".last.pt.*.tmp"))
    assert stale, "the partial temporary file is where the kill left it"
    from ignite.engine import Engine

    LastCheckpoint(tmp_path, {"model": _net()}).attach(Engine(lambda e, b: None))
    assert not list(tmp_path.glob(".last.pt.*.tmp")), "stale temporaries are removed when a run starts"


def test_no_unsafe_torch_load():
    """Every checkpoint load in the package and the bundle configs uses weights_only=True."""
    import re

    offenders = []
    for path in (
        list((REPO / "monai_mcx").rglob("*.py"))
        + list((REPO / "scripts").rglob("*.py"))
        + list((REPO / "experiments").rglob("*.py"))
        + list(CONFIGS.glob("*.json"))
    ):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"torch\.load\(", line) and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders


# ------------------------------------------------------------------------------------------ extending a run
def _lr_run(save_dir: Path, epochs: int, scheduler, resume: bool) -> tuple[list[float], object]:
    """Train a tiny model for ``epochs`` (MONAI's LrScheduleHandler steps ``scheduler`` every epoch, as in
    train.json); return the learning rate each epoch ran with, and the engine."""
    from ignite.engine import Engine, Events
    from monai.handlers import LrScheduleHandler

    torch.manual_seed(0)
    net = nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    sched = scheduler(opt, epochs)

    def step(engine, batch):
        opt.zero_grad()
        net(torch.ones(1, 2)).sum().backward()
        opt.step()

    engine = Engine(step)
    lrs: list[float] = []
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: lrs.append(opt.param_groups[0]["lr"]))
    LrScheduleHandler(sched, print_lr=False).attach(engine)
    LastCheckpoint(save_dir, {"model": net, "optimizer": opt, "lr_scheduler": sched}, resume=resume).attach(engine)
    engine.run([0, 1], max_epochs=epochs)
    return lrs, engine


def _cosine(epochs: int, base: float = 1e-3) -> list[float]:
    import math

    return [0.5 * base * (1 + math.cos(math.pi * t / epochs)) for t in range(epochs)]


def test_extending_a_finished_run_continues_the_cosine_for_the_new_length(tmp_path):
    """--resume true --epochs 8 after a 4-epoch run: epochs 5-8 run with the rates an 8-epoch cosine has at
    epochs 5-8 (decreasing), not with the old T_max=4 cosine climbing back to the peak (1.5e-4 ... 1e-3)."""

    def cosine(opt, epochs):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)

    first, _ = _lr_run(tmp_path, 4, cosine, resume=False)
    assert first == pytest.approx(_cosine(4), abs=1e-12)
    extended, engine = _lr_run(tmp_path, 8, cosine, resume=True)
    assert engine.state.epoch == 8
    assert extended == pytest.approx(_cosine(8)[4:], abs=1e-12)  # 5.0e-4, 3.1e-4, 1.5e-4, 3.8e-5
    assert all(a > b for a, b in zip(extended, extended[1:])) and max(extended) <= 0.5e-3 + 1e-12
    last = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert last["lr_scheduler"]["T_max"] == 8 and last["lr_scheduler"]["last_epoch"] == 8
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # a schedule without a closed form cannot be continued at another length: a clear refusal
    (tmp_path / "one_cycle").mkdir()

    def one_cycle(opt, epochs):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=epochs)

    _lr_run(tmp_path / "one_cycle", 4, one_cycle, resume=False)
    with pytest.raises(CheckpointError, match=r"total_steps: 4 in the checkpoint, 8 in this run"):
        _lr_run(tmp_path / "one_cycle", 8, one_cycle, resume=True)

"""Two-process torchrun (gloo, CPU) training with multi_gpu_train.json; metrics equal a one-process evaluation."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, REPO, bundle_overrides, run_bundle

pytestmark = pytest.mark.slow


def _flags(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return out


def _torchrun(config_files: list[str], overrides: dict, timeout: int = 420) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "--config_file", "[" + ",".join(f"'{CONFIGS / c}'" for c in config_files) + "]",
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"), *_flags(overrides)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _evaluate_single_process(overrides: dict, ckpt_dir: Path, out: Path) -> dict:
    run_bundle(["train.json", "evaluate.json"], **dict(overrides, ckpt_dir=str(ckpt_dir), output_dir=str(out), class_threshold=0.5))
    return json.loads((out / "metrics.json").read_text())


def _assert_same_metrics(ddp: dict, single: dict) -> None:
    common = sorted(set(ddp) & set(single) - {"val_score"})
    assert "classification/auc" in common and "segmentation/dice_positive" in common and "localization/ap50" in common, common
    diffs = {k: abs(ddp[k] - single[k]) for k in common if isinstance(ddp[k], float) and isinstance(single[k], float)}
    print("DDP vs single-process metric differences:", {k: v for k, v in diffs.items() if v})
    for key in common:
        a, b = ddp[key], single[key]
        if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
            assert a == b or (a is None and b is None), (key, a, b)
        else:
            assert abs(a - b) <= 1e-6, (key, a, b)


def test_torchrun_two_processes_gloo(tmp_path, demo_datalist, single_thread):
    # Validation with batch size 1 and one thread on both sides (torchrun sets OMP_NUM_THREADS=1; the
    # single-process evaluation runs here under `single_thread`): each image then goes through the same kernels
    # in both runs. With other batch shapes the per-image probabilities differ in the last float32 bits, and a
    # 2-epoch model's nearly tied probabilities reorder, which moved AUC by up to 0.1.
    overrides = bundle_overrides(tmp_path, dataset_dir=str(demo_datalist.parent), ckpt_interval_iters=0)
    overrides["validate#dataloader#batch_size"] = 1
    _torchrun(["train.json", "multi_gpu_train.json"], overrides)

    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "last.pt").is_file()
    assert not list(models.glob(".*.tmp")), "a temporary checkpoint file was left behind"
    last = torch.load(models / "last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]
    assert len(last["rng"]) == 2, "every rank's RNG state is saved"
    assert not any(k.startswith("module.") for k in last["model"]), "the DDP wrapper must not leak into checkpoints"

    # TensorBoard: event files from one process only (rank 0); rank 1 wrote none
    events = list((tmp_path / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    pids = {re.match(r"events\.out\.tfevents\.\d+\.[^.]+\.(\d+)\.", e.name).group(1) for e in events}
    assert len(pids) == 1, [e.name for e in events]

    # the DDP validation (each rank its shard, gathered) equals a one-process evaluation of the same weights
    ddp_metrics = json.loads((tmp_path / "eval" / "val_metrics.json").read_text())
    eval_models = tmp_path / "eval_models"
    eval_models.mkdir()
    torch.save(last["model"], eval_models / "model.pt")
    if (models / "anchors.json").is_file():  # the bundle may keep fitted anchors beside the weights
        (eval_models / "anchors.json").write_bytes((models / "anchors.json").read_bytes())
    single = _evaluate_single_process(overrides, eval_models, tmp_path / "eval_single")
    _assert_same_metrics(ddp_metrics, single)

    # multi_gpu_evaluate.json: the same numbers again, from two processes
    _torchrun(["train.json", "evaluate.json", "multi_gpu_evaluate.json"],
              dict(overrides, ckpt_dir=str(eval_models), output_dir=str(tmp_path / "eval_ddp"), class_threshold=0.5))
    _assert_same_metrics(json.loads((tmp_path / "eval_ddp" / "metrics.json").read_text()), single)


# --- skipping heads without labels under DDP (two gloo processes, no bundle: a few seconds) ---------------

#: per step, the samples of rank 0 and rank 1 (letters as in test_skip_heads.make_batch): step 2 leaves rank 1
#: without masks/boxes (it skips two heads, rank 0 does not); step 3 has no mask or box on any rank
SKIP_STEPS = [("fn", "nf"), ("fc", "cn"), ("cn", "nc"), ("nf", "fc")]


def _skip_batches(rank: int) -> list[dict]:
    from test_skip_heads import make_batch

    return [make_batch(kinds[rank], seed=10 * step + rank) for step, kinds in enumerate(SKIP_STEPS)]


def _ddp_skip_worker(rank: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist
    from ignite.engine import Events
    from test_skip_heads import make_loss, tiny_net, trainer_for

    from monai_mcx.engines.distributed import wrap_ddp

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        net = wrap_ddp(tiny_net(), torch.device("cpu"), find_unused_parameters=True)
        trainer = trainer_for(net, make_loss(), _skip_batches(rank))
        assert trainer.skip_unlabelled_heads
        heads = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: heads.append(sorted(e.state.output["pred"])))
        trainer.run()
        if rank == 0:
            torch.save({"state": net.module.state_dict(), "heads": heads}, out_file)
    finally:
        dist.destroy_process_group()


def test_ddp_skipping_heads_equals_one_process(tmp_path):
    """Two ranks that skip different heads train the same weights as one process that computes each rank's
    shard in turn (DDP's gradient mean = the mean of the shards' gradients; BatchNorm uses each shard's own
    statistics in both) and skips the same heads. No hang, no unused-parameter error."""
    import torch.multiprocessing as mp
    from test_skip_heads import make_loss, make_optimizer, tiny_net

    out_file = tmp_path / "rank0.pt"
    mp.start_processes(_ddp_skip_worker, args=(str(tmp_path / "init"), str(out_file)), nprocs=2, start_method="spawn")
    ddp = torch.load(out_file, map_location="cpu", weights_only=True)
    assert ["box_cls_logits", "box_regression", "class_logits", "seg_logits"] == ddp["heads"][0]
    assert ddp["heads"][2] == ["class_logits"], "step 3: no rank has a mask or box, only the classifier runs"

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, loss = tiny_net(), make_loss()
        opt = make_optimizer(net)
        shards = [_skip_batches(0), _skip_batches(1)]
        for step in range(len(SKIP_STEPS)):
            opt.zero_grad(set_to_none=False)  # as MultiTaskTrainer (MONAI's optim_set_to_none=False)
            net.train()
            for rank in range(2):
                b = shards[rank][step]
                sel = loss.select(b, net.tasks)
                needed = loss.needed_tasks(sel)
                out = loss(net(b["image"], tasks=needed if len(needed) < len(net.tasks) else None), b, sel)
                (out["loss"] / 2).backward()
            if step == 2:  # no rank ran the localization head: zero gradient (momentum and decay act as before)
                assert all(torch.count_nonzero(p.grad) == 0 for p in net.localization_head.parameters())
            opt.step()
    finally:
        torch.set_num_threads(n)
    single = net.state_dict()
    for name, value in ddp["state"].items():
        if value.dtype.is_floating_point and "running_" not in name:  # BatchNorm running stats: rank 0's only
            assert torch.allclose(value, single[name], atol=1e-6, rtol=1e-5), name

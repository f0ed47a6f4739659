"""Two-process torchrun (gloo, CPU) training with multi_gpu_train.json; metrics equal a one-process evaluation, and
multi_gpu_evaluate.json writes every output (metrics, report, per-image table, prediction files) as one process."""

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
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "[" + ",".join(f"'{CONFIGS / c}'" for c in config_files) + "]",
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        *_flags(overrides),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _evaluate_single_process(overrides: dict, ckpt_dir: Path, out: Path) -> dict:
    run_bundle(
        ["train.json", "evaluate.json"],
        **dict(
            overrides,
            ckpt_dir=str(ckpt_dir),
            output_dir=str(out),
            class_threshold=0.5,
            box_threshold=0.3,
            calibrate="none",
            write_predictions=True,
        ),
    )  # train.json's fixed operating point and raw probabilities (training's validation does not calibrate)
    return json.loads((out / "metrics.json").read_text())


def _csv_rows(path: Path) -> set[tuple]:
    import csv

    with path.open() as f:
        return {tuple(sorted(r.items())) for r in csv.DictReader(f)}


def _assert_same_outputs(ddp: Path, single: Path) -> None:
    """Every output of a distributed evaluation covers the whole split, as one process writes it (issue 24 item
    12): report.md, per_image.csv (rows as a set: the ranks' order differs), the prediction files."""
    from monai_mcx.transforms.io import read_cxr

    assert (ddp / "report.md").read_text() == (single / "report.md").read_text()
    rows = _csv_rows(single / "per_image.csv")
    assert len(rows) > 2 and _csv_rows(ddp / "per_image.csv") == rows
    assert sorted(p.name for p in (ddp / "plots").iterdir()) == sorted(p.name for p in (single / "plots").iterdir())
    pd, ps = ddp / "predictions", single / "predictions"
    names = sorted(p.name for p in ps.iterdir())
    assert sorted(p.name for p in pd.iterdir()) == names
    assert _csv_rows(pd / "predictions.csv") == _csv_rows(ps / "predictions.csv")
    records = [n for n in names if n.endswith(".json")]
    assert len(records) == len(rows), "one prediction record per evaluated image"
    for name in records:  # at the operating point each evaluation chose (the same: item 14)
        assert json.loads((pd / name).read_text()) == json.loads((ps / name).read_text()), name
    for name in (n for n in names if n.endswith("_mask.png")):
        assert (read_cxr(str(pd / name))[0] == read_cxr(str(ps / name))[0]).all(), name


def _assert_same_metrics(ddp: dict, single: dict) -> None:
    common = sorted(set(ddp) & set(single) - {"val_score"})
    assert (
        "classification/auc" in common and "segmentation/dice_positive" in common and "localization/ap50" in common
    ), common
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
    from monai_mcx.model import read_description, save_description

    # the description of last.pt describes these weights (same content hash), now as a plain model.pt
    save_description(
        read_description(models / "last.json").replace(weights_key=None, weights_file="model.pt"),
        eval_models / "model.pt",
    )
    single = _evaluate_single_process(overrides, eval_models, tmp_path / "eval_single")
    _assert_same_metrics(ddp_metrics, single)

    # multi_gpu_evaluate.json: the same numbers again, from two processes
    _torchrun(
        ["train.json", "evaluate.json", "multi_gpu_evaluate.json"],
        dict(
            overrides,
            ckpt_dir=str(eval_models),
            output_dir=str(tmp_path / "eval_ddp"),
            class_threshold=0.5,
            box_threshold=0.3,
            calibrate="none",
            write_predictions=True,
        ),
    )
    _assert_same_metrics(json.loads((tmp_path / "eval_ddp" / "metrics.json").read_text()), single)
    _assert_same_outputs(tmp_path / "eval_ddp", tmp_path / "eval_single")


# ------------------------------------------------------------------------------------------ config combinations
#: a probe merged last: every rank saves its network's weights after `initialize` (merge/pretrained/transfer
#: done) and, at the end, whether the trainer's network is DDP, the requires_grad flags and the final weights
PROBE = {
    "+initialize": [
        "$os.makedirs(@output_dir, exist_ok=True)",
        "$torch.save(@network.state_dict(), @output_dir + '/init_rank' + os.environ['RANK'] + '.pt')",
    ],
    "+finalize": [
        "$torch.save({'ddp': isinstance(@train#trainer.network, torch.nn.parallel.DistributedDataParallel), "
        "'trains_network': monai_mcx.engines.distributed.unwrap(@train#trainer.network) is @network, "
        "'requires_grad': {k: p.requires_grad for k, p in @network.named_parameters()}, "
        "'state': @network.state_dict()}, "
        "@output_dir + '/final_rank' + os.environ['RANK'] + '.pt')"
    ],
}


def _random_multichexnet(path: Path, seed: int, **kwargs) -> dict:
    from monai_mcx.networks import MultiCheXNet

    torch.manual_seed(seed)
    net = MultiCheXNet(encoder="densenet-tiny", class_names=["pneumonia"], **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # differs from any fresh initialisation
    torch.save(net.state_dict(), path)
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_finetune_and_multi_gpu_configs_commute():
    """finetune.json and multi_gpu_train.json touch different keys: either order gives the transfer network
    as `network` and DDP around it for the trainer (before, the later file's `network` replaced the other's)."""
    from monai.bundle import ConfigParser

    resolved = []
    orders = (
        ["train.json", "finetune.json", "multi_gpu_train.json"],
        ["train.json", "multi_gpu_train.json", "finetune.json"],
    )
    for order in orders:
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / c) for c in order])
        keys = ("network", "train#trainer#network", "ddp_network", "optimizer#params", "validate#evaluator#network")
        resolved.append({k: json.dumps(parser.get(k), sort_keys=True) for k in keys})
        assert parser.get("network")["_target_"] == "monai_mcx.model.merge.transfer_network", order
        assert "wrap_ddp(@network," in parser.get("ddp_network")
        assert parser.get("train#trainer#network") == "@ddp_network"
    assert resolved[0] == resolved[1]


def test_torchrun_finetune_merge_and_pretrained_encoder_under_ddp(tmp_path, demo_datalist):
    """One 2-process gloo run of train.json + multi_gpu_train.json + finetune.json (that order used to lose DDP)
    with --pretrained_encoder and --merge#heads_from (which raised "target network has no encoder" under DDP):
    the encoder comes from the pretrained file and stays frozen, the classifier from the merge source, the
    trainer trains through DDP (both ranks end with the same weights), and checkpoints hold no DDP prefix."""
    transfer = _random_multichexnet(tmp_path / "transfer_source.pt", 1)
    encoder = _random_multichexnet(tmp_path / "encoder_source.pt", 2)
    heads = _random_multichexnet(tmp_path / "heads_source.pt", 3, tasks=("classification",))
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps(PROBE))
    out = tmp_path / "eval"
    overrides = bundle_overrides(
        tmp_path,
        dataset_dir=str(demo_datalist.parent),
        ckpt_interval_iters=0,
        epochs=1,
        max_items=16,
        pretrained_ckpt=str(tmp_path / "transfer_source.pt"),
        pretrained_class_names=["another_disease"],
        freeze_encoder=True,
        pretrained_encoder=str(tmp_path / "encoder_source.pt"),
        class_names=["pneumonia"],
        # the transfer source is a bare state dict (no model.json): the documented opt-out (pretrained_description
        # None) reads it without a description, taking encoder/in_channels/pretrained_class_names from the config.
        # Written as the expression "$None": `monai.bundle run` drops a plain None override (update_kwargs ignore_none)
        pretrained_description="$None",
    )
    overrides["merge#heads_from"] = {"classification": str(tmp_path / "heads_source.pt")}
    _torchrun(["train.json", "multi_gpu_train.json", "finetune.json", str(probe)], overrides)

    enc_keys = [k for k in encoder if k.startswith("encoder.")]
    head_keys = [k for k in heads if k.startswith("classification_head.")]
    finals = []
    for rank in (0, 1):
        init = torch.load(out / f"init_rank{rank}.pt", map_location="cpu", weights_only=True)
        assert sorted(init) == sorted(enc_keys + head_keys), "finetune.json's classification-only network"
        assert all(torch.equal(init[k], encoder[k]) for k in enc_keys), "encoder from --pretrained_encoder"
        assert not torch.equal(init[enc_keys[0]], transfer[enc_keys[0]])
        assert all(torch.equal(init[k], heads[k]) for k in head_keys), "classifier from --merge#heads_from"
        final = torch.load(out / f"final_rank{rank}.pt", map_location="cpu", weights_only=True)
        assert final["ddp"] and final["trains_network"], "the trainer must train the transfer network through DDP"
        assert not any(v for k, v in final["requires_grad"].items() if k.startswith("encoder.")), "frozen encoder"
        assert all(torch.equal(final["state"][k], encoder[k]) for k in enc_keys), "frozen: weights and BN statistics"
        assert not torch.equal(final["state"]["classification_head.fc.weight"], heads["classification_head.fc.weight"])
        finals.append(final["state"])
    # each rank trained on its own shard: only DDP's gradient averaging keeps their weights equal
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    last = torch.load(tmp_path / "models" / "last.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in last["model"])
    assert all(torch.equal(last["model"][k], finals[0][k]) for k in head_keys)


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

    from monai_mcx.engines.distributed import wrap_ddp

    from test_skip_heads import make_loss, tiny_net, trainer_for

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
    statistics in both) and skips the same heads, each head running on its task's selected samples only. No
    hang, no unused-parameter error."""
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
                # as MultiTaskTrainer: each head that runs sees only its task's selected samples
                samples = {t: sel[t] for t in needed}
                out = loss(net(b["image"], tasks=needed or None, samples=samples), b, sel, gathered=bool(needed))
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

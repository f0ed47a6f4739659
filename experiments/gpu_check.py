"""CUDA-only checks and benchmark rows in one run (called by ``experiments/gpu_check.sh``); one JSON results file.

Sections (each timed, each failing alone without stopping the others; ``ok`` per section in the JSON):

1. ``amp_training``: :class:`monai_mcx.engines.MultiTaskTrainer` with ``amp=True`` (GradScaler, fp16 autocast)
   for a few steps of MultiCheXNet on synthetic batches: every loss finite, the weights changed.
2. ``amp_parity``: the same network in ``eval()``, fp32 vs fp16 autocast on the same batch. Tolerances
   (probabilities, max absolute difference): classification 0.01, segmentation 0.02, box scores 0.02;
   box regression (raw deltas) 0.05.
3. ``memory_format``: forward img/s with ``channels_last`` and with ``torch.compile`` against plain eager
   (AMP on), with the outputs compared to eager (same tolerances); whether each helps.
4. ``benchmark_rows``: ``python -m experiments.benchmark --device cuda`` rows (fp32, AMP, AMP + channels_last) at
   256 and 512 px, batch 1 and 32: img/s, MultiCheXNet vs the three single-task models.
5. ``training_throughput``: training img/s (AMP) of MultiCheXNet vs the three single-task models on jointly
   labelled synthetic batches, steps interleaved.

``--dry``: the same code on CPU with tiny sizes (64 px, ``densenet-tiny``, batch 2, one or two steps, no
``torch.compile``), so CI checks that the script starts and writes its file; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

from experiments import benchmark
from monai_mcx.keys import TASKS

TOL = {"class_prob": 0.01, "seg_prob": 0.02, "box_scores": 0.02, "box_regression": 0.05}


class Setup:
    def __init__(self, dry: bool):
        self.dry = dry
        self.device = torch.device("cpu" if dry else "cuda")
        self.encoder = "densenet-tiny" if dry else "densenet121"
        self.size = 64 if dry else 256
        self.batch = 2 if dry else 16
        self.steps = 2 if dry else 10
        self.amp = not dry

    def autocast(self, enabled: bool | None = None):
        on = self.amp if enabled is None else enabled
        return torch.autocast("cuda", dtype=torch.float16) if on and self.device.type == "cuda" else nullcontext()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def anchors(self):
        s = self.size / 8.0
        return [[s, s], [1.5 * s, 1.5 * s], [2 * s, 1.2 * s]]

    def net(self, tasks=TASKS):
        from monai_mcx.networks import MultiCheXNet

        torch.manual_seed(0)
        return MultiCheXNet(self.encoder, class_names=("pneumonia",), tasks=tasks, num_anchors=3).to(self.device)

    def loss(self):
        from monai_mcx.losses import LocalizationLoss, MultiCheXNetLoss
        from monai_mcx.networks import make_anchor_generator

        return MultiCheXNetLoss(localization_loss=LocalizationLoss(make_anchor_generator(self.anchors())))

    def batch_data(self, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        n, sz = self.batch, self.size
        mask = torch.zeros(n, 1, sz, sz)
        mask[:, :, sz // 4 : sz // 2, sz // 3 : sz // 2] = 1
        pos = (torch.arange(n) % 2 == 0).float()
        mask *= pos.view(-1, 1, 1, 1)
        box = torch.tensor([[sz / 4, sz / 3, sz / 2, sz / 2]])
        return {
            "image": torch.rand(n, 1, sz, sz, generator=g),
            "label": pos.view(-1, 1),
            "has_label": torch.ones(n),
            "mask": mask,
            "has_mask": torch.ones(n),
            "boxes": [box.clone() if p else torch.zeros(0, 4) for p in pos],
            "has_boxes": torch.ones(n),
            "positive": pos,
        }


def _trainer(s: Setup, net, data):
    from monai_mcx.engines import MultiTaskTrainer

    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    return MultiTaskTrainer(
        device=s.device,
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=s.loss(),
        amp=s.amp,
    )


def amp_training(s: Setup) -> dict:
    from ignite.engine import Events

    net = s.net()
    before = [p.detach().clone() for p in net.parameters()]
    trainer = _trainer(s, net, [s.batch_data(i) for i in range(s.steps)])
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, net.parameters()))
    finite = all(torch.isfinite(torch.tensor(losses)).tolist())
    return {
        "ok": finite and changed > 0,
        "losses": losses,
        "params_changed": changed,
        "scaler": trainer.scaler is not None,
        "amp": s.amp,
    }


def _outputs(net, x, s: Setup, amp: bool) -> dict:
    with torch.no_grad(), s.autocast(amp):
        out = net(x)
    return {
        "class_prob": torch.sigmoid(out["class_logits"].float()),
        "seg_prob": torch.sigmoid(out["seg_logits"].float()),
        "box_scores": torch.cat([torch.sigmoid(m.float()).flatten(1) for m in out["box_cls_logits"]], 1),
        "box_regression": torch.cat([m.float().flatten(1) for m in out["box_regression"]], 1),
    }


def _diffs(a: dict, b: dict) -> dict:
    return {k: float((a[k] - b[k]).abs().max()) for k in a}


def amp_parity(s: Setup) -> dict:
    net = s.net().eval()
    x = s.batch_data()["image"].to(s.device)
    d = _diffs(_outputs(net, x, s, False), _outputs(net, x, s, True))
    return {"ok": all(d[k] <= TOL[k] for k in d), "max_abs_diff": d, "tolerance": TOL, "amp": s.amp}


def _img_s(fn, n_img: int, s: Setup, reps: int) -> float:
    fn()
    s.sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        s.sync()
        times.append(time.perf_counter() - t0)
    return n_img / statistics.median(times)


def memory_format(s: Setup) -> dict:
    x = s.batch_data()["image"].to(s.device)
    reps = 2 if s.dry else 10
    res = {}
    eager = s.net().eval()
    ref = _outputs(eager, x, s, s.amp)
    res["eager_img_s"] = _img_s(lambda: _outputs(eager, x, s, s.amp), x.shape[0], s, reps)
    cl = s.net().eval().to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    res["channels_last_img_s"] = _img_s(lambda: _outputs(cl, xc, s, s.amp), x.shape[0], s, reps)
    res["channels_last_max_abs_diff"] = _diffs(_outputs(cl, xc, s, s.amp), ref)
    res["channels_last_helps"] = res["channels_last_img_s"] > 1.05 * res["eager_img_s"]
    ok = all(v <= TOL[k] for k, v in res["channels_last_max_abs_diff"].items())
    if not s.dry:
        try:
            comp = torch.compile(s.net().eval())
            t0 = time.perf_counter()
            out = _outputs(comp, x, s, s.amp)
            res["compile_first_call_s"] = time.perf_counter() - t0
            res["compile_max_abs_diff"] = _diffs(out, ref)
            res["compile_img_s"] = _img_s(lambda: _outputs(comp, x, s, s.amp), x.shape[0], s, reps)
            res["compile_helps"] = res["compile_img_s"] > 1.05 * res["eager_img_s"]
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            res["compile_error"] = f"{type(e).__name__}: {e}"[:500]
    res["ok"] = ok
    return res


def benchmark_rows(s: Setup) -> dict:
    argv = (
        ["--device", "cpu", "--quick", "--encoder", s.encoder, "--no-xrv", "--no-memory", "--no-write"]
        if s.dry
        else [
            "--device",
            "cuda",
            "--sizes",
            "256",
            "512",
            "--batches",
            "1",
            "32",
            "--repeats",
            "5",
            "--no-xrv",
            "--no-write",
        ]
    )
    rows = benchmark.main(argv)
    return {"ok": bool(rows), "argv": argv, "rows": rows, "targets": benchmark.targets(rows)}


def training_throughput(s: Setup) -> dict:
    variants = {"multichexnet": TASKS, **{f"single_{t}": (t,) for t in TASKS}}
    trainers, nets = {}, {}
    data = [s.batch_data(i) for i in range(2)]
    for name, tasks in variants.items():
        nets[name] = s.net(tasks)
        trainers[name] = _trainer(s, nets[name], data[:1])
        trainers[name].run()  # warm-up (cudnn autotune, allocator)
    times = {k: [] for k in variants}
    rounds = 1 if s.dry else 3
    names = list(variants)
    for r in range(rounds):
        for name in names[r % 4 :] + names[: r % 4]:
            trainer = _trainer(s, nets[name], data * (1 if s.dry else 5))
            s.sync()
            t0 = time.perf_counter()
            trainer.run()
            s.sync()
            times[name].append((time.perf_counter() - t0) / len(trainer.data_loader))
    step = {k: statistics.median(v) for k, v in times.items()}
    total_single = sum(step[f"single_{t}"] for t in TASKS)
    return {
        "ok": True,
        "batch": s.batch,
        "size": s.size,
        "amp": s.amp,
        "img_s": {k: s.batch / v for k, v in step.items()},
        "step_s": step,
        "ratio_mcx_vs_sum_single": step["multichexnet"] / total_single,
    }


SECTIONS = [amp_training, amp_parity, memory_format, benchmark_rows, training_throughput]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry", action="store_true", help="CPU, tiny sizes: checks that everything starts")
    ap.add_argument("--out", type=Path, required=True, help="results JSON file")
    ap.add_argument("--only", nargs="*", help="run only these sections")
    args = ap.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available (use --dry on a CPU machine)", file=sys.stderr)
        return 2
    if not args.dry:
        torch.backends.cudnn.benchmark = True
    s = Setup(args.dry)
    import monai

    results = {
        "dry": args.dry,
        "device": torch.cuda.get_device_name(0) if not args.dry else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "sections": {},
    }
    t_all = time.perf_counter()
    for fn in SECTIONS:
        if args.only and fn.__name__ not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            res = fn(s)
        except Exception as e:  # noqa: BLE001 - one section failing must not hide the others
            res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        res["seconds"] = round(time.perf_counter() - t0, 2)
        results["sections"][fn.__name__] = res
        print(f"gpu_check {fn.__name__}: ok={res['ok']} ({res['seconds']} s)", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        from monai_mcx.utils import write_json_atomic

        results["seconds"] = round(time.perf_counter() - t_all, 2)
        results["ok"] = all(r["ok"] for r in results["sections"].values())
        write_json_atomic(json.loads(json.dumps(results, default=float)), args.out)  # after every section
    print(f"gpu_check: wrote {args.out} (ok={results['ok']})")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

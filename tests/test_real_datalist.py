"""Must-show: a datalist built by scripts/prepare_data.py from the real Kermany + covid_lungs +
qu_viral_lungs pack trains with the bundle's train.json, overriding only the datalist (plus sizes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_public_data import _load_prepare

from conftest import CONFIGS, SHARED, bundle_overrides

pytestmark = [pytest.mark.shared, pytest.mark.slow]

REAL = SHARED / "data" / "cxr-real"


def test_prepared_real_datalist_trains_with_train_json(tmp_path, capsys):
    if not (REAL / "kermany").is_dir():
        pytest.skip(f"real data not found at {REAL} (the shared cxr-real pack; set MCX_SHARED to its parent folder)")
    from monai.bundle import ConfigWorkflow

    # the datalist lives OUTSIDE dataset_dir: image paths are relative to the datalist's own folder
    out = tmp_path / "lists" / "datalist.json"
    prep = _load_prepare()
    assert (
        prep.main(
            [
                "--kermany",
                str(REAL / "kermany"),
                "--covid-lungs",
                str(REAL / "covid_lungs"),
                "--qu-viral-lungs",
                str(REAL / "qu_viral_lungs"),
                "--output",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    summary = capsys.readouterr().out
    dl = json.loads(out.read_text())
    assert dl["class_names"] == ["pneumonia"]
    items = [it for s in ("training", "validation", "test") for it in dl[s]]
    assert len(items) == 5216 + 283 + 700
    by = lambda src: [it for it in items if it["source"] == src]  # noqa: E731
    # class map: Kermany NORMAL -> 0, PNEUMONIA -> 1; COVID-19 (pneumonia-like) -> 1, "No Finding" -> 0; QU viral -> 1
    assert sum(it["label"][0] for it in by("kermany")) == 3875
    assert sum(it["label"][0] for it in by("covid_lungs")) == 282
    assert all(it["label"] == [1.0] for it in by("qu_viral_lungs"))
    # lung outlines are not lesions: not written as mask/boxes by default (unknown, not negative)
    assert all(it["mask"] is None and it["boxes"] is None for it in items)
    # ... they are lung_mask, for the lungs head (issue 23), and every item says its population
    assert all((out.parent / it["lung_mask"]).is_file() for it in by("covid_lungs") + by("qu_viral_lungs"))
    assert all(it["lung_mask"] is None for it in by("kermany"))
    assert {it["population"] for it in by("kermany") + by("qu_viral_lungs")} == {"pediatric"}
    assert {it["population"] for it in by("covid_lungs")} == {"adult"}
    assert "qu_viral_lungs" in summary and "covid_lungs" in summary
    assert not Path(items[0]["image"]).is_absolute() and (out.parent / items[0]["image"]).is_file()

    n = 32
    first = {it["source"] for it in dl["training"][:n]}
    assert first >= {"kermany", "qu_viral_lungs"}, first  # shuffled: max_items takes a mix

    root = tmp_path / "run"
    overrides = bundle_overrides(root, dataset_dir=str(REAL), datalist_file=str(out), max_items=n, epochs=1)
    wf = ConfigWorkflow(
        workflow_type="train",
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        **overrides,
    )
    wf.initialize()
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    state = trainer.state
    wf.finalize()
    assert state.iteration == math.ceil(n / overrides["batch_size"]) == 4
    loss = float(state.output["loss"]) if isinstance(state.output, dict) else float(state.output[0]["loss"])
    assert math.isfinite(loss)
    assert (root / "models" / "model.pt").is_file()
    print(f"real datalist: {state.iteration} iterations, last loss {loss:.4f}, sources {sorted(first)}")

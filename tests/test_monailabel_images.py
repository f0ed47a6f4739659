"""Which images a MONAI Label infer request may read (monailabel_app/lib/images.py; no MONAI Label needed), issue
24 item 18: the studies folder, the datastore's ids and the app's own upload folder only (no longer anything under
the system temp folder); a forbidden path and a missing one get the same answer (no probing which paths exist);
a list or dict ``image`` is checked too (it skipped the check)."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

import pytest

from conftest import REPO


def _images_module():
    spec = importlib.util.spec_from_file_location("mcx_ml_images", REPO / "monailabel_app" / "lib" / "images.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", None)  # restored after the test: the upload folder changes it
    mod = _images_module()
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "cxr_a.png").write_bytes(b"png")
    secret = tmp_path / "secret.png"  # tmp_path is under the system temp folder, outside the studies
    secret.write_bytes(b"png")
    (studies / "link.png").symlink_to(secret)
    uploads = mod.make_upload_dir()
    return mod, studies, secret, uploads


def _check(mod, image, studies, uploads):
    mod.check_image(image, lambda: ["cxr_a"], [str(studies), uploads])


def test_studies_ids_and_uploads_are_allowed(setup):
    mod, studies, _, uploads = setup
    for image in ("cxr_a", str(studies / "cxr_a.png")):
        _check(mod, image, studies, uploads)
    # MONAI Label's POST /infer with a file writes it with tempfile.NamedTemporaryFile: into the app's own folder
    upload = tempfile.NamedTemporaryFile(suffix=".png").name
    assert os.path.dirname(upload) == uploads and os.stat(uploads).st_mode & 0o077 == 0  # private to the server
    open(upload, "wb").close()
    _check(mod, upload, studies, uploads)


def test_forbidden_and_missing_paths_answer_alike(setup):
    mod, studies, secret, uploads = setup
    answers = []
    for image in (str(secret), str(studies / "link.png"), str(studies / ".." / "secret.png"), "/etc/hostname"):
        with pytest.raises(mod.ImageRequestError) as err:
            _check(mod, image, studies, uploads)
        answers.append((err.value.status, err.value.detail.replace(repr(image), "<image>")))
    for image in (str(tmp := studies.parent / "no_such.png"), "no_such_id"):
        assert not os.path.exists(tmp)
        with pytest.raises(mod.ImageRequestError) as err:
            _check(mod, image, studies, uploads)
        answers.append((err.value.status, err.value.detail.replace(repr(image), "<image>")))
    assert len(set(answers)) == 1 and answers[0][0] == 404, answers


@pytest.mark.parametrize("kind", [list, dict])
def test_list_and_dict_images_are_refused(setup, kind):
    mod, studies, secret, uploads = setup
    image = [str(secret)] if kind is list else {"image": str(secret)}
    with pytest.raises(mod.ImageRequestError) as err:
        _check(mod, image, studies, uploads)
    assert err.value.status == 422 and kind.__name__ in err.value.detail

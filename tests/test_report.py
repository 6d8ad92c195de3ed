"""The report's pieces on small hand-made inputs: provenance, the papers' comparison, the sweep points."""

import subprocess

import pandas as pd
import pytest
import yaml

from mergeflow.report import _scale_text, paper_comparison, provenance
from mergeflow.report.browser import check_page


class _Cfg:
    def __init__(self, arch, tasks):
        self.raw = {"model": {"arch": arch}, "name": "t"}
        self.tasks = tasks


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_git_state_flags_edited_files_but_not_the_engines_own(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    for name in ("params.yaml", "dvc.lock", ".gitignore"):
        (tmp_path / name).write_text("a: 1\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.chdir(tmp_path)
    assert provenance.git_state()["dirty"] is False
    (tmp_path / "dvc.lock").write_text("a: 2\n")  # DVC rewrites it on every run
    (tmp_path / ".gitignore").write_text("/out\n")
    assert provenance.git_state() == {**provenance.git_state(), "dirty": False, "changed": []}
    (tmp_path / "params.yaml").write_text("a: 2\n")
    state = provenance.git_state()
    assert state["dirty"] is True and state["changed"] == ["params.yaml"] and len(state["commit"]) == 40


def test_git_state_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    state = provenance.git_state()
    assert state["dirty"] is False and state["commit"].startswith("unknown")


def test_dvc_lock_inputs_lists_every_dependency_once(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "a": {"cmd": "x", "deps": [{"path": "data/raw", "md5": "11.dir"}], "outs": [{"path": "o", "md5": "9"}]},
        "b": {"cmd": "y", "deps": [{"path": "data/raw", "md5": "11.dir"}, {"path": "o", "md5": "9"}]}}}))
    assert provenance.dvc_lock_inputs(lock) == {"data/raw": "11.dir", "o": "9"}
    assert provenance.dvc_lock_inputs(tmp_path / "missing.lock") == {}


def test_paper_comparison_puts_the_published_numbers_beside_ours():
    tasks = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
    ours = {"task_arithmetic": [0.6] * 8, "newmethod": [0.5] * 8}
    long = pd.DataFrame([{"model": m, "task": t, "accuracy": a} for m, accs in ours.items()
                         for t, a in zip(tasks, accs, strict=True)])
    summary = pd.DataFrame([{"model": m, "label": m, "average": 0.6 if m == "task_arithmetic" else 0.5}
                            for m in ours])
    out = paper_comparison(_Cfg("ViT-B-32", tasks), summary, long)
    (row,) = out["rows"]  # a method the papers did not report has no row
    assert row["model"] == "task_arithmetic"
    assert row["cells"][0] == pytest.approx((60.0, 55.2, 4.8))  # SUN397: ours, published, difference
    assert row["cells"][-1] == pytest.approx((60.0, 69.1, -9.1))  # the average
    assert paper_comparison(_Cfg("mf-vit-small", tasks), summary, long) is None
    assert paper_comparison(_Cfg("ViT-B-32", tasks[:2]), summary, long) is None


def test_scale_text():
    assert _scale_text("alpha", 0.3) == "α = 0.3" and _scale_text("lambda", 1.0) == "λ = 1"
    assert _scale_text(None, None) == "" and _scale_text(float("nan"), float("nan")) == ""


def test_browser_check_names_a_missing_browser_and_a_missing_page(tmp_path, monkeypatch):
    from mergeflow.errors import MergeflowError

    monkeypatch.setenv("PATH", str(tmp_path))
    page = tmp_path / "r.html"
    page.write_text("<html><body>x</body></html>")
    with pytest.raises(MergeflowError, match="no headless browser found.*apt-get install chromium"):
        check_page(page)
    with pytest.raises(MergeflowError, match="no such report"):
        check_page(tmp_path / "nothing.html", binary="/bin/true")


def test_browser_check_catches_overflow_and_broken_images(tmp_path):
    from mergeflow.report.browser import find_chromium

    if find_chromium() is None:
        pytest.skip("no headless Chromium on this machine (Debian: apt-get install chromium)")
    good = tmp_path / "good.html"
    good.write_text("<html><body><p>fits</p></body></html>")
    assert check_page(good)["ok"] is True
    wide = tmp_path / "wide.html"
    wide.write_text('<html><body><div style="width:2000px">too wide</div></body></html>')
    assert check_page(wide)["scroll_width"] > 1280 and check_page(wide)["ok"] is False
    broken = tmp_path / "broken.html"
    broken.write_text('<html><body><img alt="gone" src="missing.png"></body></html>')
    result = check_page(broken)
    assert result["broken"] == ["gone"] and result["ok"] is False

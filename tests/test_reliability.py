"""A careless or hostile user: user data never deleted, no config value reaching a shell, paths kept inside
the workspace, every bad value refused before work, one line for every failure, outputs that respect the
umask. The end-to-end cases (interrupts, changed inputs of a finished run) are in test_e2e.py."""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import signal
import struct
import subprocess
from pathlib import Path

import pytest
import yaml

from dag_tools import BIN, as_in_a_terminal, engine_env

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).parent / "e2e" / "tiny.yaml"
HOSTILE = "x$(touch PWNED)`id`;rm -rf ~"


def _tiny() -> dict:
    return yaml.safe_load(TINY.read_text())


def _refused(raw: dict, *words: str) -> str:
    """The one-line refusal of a configuration, checked to name ``words``."""
    from mergeflow import config
    from mergeflow.errors import MergeflowError

    with pytest.raises(MergeflowError) as info:
        config.from_mapping(raw, "params.yaml")
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


# --- no configuration value reaches a shell ----------------------------------------------------------------
def _string_fields(schema: dict, path: tuple = ()) -> list[tuple]:
    """Every place of the schema that holds a string: (path, is-a-list)."""
    out = []
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    enum_strings = any(isinstance(v, str) for v in schema.get("enum", []))
    if "string" in kinds or "pattern" in schema or enum_strings:
        out.append((path, False))
    for branch in schema.get("oneOf", []):
        out += [f for f in _string_fields(branch, path) if f[0] == path]
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        out += [(p, True) for p, _ in _string_fields(schema["items"], path)]
    for key, sub in schema.get("properties", {}).items():
        out += _string_fields(sub, (*path, key))
    if isinstance(schema.get("additionalProperties"), dict):
        out += _string_fields(schema["additionalProperties"], (*path, "digits"))
    return list(dict.fromkeys(out))


def _with(raw: dict, path: tuple, value) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {"format": "task_vectors", "root": "models/community/tv"} if key == "import" else {}
        node = node[key]
    node[path[-1]] = value
    return raw


def test_shell_metacharacters_in_every_string_field_are_refused_naming_the_key():
    from mergeflow import config

    fields = _string_fields(config.schema())
    # the schema's merge and sweeps sections come from the registry: every free-form hyper-parameter is here
    assert (("sweeps", "surgery", "base"), True) in fields and (("merge", "surgery", "base"), False) in fields
    assert (("model", "import", "tasks", "digits"), False) in fields and (("data", "raw_dir"), False) in fields
    assert len(fields) >= 36
    for path, is_list in fields:
        raw = _with(_tiny(), path, [HOSTILE] if is_list else HOSTILE)
        _refused(raw, path[-1] if path[-1] != "digits" else path[-2])  # a map's value: the map's key


def test_a_sweep_value_is_checked_like_the_main_value():
    # issue 28: `sweeps.surgery.base: ['$(…)']` passed the check and ran through the shell
    raw = _tiny()
    raw["sweeps"]["surgery"] = {"base": ["$(touch PWNED)"]}
    _refused(raw, "sweeps.surgery.base")
    raw["sweeps"]["surgery"] = {"base": ["ties"]}  # a real run name: accepted, and its command is quoted
    from mergeflow import config, dag

    text = dag.render(config.from_mapping(raw), ROOT)
    cmds = [line.strip() for line in text.splitlines() if line.strip().startswith("cmd:")]
    assert "cmd: mergeflow merge --method 'surgery--base-${item.value}' --evaluate" in cmds
    assert all("${" not in c or "'" in c for c in cmds), cmds  # every interpolated value is quoted


def test_snakemake_quotes_run_names_and_constrains_them_exactly():
    rules = (ROOT / "workflow" / "rules" / "merge.smk").read_text() + (ROOT / "workflow" / "rules" /
                                                                      "features.smk").read_text()
    assert "{wildcards.run:q}" in rules and "{wildcards.variant:q}" in rules
    assert '"|".join' not in rules  # a run name's dot matched any character


# --- paths stay inside the workspace unless absolute on purpose -------------------------------------------
@pytest.mark.parametrize("path, value, words", [
    (("model", "import", "root"), "../elsewhere", ["model.import.root", "'..'"]),
    (("model", "import", "tasks", "digits"), "../../etc", ["model.import.tasks.digits", "'..'"]),
    (("model", "import", "tasks", "digits"), "/etc", ["model.import.tasks.digits", "inside the workspace"]),
    (("data", "raw_dir"), "../raw", ["data.raw_dir", "'..'"]),
    (("data", "raw_dir"), "/tmp/raw", ["data.raw_dir", "inside the workspace"]),
    (("data", "local_dir"), "../copies", ["data.local_dir", "'..'"]),
    (("data", "local_dir"), "data/raw/mine", ["data.local_dir", "overlaps data.raw_dir"]),
    (("data", "local_dir"), "~/datasets", ["data.local_dir", "'~'"]),
    (("model", "pretrained"), "../weights.pt", ["model.pretrained", "'..'"]),
])
def test_paths_that_leave_the_workspace_are_refused(path, value, words):
    _refused(_with(_tiny(), path, value), *words)


def test_absolute_paths_are_dependencies_of_the_stages_that_read_them(tmp_path):
    from mergeflow import config, dag

    raw = _with(_tiny(), ("model", "import"), {"format": "task_vectors", "root": str(tmp_path / "community"),
                                               "tasks": {"digits": "MNIST"}})
    raw = _with(raw, ("data", "local_dir"), str(tmp_path / "copies"))
    raw["data"]["download"] = False
    stages = dag.dvc_stages(config.from_mapping(raw), ROOT)
    assert str(tmp_path / "community") in stages["import"]["deps"]
    assert str(tmp_path / "copies") in stages["prepare"]["deps"]
    # fetch writes one folder per task, never raw_dir itself (an engine deletes a stage's outputs first)
    assert stages["fetch"]["outs"] == ["${data.raw_dir}/digits", "${data.raw_dir}/shapes"]


# --- every value checked before work ----------------------------------------------------------------------
@pytest.mark.parametrize("path, value, words", [
    (("finetune", "lr"), float("nan"), ["finetune.lr", "finite"]),
    (("finetune", "lr"), float("inf"), ["finetune.lr"]),
    (("finetune", "weight_decay"), float("nan"), ["finetune.weight_decay", "finite"]),
    (("data", "val_fraction"), float("nan"), ["data.val_fraction", "finite"]),
    (("evaluate", "scale_grid"), [0.3, float("nan")], ["evaluate.scale_grid[1]", "finite"]),
    (("evaluate", "scale_grid"), [0.3, float("inf")], ["evaluate.scale_grid"]),
    (("evaluate", "scale_grid"), [0.3, 1e300], ["evaluate.scale_grid", "<= 10"]),
    (("finetune", "batch_size"), 10**12, ["finetune.batch_size", "<= 65536"]),
    (("data", "generate", "train"), 10**12, ["data.generate.train"]),
    (("exemplars", "pool"), 10**9, ["exemplars.pool"]),
    (("model", "arch"), "ViT-B-23", ["model.arch", "unknown architecture"]),
])
def test_bad_values_are_refused_when_the_configuration_is_read(path, value, words):
    _refused(_with(_tiny(), path, value), *words)


def test_the_old_local_copy_route_is_refused_with_the_new_one():
    raw = _tiny()
    raw["data"].update(tasks=["MNIST", "digits"], download=False)
    raw["data"].pop("local_dir")
    _refused(raw, "data.local_dir", "MNIST", "read in place")


def _mergeflow(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mergeflow"), *args], cwd=cwd, env=engine_env(), capture_output=True,
                          text=True, **kw)


def test_params_that_is_a_folder_or_a_device_says_so(tmp_path):
    for target, words in ((tmp_path, "a folder"), (Path("/dev/zero"), "not a regular file")):
        out = _mergeflow("--params", str(target), "fetch", cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and words in out.stderr, out.stderr


# --- one line for malformed files, bounded reads, umask ------------------------------------------------------
def test_json_of_the_wrong_shape_or_size_is_one_line_naming_file_and_key(tmp_path):
    from mergeflow.errors import MergeflowError
    from mergeflow.io import read_json

    f = tmp_path / "m.json"
    for text, words in (('{"accuracy": 3, "average": 1}', ["m.json", "accuracy", "dict"]),
                        ('[1, 2]', ["m.json", "top level", "object"]),
                        ('{"average": 1}', ["m.json", "accuracy missing"]),
                        ("[" * 100000, ["m.json", "malformed"])):
        f.write_text(text)
        with pytest.raises(MergeflowError) as info:
            read_json(f, {"accuracy": dict, "average": (int, float)})
        assert all(w in str(info.value) for w in words), str(info.value)
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as h:  # sparse: no disk used
        h.truncate(1 << 30)
    (tmp_path / "link.json").symlink_to(huge)
    with pytest.raises(MergeflowError, match="link.json: 1073741824 bytes"):
        read_json(tmp_path / "link.json")


def test_a_corrupt_dvc_lock_is_one_line(tmp_path):
    from mergeflow.errors import MergeflowError
    from mergeflow.report.provenance import dvc_lock_inputs

    lock = tmp_path / "dvc.lock"
    for text in ("stages: [1, 2", "stages:\n  a:\n    deps: [{md5: x}]\n", "stages: 7\n", "\x00\xff"):
        lock.write_bytes(text.encode("latin-1"))
        with pytest.raises(MergeflowError, match="dvc.lock: not a DVC lock file"):
            dvc_lock_inputs(lock)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_respect_the_umask(tmp_path, mask):
    from mergeflow.io import replace_dir, write_json

    old = os.umask(mask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        folder = Path(__import__("tempfile").mkdtemp(dir=tmp_path))
        replace_dir(folder, tmp_path / "out")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask


def test_a_file_size_limit_is_one_line_and_leaves_no_partial_file(tmp_path):
    import resource

    shutil.copy(TINY, tmp_path / "params.yaml")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = subprocess.run([str(BIN / "mergeflow"), "fetch", "--task", "shapes"], cwd=tmp_path, env=engine_env(),
                         capture_output=True, text=True, preexec_fn=limit)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert "File too large" in out.stderr or "could not write" in out.stderr, out.stderr
    assert not (tmp_path / "data" / "raw" / "shapes").exists()
    assert not [p for p in (tmp_path / "data" / "raw").rglob("*") if p.is_file()]


# --- user data is never an output ---------------------------------------------------------------------------
def _idx(path: Path, magic: int, array) -> None:
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes())


def _mnist_copy(root: Path, n_train: int = 40, n_test: int = 20) -> None:
    """A tiny MNIST in torchvision's layout: <root>/MNIST/MNIST/raw/*-ubyte (the task's folder is <root>/MNIST)."""
    import numpy as np

    raw = root / "MNIST" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", 0x803, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", 0x801, (np.arange(n) % 10).astype(np.uint8))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _data_workspace(ws: Path, local: str) -> None:
    ws.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow"):
        src = ROOT / name
        shutil.copytree(src, ws / name) if src.is_dir() else shutil.copy(src, ws / name)
    raw = _tiny()
    raw["data"].update(tasks=["MNIST", "digits"], download=False, local_dir=local)
    raw["merge"] = {"methods": ["task_arithmetic"], "task_arithmetic": {"alpha": 0.3}}
    raw["sweeps"] = {}
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (ws / "models" / "community").mkdir(parents=True)  # the import stage's input, empty: nothing imported
    (ws / "data" / "raw").mkdir(parents=True)
    (ws / "data" / "raw" / "NOTES.txt").write_text("mine, beside the pipeline's folders\n")


@pytest.mark.e2e
@pytest.mark.parametrize("engine", ["dvc", "snakemake", "mergeflow"])
@pytest.mark.parametrize("where", ["inside", "outside"])
def test_local_dataset_copies_are_read_in_place_and_never_deleted(tmp_path, engine, where):
    ws = tmp_path / "ws"
    copies = ws / "datasets" if where == "inside" else tmp_path / "elsewhere" / "datasets"
    _mnist_copy(copies)
    (copies / "README.txt").write_text("my own notes\n")
    _data_workspace(ws, "datasets" if where == "inside" else str(copies))
    before = _digest(copies)
    env = engine_env()
    if engine == "dvc":
        subprocess.run([str(BIN / "mergeflow"), "dag"], cwd=ws, env=env, check=True)
        subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=ws, env=env, check=True)
        cmds = [[str(BIN / "dvc"), "repro", "prepare"], [str(BIN / "dvc"), "repro", "-f", "prepare"]]
    elif engine == "snakemake":
        cmds = [[str(BIN / "snakemake"), "--cores", "2", "data/prepared"],
                [str(BIN / "snakemake"), "--cores", "2", "--forceall", "data/prepared"]]
    else:
        cmds = [[str(BIN / "mergeflow"), stage] for stage in ("fetch", "prepare", "fetch")]
    for cmd in cmds:  # twice: a rerun deletes what the engine considers its outputs
        out = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert _digest(copies) == before
    assert (ws / "data" / "raw" / "NOTES.txt").read_text().startswith("mine")
    if engine != "mergeflow":
        manifest = yaml.safe_load((ws / "data" / "prepared" / "MNIST" / "manifest.json").read_text())
        assert manifest["splits"]["test"]["count"] == 20
    record = yaml.safe_load((ws / "data" / "raw" / "MNIST" / ".mergeflow-fetch.json").read_text())
    assert record["path"].endswith("datasets/MNIST")
    if engine == "dvc":  # the copies are a dependency: an edit of them is seen
        with open(copies / "MNIST" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", "r+b") as f:
            f.seek(9)
            f.write(b"\x03")
        status = subprocess.run([str(BIN / "dvc"), "status", "prepare"], cwd=ws, env=env, capture_output=True,
                                text=True).stdout
        assert "changed deps" in status and "datasets" in status, status


def test_fetch_never_replaces_a_folder_it_did_not_make(tmp_path):
    shutil.copy(TINY, tmp_path / "params.yaml")
    mine = tmp_path / "data" / "raw" / "shapes"
    mine.mkdir(parents=True)
    (mine / "precious.txt").write_text("not the pipeline's\n")
    out = _mergeflow("fetch", "--task", "shapes", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "not made by `mergeflow fetch`" in out.stderr and "data.local_dir" in out.stderr
    assert (mine / "precious.txt").read_text() == "not the pipeline's\n"


def test_ctrl_c_of_a_stage_is_one_line(tmp_path):
    shutil.copy(TINY, tmp_path / "params.yaml")
    raw = _tiny()
    raw["data"]["generate"] = {"train": 200000, "test": 10000, "seed": 0}  # long enough to interrupt
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([str(BIN / "mergeflow"), "fetch"], cwd=tmp_path, env=engine_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=as_in_a_terminal)
    import time

    time.sleep(6)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group, workers included
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().count("\n") == 0 and "interrupted" in err and "Traceback" not in err, err[-3000:]
    # nothing half-written: a task folder is there only if fetch finished it (its marker written last,
    # then renamed into place); no temporary folder is left
    raw = tmp_path / "data" / "raw"
    left = sorted(p.name for p in raw.iterdir()) if raw.is_dir() else []
    assert "shapes" not in left and not [n for n in left if n.startswith(".")], left
    assert all((raw / n / ".mergeflow-fetch.json").is_file() for n in left), left


def test_device_cuda_without_a_gpu_stops_the_first_stage(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: device cuda is valid here")
    raw = _tiny()
    raw["device"] = "cuda"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = _mergeflow("fetch", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "no CUDA device" in out.stderr, out.stderr
    assert not (tmp_path / "data").exists()  # refused before any work

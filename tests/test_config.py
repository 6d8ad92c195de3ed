import copy
from pathlib import Path

import pytest
import yaml

from mergeflow import config
from mergeflow.errors import MergeflowError


@pytest.fixture()
def raw():
    return yaml.safe_load(open("params.yaml"))


def _load(tmp_path, raw):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return config.load(p)


def test_default_params_load():
    cfg = config.load("params.yaml")
    assert len(cfg.tasks) >= 8
    names = [r.name for r in cfg.merge_runs()]
    assert "cat" in names and "lot" in names and "cat--lambda-1.0" in names
    assert cfg.finetune.lr > 0


@pytest.mark.parametrize("path,value,expected", [
    (("merge", "cat", "lambda"), -1.0, "merge.cat.lambda = -1.0: must be >= 0"),
    (("finetune", "lr"), "fast", "finetune.lr = 'fast': must be of type number"),
    (("merge", "ties", "merge_func"), "max", "must be one of sum, mean"),
    (("device",), "tpu", "device = 'tpu': must be one of auto, cpu, cuda"),
])
def test_invalid_values_name_key_value_and_rule(tmp_path, raw, path, value, expected):
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(MergeflowError) as err:
        _load(tmp_path, raw)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key(tmp_path, raw):
    raw["finetune"]["learning_rate"] = 0.1
    with pytest.raises(MergeflowError, match="unknown key finetune.learning_rate; allowed keys under finetune"):
        _load(tmp_path, raw)


def test_unknown_method_and_task(tmp_path, raw):
    bad = copy.deepcopy(raw)
    bad["merge"]["methods"].append("magic")
    with pytest.raises(MergeflowError, match="'magic'"):
        _load(tmp_path, bad)
    raw["data"]["tasks"].append("imagenet")
    with pytest.raises(MergeflowError, match="unknown task 'imagenet'"):
        _load(tmp_path, raw)


def test_sweep_checks(tmp_path, raw):
    raw["sweeps"]["cat"]["lambda"] = [5.0]
    with pytest.raises(MergeflowError, match="equals the base value"):
        _load(tmp_path, raw)


def test_variant_names_round_trip_and_reject_garbage():
    v = config.Variant.parse("gram-a0.4-n2-s0")
    assert (v.kind, v.scale_value, v.count, v.seed) == ("gram", 0.4, 2, 0) and v.name == "gram-a0.4-n2-s0"
    with pytest.raises(MergeflowError, match="unknown features variant 'grams'"):
        config.Variant.parse("grams")


def test_lot_and_regmean_share_statistics_and_cat_alpha_is_in_its_variant():
    cfg = config.load("params.yaml")
    assert cfg.run("lot").variants == cfg.run("regmean").variants
    assert cfg.run("cat").variants[0].name == f"gram-a{cfg.raw['merge']['cat']['alpha']}-n2-s0"


def test_clip8_config_loads():
    cfg = config.load("configs/clip8.yaml")
    assert cfg.model.arch == "ViT-B-32" and cfg.model.pretrained == "openai"
    assert sorted(cfg.tasks) == sorted(["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"])
    assert cfg.finetune.lr == 1e-5 and cfg.finetune.batch_size == 128


def test_variant_at_scale_auto_stands_for_the_grid():
    v = config.Variant.parse("gram-aauto-n2-s0")
    assert v.is_grid and v.name == "gram-aauto-n2-s0"
    with pytest.raises(config.MergeflowError, match="scale auto stands for every value of evaluate.scale_grid"):
        _ = v.scale_value
    assert not config.Variant.parse("gram-a0.4-n2-s0").is_grid


@pytest.mark.parametrize("path", sorted(Path("configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_validates(path):
    cfg = config.load(path)
    for one in cfg.configs if cfg.suite == "all" else [cfg]:  # a suites file: each of its suites
        assert one.tasks and one.merge_runs()


@pytest.mark.parametrize("text,words", [
    ("name: x\nsuites: params.yaml\n", "suites must be a list of configuration files"),
    ("name: x\nsuites: [nope.yaml]\n", "suites[0] = 'nope.yaml': not found"),
    ("name: x\nsuites: [params.yaml, params.yaml]\n", "are both vision suites; one of each kind"),
    ("name: x\nsuites: [../params.yaml]\n", "suites[0] = '../params.yaml'"),
    ("suites: [params.yaml]\n", "a suites file holds name and suites only (name is missing)"),
    ("name: x\nseed: 0\nsuites: [params.yaml]\n", "a suites file holds name and suites only (unexpected seed)"),
])
def test_a_bad_suites_file_is_one_line_naming_it(tmp_path, monkeypatch, text, words):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    (tmp_path / "suites.yaml").write_text(text)
    with pytest.raises(config.MergeflowError) as exc:
        config.load(tmp_path / "suites.yaml")
    assert words in str(exc.value) and "\n" not in str(exc.value), str(exc.value)

import subprocess
import sys

import pytest

from obf.core.config import ConfigError, ModelConfig
from obf.core.params import load_params, params_from_dict

from .conftest import ROOT


def test_defaults_load_from_repo_params():
    """The project's params.yaml is read (not the built-ins, which differ: patch size 1 vs 8)."""
    p = load_params(ROOT / "params.yaml")
    assert p.ingest.canonicalize is True and p.model.preset == "small"
    assert p.model.patch_size == 8 and p != load_params(None) and load_params("none") == load_params(None)


def test_a_missing_default_params_file_is_an_error_not_the_built_ins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the project: no params.yaml here
    with pytest.raises(ConfigError, match="params.yaml: params file not found.*--params none"):
        load_params()
    r = subprocess.run([sys.executable, "-m", "obf.cli", "ingest", str(ROOT / "data" / "raw" / "text"),
                        "--out", str(tmp_path / "ds"), "-q"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and "params file not found" in r.stderr and not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"ingest": {"nope": 1}}, "ingest.nope"),
        ({"ingest": {"val_fraction": 1.5}}, "ingest.val_fraction"),
        ({"ingest": {"max_file_bytes": "big"}}, "ingest.max_file_bytes"),
        ({"ingest": {"canonicalize": 1}}, "ingest.canonicalize"),
        ({"model": {"patch_size": 3}}, "model.patch_size"),
        ({"model": {"preset": "huge"}}, "model.preset"),
        ({"train": {"task_weights": {"dance": 1.0}}}, "train.task_weights.dance"),
        ({"bogus": {}}, "bogus"),
        ({"model": {"causal_encoder": False}, "train": {"windows": 4}}, "train.windows"),
        ({"model": {"patch_size": 16, "max_tgt_len": 200}, "train": {"long_every": 8}}, "train.long_every"),
        ({"model": {"max_src_len": 1024}, "train": {"src_len": 2048}}, "train.src_len"),
        ({"model": {"patch_size": 8}, "train": {"src_len": 500}}, "train.src_len"),
        ({"model": {"causal_encoder": True}, "train": {"windows": 4, "src_len": 512}}, "train.windows"),
        ({"model": {"causal_encoder": True, "max_src_len": 1024}, "train": {"long_every": 4, "long_windows": 8}},
         "train.long_windows"),
    ],
)
def test_bad_params_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        params_from_dict(raw)
    msg = str(e.value)
    assert msg.startswith(key) and "\n" not in msg


def test_overrides_apply_and_validate(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("ingest:\n  val_fraction: 0.2\n")
    p = load_params(f, ["ingest.val_fraction=0.3", "model.preset=tiny", "model.patch_size=4"])
    assert p.ingest.val_fraction == 0.3
    assert p.model.d_model == 64 and p.model.patch_size == 4 and p.model.preset == "tiny"
    with pytest.raises(ConfigError, match="ingest.val_fraction"):
        load_params(f, ["ingest.val_fraction=2"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_params(f, ["nonsense"])


def test_missing_params_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")


def test_model_config_round_trip():
    c = ModelConfig.from_preset("small", patch_size=4)
    assert ModelConfig.from_dict(c.to_dict()) == c and not c.causal_encoder
    old = {k: v for k, v in c.to_dict().items() if k != "causal_encoder"}  # saved before the key existed
    assert ModelConfig.from_dict(old).causal_encoder is False  # such a model's encoder was bidirectional
    assert c.query_map  # new models place `paired` queries where the conversion reads
    before = {k: v for k, v in c.to_dict().items() if k != "query_map"}
    assert ModelConfig.from_dict(before).query_map is False  # trained with every query at its own offset
    with pytest.raises(ConfigError, match="model.query_map"):
        ModelConfig(cross_bytes=False, query_map=True)
    assert c.input_end  # new models read an EOS id after a `paired` input
    before = {k: v for k, v in c.to_dict().items() if k != "input_end"}
    assert ModelConfig.from_dict(before).input_end is False  # trained on inputs without one
    long = ModelConfig.from_preset("small", causal_encoder=True, max_src_len=16384)
    assert ModelConfig.from_dict(long.to_dict()) == long


def test_a_models_recorded_ingest_settings_that_do_not_parse_are_an_error():
    """Never a silent fall-back to canonical forms the model was not trained on."""
    from types import SimpleNamespace

    from obf.core.config import IngestConfig
    from obf.core.errors import ObfError
    from obf.generate.files import ingest_config_of

    assert ingest_config_of(SimpleNamespace(meta={})) == IngestConfig()  # recorded none: the defaults
    assert ingest_config_of(SimpleNamespace(meta={"ingest": {"image_max_side": 32}})).image_max_side == 32
    for bad in ({"image_max_side": 32, "colour": "yes"}, {"audio_sample_width": 3}):
        with pytest.raises(ObfError, match="recorded ingest settings do not parse"):
            ingest_config_of(SimpleNamespace(meta={"ingest": bad}))


def test_generate_settings_from_params_and_their_id():
    """params.yaml's `generate` section is `obf generate`'s defaults; batch-generate keys its state
    records by `settings_id`, whose text must not change (a changed id would redo every input)."""
    from obf.core.config import GenerateSettings

    p = load_params(None, ["generate.task=paired", "generate.target_modality=text", "generate.max_bytes=64",
                           "generate.temperature=0.5"])
    assert p.generate == GenerateSettings(task="paired", target_modality="text", max_bytes=64, temperature=0.5)
    assert (GenerateSettings(max_bytes=64).settings_id()
            == "continue|64|0|fp32|None|None|None|1|0|1|min_p=0.03|guard=40|surprise")
    plain = GenerateSettings(max_bytes=64, match_surprise=False, min_p=0.0, share_guard=0.0)
    assert plain.settings_id() == "continue|64|0|fp32|None|None|None|1|0|1"
    assert GenerateSettings(max_bytes=64).record()["min_p"] == 0.03
    assert GenerateSettings(max_bytes=64).record()["share_guard"] == 40.0
    assert GenerateSettings(task="paired", share_guard=5.0).record()["share_guard"] == 5.0  # recorded, as asked
    assert p.generate.settings_id() == "paired|64|0|fp32|text|None|None|0.5|0|1"  # paired has no thermostat
    assert GenerateSettings(max_bytes=64).record()["match_surprise"] is True
    assert p.generate.record()["match_surprise"] is False
    assert p.generate.record()["top_k"] == 0 and p.generate.record()["temperature"] == 0.5
    for bad, key in ((["generate.temperature=-1"], "generate.temperature"), (["generate.top_p=0"], "generate.top_p"),
                     (["generate.min_p=1"], "generate.min_p"),
                     (["generate.share_guard=-1"], "generate.share_guard"),
                     (["generate.target_modality=text"], "generate.target_modality"),
                     (["generate.prefix_bytes=3", "generate.prefix_fraction=0.5"], "generate.prefix_bytes"),
                     (["generate.temperature=hot"], "generate.temperature"),
                     (["generate.task=denoise"], "generate.task")):
        with pytest.raises(ConfigError, match=key):
            load_params(None, bad)


def test_obf_generate_flags_override_the_generate_section():
    from obf.cli import build_parser, generate_settings
    from obf.core.config import GenerateSettings

    base = GenerateSettings(task="paired", target_modality="text", max_bytes=64, prefix_fraction=None, seed=3)
    args = build_parser().parse_args(["generate", "MODEL", "in.txt", "--out", "o", "--temperature", "0.7"])
    assert generate_settings(base, args) == GenerateSettings(task="paired", target_modality="text", max_bytes=64,
                                                             temperature=0.7, seed=3)
    args = build_parser().parse_args(["generate", "MODEL", "in.txt", "--out", "o", "--no-match-surprise"])
    assert generate_settings(GenerateSettings(), args).resolved().match_surprise is False
    args = build_parser().parse_args(["generate", "MODEL", "in.txt", "--out", "o"])
    assert generate_settings(GenerateSettings(), args).resolved().match_surprise is True
    args = build_parser().parse_args(["generate", "MODEL", "in.txt", "--out", "o", "--task", "continue",
                                      "--prefix-bytes", "10"])
    made = generate_settings(GenerateSettings(task="paired", target_modality="text", prefix_fraction=None), args)
    assert (made.task, made.target_modality, made.prefix_bytes) == ("continue", None, 10)
    args = build_parser().parse_args(["generate", "MODEL", "in.txt", "--out", "o", "--prefix-bytes", "10"])
    made = generate_settings(GenerateSettings(prefix_fraction=0.5), args)  # one flag replaces the other setting
    assert (made.prefix_bytes, made.prefix_fraction) == (10, None)
    args = build_parser().parse_args(["generate", "MODEL", "in.txt", "--out", "o", "--min-p", "0"])
    assert generate_settings(GenerateSettings(), args).resolved().min_p == 0.0  # the cut turned off
    assert generate_settings(GenerateSettings(), build_parser().parse_args(
        ["generate", "MODEL", "in.txt", "--out", "o"])).resolved().min_p == 0.03
    args = build_parser().parse_args(["generate", "MODEL", "in.txt", "--out", "o", "--share-guard", "0"])
    assert generate_settings(GenerateSettings(), args).resolved().share_guard == 0.0  # the guard turned off
    assert generate_settings(GenerateSettings(), build_parser().parse_args(
        ["generate", "MODEL", "in.txt", "--out", "o"])).resolved().share_guard == 40.0
    args = build_parser().parse_args(["generate", "MODEL", "in.txt", "--out", "o", "--top-p", "2"])
    with pytest.raises(ConfigError, match="top_p"):
        generate_settings(GenerateSettings(), args)

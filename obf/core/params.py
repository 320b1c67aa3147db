"""params.yaml as a whole: its sections parsed into `Params`, `--set section.key=value`
overrides applied, every value checked against its dataclass field (`obf.core.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from obf.core.config import (
    ConfigError,
    EvaluateConfig,
    ExportConfig,
    GenerateSettings,
    IngestConfig,
    ModelConfig,
    TrainConfig,
    build_section,
    require,
)


@dataclass
class Params:
    """Every section of params.yaml."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("small"))
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    generate: GenerateSettings = field(default_factory=GenerateSettings)


_SECTIONS = {
    "ingest": IngestConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "export": ExportConfig,
    "generate": GenerateSettings,
}


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected section.key=value")
    key, raw = item.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set {item}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of the raw params mapping with `section.key=value` overrides applied."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        path, value = _parse_override(item)
        node = out.setdefault(path[0], {})
        for p in path[1:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
            node[p] = nxt = dict(nxt)
            node = nxt
        node[path[-1]] = value
    return out


def params_from_dict(raw: dict[str, Any]) -> Params:
    """Validate a raw params mapping into `Params`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("params: the file must hold a mapping of sections")
    params = Params()
    for section, data in raw.items():
        if section == "model":
            require(data is None or isinstance(data, dict), "model", "must be a mapping")
            data = dict(data or {})
            preset = data.pop("preset", "small")
            require(isinstance(preset, str), "model.preset", "must be a string")
            params.model = ModelConfig.from_preset(preset, **data)
        elif section in _SECTIONS:
            setattr(params, section, build_section(_SECTIONS[section], section, data or {}))
        else:
            known = sorted([*_SECTIONS, "model"])
            raise ConfigError(f"{section}: unknown params section; expected one of {', '.join(known)}")
    m, t = params.model, params.train
    ok = t.src_len == 0 or (2 * m.patch_size <= t.src_len <= m.max_src_len and t.src_len % m.patch_size == 0)
    require(
        ok,
        "train.src_len",
        f"must be 0 or a multiple of model.patch_size ({m.patch_size}) up to "
        f"model.max_src_len ({m.max_src_len}), got {t.src_len}",
    )
    chunks = [k for k, on in (("train.windows", t.windows > 1), ("train.long_every", t.long_every > 0)) if on]
    for key in chunks[:1]:
        require(m.causal_encoder, key, "more than one window per example needs model.causal_encoder")
        require(
            m.max_tgt_len % m.patch_size == 0,
            key,
            f"more than one window per example needs model.max_tgt_len ({m.max_tgt_len}) to be a multiple "
            f"of model.patch_size ({m.patch_size})",
        )
    fits = (
        ("train.windows", t.windows, t.src_len or m.max_src_len),
        ("train.long_windows", t.long_windows if t.long_every else 1, m.max_src_len),
    )
    for key, n, ctx in fits:  # a chunk's earlier windows start inside its source (windows_example)
        require(
            (n - 1) * m.max_tgt_len <= ctx - 2,
            key,
            f"{n} windows of model.max_tgt_len {m.max_tgt_len} bytes do not fit a context of {ctx} bytes",
        )
    return params


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read a params file, apply overrides, validate.

    `path` None or "none" asks for the built-in defaults (the dataclasses above, which are not
    params.yaml's values). A file that is not there is an error, also the default params.yaml:
    running outside the project must not train silently with other settings."""
    raw: dict[str, Any] = {}
    if path is not None and str(path).lower() != "none":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"{p}: params file not found (run in the project folder, give --params PATH, "
                "or --params none for the built-in defaults)"
            )
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    return params_from_dict(apply_overrides(raw, overrides))

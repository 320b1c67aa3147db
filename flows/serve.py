"""Serve `train-flow/default` and `batch-generate/nightly` from one process, without a work pool.

    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py

Parameters come from the environment so that the same file serves any buckets:

    OBF_SOURCE      raw files for training            (default s3://obf-raw/raw)
    OBF_REGISTRY    model registry prefix             (default s3://obf-models)
    OBF_NAME        model name in the registry        (default obf)
    OBF_INPUT       batch-generate input prefix       (default s3://obf-inbox/in)
    OBF_OUTPUT      batch-generate output prefix      (default s3://obf-outbox/out)
    OBF_CRON        nightly schedule, cron syntax     (default "0 2 * * *", UTC)
    OBF_PARAMS      params file for train-flow        (default: this project's params.yaml;
                                                       "none" = the built-in defaults)
    OBF_OVERRIDES   ';'-separated section.key=value overrides for train-flow (default none)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# obf's own log lines in the runs' logs, as prefect.yaml's deployments have them (before prefect loads its settings)
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "obf")

from prefect import serve  # noqa: E402
from prefect.schedules import Cron  # noqa: E402

from flows.generate import batch_generate  # noqa: E402
from flows.train import train_flow  # noqa: E402


def deployments() -> list:
    env = os.environ.get
    registry, name = env("OBF_REGISTRY", "s3://obf-models"), env("OBF_NAME", "obf")
    overrides = [o for o in env("OBF_OVERRIDES", "").split(";") if o.strip()]
    train = train_flow.to_deployment(
        name="default",
        parameters={"source": env("OBF_SOURCE", "s3://obf-raw/raw"), "registry": registry, "name": name,
                    "params": env("OBF_PARAMS", str(ROOT / "params.yaml")), "overrides": overrides},
        description="Ingest, train, evaluate, export and publish a model from raw files on storage.")
    nightly = batch_generate.to_deployment(
        name="nightly",
        schedule=Cron(env("OBF_CRON", "0 2 * * *"), timezone="UTC"),
        parameters={"input_url": env("OBF_INPUT", "s3://obf-inbox/in"),
                    "output_url": env("OBF_OUTPUT", "s3://obf-outbox/out"), "registry": registry, "name": name},
        description="Turn every new input object into a generated file with the latest model (ONNX Runtime).")
    return [train, nightly]


if __name__ == "__main__":
    serve(*deployments())

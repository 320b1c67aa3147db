"""Training: overfit, exact resume after SIGKILL, DDP under torchrun, bad input, DVC stage."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from obf.core.params import load_params
from obf.data.dataset import DataError, Dataset
from obf.data.ingest import ingest
from obf.data.objectives import ExampleSampler
from obf.model.network import OmniByteFormer
from obf.train import loss_bits

from .conftest import RAW, ROOT

BIN = Path(sys.executable).parent
# No mixer fit: these tests are about the training loop, and the fit (on 64 KiB a modality) took
# longer than the tiny network's training in most of them.
TINY = ["model.preset=tiny", "model.max_src_len=128", "model.max_tgt_len=32", "train.batch_size=4",
        "train.eval_every=5", "train.eval_batches=1", "train.warmup_steps=2", "train.mixer_fit_bytes=0"]
SUBSET = ["text/heapq.py", "text/GPL-3.txt", "text/shlex.py", "text/csv.py", "image/coffee.jpg", "image/horse.png",
          "image/brick.png", "audio/numbers.wav", "audio/hola.mp3", "audio/pangram.wav", "video/hubble_pan.y4m",
          "binary/true.elf", "binary/eeg.dat", "pairs/upper/inputs/0005.txt", "pairs/upper/targets/0005.txt",
          "pairs/upper/inputs/0015.txt", "pairs/upper/targets/0015.txt", "pairs/upper/inputs/0029.txt",
          "pairs/upper/targets/0029.txt"]


def env(**extra):
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}
    return e


def make_raw(dst: Path, names=SUBSET) -> Path:
    for n in names:
        (dst / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(RAW / n, dst / n)
    return dst


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    params = load_params(None, ["ingest.val_fraction=0.3"])
    ingest(str(make_raw(root / "raw")), root / "ds", params.ingest, progress=False)
    return root / "ds"


def obf(*args, **kw):
    """Run `obf` outside the repo with the built-in defaults (`--params none`), not the pipeline's params.yaml."""
    kw.setdefault("cwd", tempfile.gettempdir())
    return subprocess.run([sys.executable, "-m", "obf.cli", *args, "--params", "none"], capture_output=True, text=True,
                          env=env(), **kw)


def test_overfit_one_small_batch(dataset):
    params = load_params(None, TINY)
    ds = Dataset(dataset)
    sampler = ExampleSampler(ds, "train", max_src_len=128, max_tgt_len=32, task_weights={"continue": 1.0}, seed=0)
    b = sampler.batch(list(range(4)))
    src, dec, tgt = (torch.from_numpy(a) for a in (b.src, b.dec, b.tgt))
    torch.manual_seed(0)
    model = OmniByteFormer(params.model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        bits, n = loss_bits(model(src, dec), tgt)
        opt.zero_grad()
        (bits / n).backward()
        opt.step()
    assert (bits / n).item() < 0.3


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_sigkill_then_resume_is_bitwise_identical(dataset, tmp_path):
    sets = [f"--set={s}" for s in [*TINY, "train.steps=200", "train.checkpoint_every=20", "train.eval_every=1000"]]
    full = obf("train", str(dataset), "--out", str(tmp_path / "full"), "-q", *sets)
    assert full.returncode == 0, full.stderr
    cmd = [sys.executable, "-m", "obf.cli", "train", str(dataset), "--out", str(tmp_path / "cut"), "-q", *sets,
           "--params", "none"]
    proc = subprocess.Popen(
        cmd, env=env(), cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    cfg = tmp_path / "cut" / "config.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if cfg.exists() and json.loads(cfg.read_text())["step"] >= 40:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(cfg.read_text())["step"]
    assert 40 <= killed_at < 200
    from obf.model.checkpoint import recover

    recover(tmp_path / "cut")  # (a kill inside a checkpoint's renames is rolled forward by any reader)
    saved_step = torch.load(tmp_path / "cut" / "train_state.pt", weights_only=True)["step"]
    assert saved_step == json.loads(cfg.read_text())["step"]  # weights, config and state: one step
    resumed = obf("train", str(dataset), "--out", str(tmp_path / "cut"), "-q", "--resume", *sets)
    assert resumed.returncode == 0, resumed.stderr
    # it resumed from the saved step, not from 0 (training is deterministic, so equal weights alone
    # would not show it)
    assert json.loads((tmp_path / "cut" / "train_summary.json").read_text())["start_step"] == saved_step
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(cfg.read_text())["step"] == 200


def test_ddp_two_gloo_ranks_see_disjoint_samples(dataset, tmp_path):
    log = tmp_path / "samples"
    r = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "obf",
            "train",
            str(dataset),
            "--out",
            str(tmp_path / "ddp"),
            "-q",
            "--params",
            "none",
            "--sample-log",
            str(log),
            *[f"--set={s}" for s in [*TINY, "train.steps=6", "train.device=cpu"]],
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
        cwd=tempfile.gettempdir(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    seen = [[json.loads(line)["index"] for line in open(f"{log}.rank{k}")] for k in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 6 * 4
    assert not set(seen[0]) & set(seen[1])
    assert (tmp_path / "ddp" / "model.safetensors").exists()
    assert json.loads((tmp_path / "ddp" / "train_summary.json").read_text())["world_size"] == 2


def test_lr_schedule_follows_the_budget_that_ends_first():
    from obf.train import lr_at

    cfg = load_params(
        None, ["train.steps=1000", "train.warmup_steps=10", "train.lr=0.001", "train.min_lr_ratio=0.1"]
    ).train
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(505, cfg) == pytest.approx(lr_at(10, cfg, 0.5))  # half the steps == half the minutes
    assert lr_at(100, cfg, 1.0) == pytest.approx(1e-4) and lr_at(999, cfg, 0.2) == lr_at(999, cfg)


def test_minutes_budget_ends_annealed_and_counts_across_resume(dataset, tmp_path):
    """A run ended by `train.minutes` has decayed its learning rate to the floor; a resumed run
    gets only what is left of the budget."""
    sets = [
        f"--set={s}"
        for s in [
            *TINY,
            "train.steps=1000000",
            "train.eval_every=1000000",
            "train.lr=0.002",
            "train.min_lr_ratio=0.1",
            "train.checkpoint_every=1000000",
        ]
    ]
    out = tmp_path / "timed"
    r = obf("train", str(dataset), "--out", str(out), "-q", "--set=train.minutes=0.08", *sets, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "train_summary.json").read_text())
    assert 10 < summary["steps"] < 1_000_000 and summary["seconds"] < 30
    lrs = [float(line.split()[1]) for line in (out / "dvclive/plots/metrics/train/lr.tsv").read_text().splitlines()[1:]]
    assert lrs[-1] < 0.0002 * 1.1 < max(lrs)  # annealed to lr * min_lr_ratio by the deadline
    steps = summary["steps"]
    r = obf("train", str(dataset), "--out", str(out), "-q", "--resume", "--set=train.minutes=0.16", *sets, timeout=120)
    assert r.returncode == 0, r.stderr
    resumed = json.loads((out / "train_summary.json").read_text())
    assert resumed["start_step"] == steps < resumed["steps"] and resumed["seconds"] < 30  # about half was left


def test_fp32_budget_caps_an_fp32_run_and_leaves_a_bf16_run_its_steps(dataset, tmp_path):
    """`train.fp32_minutes` ends a run that trains in fp32 on a CPU by the clock (annealed, as
    `train.minutes` does) and is ignored by a bf16 run, whose steps alone decide, and on a GPU;
    `train.minutes`, when set, wins everywhere."""
    from obf.train import budget_minutes

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cfg = load_params(None, ["train.fp32_minutes=9"]).train
    assert [budget_minutes(cfg, b, d) for b, d in ((False, cpu), (True, cpu), (False, cuda))] == [9, 0, 0]
    cfg = load_params(None, ["train.fp32_minutes=9", "train.minutes=4"]).train
    assert [budget_minutes(cfg, b, d) for b, d in ((False, cpu), (True, cpu), (False, cuda))] == [4, 4, 4]
    sets = [f"--set={s}" for s in [*TINY, "train.eval_every=1000000", "train.checkpoint_every=1000000",
                                   "train.lr=0.002", "train.min_lr_ratio=0.1", "train.fp32_minutes=0.08"]]
    runs = {}
    for precision, steps in (("fp32", 1_000_000), ("bf16", 3)):
        out = tmp_path / precision
        r = obf("train", str(dataset), "--out", str(out), "--set=train.precision=" + precision,
                f"--set=train.steps={steps}", *sets, timeout=120)
        assert r.returncode == 0, r.stderr
        runs[precision] = (json.loads((out / "train_summary.json").read_text()), r.stderr)
    fp32, bf16 = runs["fp32"][0], runs["bf16"][0]
    assert fp32["budget_minutes"] == 0.08 and 10 < fp32["steps"] < 1_000_000 and fp32["seconds"] < 30
    assert "train.fp32_minutes=0.08 caps training" in runs["fp32"][1]
    lrs = (tmp_path / "fp32/dvclive/plots/metrics/train/lr.tsv").read_text().splitlines()[1:]
    assert float(lrs[-1].split()[1]) < 0.0002 * 1.1  # annealed to lr * min_lr_ratio by the deadline
    assert bf16["budget_minutes"] == 0 and bf16["steps"] == 3 and "fp32_minutes" not in runs["bf16"][1]


def test_ddp_ranks_stop_together_on_a_minutes_budget(dataset, tmp_path):
    """The clock is rank 0's: all ranks end at the same step (one stopping alone would hang the
    others in their next all-reduce)."""
    log = tmp_path / "samples"
    r = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "obf",
            "train",
            str(dataset),
            "--out",
            str(tmp_path / "ddp"),
            "-q",
            "--params",
            "none",
            "--sample-log",
            str(log),
            *[
                f"--set={s}"
                for s in [
                    *TINY,
                    "train.steps=1000000",
                    "train.minutes=0.1",
                    "train.device=cpu",
                    "train.eval_every=1000000",
                    "train.checkpoint_every=1000000",
                ]
            ],
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
        cwd=tempfile.gettempdir(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [len(open(f"{log}.rank{k}").readlines()) for k in (0, 1)]
    assert lines[0] == lines[1] > 0


@pytest.fixture(scope="module")
def text_only(tmp_path_factory) -> Path:
    """A dataset with text files only: no video, no pairs."""
    root = tmp_path_factory.mktemp("textonly")
    params = load_params(None, ["ingest.val_fraction=0.0", "ingest.test_fraction=0.0"])
    ingest(str(make_raw(root / "raw", ["text/heapq.py", "text/shlex.py"])), root / "ds", params.ingest, progress=False)
    return root / "ds"


def test_resume_refuses_another_dataset_or_setting_but_not_a_longer_budget(text_only, dataset, tmp_path):
    out = str(tmp_path / "m")
    sets = [f"--set={s}" for s in [*TINY, "train.steps=4", "train.eval_every=1000"]]
    assert obf("train", str(text_only), "--out", out, "-q", *sets).returncode == 0
    for extra, expect in (
        (["--set", "train.lr=0.01"], "train.lr differs"),
        (["--set", "train.task_weights={continue: 0.5, denoise: 0.5}"], "train.task_weights differs"),
        (["--set", "model.d_ff=64"], "model config differs"),
    ):
        r = obf("train", str(text_only), "--out", out, "-q", "--resume", *sets, *extra)
        assert r.returncode == 1 and expect in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = obf("train", str(dataset), "--out", out, "-q", "--resume", *sets)
    assert r.returncode == 1 and "dataset differs" in r.stderr
    r = obf(
        "train",
        str(text_only),
        "--out",
        out,
        "-q",
        "--resume",
        *sets,
        "--set",
        "train.steps=6",
        "--set",
        "train.minutes=5",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m" / "train_summary.json").read_text())["start_step"] == 4


def test_a_checkpoint_is_one_atomic_step(tmp_path, monkeypatch):
    """Weights, config and train state change together or not at all: a crash before the commit
    record leaves the old set whole; a crash after it is rolled forward by the next reader."""
    import obf.model.checkpoint as ck
    from obf.core.config import ModelConfig

    cfg = ModelConfig.from_preset("tiny", patch_size=4, max_src_len=64, max_tgt_len=16)
    torch.manual_seed(1)
    m1 = OmniByteFormer(cfg)
    torch.manual_seed(2)
    m2 = OmniByteFormer(cfg)
    d = tmp_path / "m"
    ck.save_checkpoint(d, m1, cfg, {"step": 1}, step=1)
    sha1 = ck.weights_sha256(d)

    monkeypatch.setattr(ck, "recover", lambda _d: None)  # crash right after the commit record
    ck.save_checkpoint(d, m2, cfg, {"step": 2}, step=2)
    monkeypatch.undo()
    assert ck.weights_sha256(d) == sha1 and json.loads((d / "config.json").read_text())["step"] == 1  # nothing moved
    loaded = ck.load_model(d)  # the reader rolls the committed checkpoint forward
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), m2.state_dict().values()))
    state = ck.load_train_state(d)
    assert state["step"] == 2 and state["weights_sha256"] == ck.weights_sha256(d) != sha1
    assert ck.read_config(d)[1]["step"] == 2

    real = os.replace

    def crash_at_the_record(src, dst):
        if Path(dst).name == ck.COMMIT:
            raise OSError("power cut")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_at_the_record)  # crash before the commit record
    with pytest.raises(OSError, match="power cut"):
        ck.save_checkpoint(d, m1, cfg, {"step": 3}, step=3)
    monkeypatch.undo()
    assert ck.load_train_state(d)["step"] == 2 and ck.read_config(d)[1]["step"] == 2  # the old set, whole
    assert sorted(p.name for p in d.iterdir()) == [
        "checkpoint.json",
        "config.json",
        "model.safetensors",
        "train_state.pt",
    ]  # its temps cleaned up


def test_bad_inputs_are_clear_errors(text_only, tmp_path):
    empty_src = tmp_path / "empty_src"
    empty_src.mkdir()
    (empty_src / "zero.bin").write_bytes(b"")
    assert obf("ingest", str(empty_src), "--out", str(tmp_path / "empty_ds"), "-q").returncode == 0
    cases = [
        (["train", str(tmp_path / "empty_ds"), "--out", str(tmp_path / "m1")], "holds no file"),
        (["train", str(tmp_path / "nope"), "--out", str(tmp_path / "m2")], "not an ingested dataset"),
        (
            ["train", str(text_only), "--out", str(tmp_path / "m3"), "--set", "train.modality_weights={video: 1.0}"],
            "train.modality_weights.video > 0 but split 'train' has no video file",
        ),
        (["train", str(text_only), "--out", str(tmp_path / "m4"), "--resume"], "nothing to resume"),
        (["train", str(text_only), "--out", str(tmp_path / "m5"), "--set", "train.lr=-1"], "train.lr"),
        (
            ["train", str(text_only), "--out", str(tmp_path / "m6"), "--set", "train.task_weights={paired: 1.0}"],
            "train.task_weights.paired > 0 but split 'train' has no paired files",
        ),
        (["train", str(text_only), "--out", str(tmp_path / "m7"), "--set", "model.patch_size=3"], "model.patch_size"),
    ]
    for args, expect in cases:
        r = obf(*args, "-q", "--set", "train.steps=1")
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr
        assert expect in r.stderr, r.stderr
        assert not Path(args[3]).exists()
    # A fresh training never writes over what obf did not write: the dataset, a file, or a folder
    # holding a model's file names without an obf checkpoint's commit record (nothing is touched);
    # a folder an earlier `obf train` wrote is trained into again.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{\"mine\": 1}\n")
    (tmp_path / "a_file").write_text("x")
    for out, expect in ((text_only, "the output dir is the dataset"), (text_only / "model", "holds or lies in the"),
                        (tmp_path / "a_file", "exists and is not a directory"),
                        (mine, "holds config.json, which obf train did not write")):
        r = obf("train", str(text_only), "--out", str(out), "-q", *[f"--set={s}" for s in [*TINY, "train.steps=1"]])
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and expect in r.stderr, (out, r.stderr)
    assert sorted(p.name for p in mine.iterdir()) == ["config.json"] and not (text_only / "model").exists()
    for _ in range(2):
        r = obf("train", str(text_only), "--out", str(tmp_path / "again"), "-q",
                *[f"--set={s}" for s in [*TINY, "train.steps=1"]])
        assert r.returncode == 0, r.stderr
    # A corrupt train state on resume.
    (tmp_path / "m8").mkdir()
    (tmp_path / "m8" / "train_state.pt").write_bytes(b"not a checkpoint")
    r = obf("train", str(text_only), "--out", str(tmp_path / "m8"), "--resume", "-q")
    assert r.returncode == 1 and "corrupt train state" in r.stderr


def test_train_stage_through_dvc_repro(tmp_path):
    repo = tmp_path / "repo"
    make_raw(repo / "data" / "raw")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = (ROOT / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params)
    shutil.copytree(ROOT / "obf", repo / "obf")
    run = lambda *c: subprocess.run(list(c), cwd=repo, capture_output=True, text=True, env=env(), timeout=600)
    assert run("git", "init", "-q").returncode == 0
    assert run("dvc", "init", "-q").returncode == 0
    sets = [
        "model.preset=tiny",
        "model.max_src_len=128",
        "model.max_tgt_len=32",
        "train.steps=8",
        "train.batch_size=4",
        "train.eval_every=4",
        "train.eval_batches=1",
        "train.warmup_steps=2",
    ]
    import yaml

    from obf.core.params import apply_overrides

    (repo / "params.yaml").write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(params), sets)))
    run("git", "add", "-A")
    assert run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init").returncode == 0
    r = run("dvc", "repro", "train")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (repo / "data/model/model.safetensors").exists()
    metrics = json.loads((repo / "dvclive/metrics.json").read_text())
    assert "train" in metrics and "val" in metrics
    shown = run("dvc", "metrics", "show", "--json")
    assert shown.returncode == 0 and "loss_bpb" in shown.stdout
    plots = run("dvc", "plots", "show", "--json")
    assert plots.returncode == 0 and "loss_bpb" in plots.stdout


def test_random_byte_examples_predict_random_bytes_from_a_random_context(text_only):
    """train.random_bytes_weight: that share of continue examples predicts uniform random bytes
    after a real file start, with random bytes already in the context; the rest are unchanged."""
    from obf.core.vocab import modality_id

    ds = Dataset(text_only)
    kw = dict(max_src_len=128, max_tgt_len=32, task_weights={"continue": 1.0}, seed=3)
    plain = ExampleSampler(ds, "train", **kw)
    mixed = ExampleSampler(ds, "train", random_bytes_weight=0.5, **kw)
    texts = [bytes(ds.file_bytes(r)) for r in ds.records]
    noise = [e for e in (mixed.example(i) for i in range(200)) if e.modality == "binary"]
    assert 70 <= len(noise) <= 130  # about half
    for e in noise:
        tgt = bytes(e.tgt)
        assert len(tgt) == 32 and not any(tgt in t for t in texts)  # targets come from no real file
        assert e.src[0] == modality_id("binary") and len(e.src) >= 2 + 16  # >= 16 random bytes of context
    assert all(plain.example(i).modality == "text" for i in range(50))
    counts = np.bincount(np.frombuffer(b"".join(bytes(e.tgt) for e in noise), np.uint8), minlength=256)
    assert counts.min() > 0  # every byte value occurs: uniform, not a pattern


def test_long_steps_come_every_long_every_steps_with_the_whole_context(dataset):
    """train.long_every: that step of every group is one `continue` chunk of `long_windows`
    windows at the model's whole context; the others draw `batch_size` examples at `src_len`.
    Each batch is a pure function of (step, rank)."""
    from obf.train import Dist, step_batch

    p = load_params(
        None,
        [
            "model.preset=tiny",
            "model.causal_encoder=true",
            "model.patch_size=4",
            "model.max_src_len=2048",
            "model.max_tgt_len=32",
            "train.src_len=128",
            "train.windows=2",
            "train.batch_size=4",
            "train.long_every=3",
            "train.long_windows=8",
            "train.task_weights={continue: 1.0}",
        ],
    )
    t = p.train
    ds = Dataset(dataset)
    kw = dict(max_tgt_len=32, task_weights={"continue": 1.0}, seed=0)
    short = ExampleSampler(ds, "train", max_src_len=128, windows=2, **kw)
    long = ExampleSampler(ds, "train", max_src_len=2048, windows=8, **kw)
    for step in range(9):
        b = step_batch(step, Dist(), t, short, long)
        if step % 3 == 2:
            assert len(b.indices) == 1 and b.src.shape[1] <= 2048 and len(b.rows) <= 8
        else:
            assert len(b.indices) == 4 and b.src.shape[1] <= 128 and len(b.rows) <= 8
        again = step_batch(step, Dist(), t, short, long)
        assert (again.src == b.src).all() and (again.tgt == b.tgt).all()
    longs = [step_batch(s, Dist(), t, short, long) for s in (2, 5, 8)]
    assert max(b.src.shape[1] for b in longs) > 128 and max(len(b.rows) for b in longs) > 2
    ranks = [step_batch(2, Dist(rank=r, world=2), t, short, long) for r in (0, 1)]
    assert ranks[0].indices != ranks[1].indices  # ranks draw distinct chunks


def test_train_reads_a_dataset_from_a_url_through_a_verified_cache(dataset, s3_bucket, tmp_path, monkeypatch):
    """`obf train s3://.../ds`: the dataset is fetched once into $OBF_DATA_CACHE, every file checked
    against its sha256, and training sees what it sees locally; a corrupt copy is refused."""
    from obf.core import storage
    from obf.data.dataset import local_dataset

    url = f"{s3_bucket}/ds"
    for p in sorted(Path(dataset).rglob("*")):
        if p.is_file():
            storage.write_bytes_atomic(f"{url}/{p.relative_to(dataset).as_posix()}", p.read_bytes())
    monkeypatch.setenv("OBF_DATA_CACHE", str(tmp_path / "cache"))
    local = local_dataset(url)
    assert local.parent == tmp_path / "cache"
    assert [r.key for r in Dataset(local).records] == [r.key for r in Dataset(dataset).records]
    assert local_dataset(url) == local  # cached, verified once
    r = obf(
        "train", url, "--out", str(tmp_path / "m"), "-q", *sum((["--set", s] for s in [*TINY, "train.steps=3"]), [])
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["step"] == 3
    shard = f"{s3_bucket}/bad/shards/000000.bin"
    for p in sorted(Path(dataset).rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            rel = p.relative_to(dataset).as_posix()
            storage.write_bytes_atomic(f"{s3_bucket}/bad/{rel}", data if "shards" not in rel else data[:-1] + b"!")
    assert storage.exists(shard)
    assert local_dataset(f"{s3_bucket}/bad") == local  # the same index: the verified copy serves it
    with pytest.raises(DataError, match="does not match its sha256"):
        local_dataset(f"{s3_bucket}/bad", cache_dir=tmp_path / "fresh")
    fresh = tmp_path / "fresh"  # nothing half-kept: no dataset dir, no temp dir (the cache's lock file may stay)
    assert not fresh.exists() or [p.suffix for p in fresh.iterdir()] in ([], [".lock"])

"""Fuzzing the annotation readers: no file, however malformed, crashes fastinst or takes the memory it claims.

Seeded mutants (tests/data/fuzzing.py) of realistic COCO instances files, labelme folders, Ultralytics data.yaml +
label files and COCO results files go through `fastinst convert`, `fastinst train` (one iteration) and `fastinst eval
--results`, each a `fastinst.cli.main([...])` call in a worker process (tests/data/fuzz_worker.py) whose address space
is limited to what it had mapped after an unmutated warm-up run plus a headroom (256 MiB for convert, 1 GiB for the
commands that run the network): a reader that allocates what a file claims (a 1e9 x 1e9 mask, a polygon reaching
x = 1e10) fails there instead of exhausting the machine.

The property, for every mutant: exit 0, or exit 2 with exactly one `error:` line on stderr and no traceback; no other
exception escapes `main`, the worker is never killed. The default run checks a few hundred mutants (~25 s on two
cores); `pytest -m slow tests/data/test_fuzz_readers.py` runs 1,000 COCO and 300 labelme mutants through convert and
train, 300 YOLO mutants through convert and 1,000 results files through eval, and prints the counts. Every crash the
fuzzer found is kept in tests/data/fuzz_regressions/ (the mutant's files, what it did before the fix, the `error:`
text expected now) and replayed here.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzzing import (
    Campaign,
    Case,
    Mutator,
    Outcome,
    coco_base,
    labelme_base,
    load_case,
    run_cases,
    summary,
)

from fastinst.errors import FastInstError

REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"
CONVERT_HEADROOM_MB = 256
TORCH_HEADROOM_MB = 1024
# mutants in the default run (seeds 0..n-1); the slow run uses other seeds (SLOW_SEED + 0..n-1)
FAST = {"coco": 150, "labelme": 100, "yolo": 60, "results": 60, "train_coco": 10, "train_labelme": 6}
SLOW = {"coco": 1000, "labelme": 300, "yolo": 300, "results": 1000, "train_coco": 1000, "train_labelme": 300}
SLOW_SEED = 100_000


def _generated(c: Campaign) -> list[Case]:
    """Regressions too large to keep as files: JSON nested 100,000 deep, a data.yaml nested as deep."""
    deep = b"[" * 100_000 + b"]" * 100_000
    docs = labelme_base()
    files = {f"f{i + 1}.json": yaml.safe_dump(d).encode() for i, d in enumerate(docs[:2])}
    files["f3.json"] = deep
    labels = {"labels/val/v1.txt": b"0 0.1 0.1 0.4 0.1 0.4 0.5\n"}
    return [
        c.replay("gen_coco_nested_100000_deep", "coco", "convert", {"instances.json": deep}, {}),
        c.replay("gen_labelme_nested_100000_deep", "labelme", "convert", files, {}),
        c.replay("gen_yolo_yaml_nested_100000_deep", "yolo", "convert", {"data.yaml": deep, **labels}, {}),
        c.replay("gen_results_nested_100000_deep", "results", "eval", {"results.json": deep}, {}),
    ]


def _regressions(c: Campaign) -> tuple[list[Case], dict[str, dict]]:
    cases, saved = [], {}
    for path in sorted(REGRESSIONS.glob("*.json")):
        item = load_case(path)
        case = c.replay(f"reg_{item['name']}", item["reader"], item["command"], item["files"], item["options"])
        cases.append(case)
        saved[case.id] = item
    return cases, saved


def _run(c: Campaign, cases: list[Case], command: str) -> dict[str, Outcome]:
    headroom = CONVERT_HEADROOM_MB if command == "convert" else TORCH_HEADROOM_MB
    return run_cases(cases, c.warmup(command), c.root / f"work_{command}", headroom, env=_env(c))


def _env(c: Campaign) -> dict[str, str]:
    return {"FASTINST_CACHE": str(c.root / "cache"), "FASTINST_DATASETS": str(c.root / "no_datasets")}


def _failures(outcomes: dict[str, Outcome], cases: list[Case]) -> str:
    by_id = {c.id: c for c in cases}
    bad = [o for o in outcomes.values() if o.verdict in ("crashed", "killed")]
    lines = []
    for o in bad[:5]:
        tail = (o.crash or o.stderr or "(the worker died: killed for memory, a signal, or a hang)").strip()
        lines.append(f"{o.id} {o.verdict} after {by_id[o.id].log}:\n{tail[-1500:]}")
    return f"{len(bad)} of {len(outcomes)} mutants broke the property:\n" + "\n\n".join(lines)


def _report(name: str, outcomes: dict[str, Outcome], seconds: float) -> str:
    n = summary(outcomes)
    line = (
        f"fuzz {name}: {len(outcomes)} mutants, {n['accepted']} accepted / {n['refused']} refused in one line / "
        f"{n['crashed']} crashed / {n['killed']} killed, {seconds:.0f} s"
    )
    print(line)
    return line


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Campaign:
    return Campaign(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def convert_run(campaign):
    """The default run's convert mutants and the convert regressions, in one worker."""
    c = campaign
    mutants = [c.coco(s) for s in range(FAST["coco"])]
    mutants += [c.labelme(s) for s in range(FAST["labelme"])]
    mutants += [c.yolo(s) for s in range(FAST["yolo"])]
    saved, expected = _regressions(c)
    extra = [x for x in [*saved, *_generated(c)] if x.command == "convert"]
    start = time.perf_counter()
    outcomes = _run(c, mutants + extra, "convert")
    return mutants, extra, expected, outcomes, time.perf_counter() - start


@pytest.fixture(scope="module")
def torch_run(campaign):
    """The default run's eval and train mutants and their regressions, in one worker warmed up by a training run."""
    c = campaign
    mutants = [c.results(s) for s in range(FAST["results"])]
    mutants += [c.coco(s, "train") for s in range(FAST["train_coco"])]
    mutants += [c.labelme(s, "train") for s in range(FAST["train_labelme"])]
    saved, expected = _regressions(c)
    extra = [x for x in [*saved, *_generated(c)] if x.command != "convert"]
    start = time.perf_counter()
    outcomes = _run(c, mutants + extra, "train")
    return mutants, extra, expected, outcomes, time.perf_counter() - start


@pytest.mark.parametrize("reader", ["coco", "labelme", "yolo"])
def test_convert_survives_mutated_files(convert_run, reader):
    mutants, _, _, outcomes, seconds = convert_run
    mine = [m for m in mutants if m.reader == reader]
    got = {m.id: outcomes[m.id] for m in mine}
    _report(f"convert {reader}", got, seconds)
    n = summary(got)
    assert n["crashed"] == n["killed"] == 0, _failures(got, mine)
    assert n["accepted"] > len(mine) // 10 and n["refused"] > len(mine) // 10  # mutants that test both outcomes


def test_eval_and_train_survive_mutated_files(torch_run):
    mutants, _, _, outcomes, seconds = torch_run
    got = {m.id: outcomes[m.id] for m in mutants}
    _report("eval --results + train", got, seconds)
    n = summary(got)
    assert n["crashed"] == n["killed"] == 0, _failures(got, mutants)
    trained = [m for m in mutants if m.command == "train" and outcomes[m.id].verdict == "accepted"]
    assert trained, "no mutant reached training"


@pytest.mark.parametrize("which", ["convert_run", "torch_run"])
def test_every_crash_found_stays_fixed(request, which):
    _, extra, expected, outcomes, _ = request.getfixturevalue(which)
    assert extra
    problems = []
    for case in extra:
        o = outcomes[case.id]
        item = expected.get(case.id)
        want = "refused" if item is None or item["expect"] is not None else "accepted"
        if o.verdict != want:
            problems.append(f"{case.id}: {o.verdict}, expected {want}\n{(o.crash or o.stderr)[-800:]}")
        elif item is not None and item["expect"] is not None:
            line = next(x for x in o.stderr.splitlines() if x.startswith("error:"))
            if item["expect"] not in line:
                problems.append(f"{case.id}: {line!r} lacks {item['expect']!r}")
        if want == "refused" and case.reader in ("coco", "labelme", "yolo", "results"):
            line = next((x for x in o.stderr.splitlines() if x.startswith("error:")), "")
            if case.id not in line:  # the message names the file (the case's own folder or file)
                problems.append(f"{case.id}: the error does not name the file: {line!r}")
    assert not problems, "\n\n".join(problems)


def test_the_worker_memory_limit_is_real(campaign):
    """An allocation beyond the headroom fails in the worker (so a reader allocating what a file claims would be
    reported, not survive by luck of a large machine)."""
    case = Case("allocate", ["--fuzz-allocate-mb", str(4 * CONVERT_HEADROOM_MB)], [])
    out = _run(campaign, [case], "convert")["allocate"]
    assert out.verdict == "crashed" and "MemoryError" in (out.crash or ""), out


# -- configs: in process, each a Config or one ConfigError ------------------------------------------------------------


def _official_base() -> dict:
    """An official-style YAML mapping (every key fastinst maps) with the values of the D1 recipe."""
    from fastinst.config import get_config
    from fastinst.official_keys import KEYS, Only, To

    cfg = get_config("fastinst-d1-r50")
    out: dict = {}
    for key, spec in KEYS.items():
        if isinstance(spec, To):
            section, name = spec.target.split(".")
            value = getattr(getattr(cfg, section), name)
        elif isinstance(spec, Only):
            value = spec.allowed[0]
        else:
            continue
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    out["MODEL"]["BACKBONE"]["NAME"] = "build_resnet_backbone"
    out["MODEL"]["RESNETS"]["NORM"] = "FrozenBN"
    out["SOLVER"].update(OPTIMIZER="ADAMW", WARMUP_FACTOR=1.0, WARMUP_ITERS=10)
    out["SOLVER"]["CLIP_GRADIENTS"] = {"ENABLED": True, "CLIP_TYPE": "full_model", "CLIP_VALUE": 0.01}
    out["INPUT"]["RANDOM_FLIP"] = "horizontal"
    out["MODEL"]["WEIGHTS"] = "R-50.pkl"
    out["DATASETS"] = {"TRAIN": ["coco_2017_train"], "TEST": ["coco_2017_val"]}
    return out


def _config_outcome(load) -> str:
    try:
        load()
    except FastInstError as e:
        assert "\n" not in str(e), str(e)
        return "refused"
    return "accepted"


def test_config_readers_survive_mutated_files(tmp_path):
    from fastinst.config import CONFIG_DIR, load_yaml
    from fastinst.official_config import load_official_config, read_official_yaml

    ours = yaml.safe_load((CONFIG_DIR / "fastinst-demo.yaml").read_text())
    official = _official_base()
    base_file = tmp_path / "official.yaml"
    base_file.write_text(yaml.safe_dump(official))
    assert _config_outcome(lambda: load_official_config(base_file)) == "accepted"
    flat = read_official_yaml(base_file)
    counts = {"accepted": 0, "refused": 0}
    for seed in range(300):
        m = Mutator(seed)
        path = tmp_path / f"ours_{seed}.yaml"
        path.write_text(yaml.safe_dump(m.mutate(ours), allow_unicode=True))
        counts[_config_outcome(lambda p=path: load_yaml(p))] += 1
        path = tmp_path / f"official_{seed}.yaml"
        path.write_text(yaml.safe_dump(m.mutate(official), allow_unicode=True))
        counts[_config_outcome(lambda p=path: load_official_config(p))] += 1
        pairs = m.mutate({k: flat[k] for k in m.rng.sample(sorted(flat), 3)})
        opts = [str(x) for k, v in (pairs.items() if isinstance(pairs, dict) else []) for x in (k, v)]
        counts[_config_outcome(lambda o=opts: load_official_config(None, o))] += 1
    assert counts["accepted"] > 50 and counts["refused"] > 50, counts


@pytest.mark.parametrize(
    "text,expected",
    [
        ("base: 13\n", "'base' must be a variant name"),  # AttributeError: 'int' object has no attribute 'endswith'
        ("solver:\n  max_iter: .nan\n", "solver.max_iter must be an integer"),  # ValueError from int(nan)
        ("input:\n  crop_size: [-.inf, 1]\n", "input.crop_size must be an integer"),  # OverflowError from int(-inf)
        ("loss:\n  class_weight: .inf\n", "loss.class_weight must be a finite number"),  # accepted before
        ("model:\n  depth: 152\n", "model.depth=152: must be one of"),  # ValueError from the backbone
        ("name: [1, 2]\n", "name must be a string"),  # a list as the config's name
        ("x: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested more deeply"),  # RecursionError
    ],
)
def test_our_yaml_config_regressions(tmp_path, text, expected):
    """Crashes the config fuzzing found, each now one ConfigError naming the key."""
    from fastinst.config import ConfigError, load_yaml

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as e:
        load_yaml(path)
    assert "\n" not in str(e.value)


def test_official_config_regressions(tmp_path):
    from fastinst.config import ConfigError
    from fastinst.official_config import load_official_config, parse_opts

    assert parse_opts(["MODEL.WEIGHTS", "{[]: 1}"]) == {"MODEL.WEIGHTS": "{[]: 1}"}  # TypeError before
    with pytest.raises(ConfigError, match=r"MODEL\.WEIGHTS"):
        load_official_config(None, ["MODEL.WEIGHTS", "{'a': 1}"])  # a dict where a path goes
    with pytest.raises(ConfigError, match="warmup_iters"):
        load_official_config(None, ["SOLVER.WARMUP_ITERS", "-5", "SOLVER.WARMUP_FACTOR", "0.001"])  # no range check
    with pytest.raises(ConfigError, match="expected a number"):
        load_official_config(None, ["SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1e999"])  # inf
    long_list = "[" + ", ".join(["10" * 20] * 30) + "]"
    with pytest.raises(ConfigError) as e:  # a long list in a range error was written on several lines
        load_official_config(None, ["INPUT.MIN_SIZE_TRAIN", long_list])
    assert "\n" not in str(e.value)


# -- the RLE string check: numpy at scale, equal to the character loop ------------------------------------------------


def test_rle_string_totals_agree_with_the_reference_loop():
    from pycocotools import mask as mask_util

    from fastinst.data.masks import rle_string_total, rle_string_totals
    from fastinst.errors import DatasetError

    rng = random.Random(0)
    strings = []
    for i in range(1500):
        r = rng.random()
        if r < 0.4:  # real masks
            h, w = rng.randint(1, 40), rng.randint(1, 40)
            mask = np.random.default_rng(i).random((h, w)) < rng.random()
            strings.append(mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode())
        elif r < 0.8:  # anything near the format's alphabet
            strings.append("".join(chr(rng.randint(40, 115)) for _ in range(rng.randint(0, 30))))
        else:  # continuation characters (long numbers), negative numbers, characters outside ASCII
            strings.append("".join(rng.choice("01Pdo<\u0263") for _ in range(rng.randint(0, 12))))
    totals, problems = rle_string_totals(strings)
    for s, total, problem in zip(strings, totals, problems, strict=True):
        try:
            reference = rle_string_total(s, "x")
        except DatasetError:
            assert problem != 0, s
        else:
            assert problem == 0 and total == reference, s


# -- the slow run: pytest -m slow tests/data/test_fuzz_readers.py ------------------------------------------------------


@pytest.fixture
def slow_selected(request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow fuzzing: run it with -m slow")


@pytest.mark.slow
@pytest.mark.parametrize("what", ["convert", "train", "eval"])
def test_slow_fuzz(slow_selected, tmp_path, what):
    c = Campaign(tmp_path)
    seeds = {k: range(SLOW_SEED, SLOW_SEED + n) for k, n in SLOW.items()}
    if what == "convert":
        groups = {
            "convert coco": [c.coco(s) for s in seeds["coco"]],
            "convert labelme": [c.labelme(s) for s in seeds["labelme"]],
            "convert yolo": [c.yolo(s) for s in seeds["yolo"]],
        }
    elif what == "train":
        groups = {
            "train coco": [c.coco(s, "train") for s in seeds["train_coco"]],
            "train labelme": [c.labelme(s, "train") for s in seeds["train_labelme"]],
        }
    else:
        groups = {"eval --results": [c.results(s) for s in seeds["results"]]}
    failures = []
    for name, cases in groups.items():
        start = time.perf_counter()
        outcomes = _run(c, cases, "convert" if what == "convert" else "train")
        _report(name, outcomes, time.perf_counter() - start)
        if summary(outcomes)["crashed"] or summary(outcomes)["killed"]:
            failures.append(f"{name}: {_failures(outcomes, cases)}")
    assert not failures, "\n\n".join(failures)


def test_base_files_are_accepted_as_they_are(campaign):
    """The unmutated files load (the mutants start from valid data): every form each format allows is read."""
    from fastinst.data.registry import load_dataset

    ds = load_dataset(campaign.gt)
    assert len(ds.records) == 3 and len(ds.coco["annotations"]) == 7  # the bbox-only entry is skipped
    assert sum(a["iscrowd"] for a in ds.coco["annotations"]) == 2
    assert len(coco_base()["annotations"]) == 8
    lm = load_dataset(campaign.root / "labelme" / "base")
    assert len(lm.records) == 3
    yolo = load_dataset(campaign.yolo_base, "val")
    assert len(yolo.records) == 2

"""`iqa-kit` command line: reproduce (papermill over the notebooks), train, predict, decisions, data, plan,
weights, proxy.

A problem with the user's input (a file, a folder, a field) is printed as one line,
`iqa-kit: <file or field>: <problem>`, with exit status 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

from .config.fields import ConfigError
from .config.profiles import PROFILES, is_rehearsal, rehearsal_of, shard
from .system import KitError, cache_dir, check_writable, os_error

# `iqa-kit --help`, `decisions` and every error about a bad argument answer without torch, timm,
# transformers or papermill (8-12 s and 1 GB to import): each command imports what it needs inside its
# own function, the one place in the kit where an import is not at the top (tests/test_layers.py allows
# exactly these, by name).
MODEL_NAMES = ("deiqt", "csfiqa", "lmliqa")     # for --model without importing the models; a test checks
LLAMA_REPO = "huggyllama/llama-7b"              # models.pretrained.LLAMA_HUB_ID; a test checks
WEIGHTS_ENV = "IQA_KIT_WEIGHTS"                 # models.pretrained.WEIGHTS_ENV; a test checks

NOTEBOOKS = ["00_data_prep", "01_train_csfiqa", "02_train_lmliqa", "03_ablations", "04_cross_dataset",
             "05_cost_analysis", "06_visualizations"]


def notebooks_dir() -> Path:
    """The numbered notebooks: ./notebooks in a checkout."""
    here = Path(__file__).resolve().parent.parent / "notebooks"
    return here if here.is_dir() else Path.cwd() / "notebooks"


def _select(names: list[str] | None) -> list[str]:
    if not names:
        return NOTEBOOKS
    out = []
    for n in names:
        hits = [nb for nb in NOTEBOOKS if nb == n or nb.startswith(n)]
        if not hits:
            raise KitError(f"--notebooks: no notebook matches {n!r}; notebooks: {', '.join(NOTEBOOKS)}")
        out += [h for h in hits if h not in out]
    return out


def _run_notebook(name: str, src: Path, out_dir: Path, params: dict, args) -> float:
    """Execute one notebook into out_dir/<name>.ipynb. papermill rewrites its output as cells run, so it
    writes a file of this process's own and renames it at the end (two runs never write one file)."""
    import papermill as pm
    t0 = time.time()
    print(f"[iqa-kit] {name} ({args.profile}) ...", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    final, tmp = out_dir / f"{name}.ipynb", out_dir / f".{name}.{os.getpid()}.ipynb"
    known = pm.inspect_notebook(str(src / f"{name}.ipynb"))            # pass only what its parameters cell has
    params = {k: v for k, v in params.items() if k in known}
    try:
        pm.execute_notebook(str(src / f"{name}.ipynb"), str(tmp), parameters=params, cwd=str(src),
                            kernel_name=args.kernel, progress_bar=False, log_output=args.verbose)
    finally:
        if tmp.exists():
            os.replace(tmp, final)              # also on failure: the executed copy shows the traceback
    print(f"[iqa-kit] {name} done in {time.time() - t0:.0f} s", flush=True)
    return time.time() - t0


def _rehearsal_weights(profile: str) -> Path:
    """Stand-in weights in the real formats (written once into the cache folder), for the notebooks."""
    from .models import weights
    from .runs.experiments import llama_layers
    folder = cache_dir("rehearsal-weights")
    print(f"[iqa-kit] rehearsal: stand-in weights in {folder}", flush=True)
    return weights.write_stand_ins(folder, llama_layers(profile))


def _proxy_first(profile: str, overrides: dict, data_root: str | None) -> None:
    """Build the proxy-pretrained encoders the profile's models load (with these overrides) before the
    notebooks start, so no notebook cell stalls on a build."""
    from .config.check import make_config
    cfgs = [make_config(profile, m, {**overrides, "data.data_root": data_root}) for m in MODEL_NAMES]
    if any(c.uses_proxy_weights() for c in cfgs):
        from .models.proxy import build_ahead
        build_ahead(cfgs)


def reproduce(args) -> int:
    import papermill as pm

    from .config.check import make_config
    from .reporting.index import write_index
    results = check_writable(Path(args.results_dir).resolve())
    out_dir = results / "notebooks"
    profile = rehearsal_of(args.profile) if args.rehearse else args.profile
    args.profile = profile
    params = {"profile": profile, "results_dir": str(results), "device": args.device}
    if is_rehearsal(profile):                # a parameter of each notebook: its `setup` points the models there
        params["weights_dir"] = str(_rehearsal_weights(profile))
    if args.set:
        params["overrides"] = _parse_sets(args.set)
        for model in MODEL_NAMES:                    # a misspelt field stops here, not in a notebook
            make_config(profile, model, params["overrides"])
    if args.pool_dir:
        params["pool_dir"] = str(_data_root(args.pool_dir, must_exist=True))
    if args.data_root:
        params["data_root"] = str(_data_root(args.data_root, must_exist=profile != "smoke"))
    if args.shard:
        params["shard"] = args.shard
    _proxy_first(profile, params.get("overrides", {}), params.get("data_root"))
    timings = {}
    for name in _select(args.notebooks):
        try:
            timings[name] = _run_notebook(name, notebooks_dir(), out_dir, params, args)
        except pm.PapermillExecutionError as e:
            print(f"iqa-kit: notebook {name}, cell {e.exec_count}: {e.ename}: {e.evalue.splitlines()[0]} "
                  f"(the executed notebook with the traceback: {out_dir / (name + '.ipynb')})", file=sys.stderr)
            write_index(results, args.profile, timings)
            return 1
    write_index(results, args.profile, timings)
    print(f"[iqa-kit] all done in {sum(timings.values()):.0f} s; index: {results / 'README.md'}")
    return 0


def _parse_sets(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--set: wants FIELD=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def _data_root(path: str, must_exist: bool) -> Path:
    """The data root, absolute; real datasets must be there already (the synthetic set is built there)."""
    p = Path(path).expanduser().resolve()
    if must_exist and not p.is_dir():
        raise KitError(f"--data-root: folder not found: {p}")
    return p


def _seed_config(profile: str, model: str, overrides: dict, seed: int):
    """make_config for one of --seeds; a seed out of range names the flag the user typed."""
    from .config.check import make_config
    try:
        return make_config(profile, model, {**overrides, "split_seed": seed})
    except ConfigError as e:
        if str(e).startswith("split_seed:"):
            raise ConfigError("--seeds:" + str(e)[len("split_seed:"):]) from None
        raise


def train(args) -> int:
    overrides = {"data.dataset": args.dataset, "test_dataset": args.test_dataset, **_parse_sets(args.set)}
    planned = [(_seed_config(args.profile, args.model, overrides, seed), "") for seed in args.seeds]
    from .runs.experiments import run_all             # checked configs first: a bad field answers at once
    from .training.distributed import is_main_process
    synthetic = all(str(d).lower().startswith("synthetic") for d in (args.dataset, args.test_dataset) if d)
    data_root = str(_data_root(args.data_root, not synthetic)) if args.data_root else None
    check_writable(args.results_dir)
    df = run_all(planned, args.results_dir, data_root, shard=args.shard, device=args.device)
    if is_main_process():                            # under torchrun, rank 0 speaks for the group
        print(df.to_string(index=False))
    return 0


def predict(args) -> int:
    from .training.predict import load_trained, predict_images
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise KitError(f"{missing[0]}: image file not found" + (f" (and {len(missing) - 1} more)"
                                                                if len(missing) > 1 else ""))
    model, cfg = load_trained(args.checkpoint)
    scores = predict_images(model, args.images, cfg, n_crops=args.crops, device=args.device or "auto")
    for path, s in zip(args.images, scores):
        print(f"{float(s):.4f}\t{path}")
    return 0


def decisions(args) -> int:
    from .config.check import decisions_table
    df = decisions_table()
    print(df.to_markdown(index=False) if args.markdown else df.to_string(index=False))
    return 0


def _check_dataset(name: str, args) -> bool:
    """Parse one dataset and (unless --no-decode) decode every image; print what is wrong, all of it."""
    from .data.images import check_images
    from .data.registry import load_manifest
    try:
        m = load_manifest(name, args.data_root, check_count=not args.any_count)
    except KitError as e:
        print("iqa-kit: " + str(e).replace("\n", " "), file=sys.stderr)
        return False
    problems = [] if args.no_decode else check_images(m, progress=not args.quiet)
    for path, why in problems:
        print(f"iqa-kit: {path}: {why}", file=sys.stderr)
    checked = "listed" if args.no_decode else "decoded"
    status = f"{len(problems)} unreadable or duplicated" if problems else f"all {checked}"
    print(f"{name}: {len(m)} images ({status}), {m.direction}, split by {m.split_unit}, root {m.root}")
    return not problems


def data(args) -> int:
    ok = [_check_dataset(name, args) for name in args.datasets]
    return 0 if all(ok) else 2


def plan_cmd(args) -> int:
    from .runs.estimate import check_rate, memory_table, plan_table
    check_rate(args.crops_per_s, "--crops-per-s")
    profile = rehearsal_of(args.profile) if args.rehearse else args.profile
    data_root = str(_data_root(args.data_root, must_exist=True)) if args.data_root else None
    table = plan_table(profile, args.results_dir, data_root, args.crops_per_s)
    print(f"Plan of the {profile} profile (results in {Path(args.results_dir).resolve()}):")
    print(table.to_markdown(index=False))
    if not args.crops_per_s:
        print("GPU-hours: give --crops-per-s, DEIQT's training crops/s on the target GPU "
              "(benchmarks/bench_train.py measures it)")
    if not args.no_memory:
        print(f"\nGPU memory of a training step at {args.amp} (estimated from the bytes a forward saves for "
              f"backward on this CPU, plus weights, gradients and AdamW state; the image store is not counted; "
              f"'micro on N GB' = what train.micro_batch=auto takes there, with its peak GiB):")
        print(memory_table(profile, amp=args.amp).to_markdown(index=False))
    return 0


def weights_cmd(args) -> int:
    from .models import weights
    from .runs.experiments import llama_layers
    layers = llama_layers(args.profile)
    if not args.check:
        weights.download(args.dir, layers, llama_repo=args.llama_repo)
    problems = weights.check(args.dir, layers, llama_repo=args.llama_repo)
    for p in problems:
        print(f"iqa-kit: {p}", file=sys.stderr)
    if problems:
        return 2
    print(f"{Path(args.dir).expanduser()}: every weights file the {args.profile} profile reads is there, with "
          f"the right shapes. Point the kit at it: export {WEIGHTS_ENV}={Path(args.dir).expanduser().resolve()}")
    return 0


def proxy_cmd(args) -> int:
    """Build the tiny encoders' proxy pretraining, which `model.pretrained=True` loads at the tiny size."""
    from .config.check import make_config
    overrides = {**_parse_sets(args.set), "model.pretrained": True,
                 "data.data_root": str(_data_root(args.data_root, False)) if args.data_root else None}
    cfgs = [make_config(args.profile, m, overrides) for m in MODEL_NAMES]
    if not any(c.uses_proxy_weights() for c in cfgs):
        raise KitError(f"--profile {args.profile}: its models are not tiny (or set model.weights); the proxy "
                       f"pretraining is the tiny size's stand-in for ImageNet weights (--profile smoke)")
    from .models.proxy import build_ahead
    for folder in build_ahead(cfgs):
        files = ", ".join(sorted(p.name for p in folder.glob("*.safetensors")))
        print(f"{folder}: {files} (current)")
    return 0


def _reproduce_parser(sub) -> None:
    r = sub.add_parser("reproduce", help="run the numbered notebooks with papermill")
    r.add_argument("--profile", default="smoke", choices=list(PROFILES))
    r.add_argument("--data-root", help="folder with the datasets' release folders (quick/paper)")
    r.add_argument("--results-dir", default="results")
    r.add_argument("--notebooks", nargs="*", help="subset, by number or name (e.g. 00 03)")
    r.add_argument("--device", default="auto")
    r.add_argument("--devices", dest="device", metavar="DEV,DEV,...",
                   help="train the notebooks' runs on several devices at once, e.g. cuda:0,cuda:1 or cuda:all")
    r.add_argument("--shard", help="i/N: run only this share of every sweep")
    r.add_argument("--kernel", default="python3")
    r.add_argument("--verbose", action="store_true", help="stream the notebooks' output")
    r.add_argument("--rehearse", action="store_true",
                   help="the profile's exact code path at a toy budget, with stand-in weights (CPU minutes)")
    r.add_argument("--pool-dir", help="gMAD pool: a folder of unlabelled images (notebook 06)")
    r.add_argument("--set", nargs="*", metavar="FIELD=VALUE",
                   help="config fields for every run and table, e.g. csfiqa.version=v1 (the reported numbers "
                        "quoted); a run's own ablation or sweep value wins")
    r.set_defaults(fn=reproduce)


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train (or load the record of) one configuration")
    t.add_argument("--model", default="deiqt", choices=MODEL_NAMES)
    t.add_argument("--dataset", default="synthetic")
    t.add_argument("--test-dataset", help="cross-dataset: test on all of this dataset")
    t.add_argument("--profile", default="smoke", choices=list(PROFILES))
    t.add_argument("--seeds", type=int, nargs="+", default=[0])
    t.add_argument("--set", nargs="*", metavar="FIELD=VALUE", help="config overrides, e.g. csfiqa.tau=0.2")
    t.add_argument("--data-root")
    t.add_argument("--results-dir", default="results")
    t.add_argument("--device")
    t.add_argument("--devices", dest="device", metavar="DEV,DEV,...",
                   help="one worker per device, each training runs of --seeds in turn (e.g. cuda:0,cuda:1)")
    t.add_argument("--shard")
    t.set_defaults(fn=train)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iqa-kit", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True)
    _reproduce_parser(sub)
    _train_parser(sub)
    q = sub.add_parser("predict", help="score images with a trained checkpoint")
    q.add_argument("images", nargs="+")
    q.add_argument("--checkpoint", required=True, help="a run's checkpoint folder or model.safetensors")
    q.add_argument("--crops", type=int, default=None, help="test crops per image (default: the run's)")
    q.add_argument("--device")
    q.set_defaults(fn=predict)
    d = sub.add_parser("decisions", help="list every undecided paper detail and its default")
    d.add_argument("--markdown", action="store_true")
    d.set_defaults(fn=decisions)
    s = sub.add_parser("data", help="parse and check datasets: labels, files, and every image decoded")
    s.add_argument("datasets", nargs="+")
    s.add_argument("--data-root")
    s.add_argument("--no-decode", action="store_true", help="only parse the label files and list the images")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--any-count", action="store_true", help="accept an image count other than the release's")
    s.set_defaults(fn=data)
    b = sub.add_parser("plan", help="the runs, crops and GPU-hours a profile needs, and what is done")
    b.add_argument("--profile", default="paper", choices=list(PROFILES))
    b.add_argument("--rehearse", action="store_true")
    b.add_argument("--results-dir", default="results")
    b.add_argument("--data-root", help="exact split sizes and record keys when the datasets are here")
    b.add_argument("--crops-per-s", type=float, help="DEIQT's training crops/s on the target GPU")
    b.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"],
                   help="the run's precision for the memory estimate (fp16: cards without bf16)")
    b.add_argument("--no-memory", action="store_true", help="skip the memory estimate (a minute per model once)")
    b.set_defaults(fn=plan_cmd)
    w = sub.add_parser("weights", help="download every pretrained file the quick and paper profiles read")
    w.add_argument("--dir", required=True, help="the folder to fill (then: export IQA_KIT_WEIGHTS=<it>)")
    w.add_argument("--check", action="store_true", help="only check the folder, offline")
    w.add_argument("--profile", default="paper", choices=["quick", "paper"])
    w.add_argument("--llama-repo", default=LLAMA_REPO, help="hub repo of LLaMA-7B in safetensors shards")
    w.set_defaults(fn=weights_cmd)
    x = sub.add_parser("proxy", help="build the tiny encoders' proxy pretraining (model.pretrained=True at the "
                                     "tiny size loads it; built on first use otherwise)")
    x.add_argument("--profile", default="smoke", choices=list(PROFILES))
    x.add_argument("--data-root", help="the synthetic set's data root (the files go under <it>/synthetic/pretrained)")
    x.add_argument("--set", nargs="*", metavar="FIELD=VALUE", help="e.g. model.proxy_pretraining=rotation-v1")
    x.set_defaults(fn=proxy_cmd)
    return p


def _check_dataset_names(args) -> None:
    from .data.registry import canonical_name
    named = [("--dataset: ", getattr(args, "dataset", None)), ("--test-dataset: ", getattr(args, "test_dataset", None))]
    for flag, name in named + [("", n) for n in getattr(args, "datasets", [])]:
        if name and not name.lower().startswith("synthetic"):
            try:
                canonical_name(name)
            except KitError as e:
                raise KitError(f"{flag}{e}") from None


def check_args(args) -> None:
    """What the user typed, checked before any work: one line naming the flag. Each check imports only
    what it needs, so a bad argument is answered before the models or the data are loaded."""
    if getattr(args, "shard", None):
        shard([], args.shard)
    _check_dataset_names(args)
    if getattr(args, "device", None) not in (None, "auto"):
        from .devices import check_device
        flag = "--devices" if "," in args.device else "--device"
        for name in args.device.split(","):
            if name.strip() != "cuda:all":                  # checked where the pool counts the GPUs
                check_device(name.strip(), flag)


def _run(args) -> int:
    check_args(args)
    return args.fn(args)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        return _run(args)
    try:
        return _run(args)
    except KitError as e:
        print("iqa-kit: " + str(e).replace("\n", " "), file=sys.stderr)
    except OSError as e:                       # the OS's own errors, named by their file
        print(f"iqa-kit: {os_error(e.filename or '?', e, 'use')}", file=sys.stderr)
    except KeyboardInterrupt as e:             # claims.WaitInterrupted says what it waited for
        print(f"iqa-kit: {e or 'interrupted; run the same command again to resume'}", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())

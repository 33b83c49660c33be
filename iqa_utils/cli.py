"""`iqa-kit` command line: reproduce (papermill over the notebooks), train, predict, decisions, data."""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

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
            raise SystemExit(f"iqa-kit: no notebook matches {n!r}; notebooks: {', '.join(NOTEBOOKS)}")
        out += [h for h in hits if h not in out]
    return out


def reproduce(args) -> int:
    import papermill as pm
    from .report import write_index

    results = Path(args.results_dir).resolve()
    out_dir = results / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"profile": args.profile, "results_dir": str(results), "device": args.device}
    if args.data_root:
        params["data_root"] = str(Path(args.data_root).resolve())
    if args.shard:
        params["shard"] = args.shard
    timings = {}
    src = notebooks_dir()
    for name in _select(args.notebooks):
        t0 = time.time()
        print(f"[iqa-kit] {name} ({args.profile}) ...", flush=True)
        try:
            pm.execute_notebook(str(src / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"), parameters=params,
                                cwd=str(src), kernel_name=args.kernel, progress_bar=False,
                                log_output=args.verbose)
        except pm.PapermillExecutionError as e:
            print(f"[iqa-kit] FAILED: notebook {name}, cell {e.exec_count} ({e.ename}: {e.evalue}).\n"
                  f"The executed notebook with the traceback is {out_dir / (name + '.ipynb')}", file=sys.stderr)
            return 1
        timings[name] = time.time() - t0
        print(f"[iqa-kit] {name} done in {timings[name]:.0f} s", flush=True)
    write_index(results, args.profile, timings)
    print(f"[iqa-kit] all done in {sum(timings.values()):.0f} s; index: {results / 'README.md'}")
    return 0


def _parse_sets(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise SystemExit(f"iqa-kit: --set wants FIELD=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def train(args) -> int:
    from .config import make_config
    from .experiments import run_all

    cfgs = []
    for seed in args.seeds:
        cfg = make_config(args.profile, args.model, {"data.dataset": args.dataset, **_parse_sets(args.set)})
        cfg.split_seed, cfg.test_dataset = seed, args.test_dataset
        if args.device:
            cfg.train.device = args.device
        cfgs.append(cfg)
    df = run_all(cfgs, args.results_dir, args.data_root, shard=args.shard)
    print(df.to_string(index=False))
    return 0


def predict(args) -> int:
    from .engine import load_trained, predict_images

    model, cfg = load_trained(args.checkpoint)
    scores = predict_images(model, args.images, cfg, n_crops=args.crops, device=args.device or "auto")
    for path, s in zip(args.images, scores):
        print(f"{float(s):.4f}\t{path}")
    return 0


def decisions(args) -> int:
    from .config import decisions_table

    df = decisions_table()
    print(df.to_markdown(index=False) if args.markdown else df.to_string(index=False))
    return 0


def data(args) -> int:
    from .data.registry import load_manifest

    for name in args.datasets:
        m = load_manifest(name, args.data_root)
        print(f"{name}: {len(m)} images, {m.direction}, split by {m.split_unit}, root {m.root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iqa-kit", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("reproduce", help="run the numbered notebooks with papermill")
    r.add_argument("--profile", default="smoke", choices=["smoke", "quick", "paper"])
    r.add_argument("--data-root", help="folder with the datasets' release folders (quick/paper)")
    r.add_argument("--results-dir", default="results")
    r.add_argument("--notebooks", nargs="*", help="subset, by number or name (e.g. 00 03)")
    r.add_argument("--device", default="auto")
    r.add_argument("--shard", help="i/N: run only this share of every sweep")
    r.add_argument("--kernel", default="python3")
    r.add_argument("--verbose", action="store_true", help="stream the notebooks' output")
    r.set_defaults(fn=reproduce)

    t = sub.add_parser("train", help="train (or load the record of) one configuration")
    t.add_argument("--model", default="deiqt", choices=["deiqt", "csfiqa", "lmliqa"])
    t.add_argument("--dataset", default="synthetic")
    t.add_argument("--test-dataset", help="cross-dataset: test on all of this dataset")
    t.add_argument("--profile", default="smoke", choices=["smoke", "quick", "paper"])
    t.add_argument("--seeds", type=int, nargs="+", default=[0])
    t.add_argument("--set", nargs="*", metavar="FIELD=VALUE", help="config overrides, e.g. csfiqa.tau=0.2")
    t.add_argument("--data-root")
    t.add_argument("--results-dir", default="results")
    t.add_argument("--device")
    t.add_argument("--shard")
    t.set_defaults(fn=train)

    q = sub.add_parser("predict", help="score images with a trained checkpoint")
    q.add_argument("images", nargs="+")
    q.add_argument("--checkpoint", required=True, help="a run's checkpoint folder or model.safetensors")
    q.add_argument("--crops", type=int, default=None, help="test crops per image (default: the run's)")
    q.add_argument("--device")
    q.set_defaults(fn=predict)

    d = sub.add_parser("decisions", help="list every undecided paper detail and its default")
    d.add_argument("--markdown", action="store_true")
    d.set_defaults(fn=decisions)

    s = sub.add_parser("data", help="parse and check datasets")
    s.add_argument("datasets", nargs="+")
    s.add_argument("--data-root")
    s.set_defaults(fn=data)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())

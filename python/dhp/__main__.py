"""python -m dhp: plan, simulate and compare strategies on batch files from the shell.

    python -m dhp plan --cluster h100-8 --model qwen2-vl-7b --batch examples/batches.json
    python -m dhp simulate --cluster h100-8 --model qwen2-vl-7b --batch b.json --plan p.json
    python -m dhp bench --cluster h100-8 --model qwen2-vl-7b --batch examples/batches.json

Exit status: 0 on success, 1 when dhp refuses an input (the message says which field and
value), 2 on a bad command line.
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from . import (Error, Planner, check_batch, cluster_preset_names, load_batches,
               model_preset_names, strategy_names)


class _Parser(argparse.ArgumentParser):
    """argparse that reports an unknown option as unknown, with the closest known one (not
    as a missing required option)."""

    def parse_known_args(self, args: Optional[Sequence[str]] = None,
                         namespace: Optional[argparse.Namespace] = None) -> Any:
        words = list(sys.argv[1:] if args is None else args)
        if not any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            known = [o for a in self._actions for o in a.option_strings]
            for word in words:
                name = word.split("=", 1)[0]
                if name.startswith("-") and name not in known and not _is_number(name):
                    near = difflib.get_close_matches(name, known, n=1)
                    self.error(f"unknown option {name!r}"
                               + (f"; did you mean {near[0]}?" if near else ""))
        return super().parse_known_args(words, namespace)


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def _layout_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", required=True, metavar="PRESET|FILE",
                   help=f"cluster preset ({', '.join(cluster_preset_names())}) or JSON file")
    p.add_argument("--model", required=True, metavar="PRESET|FILE",
                   help=f"model preset ({', '.join(model_preset_names())}) or JSON file")
    p.add_argument("--batch", required=True, metavar="FILE",
                   help="batch file: one batch, a list of batches or {\"batches\": [...]}")
    p.add_argument("--llm-tp", default="auto", metavar="T|auto",
                   help="LLM tensor-parallel degree (default auto: the smallest that fits)")
    p.add_argument("--encoder-tp", default="auto", metavar="T|auto",
                   help="encoder tensor-parallel degree (default auto)")
    p.add_argument("--placement", choices=["colocated", "disjoint"], default="colocated",
                   help="encoder on the LLM's devices or on its own (default colocated)")
    p.add_argument("--encoder-devices", default="auto", metavar="N|auto",
                   help="disjoint: devices of the encoder (default auto)")


def _degree(text: str) -> Any:
    return "auto" if text == "auto" else int(text) if text.lstrip("-").isdigit() else text


def _planner(args: argparse.Namespace, strategy: str) -> Planner:
    return Planner(args.cluster, args.model, strategy=strategy, llm_tp=_degree(args.llm_tp),
                   encoder_tp=_degree(args.encoder_tp), placement=args.placement,
                   encoder_devices=_degree(args.encoder_devices))


def _write(path: Optional[str], text: str) -> None:
    if path is None or path == "-":
        sys.stdout.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def cmd_plan(args: argparse.Namespace) -> int:
    planner = _planner(args, args.strategy)
    batches = load_batches(args.batch)
    plans = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        plan = planner.plan(batch)
        ms = (time.perf_counter() - start) * 1e3
        plans.append(plan)
        if args.summary:
            degrees = sorted({len(g["ranks"]) for w in plan["waves"] for g in w["groups"]})
            print(f"batch {i} (step {plan['step']}): {len(plan['waves'])} waves, CP degrees "
                  f"{degrees}, LLM tp {plan['llm']['tp']}, estimated {plan['estimate']['step_ms']:.1f} "
                  f"ms, planned in {ms:.1f} ms", file=sys.stderr)
    if args.svg:
        with open(args.svg, "w", encoding="utf-8") as f:
            f.write(planner.svg(batches[0], plans[0]))
    text = (json.dumps(plans[0], indent=2) if len(plans) == 1
            else json.dumps({"plans": plans}, indent=2))
    _write(args.output, text + "\n")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    planner = _planner(args, args.strategy)
    batches = load_batches(args.batch)
    with open(args.plan, encoding="utf-8") as f:
        document = json.load(f)
    plans = document["plans"] if isinstance(document, dict) and "plans" in document else [document]
    if len(plans) != len(batches):
        raise SystemExit(f"python -m dhp simulate: error: {args.plan} holds {len(plans)} plans "
                         f"for the {len(batches)} batches of {args.batch}")
    results = [planner.simulate(b, p) for b, p in zip(batches, plans)]
    _write(args.output, json.dumps(results[0] if len(results) == 1 else results, indent=2) + "\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    batches = load_batches(args.batch)
    names = strategy_names() if args.strategies is None else args.strategies.split(",")
    for name in names:
        if name not in strategy_names():
            near = difflib.get_close_matches(name, strategy_names(), n=1)
            raise SystemExit(f"python -m dhp bench: error: unknown strategy {name!r}"
                             + (f"; did you mean {near[0]!r}?" if near else "")
                             + f" (known: {', '.join(strategy_names())})")
    rows: List[Dict[str, Any]] = []
    for name in names:
        planner = _planner(args, name)
        step_ms: List[float] = []
        plan_ms: List[float] = []
        error = ""
        for batch in batches:
            try:
                start = time.perf_counter()
                plan = planner.plan(batch)
                plan_ms.append((time.perf_counter() - start) * 1e3)
                step_ms.append(planner.simulate(batch, plan)["step_ms"])
            except Error as e:
                error = str(e)
                break
        rows.append({"strategy": name, "batches": len(step_ms),
                     "step_ms": sum(step_ms) / len(step_ms) if step_ms and not error else None,
                     "plan_ms": sum(plan_ms) / len(plan_ms) if plan_ms else None,
                     "error": error})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    done = [r for r in rows if r["step_ms"] is not None]
    best = min((r["step_ms"] for r in done), default=None)
    print(f"{len(batches)} batches of {args.batch} on {args.cluster} with {args.model}: "
          "mean simulated step time")
    width = max([len("strategy")] + [len(r["strategy"]) for r in rows])
    print(f"{'strategy':<{width}} {'step_ms':>10} {'vs best':>8} {'plan_ms':>9}")
    for r in sorted(rows, key=lambda r: (r["step_ms"] is None, r["step_ms"] or 0)):
        if r["step_ms"] is None:
            print(f"{r['strategy']:<{width}} {'-':>10} {'-':>8} {'-':>9}  {r['error']}")
        else:
            print(f"{r['strategy']:<{width}} {r['step_ms']:>10.1f} {r['step_ms'] / best:>7.3f}x "
                  f"{r['plan_ms']:>9.2f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m dhp", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                epilog="Each command has -h. Schemas of the files: docs/schemas.md.")
    sub = p.add_subparsers(dest="command", metavar="{plan,simulate,bench}", parser_class=_Parser)
    sub.required = True
    plan = sub.add_parser("plan", help="plan the batches of a file; prints the plan(s) as JSON",
                          allow_abbrev=False)
    _layout_options(plan)
    plan.add_argument("--strategy", default="dhp", choices=strategy_names(),
                      help="planning strategy (default dhp)")
    plan.add_argument("--output", "-o", metavar="FILE", help="write the plan(s) here (default stdout)")
    plan.add_argument("--svg", metavar="FILE", help="also draw the first batch's plan as SVG")
    plan.add_argument("--summary", action="store_true",
                      help="one line per batch on stderr: waves, CP degrees, estimate, planner ms")
    plan.set_defaults(run=cmd_plan)
    sim = sub.add_parser("simulate", help="simulate plans on the modelled cluster",
                         allow_abbrev=False)
    _layout_options(sim)
    sim.add_argument("--plan", required=True, metavar="FILE",
                     help="plan file (one plan, or {\"plans\": [...]} for a batch stream)")
    sim.add_argument("--strategy", default="dhp", choices=strategy_names(),
                     help="the planner whose cost model simulates (default dhp)")
    sim.add_argument("--output", "-o", metavar="FILE", help="write the result here (default stdout)")
    sim.set_defaults(run=cmd_simulate)
    bench = sub.add_parser("bench", help="compare strategies on the batches of a file",
                           allow_abbrev=False)
    _layout_options(bench)
    bench.add_argument("--strategies", metavar="A,B,...",
                       help=f"strategies to compare (default all: {','.join(strategy_names())})")
    bench.add_argument("--format", choices=["table", "json"], default="table")
    bench.set_defaults(run=cmd_bench)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
        return status
    except Error as e:
        print(f"python -m dhp {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"python -m dhp {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

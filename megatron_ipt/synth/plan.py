"""The dry run: texts and prompt tokens per unit, the GPU-hours at a given or measured throughput,
the array size that fits a task's hours, and the ``sbatch`` line that submits the planned run."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import time
from collections import Counter
from pathlib import Path

from megatron_ipt.config import ConfigError
from megatron_ipt.log import get_logger
from megatron_ipt.progress import progress
from megatron_ipt.synth.config import SynthesizeConfig, jsonable
from megatron_ipt.synth.engine_types import Engine
from megatron_ipt.synth.rounds import run_rounds
from megatron_ipt.synth.stats import PAPER_DEVICE_HOURS_PER_1B, device_label
from megatron_ipt.synth.units import Unit, read_texts

log = get_logger(__name__)


def measure_throughput(cfg: SynthesizeConfig, units: list[Unit], engine: Engine | None) -> tuple[float, str]:
    """Generated tokens/s of real M-round runs over the first texts, written nowhere, and how it was
    measured. Bounded: ``plan_sample_tokens`` tokens per text and round, groups of texts (one engine
    batch per round) until ``plan_sample_seconds`` pass or ``plan_sample_texts`` are done. Short
    outputs weigh prefill more than a real run does, so the rate is a lower bound (hours an upper one)."""
    sample: list[tuple[str, str]] = []
    for u in units:
        sample += read_texts(Path(u.file), cfg, Counter(), u.start, u.stop)[: cfg.plan_sample_texts - len(sample)]
        if len(sample) >= cfg.plan_sample_texts:
            break
    if not sample:
        raise ConfigError("dry run: the inputs hold no text to measure throughput on")
    engine = engine or cfg.engine.build()
    sampling = dataclasses.replace(cfg.sampling, max_new_tokens=min(cfg.sampling.max_new_tokens, cfg.plan_sample_tokens))
    rounds = dataclasses.replace(cfg.rounds_config(), sampling=sampling)
    group = cfg.rounds * int(getattr(engine, "batch_size", 8))
    done = out_tokens = 0
    seconds = 0.0
    with progress(total=len(sample), desc="measuring", unit="text", enabled=cfg.progress) as bar:
        while done < len(sample) and (done == 0 or seconds < cfg.plan_sample_seconds):
            part = sample[done : done + group]
            t0 = time.perf_counter()
            entries = run_rounds(engine, part, rounds, cfg.batch_texts, schedule=cfg.schedule)
            seconds += time.perf_counter() - t0
            out_tokens += sum(e.stats.get("output_tokens", 0) for e in entries)
            done += len(part)
            bar.update(len(part))
    device, _ = device_label(engine)
    how = (f"measured on {done} texts x {cfg.rounds} rounds, at most {sampling.max_new_tokens} tokens each: "
           f"{out_tokens:,} tokens in {seconds:.1f} s on {device}")
    log.info("dry run: %s", how)
    return out_tokens / max(seconds, 1e-9), how


def dry_run(cfg: SynthesizeConfig, units: list[Unit], engine: Engine | None = None) -> dict:
    """The plan before the spend: texts and prompt tokens per unit (read and tokenized, nothing
    generated), the GPU-hours they need at a given or measured throughput, the array size that
    fits ``plan_hours_per_task``, and the ``sbatch`` line to submit."""
    from megatron_ipt.pairs import context_text
    from megatron_ipt.synth.engine_types import resolve_tokenizer

    tok = engine.tokenizer if engine is not None else resolve_tokenizer(cfg.engine.model, cfg.engine.tokenizer or None)
    rows = []
    for u in progress(units, desc="counting", unit="unit", enabled=cfg.progress):
        stats: Counter = Counter()
        texts = read_texts(Path(u.file), cfg, stats, u.start, u.stop)
        tokens = sum(len(ids) + 1 for ids in tok.encode_batch([context_text(t) for _, t in texts])) if texts else 0
        rows.append({"unit": u.name, "file": u.file, "lines": [u.start, u.stop], "texts": len(texts),
                     "prompt_tokens": tokens})
    texts = sum(r["texts"] for r in rows)
    if cfg.plan_tokens_per_s > 0:
        rate, per_text = cfg.plan_tokens_per_s, float(cfg.sampling.max_new_tokens * cfg.sampling.n)
        source = "given by plan_tokens_per_s"
    else:
        rate, source = measure_throughput(cfg, units, engine)
        per_text = float(cfg.sampling.max_new_tokens * cfg.sampling.n)  # the most a text can take: the sample's outputs were cut short
    if cfg.plan_output_tokens > 0:
        per_text = float(cfg.plan_output_tokens)
    gpu_hours = texts * per_text / rate / 3600 if rate > 0 else float("inf")
    tasks, task_hours = array_size(gpu_hours, len(units), cfg.plan_hours_per_task) if texts else (1, 0.0)
    sbatch = sbatch_line(cfg, tasks)
    plan = {"units": rows, "total_units": len(units), "texts": texts,
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "throughput_tokens_per_s": round(rate, 2), "throughput_source": source,
            "output_tokens_per_text": round(per_text, 1), "output_tokens": round(texts * per_text),
            "gpu_hours": round(gpu_hours, 3), "array_tasks": tasks, "hours_per_task": round(task_hours, 3),
            "device_hours_per_1b_raw_tokens": round(gpu_hours / raw * 1e9, 1) if (raw := sum(r["prompt_tokens"] for r in rows))
            else None,
            "sbatch": sbatch}
    if task_hours * TIME_MARGIN + LOAD_HOURS > cfg.plan_hours_per_task:
        log.warning("dry run: even %d tasks (one per unit) need %.1f h each with a margin, over "
                    "plan_hours_per_task=%.1f: make unit_texts smaller", tasks, task_hours * TIME_MARGIN + LOAD_HOURS,
                    cfg.plan_hours_per_task)
    return plan


TIME_MARGIN, LOAD_HOURS = 1.2, 0.25  # an array task's estimate is stretched for slow units, plus model loading


def array_size(gpu_hours: float, units: int, hours_per_task: float) -> tuple[int, float]:
    """The fewest array tasks whose busiest task (units go round-robin: ``ceil(units / tasks)`` of
    them) fits ``hours_per_task`` with the margin, and that task's hours; one task per unit at most."""
    per_unit = gpu_hours / max(1, units)

    def busiest(tasks: int) -> float:
        return math.ceil(units / tasks) * per_unit

    low, high = 1, max(1, units)
    while low < high:  # busiest() only falls as tasks grow
        mid = (low + high) // 2
        if busiest(mid) * TIME_MARGIN + LOAD_HOURS <= hours_per_task:
            high = mid
        else:
            low = mid + 1
    return low, busiest(low)


# What slurm/synthesize.sh takes from the environment, and keys no submitted run repeats (the task
# is the array's; planning and discarding are this command's).
SBATCH_ENV = {"input": "INPUTS", "output_dir": "OUTPUT_DIR", "engine.model": "MODEL", "engine.kind": "ENGINE",
              "engine.tensor_parallel_size": "TP"}
SBATCH_NOT_PASSED = ("task_index", "num_tasks", "start_over", "dry_run", "progress", "plan_tokens_per_s",
                     "plan_output_tokens", "plan_sample_texts", "plan_hours_per_task")


def _flat(obj: object, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out |= _flat(value, f"{prefix}{f.name}.")
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def _cli_value(value: object) -> str:
    """A value in the command grammar: strings as they are, lists as JSON, booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    if value is None:
        return "null"
    return str(value)


def sbatch_line(cfg: SynthesizeConfig, tasks: int) -> str:
    """The ``sbatch`` command that runs this configuration as ``tasks`` array tasks of
    ``plan_hours_per_task`` each: every setting that is not the default is passed, so the job runs
    exactly what was planned, with or without the ``--config`` file it came from."""
    if any(any(c.isspace() for c in i) for i in cfg.input):
        log.warning("dry run: INPUTS is split on spaces: an input path with a space cannot be passed through it")
    values, defaults = _flat(cfg), _flat(SynthesizeConfig())
    env = {var: " ".join(cfg.input) if key == "input" else _cli_value(values[key]) for key, var in SBATCH_ENV.items()}
    if cfg.engine.kind == "auto":
        del env["ENGINE"]
    args = [f"--{k}={_cli_value(v)}" for k, v in values.items()
            if k not in SBATCH_ENV and k not in SBATCH_NOT_PASSED and jsonable(v) != jsonable(defaults[k])]
    minutes = max(1, math.ceil(round(cfg.plan_hours_per_task * 60, 6)))
    words = [f"{var}={shlex.quote(v)}" for var, v in env.items()]
    words += ["sbatch", f"--array=0-{tasks - 1}", f"--time={minutes // 60}:{minutes % 60:02d}:00", "slurm/synthesize.sh"]
    return " ".join(words + [shlex.quote(a) for a in args])


def plan_text(plan: dict, max_rows: int = 20) -> str:
    """The dry run's plan as lines for a terminal."""
    lines = [f"{'unit':<32} {'lines':>15} {'texts':>9} {'prompt tokens':>14}"]
    for r in plan["units"][:max_rows]:
        lines.append(f"{r['unit']:<32} {r['lines'][0]:>7}-{r['lines'][1]:<7} {r['texts']:>9,} {r['prompt_tokens']:>14,}")
    if len(plan["units"]) > max_rows:
        lines.append(f"... {len(plan['units']) - max_rows} more units")
    lines += [f"{plan['total_units']} units, {plan['texts']:,} texts, {plan['prompt_tokens']:,} prompt tokens (round 1)",
              f"throughput {plan['throughput_tokens_per_s']:,} generated tokens/s per task ({plan['throughput_source']}), "
              f"{plan['output_tokens_per_text']} generated tokens per text",
              f"estimate: {plan['gpu_hours']:.3g} GPU-hours; {plan['array_tasks']} array tasks of about "
              f"{plan['hours_per_task']:.3g} h each",
              f"cost: {plan['device_hours_per_1b_raw_tokens'] or 0:,} device-hours per 1B raw input tokens (the paper: "
              f"about {PAPER_DEVICE_HOURS_PER_1B:g}, one A100-day)", "submit with:", "  " + plan["sbatch"]]
    return "\n".join(lines)

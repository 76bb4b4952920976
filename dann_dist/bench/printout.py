"""The human-readable lines the bench prints before its JSON line. Under Horovod every
rank prints its own figures, prefixed with its rank; the rest, the aggregate over ranks
included, only rank 0 prints."""

from __future__ import annotations


def fmt_rate(x: float) -> str:
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


class Say:
    """say(line, everyone=False) prints from the chief only, or from every rank."""

    def __init__(self, is_chief: bool, rank: int, processes: int, per_rank: bool):
        self.is_chief = is_chief
        # Whether per-process figures come from every rank (under Horovod).
        self.every_rank = per_rank
        self.prefix = f"[rank {rank}/{processes}] " if per_rank else ""

    def __call__(self, line: str, everyone: bool = False) -> None:
        if everyone or self.is_chief:
            print(self.prefix + line, flush=True)


def say_setup(say: Say, info: dict, versions: str, threads: str, settings, precision: str,
              backend_line: str) -> None:
    """The machine, the threads and settings that shape speed, and the backend."""
    gpus = f"; GPUs: {', '.join(info['gpus'])}" if info.get("gpus") else ""
    say(f"machine: {info['cpus']} CPUs ({info['cpus_usable']} usable by this process), "
        f"{info['cpu_model']}{gpus}; {versions}", everyone=say.every_rank)
    say(f"threads: {threads} data={settings.data_threads or 'default'}; "
        f"precision={precision}; XLA={settings.jit_compile}; "
        f"steps per call={settings.steps_per_call}")
    say(backend_line)


def _peak_fractions(t: dict, peak: dict) -> str:
    frac = []
    if t["fraction_of_reference_peak"] is not None:
        frac.append(f"{t['fraction_of_reference_peak']:.0%} of the reference "
                    f"{peak['reference_gflops']:.0f}")
    if t["fraction_of_measured_peak"] is not None:
        frac.append(f"{t['fraction_of_measured_peak']:.0%} of this run's "
                    f"{peak['matmul_size']}^2 {peak['dtype']} matmul "
                    f"{peak['measured_matmul_gflops']:.0f}")
    return "; ".join(frac) or "no peak"


def _say_train(say: Say, figures: dict) -> None:
    for name, t in figures["train"].items():
        rounds = ", ".join(f"{r:.1f}" for r in t["steps_per_sec_rounds"])
        say(f"train [{name}]: {fmt_rate(t['steps_per_sec'])} steps/s, "
            f"{fmt_rate(t['examples_per_sec'])} images/s ({t['images_per_step']} per step; "
            f"rounds: {rounds}); {t['flops_per_step'] / 1e9:.2f} GFLOP/step -> "
            f"{t['gflops_per_sec']:.0f} GFLOP/s ({_peak_fractions(t, figures['peak'])}); "
            f"{t['cpu_cores_used']:.2f} cores busy, {fmt_rate(t['examples_per_cpu_second'])} "
            f"images per CPU-second", say.every_rank)


def _say_baseline_train(say: Say, figures: dict) -> None:
    b = figures.get("baseline")
    if b:
        rounds = ", ".join(f"{r:.2f}" for r in b["steps_per_sec_rounds"])
        say(f"train [origin baseline, eager float32]: {b['steps_per_sec']:.2f} steps/s, "
            f"{fmt_rate(b['examples_per_sec'])} images/s (rounds: {rounds}); "
            f"{b['gflops_per_sec']:.0f} GFLOP/s; {b['cpu_cores_used']:.2f} cores busy, "
            f"{fmt_rate(b['examples_per_cpu_second'])} images per CPU-second", say.every_rank)
    f = figures.get("origin_tf_function")
    if f:
        rounds = ", ".join(f"{r:.1f}" for r in f["steps_per_sec_rounds"])
        say(f"train [origin step in a plain tf.function, float32]: {f['steps_per_sec']:.1f} "
            f"steps/s (rounds: {rounds})", say.every_rank)


def _say_eval(say: Say, figures: dict) -> None:
    e = figures["eval"]
    say(f"evaluation [ours]: {e['images']} images in {e['seconds']:.2f} s = "
        f"{fmt_rate(e['images_per_sec'])} images/s", say.every_rank)
    b = figures.get("baseline")
    if b:
        timed = b["eval_loop_examples_timed"]
        scaled = "" if timed * 2 == e["images"] else f", loop timed over {timed} and scaled"
        say(f"evaluation [origin baseline]: {b['eval_seconds']:.2f} s = forward "
            f"{b['eval_forward_seconds']:.2f} s + per-sample loop {b['eval_loop_seconds']:.2f} s"
            f"{scaled}; {fmt_rate(b['eval_images_per_sec'])} images/s", say.every_rank)


def _say_machine(say: Say, figures: dict) -> None:
    p = figures["pipeline"]
    say(f"input pipeline alone: {fmt_rate(p['batches_per_sec'])} batches/s = "
        f"{fmt_rate(p['examples_per_sec'])} images/s; the step needs "
        f"{p['demand_batches_per_sec']:.1f} batches/s -> headroom {p['headroom']:.1f}x",
        say.every_rank)
    mach = figures["machine"]
    if mach.get("loadavg_start") is not None:
        say(f"load average (1 min, whole machine): {mach['loadavg_start']:.2f} at start, "
            f"{mach['loadavg_end']:.2f} at end", say.every_rank)
    m = figures["memory"]
    say(f"peak memory (max RSS): {m['peak_rss_mb']:.0f} MB after our configurations; "
        f"{m['peak_rss_mb_with_baseline']:.0f} MB with the baseline's arrays", say.every_rank)
    if "peak_gpu_mb" in m:
        say(f"peak GPU memory (TensorFlow allocator, GPU:0): {m['peak_gpu_mb']:.0f} MB after "
            f"our configurations; {m['peak_gpu_mb_with_baseline']:.0f} MB with the baseline",
            say.every_rank)


def _say_ratios(say: Say, figures: dict) -> None:
    ratios = figures["ratios"]
    if not ratios:
        return
    say("ratios vs the origin baseline (median of per-round ratios): " + ", ".join(
        f"{k} {v:.1f}x [" + ", ".join(f"{r:.1f}" for r in ratios[k + "_rounds"]) + "]"
        for k, v in ratios.items() if not k.endswith("_rounds")), say.every_rank)
    say("the same per CPU-second of this process (load-independent view, not the target): "
        + ", ".join(f"{k} {v:.1f}x" for k, v in figures["ratios_per_cpu_second"].items()),
        say.every_rank)


def say_figures(say: Say, figures: dict) -> None:
    """One process's figures, in the order of the JSON's main sections."""
    _say_train(say, figures)
    _say_baseline_train(say, figures)
    _say_eval(say, figures)
    _say_machine(say, figures)
    _say_ratios(say, figures)


def say_aggregate(say: Say, aggregate: dict) -> None:
    """Rank 0's lines about the job as a whole (figures.aggregate_over_ranks)."""
    size = aggregate["ranks"]
    for name, t in aggregate["train"].items():
        say(f"AGGREGATE over {size} ranks, train [{name}]: {fmt_rate(t['steps_per_sec'])} "
            f"steps/s, {fmt_rate(t['examples_per_sec'])} images/s, "
            f"{t['gflops_per_sec']:.0f} GFLOP/s; {t['cpu_cores_used']:.2f} cores busy, "
            f"{fmt_rate(t['examples_per_cpu_second'])} images per CPU-second")
    say(f"AGGREGATE evaluation: {aggregate['eval']['seconds']:.2f} s (slowest rank); input "
        f"pipelines {fmt_rate(aggregate['pipeline']['examples_per_sec'])} images/s, "
        f"least headroom {aggregate['pipeline']['headroom']:.1f}x; peak RSS per rank "
        f"<= {aggregate['memory']['peak_rss_mb']:.0f} MB")
    if aggregate["ratios"]:
        say("AGGREGATE ratios vs the origin baseline on every rank: " + ", ".join(
            f"{k} {v:.1f}x" for k, v in aggregate["ratios"].items()))

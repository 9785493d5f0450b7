"""The markdown table of a benchmark run: each figure beside its goal."""

from __future__ import annotations

from typing import Any, Dict, List

GOALS = {"tracking_overhead": 1.02, "wrapper_overhead": 1.05, "live_metric_latency": 2.0, "cached_scan_s": 1.0,
         "per_epoch_share_percent": 1.0}
TABLE_HEADER = ["| benchmark | A (baseline) | B | figure | goal | |", "|---|---|---|---|---|---|"]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _extra(pair: Dict[str, Any]) -> str:
    return f"ratio {pair['ratio']}, {pair['median_b_s'] - pair['median_a_s']:+.2f} s"


def markdown(results: Dict[str, Any]) -> str:
    s = results["settings"]
    lines: List[str] = [
        f"Measured {results['when']} on {results['machine']['cpus']} CPUs ({results['machine']['platform']}); "
        f"yolov5n from scratch on synthetic images ({s['images']}) at {s['imgsz']} px, batch {s['batch']}, no "
        f"plots; {s['pairs']} interleaved A/B pairs per figure, medians; {results.get('total_minutes', '?')} "
        f"minutes in all. Figures 1, 4 and 6 (epochs) share one set of {max(s['tiers'])}-epoch pairs: a run "
        "stopped after E epochs is timed as its start and first E epochs, as measured, plus its end."
        + (f" Figures 9 and 10: {s['dataset_repeats']} interleaved repetitions a side." if "dataset_repeats" in s
           else ""),
        "",
        *TABLE_HEADER,
    ]
    for number, key, label, a, b in (
            (1, "tracking_overhead", f"tracking overhead, {s['epochs']} epochs", "tracking off",
             "full tracking to the server"),
            (2, "wrapper_overhead", f"wrapper overhead, {s['wrapper_epochs']} epochs", "`python -m yolov5.train`",
             "`python -m train`, tracking off")):
        if key not in results:  # `python -m bench --tracking-only`
            continue
        pair, goal = results[key], GOALS[key]
        lines.append(f"| {number}. {label} | {a} {pair['median_a_s']} s | {b} {pair['median_b_s']} s | "
                     f"{_extra(pair)} | <= {goal} | {_verdict(pair['ratio'] <= goal)} |")
    lat = results["live_metric_latency"]
    lines.append(f"| 3. live metric latency | | epoch end to readable on the API, {lat['epochs_seen']} epochs | "
                 f"median {lat['median_s']} s (p90 {lat['p90_s']} s) | median <= 2 s | "
                 f"{_verdict(lat['median_s'] <= GOALS['live_metric_latency'])} |")
    tail = results["end_of_run_tail"]
    lines.append(f"| 4. end-of-run tail | {tail['median_bytes'] / 1e6:.1f} MB at boto3's "
                 f"{tail['direct_boto3_MB_per_s']} MB/s | last epoch's end to exit | {tail['median_tail_s']} s | "
                 f"<= {tail['goal_s']} s (1.2x + 2 s) | {_verdict(tail['median_tail_s'] <= tail['goal_s'])} |")
    for size, a in results.get("artifact_path", {}).items():
        lines.append(f"| 5. artifact upload, {size} | boto3 direct {a['direct_MB_per_s']} MB/s | proxied by the "
                     f"server {a['proxied_MB_per_s']} MB/s | time ratio {a['ratio']} | (reported) | |")
    for label, o in {**{k: v for k, v in results["scaling"].items() if k != "split"},
                     **results.get("series", {})}.items():
        lines.append(f"| 6. scaling, {label} | off {o['median_a_s']} s | on {o['median_b_s']} s | {_extra(o)} | "
                     "linear, small | |")
    split = results["scaling"]["split"]
    lines.append(f"| 6. where tracking's seconds go | | the server's CPU: {split['server_cpu_per_run_s']} s per "
                 f"{max(s['tiers'])}-epoch run | start to first epoch {split['start_to_first_epoch_s']:+} s, "
                 f"{split['per_epoch_ms']:+} ms per epoch, end {split['end_s']:+} s | linear, small | |")
    rt = results.get("server_round_trip")
    if rt:
        lines.append(f"| 8. server round trip, kept-alive connection | `--workers 1` (deploy/) {1000 * rt['median_a_s']:.1f} "
                     f"ms | `--workers 4` (MLflow's default) {1000 * rt['median_b_s']:.1f} ms | ratio {rt['ratio']} | "
                     "(reported) | |")
    lines += dataset_rows(results)
    lines += checkpoint_rows(results)
    lines += breakdown_rows(results)
    lines += default_config_rows(results)
    return "\n".join(lines) + "\n"


def default_config_rows(results: Dict[str, Any]) -> List[str]:
    """Figure 13 (bench.tracking.default_config), where the results hold it."""
    d = results.get("default_config")
    if not d:
        return []
    goal = GOALS["per_epoch_share_percent"]
    return [f"| 13. per-epoch cost, the recipe's defaults, {d['epochs']} epochs | tracking off {d['per_epoch_ms_a']} "
            f"ms per epoch | tracked as configured (system metrics, images; no checkpoint within 5 minutes) "
            f"{d['per_epoch_ms_b']} ms per epoch | {d['per_epoch_cost_ms']:+} ms per epoch, "
            f"{d['share_of_epoch_percent']:+}% of an epoch | "
            f"< {goal:g}% | {_verdict(d['share_of_epoch_percent'] < goal)} |"]


def breakdown_rows(results: Dict[str, Any]) -> List[str]:
    """Figure 12 (bench/breakdown.py), where the results hold it: each stage of tracking, and where it runs."""
    stages = results.get("breakdown", {}).get("after")
    if not stages:
        return []
    where = {"main": "on the training path", "background": "beside training", "both": "on and beside the path"}
    return [f"| 12. {stage} | | {where[s['thread']]} | "
            f"{s['median_s']:.3f} s | (reported) | |" for stage, s in stages.items()]


def dataset_rows(results: Dict[str, Any]) -> List[str]:
    """Figures 9 and 10 (bench/fetch.py), where the results hold them."""
    lines: List[str] = []
    f = results.get("dataset_fetch")
    if f:
        lines.append(f"| 9. S3 dataset fetch, {f['files']} files, {f['MB']} MB | boto3, one `download_file` after "
                     f"another {f['median_a_s']} s ({f['baseline_MB_per_s']} MB/s) | `train.fetch`, "
                     f"{f['max_concurrency']} at once {f['median_b_s']} s ({f['recipe_MB_per_s']} MB/s) | "
                     f"{f['times_faster']}x faster; cached: {f['cached_median_s']} s | (reported) | |")
    d = results.get("dataset_digest")
    if d:
        goal = GOALS["cached_scan_s"]
        lines.append(f"| 10. dataset digest, {d['images']} images | no scan record (reads every byte) "
                     f"{d['median_a_s']} s | record cached (stats only) {d['median_b_s']} s | "
                     f"{d['times_faster']}x faster | cached <= {goal:g} s | {_verdict(d['median_b_s'] <= goal)} |")
    return lines


def checkpoint_rows(results: Dict[str, Any]) -> List[str]:
    """Figure 11 (bench/checkpoints.py), where the results hold it."""
    c = results.get("checkpoint_uploads")
    if not c:
        return []
    return [f"| 11. checkpoint uploads during training, {c['epochs']} epochs | `mlflow.checkpoint_every_epochs=0` "
            f"{c['per_epoch_ms_a']} ms per epoch | `=1` (with logged models) {c['per_epoch_ms_b']} ms per epoch | "
            f"{c['per_epoch_cost_ms']:+} ms per epoch (ratio {c['per_epoch_ratio']}; whole run "
            f"{c['whole_run']['ratio']}); {c['MB_per_snapshot']} MB a snapshot: on the training thread "
            f"{c['copy_ms_per_snapshot']} ms (the copy), the upload thread's CPU {c['client_cpu_ms_per_snapshot']} ms, "
            f"the server's CPU {c['server_cpu_per_epoch_ms']:+} ms per epoch; end of run {c['end_cost_s']:+} s | "
            "(reported) | |"]

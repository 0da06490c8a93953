"""A training pipeline's worst case: how many runs a month can start, each as long as it may run.

A pipeline is a CronJob (components/training.py). Its runs a month are bounded by:
- its schedule, when it has one (croniter counts the starts in 730 hours from a fixed instant);
- when suspended, the drift receiver's rate limit, if the pipeline retrains on drift (one start
  per `min_interval_seconds` of the receiver's pipelines file);
- nothing otherwise: a suspended pipeline that only a person starts is listed as not priced.
Each run may take `activeDeadlineSeconds` per attempt and `backoffLimit + 1` attempts; runs never
overlap (`concurrencyPolicy: Forbid`), so a month holds at most 730 run-hours. A run occupies the
cheapest allowed instance type of its pool that fits its requests (CPU, memory, GPUs), with its
root volume; on the system nodes it needs no node of its own.

The line's kind is `pipeline`: the pipeline runs inside its pool's ceiling, which the stack's
worst case already counts, so neither total adds it; it says what this pipeline alone can cost.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from infra.cost import pools
from infra.inventory import Resource

PIPELINE = "pipeline"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
"""The month starts are counted over (any fixed instant: the count must not change from run to run)."""
KUBERNETES_DEFAULT_BACKOFF = 6


def runs_per_month(schedule: str, hours: float) -> int:
    """Starts of a cron schedule in `hours` hours from START."""
    from croniter import croniter_range

    return sum(1 for _ in croniter_range(START, START + timedelta(hours=hours), schedule))


def _receiver_interval(p, name: str) -> float | None:
    """The drift receiver's minimum seconds between starts of pipeline `name`, if it retrains on drift."""
    for config_map in p.inventory.of_type("kubernetes:core/v1:ConfigMap"):
        text = (config_map.inputs.get("data") or {}).get("pipelines.json")
        if text and (config_map.inputs.get("metadata") or {}).get("name") == "retrain-receiver":
            spec = json.loads(text).get(name)
            if spec:
                return float(spec["min_interval_seconds"])
    return None


def _runs(p, r: Resource, spec: dict[str, Any], name: str) -> tuple[int, str] | None:
    """(runs a month, why) or None after a not-priced line."""
    if not spec.get("suspend"):
        runs = runs_per_month(spec["schedule"], p.hours)
        return runs, f"schedule `{spec['schedule']}` ({spec.get('timeZone', 'UTC')}): {runs} starts in {p.hours:g} h"
    interval = _receiver_interval(p, name)
    if interval is None:
        p.not_priced(
            r,
            f"training pipeline `{name}` worst case",
            "suspended and not retrained on drift: it runs only when a person starts it, "
            "so nothing bounds its runs (each run is bounded by its deadline)",
        )
        return None
    runs = int(p.hours * 3600 // interval)
    return runs, f"no schedule; drift retraining at most once per {interval / 60:g} min: {runs} starts in {p.hours:g} h"


def price_cron_job(p, r: Resource) -> None:
    """The `pipeline` line of one CronJob, or a not-priced line saying what is missing."""
    spec = r.inputs.get("spec") or {}
    name = (r.inputs.get("metadata") or {}).get("name", r.name)
    job = (spec.get("jobTemplate") or {}).get("spec") or {}
    pod = (job.get("template") or {}).get("spec") or {}
    item = f"training pipeline `{name}` worst case"
    if "activeDeadlineSeconds" not in job:
        p.not_priced(r, item, "no activeDeadlineSeconds: a run has no time bound")
        return
    counted = _runs(p, r, spec, name)
    if counted is None:
        return
    runs, why = counted
    attempts = job.get("backoffLimit", KUBERNETES_DEFAULT_BACKOFF) + 1
    run_hours = job["activeDeadlineSeconds"] / 3600
    hours = min(runs * attempts * run_hours, p.hours)
    bound = f"{why}; each up to {run_hours:g} h × {attempts} attempt(s); one at a time, so at most {p.hours:g} h"
    pool = (pod.get("nodeSelector") or {}).get(pools.POOL_LABEL, "cpu")
    node_pool = next(
        (n for n in p.inventory.of_type(NODE_POOL) if (n.inputs.get("metadata") or {}).get("name") == pool), None
    )
    if node_pool is None:
        p.pool_line(
            r,
            item,
            PIPELINE,
            hours,
            "run-hours",
            0.0,
            f"{bound}; runs on the always-on `{pool}` nodes (priced in the baseline), needing no node of its own",
            monthly=0.0,
        )
        return
    _price_on_pool(p, r, item, (hours, bound), pool, node_pool, pod)


def _price_on_pool(
    p, r: Resource, item: str, run: tuple[float, str], pool: str, node_pool: Resource, pod: dict
) -> None:
    """The run-hours on the cheapest instance type of its Karpenter pool that holds the pod's requests."""
    from infra.cost.estimate import _node_class_volume, _pool_options

    hours, bound = run
    volume_gib, volume_type = _node_class_volume(p.inventory, node_pool.inputs.get("spec") or {})
    options, _ = _pool_options(p, node_pool.inputs.get("spec") or {}, volume_gib, volume_type)
    requests = pools.pod_requests(pod)
    fitting = sorted(
        (o for o in options if requests.fits_in(o.instance.allocatable)), key=lambda o: (o.hourly, o.instance.name)
    )
    if not fitting:
        p.not_priced(
            r,
            item,
            f"no allowed instance type of pool `{pool}` holds its requests ({requests.cpu_milli}m CPU, "
            f"{requests.memory_mib:g} MiB, {requests.gpus} GPU)",
        )
        return
    node = fitting[0]
    hourly = node.hourly + volume_gib * p.volume_price(volume_type) / p.hours
    p.pool_line(
        r,
        item,
        PIPELINE,
        hours,
        "run-hours",
        hourly,
        f"{bound} = {hours:g} h on 1 × {node.instance.name} (${node.hourly}/h on-demand, the cheapest of pool "
        f"`{pool}` that fits) "
        f"+ its {volume_gib:g} GiB {volume_type} root volume; within the pool's ceiling, so not added to the totals",
        monthly=hourly * hours,
    )

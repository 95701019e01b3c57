"""Part 1, pipeline throughput: the same N turns through the whole loop and through each stage alone. The whole loop
is `running_loop` (Serve chat + capture + queue + teacher) with the Ray Train learner (`loop.start_learner()`): after
a warm-up batch through every stage, N replies are generated over HTTP (not timed), then the clock runs from sending
the N follow-ups (max_tokens=1) until the queue's `trained` count has grown by N; also timed: when the last step was
published and when the serving replica applied it. The stages alone, on the turns the loop's conversations give
(bench/loop/stages.py), are (a) capture + queue, (b) teacher scoring, (c) learner steps; reported is whole loop /
slowest stage (1.0 = perfect pipelining).
"""

from __future__ import annotations

import time

from bench.loop.common import chat, client, conversations, followup_messages, health, quiet_serve, spilled, wait
from bench.loop.common import worker_log_lines
from bench.loop.stages import bench_capture, bench_learner_stage, bench_teacher


def _first(client_, cfg, conv: dict) -> None:
    r = chat(client_, cfg, [{"role": "user", "content": conv["question"]}], conv["user"], seed=conv["seed"],
             logprobs=True)
    choice = r.choices[0]
    conv["reply"] = choice.message.content
    conv["finished"] = choice.finish_reason == "stop"
    conv["completion_tokens"] = r.usage.completion_tokens
    conv["logprobs"] = [t.logprob for t in (choice.logprobs.content if choice.logprobs else [])]
    conv["fingerprint"] = r.system_fingerprint


def _followup(client_, cfg, conv: dict) -> None:
    chat(client_, cfg, followup_messages(conv), conv["user"], seed=conv["seed"], max_tokens=1)


def _timed_followups(stats, client_, cfg, convs: list[dict], base: dict) -> tuple[dict, list, float]:
    """Send the follow-ups; seconds (from the first one sent) until all are captured, scored and trained; the
    timeline of the counts; the clock's start."""
    n = len(convs)
    events: dict[str, float] = {}
    timeline: list[tuple] = []
    t0 = time.perf_counter()
    for c in convs:
        _followup(client_, cfg, c)
    events["followups_sent"] = time.perf_counter() - t0
    last = (-1, -1, -1)
    deadline = time.perf_counter() + 1200
    while True:
        s = stats()
        q, now = s["queue"], time.perf_counter() - t0
        captured = s["capture"]["captured"] - base["captured"]
        scored = q["scored"] + q["training"] + q["trained"] - base["trained"]
        trained = q["trained"] - base["trained"]
        if "captured" not in events and captured >= n:
            events["captured"] = now
        if "scored" not in events and scored >= n:
            events["scored"] = now
        key = (trained, s["learner"].get("step", 0), s["published_version"])
        if key != last:
            timeline.append((round(now, 2), captured, scored, *key))
            last = key
        if trained >= n:
            events["trained"] = now
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"pipeline: only {trained}/{n} turns trained after 1200 s: {s}")
        time.sleep(0.05)
    return events, timeline, t0


def bench_whole_loop(cfg, n: int, log, during=None) -> tuple[dict, list[dict]]:
    """`during(base_url)`: a context manager entered for the timed window (a chat load beside the pipeline); what it
    returns on entry is stored under out["during"] (fill it in on exit)."""
    import contextlib

    import ray

    from hsd_ray.loop.job import running_loop

    bt = cfg.learner.batch_turns
    warm_steps, steps = 1, n // bt
    total_steps = warm_steps + steps
    cfg = cfg.model_copy(update={"job": cfg.job.model_copy(update={"max_steps": total_steps})})
    out: dict = {"turns": n, "batch_turns": bt, "warmup_turns": bt, "max_steps": total_steps}
    t_begin = time.perf_counter()
    with running_loop(cfg, learner=False) as loop:  # torn down on exit (stops the learner if it still runs)
        quiet_serve()
        out["start_loop_s"] = time.perf_counter() - t_begin
        log(f"  loop up in {out['start_loop_s']:.1f}s ({loop.base_url}); starting the Ray Train learner")
        client_ = client(loop.base_url)
        learner = loop.start_learner()

        def stats():
            if learner.error is not None:
                raise RuntimeError(f"learner failed: {learner.error!r}")
            return loop.stats()

        def teacher_version():
            return ray.get(loop.teachers[0].stats.remote())["version"]

        # Warm-up: one batch through the whole loop (engine kernels, Train start, first publish + weight loads).
        t0 = time.perf_counter()
        warm = conversations(bt, 100, "warm")
        for c in warm:
            _first(client_, cfg, c)
        for c in warm:
            _followup(client_, cfg, c)
        wait(lambda: stats()["queue"]["trained"] >= bt, 900, "the warm-up batch to be trained", 0.2)
        wait(lambda: health(loop.base_url)["policy_version"] >= warm_steps, 300, "the replica to load v1", 0.2)
        if cfg.teacher.engine == "own":  # a teacher on the replica's engine scores with whatever it serves
            wait(lambda: teacher_version() >= warm_steps, 300, "the teacher to load v1", 0.2)
        out["warmup_s"] = time.perf_counter() - t0
        log(f"  warm-up batch trained and v{warm_steps} applied by replica and teacher in {out['warmup_s']:.1f}s")

        # The N replies (generation: not part of the pipeline measure).
        convs = conversations(n, 0, "pipe")
        t0 = time.perf_counter()
        for c in convs:
            _first(client_, cfg, c)
        out["replies_s"] = time.perf_counter() - t0
        s = stats()
        base = {"trained": s["queue"]["trained"], "captured": s["capture"]["captured"]}
        log(f"  {n} replies generated in {out['replies_s']:.1f}s "
            f"({sum(c['completion_tokens'] for c in convs)} tokens); sending the follow-ups")

        # Timed: follow-ups in → trained count +N (and: published, applied by the replica).
        with (during(loop.base_url) if during else contextlib.nullcontext()) as out["during"]:
            events, timeline, t0 = _timed_followups(stats, client_, cfg, convs, base)
        wait(lambda: loop.stats()["published_version"] >= total_steps, 300, "the last step's weights to be published")
        events["published"] = time.perf_counter() - t0
        wait(lambda: health(loop.base_url)["policy_version"] >= total_steps, 300, "the replica to apply them")
        events["applied_by_replica"] = time.perf_counter() - t0
        s = loop.stats()
        out.update(
            events_s=events,
            timeline=[dict(zip(("t_s", "captured", "scored", "trained", "step", "published_version"), e))
                      for e in timeline],
            seconds=events["trained"],
            turns_per_s=n / events["trained"],
            turns_per_s_to_applied=n / events["applied_by_replica"],
            teacher=ray.get(loop.teachers[0].stats.remote()),
            learner_progress=s["learner"],
            capture=s["capture"],
            queue=s["queue"],
            replica_capture=health(loop.base_url)["capture"],
            spilled=spilled(),
        )
        log(f"  {n} turns trained {events['trained']:.1f}s after the first follow-up "
            f"({out['turns_per_s']:.3f} turns/s); replica on v{total_steps} at {events['applied_by_replica']:.1f}s")
        t0 = time.perf_counter()
        learner.join(timeout=600)  # final publish, weights and checkpoint (not measured)
        out["learner_stop_s"] = time.perf_counter() - t0
        if learner.is_alive() or learner.error is not None:
            raise RuntimeError(f"learner did not stop cleanly: alive={learner.is_alive()} error={learner.error!r}")
    return out, convs


def bench_pipeline(cfg, args, log, ray_temp: str | None = None) -> dict:
    """Part 1; `ray_temp` is the local Ray's temp folder (the learner's log lines are read from there)."""
    from transformers import AutoTokenizer

    from hsd_ray.models import resolve_model

    n = args.turns
    res: dict = {}
    log("[1d] whole loop (running_loop + Ray Train learner), follow-ups over HTTP")
    res["whole"], convs = bench_whole_loop(cfg, n, log)
    res["whole"]["learner_log"] = worker_log_lines(ray_temp)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(cfg.model)))
    log("[1a] capture + queue alone")
    res["capture"], turns = bench_capture(cfg, convs, tokenizer, args.capture_rounds)
    log(f"     {res['capture']['turns_per_s']:.0f} turns/s")
    log("[1b] teacher scoring alone (TeacherWorker actor)")
    res["teacher"], scored = bench_teacher(cfg, turns)
    log(f"     {res['teacher']['turns_per_s']:.2f} turns/s")
    log("[1c] learner step alone")
    res["learner"] = bench_learner_stage(cfg, scored)
    log(f"     {res['learner']['turns_per_s']:.2f} turns/s")
    stages = {k: res[k]["turns_per_s"] for k in ("capture", "teacher", "learner")}
    slowest = min(stages, key=stages.get)
    res["slowest_stage"] = slowest
    res["whole_over_slowest"] = res["whole"]["turns_per_s"] / stages[slowest]
    res["conversations"] = [{k: c[k] for k in ("question", "followup", "reply", "completion_tokens")} for c in convs]
    return res

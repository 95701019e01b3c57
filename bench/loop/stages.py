"""Part 1, the pipeline's stages alone, each on the same N turns as the whole loop and with the CPUs it has in the loop
(so the same torch threads): (a) capture + queue: a ReplyLedger and a TurnQueue actor; N served replies recorded
(untimed), then N follow-ups `observe`d the way a replica fires them, until the queue has counted all N (best of
several rounds); (b) teacher scoring: a real TeacherWorker actor (`start_teacher`, the loop's options) on its own
queue, from `put` of the N turns until all are scored; (c) learner steps: `learner_step` on HindsightBatch.collate of
batch_turns turns in an actor with the learner's CPU reservation, N / batch_turns steps. (b) and (c) get one warm-up
batch first, like the loop.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import uuid

from bench.loop.common import LearnerProbe, followup_messages, wait


def bench_capture(cfg, convs: list[dict], tokenizer, rounds: int) -> tuple[dict, list]:
    """(a) ledger.observe → queue.put for the N conversations; returns the Turn objects the ledger emitted."""
    import ray

    from hsd_ray.core.weights import BASE_ADAPTER
    from hsd_ray.loop.capture import ReplyLedger, ServedReply
    from hsd_ray.loop.queue import TurnQueue
    from hsd_ray.loop.queue_client import QueueClient, fetch_turns

    n = len(convs)
    handle = ray.remote(TurnQueue).options(num_cpus=0).remote(
        max(cfg.queue.capacity, n * (rounds + 1)), cfg.queue.scored_capacity, cfg.queue.lease_timeout_s)
    queue = QueueClient(handle)
    ledger = ray.remote(ReplyLedger).options(num_cpus=0).remote(
        handle, cfg.capture.reply_ttl_s, cfg.hindsight.max_context_messages)
    times = []
    try:
        for r in range(rounds + 1):  # round 0 = warm-up
            users = [f"cap{r}-{c['user']}" for c in convs]
            served = [
                ServedReply(user_id=u, adapter_id=BASE_ADAPTER, context=[{"role": "user", "content": c["question"]}],
                            reply=c["reply"], token_ids=tokenizer(c["reply"], add_special_tokens=False)["input_ids"],
                            logprobs=c["logprobs"], finished=c["finished"], policy_version=0, replied_at=time.time())
                for u, c in zip(users, convs)
            ]
            ray.get([ledger.record.remote(s) for s in served])
            before = queue.stats()["captured"]
            t0 = time.perf_counter()
            refs = [ledger.observe.remote(u, followup_messages(c), time.time()) for u, c in zip(users, convs)]
            results = ray.get(refs)
            wait(lambda: queue.stats()["captured"] >= before + n, 60, "captured turns", 0.001)
            dt = time.perf_counter() - t0
            if results.count("captured") != n:
                raise RuntimeError(f"capture matched only {results.count('captured')}/{n}: {results}")
            if r > 0:
                times.append(dt)
        lease = queue.lease(n)  # round 0's turns, exactly as the ledger built them (fetched while the ledger lives)
        turns, lost = fetch_turns(lease.turns if lease is not None else [])
        if len(turns) != n or lost:
            raise RuntimeError(f"capture: fetched {len(turns)}/{n} turns ({len(lost)} lost)")
    finally:
        ray.kill(ledger)
        ray.kill(handle)
    best = min(times)
    token_len_match = sum(len(t.reply_token_ids) == c["completion_tokens"] for t, c in zip(turns, convs))
    return {"turns": n, "rounds": rounds, "seconds_all": times, "seconds": best, "turns_per_s": n / best,
            "reply_token_count_matches_served": f"{token_len_match}/{n}"}, turns


def bench_teacher(cfg, turns: list) -> tuple[dict, list]:
    """(b) a real TeacherWorker (same options as the loop's) scoring the N turns from its own queue."""
    import ray

    from hsd_ray.loop.job import start_teacher, teacher_settings
    from hsd_ray.loop.queue import TurnQueue, TurnRef
    from hsd_ray.loop.queue_client import QueueClient, fetch_turns

    n, bt = len(turns), cfg.learner.batch_turns
    handle = ray.remote(TurnQueue).options(num_cpus=0).remote(
        cfg.queue.capacity, max(cfg.queue.scored_capacity, 2 * n), cfg.queue.lease_timeout_s)
    queue = QueueClient(handle)
    t0 = time.perf_counter()
    teacher = start_teacher(cfg, teacher_settings(cfg), handle, None, 900)  # no registry: stays on the base weights
    try:
        warm = [dataclasses.replace(t, turn_id=uuid.uuid4().hex) for t in turns[:bt]]
        queue.put([TurnRef.put(t) for t in warm])
        wait(lambda: queue.stats()["scored"] >= len(warm), 600, "the teacher's warm-up batch", 0.05)
        startup = time.perf_counter() - t0
        items = [TurnRef.put(t) for t in turns]  # put as capture does, before the clock
        t0 = time.perf_counter()
        queue.put(items)
        wait(lambda: queue.stats()["scored"] >= len(warm) + n, 600, "the teacher to score", 0.01)
        dt = time.perf_counter() - t0
        stats = ray.get(teacher.stats.remote())
        scored, lost = fetch_turns(queue.take_scored(len(warm) + n))  # payloads owned by the teacher: fetch first
        if lost:
            raise RuntimeError(f"teacher: {len(lost)} scored turns lost")
        ids = {t.turn_id for t in turns}
        scored_turns = [t for t in scored if t.turn_id in ids]
        order = {t.turn_id: i for i, t in enumerate(turns)}
        scored_turns.sort(key=lambda t: order[t.turn_id])
    finally:
        ray.kill(teacher)
        ray.kill(handle)
    tokens = sum(t.scores.teacher_prompt_tokens + t.scores.baseline_prompt_tokens + 2 * len(t.scores.target_ids_T)
                 for t in scored_turns)
    return {"turns": n, "seconds": dt, "turns_per_s": n / dt, "scored_tokens": tokens, "tokens_per_s": tokens / dt,
            "startup_and_warmup_s": startup, "teacher_stats": stats, "max_batch_turns": cfg.teacher.max_batch_turns,
            "cpus": cfg.teacher.cpus_per_worker}, scored_turns


def bench_learner_stage(cfg, scored_turns: list) -> dict:
    """(c) learner_step on batches of batch_turns of the scored turns, in an actor with the learner's CPUs."""
    import ray

    bt = cfg.learner.batch_turns
    batches = [scored_turns[i : i + bt] for i in range(0, len(scored_turns), bt)]
    probe = ray.remote(LearnerProbe).options(num_cpus=cfg.learner.cpus_per_worker).remote(cfg.model_dump())
    try:
        threads = ray.get(probe.threads.remote())
        r = ray.get(probe.steps.remote(batches))
    finally:
        ray.kill(probe)
    total = sum(r["step_s"])
    return {"turns": len(scored_turns), "steps": len(batches), "seconds": total,
            "turns_per_s": len(scored_turns) / total,
            "step_s_median": statistics.median(r["step_s"]), "torch_threads": threads,
            "mode": f"LoRA r={cfg.learner.lora.r}" if cfg.learner.lora.enabled else "full fine-tune", **r}

"""The loop benchmark's printed table: `format_results` turns the results dict of `python -m bench.bench_loop` (the
same dict that is written to bench/results/bench_loop-<model>.json) into one section per part that ran: pipeline
throughput of each stage alone and of the whole loop, chat latency with capture on / off, and weight broadcast vs a
raw copy. It measures nothing itself.
"""

from __future__ import annotations

from bench.loop.common import RAW_REPEATS


def _fmt_s(x: float) -> str:
    if x < 1e-3:
        return f"{x * 1e6:.0f} us"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def format_results(r: dict) -> str:
    c = r["config"]
    L = [f"bench_loop  model {c['model']}  turns {c['turns']}  max_tokens {c['max_tokens']}  batch_turns "
         f"{c['batch_turns']}  engine hf/cpu  ({r['env']['cpus']} CPUs, Ray {r['env']['ray']}, "
         f"torch {r['env']['torch']})"]
    p = r.get("pipeline")
    if p:
        w, a, b, l_ = p["whole"], p["capture"], p["teacher"], p["learner"]
        ev = w["events_s"]
        L += ["", f"1. pipeline throughput, the same {c['turns']} turns (warm-up batch excluded everywhere)",
              f"   {'stage':<44}{'turns':>6}{'seconds':>10}{'turns/s':>10}   notes",
              f"   {'(a) capture+queue (observe -> queue.put)':<44}{a['turns']:>6}{a['seconds']:>10.3f}"
              f"{a['turns_per_s']:>10.1f}   ledger+queue actors, best of {a['rounds']}",
              f"   {'(b) teacher scoring (TeacherWorker)':<44}{b['turns']:>6}{b['seconds']:>10.2f}"
              f"{b['turns_per_s']:>10.2f}   {b['tokens_per_s']:.0f} scored tok/s, {b['cpus']} CPU -> 1 torch thread, "
              f"batches <= {b['max_batch_turns']}",
              f"   {'(c) learner step (learner_step)':<44}{l_['turns']:>6}{l_['seconds']:>10.2f}"
              f"{l_['turns_per_s']:>10.2f}   {l_['mode']}, {l_['steps']} steps x {c['batch_turns']} turns, "
              f"median {l_['step_s_median']:.2f} s/step, {l_['torch_threads']} torch thread(s)",
              f"   {'(d) whole loop: follow-ups -> trained':<44}{w['turns']:>6}{w['seconds']:>10.2f}"
              f"{w['turns_per_s']:>10.2f}   follow-ups sent in {ev['followups_sent']:.2f} s; all captured "
              f"{ev.get('captured', float('nan')):.2f} s, all scored {ev.get('scored', float('nan')):.2f} s",
              f"   {'    ... -> last step published':<44}{'':>6}{ev['published']:>10.2f}"
              f"{w['turns'] / ev['published']:>10.2f}",
              f"   {'    ... -> applied by the serving replica':<44}{'':>6}{ev['applied_by_replica']:>10.2f}"
              f"{w['turns_per_s_to_applied']:>10.2f}",
              f"   in the loop: teacher scored {w['teacher']['turns']} turns (incl. warm-up) in "
              f"{w['teacher']['batches']} "
              f"batches (alone: {b['teacher_stats']['batches']}); learner log: "
              + (" | ".join(ln.split("[learner] ")[-1] for ln in w.get("learner_log", [])) or "n/a"),
              f"   whole / slowest stage ({p['slowest_stage']}): {p['whole_over_slowest']:.2f}x "
              f"(1.00 = the loop runs as fast as its slowest stage alone)",
              "   timeline of (d): t_s captured scored trained step published_version",
              "     " + "  ".join(f"[{e['t_s']:.1f} {e['captured']} {e['scored']} {e['trained']} {e['step']} "
                                   f"v{e['published_version']}]" for e in w["timeline"]),
              f"   loop setup (not timed): start_loop {w['start_loop_s']:.1f} s, warm-up batch {w['warmup_s']:.1f} s, "
              f"{w['turns']} replies {w['replies_s']:.1f} s, "
              f"learner stop {w.get('learner_stop_s', float('nan')):.1f} s;"
              f" object store: {w['spilled']}"]
    lat = r.get("latency")
    if lat:
        on, off = lat["on"], lat["off"]
        L += ["", f"2. chat latency, capture on vs off: {lat['requests_per_mode']} sequential requests per mode "
              f"({lat['conversations_per_mode']} conversations of question + follow-up), {lat['replicas_per_mode']} "
              f"replica each, interleaved, greedy, max_tokens {lat['max_tokens']}, after "
              f"{lat['warmup_conversations_per_mode']} warm-up conversations",
              f"   {'':<24}{'capture on':>12}{'capture off':>13}{'on/off':>9}",
              f"   {'p50 (all requests)':<24}{_fmt_s(on['p50_s']):>12}{_fmt_s(off['p50_s']):>13}"
              f"{lat['ratio_p50']:>8.3f}x",
              f"   {'p99 (all requests)':<24}{_fmt_s(on['p99_s']):>12}{_fmt_s(off['p99_s']):>13}"
              f"{lat['ratio_p99']:>8.3f}x",
              f"   {'p50 (follow-ups only)':<24}{_fmt_s(on['followup_p50_s']):>12}{_fmt_s(off['followup_p50_s']):>13}"
              f"{lat['ratio_followup_p50']:>8.3f}x",
              f"   {'mean (all requests)':<24}{_fmt_s(on['mean_s']):>12}{_fmt_s(off['mean_s']):>13}"
              f"{on['mean_s'] / off['mean_s']:>8.3f}x",
              f"   ledger: recorded {lat['ledger']['recorded']}, captured {lat['ledger']['captured']}, unmatched "
              f"{lat['ledger']['unmatched']}; capture errors on replica: {lat['replica_capture']['on']['errors']}"
              + (f"   !! {lat['capture_problem']}" if "capture_problem" in lat else "")]
    bc = r.get("broadcast")
    if bc:
        L += ["", f"3. weight broadcast: export_weights + publish (VersionRegistry) + WeightFollower.poll (fetch + "
              f"load_weights, follower actor, {bc['follower_torch_threads']} torch thread) vs raw in-process "
              f"dst.copy_(src) (measured first, median of {RAW_REPEATS}); broadcast: median of "
              f"{c['broadcast_repeats']} after 1 "
              "warm-up; ratio = broadcast / raw",
              f"   {'weights':<14}{'MiB':>9}{'tensors':>8}{'export':>10}{'publish':>10}{'poll':>10}{'total':>10}"
              f"{'raw copy':>11}{'ratio':>9}"]
        for kind, name in (("full", "full"), ("lora", f"LoRA r={c['lora_r']}")):
            m = bc[kind]
            med = m["median"]
            L.append(f"   {name:<14}{m['bytes'] / 2**20:>9.1f}{m['tensors']:>8}{_fmt_s(med['export_s']):>10}"
                     f"{_fmt_s(med['publish_s']):>10}{_fmt_s(med['poll_wall_s']):>10}{_fmt_s(med['total_s']):>10}"
                     f"{_fmt_s(m['raw_copy_median_s']):>11}{m['ratio']:>8.1f}x")
        for kind in ("full", "lora"):
            b = bc[kind]["follower_breakdown"]
            L.append(f"   {kind}: publish = driver ray.put {_fmt_s(b['driver_put_s'])} + registration; follower: "
                     f"registry lookup {_fmt_s(b['lookup_s'])}, object-store fetch "
                     f"{_fmt_s(b['fetch_s'])}, engine.load_weights {_fmt_s(b['load_s'])}; best total "
                     f"{_fmt_s(bc[kind]['min_total_s'])} vs best raw {_fmt_s(min(bc[kind]['raw_copy_s']))} "
                     f"({bc[kind]['ratio_best']:.1f}x); "
                     f"{bc[kind]['broadcast_GBps']:.2f} GB/s end to end vs {bc[kind]['raw_GBps']:.2f} GB/s raw")
        L.append(f"   object store: {bc['spilled']}")
    return "\n".join(L)

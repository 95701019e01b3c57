"""Chaos benchmark: the running loop under simulated traffic, with each actor kind killed in turn.

    python -m bench.chaos                      # tiny random model, ≈ 15 min on 2 CPUs
    python -m bench.chaos --kills queue,ledger --model tiny-random
    python -m bench.chaos --engine vllm --kills replica_stream   # streams cut while vLLM samples them

The loop runs as `make run` runs it (Serve with two chat replicas, capture, queue, teacher, Ray Train learner,
broadcast; version gate off so versions follow steps) on two Ray nodes of this machine (`local_two_nodes`): the head
holds the chat replicas and the control actors, a worker node the teacher and the Ray Train worker (placed there by
`teacher/learner.resources`). Simulated users hold conversations over HTTP with the official `openai` client the
whole time (a question, then a complaint about the reply: every conversation is a capturable turn). Then, one after
another:

  ledger, queue, registry, control   ray.kill(no_restart=False): Ray restarts the actor, which rebuilds its state
  teacher                            ray.kill(no_restart=False) on hsd-teacher-0
  replica                            ray.kill(no_restart=True) on one chat replica: Serve replaces it
  replica_stream                     four long streamed replies are opened; once each has sent a chunk, the replica
                                     serving most of them (its id is in their `x-hsd-replica` header) is killed
                                     while they stream. No stream may end silently truncated (every one ends
                                     with its finish_reason or with an error); the other replica's must finish
  train_worker                       SIGKILL to the Ray Train worker process: Ray Train restarts from a checkpoint
  node                               the worker node is removed (raylet, teacher, Train worker with it); a
                                     replacement with the same resources joins 5 s later

Per kill it reports: chat availability in the window from the kill until recovery + 10 s (requests answered / sent;
a failed request is one that got an HTTP error or no answer), the recovery time (the kill → two more turns trained
and a probe answered), the queue's accounting (captured = trained + dropped by reason + in flight, checked exactly),
and the version served after recovery next to the registry's latest. The killed replica's own in-flight requests
are counted in its window (the bar excludes them; the table shows them). Results: a printed table, and
`bench/results/chaos-<model>.json` (`chaos-<model>-vllm.json` with `--engine vllm`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

KILLS = ("ledger", "queue", "registry", "control", "teacher", "replica", "replica_stream", "train_worker", "node")


class Traffic(threading.Thread):
    """Users chatting without pause; every request's (time, ok, error) is kept."""

    def __init__(self, base_url: str, users: int = 2):
        super().__init__(daemon=True)
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key="chaos", max_retries=0, timeout=60)
        self.users, self.log, self.stopped = users, [], threading.Event()

    def _chat(self, messages, user: str):
        t = time.time()
        try:
            r = self.client.chat.completions.create(model="hsd-policy", messages=messages, user=user, max_tokens=12)
            self.log.append((t, True, None))
            return r.choices[0].message.content
        except Exception as e:  # noqa: BLE001 - availability counts it
            self.log.append((t, False, f"{type(e).__name__}: {str(e)[:120]}"))
            return None

    def run(self) -> None:
        i = 0
        while not self.stopped.is_set():
            user = f"chaos-user-{i % self.users}"
            question = [{"role": "user", "content": f"Chaos question number {i}?"}]
            reply = self._chat(question, user)
            if reply is not None:
                self._chat([*question, {"role": "assistant", "content": reply},
                            {"role": "user", "content": "No, that is wrong. Be brief."}], user)
            i += 1

    def window(self, start: float, end: float) -> dict:
        rows = [r for r in self.log if start <= r[0] <= end]
        failed = [r[2] for r in rows if not r[1]]
        return {"sent": len(rows), "answered": len(rows) - len(failed), "errors": sorted(set(failed))[:5]}


class Stream(threading.Thread):
    """One long streamed reply: which replica sends it (its header), the chunks received, how it ended."""

    def __init__(self, client, i: int, max_tokens: int):
        super().__init__(daemon=True)
        self.client, self.i, self.max_tokens = client, i, max_tokens
        self.replica, self.chunks, self.finish_reason, self.error = None, 0, None, None
        self.first_chunk = threading.Event()

    def run(self) -> None:
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model="hsd-policy", messages=[{"role": "user", "content": f"Tell me a long story, number {self.i}."}],
                user=f"chaos-stream-{self.i}", max_tokens=self.max_tokens, temperature=1.0, stream=True)
            self.replica = raw.headers.get("x-hsd-replica")
            for chunk in raw.parse():
                self.chunks += 1
                self.first_chunk.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    self.finish_reason = chunk.choices[0].finish_reason
        except Exception as e:  # noqa: BLE001 - a cut stream is what this records
            self.error = f"{type(e).__name__}: {str(e)[:160]}"
        finally:
            self.first_chunk.set()

    def outcome(self) -> dict:
        return {"replica": self.replica, "chunks": self.chunks, "finish_reason": self.finish_reason,
                "error": self.error}


def chaos_config(model_dir: str, output_dir: Path, engine: str):
    """The loop config of the run: two chat replicas on the head, teacher and learner on the worker node, short
    replies, a step every two turns, each step published."""
    from hsd_ray.config import Config
    from hsd_ray.loop.runtime import HEAD_RESOURCE, WORKER_RESOURCE

    overrides = {"model": model_dir, "engine.kind": engine, "serve.replicas": 2, "serve.max_tokens": 12,
                 "learner.batch_turns": 2, "learner.warmup_steps": 0, "learner.checkpoint_every_steps": 2,
                 "learner.cpus_per_worker": 1, "broadcast.every_steps": 1, "broadcast.poll_seconds": 0.2,
                 "job.output_dir": str(output_dir.resolve()), "job.max_steps": 100000, "teacher.idle_sleep_s": 0.05,
                 "version_gate.enabled": "false", "learner.max_failures": 10,
                 "teacher.resources": f"{{{WORKER_RESOURCE}: 1}}", "learner.resources": f"{{{WORKER_RESOURCE}: 1}}",
                 "serve.resources": f"{{{HEAD_RESOURCE}: 1}}"}
    return Config.load(overrides=[f"{k}={v}" for k, v in overrides.items()])


def accounting(q: dict) -> tuple[bool, dict]:
    in_flight = q["pending"] + q["leased"] + q["scored"] + q["training"]
    parts = {"captured": q["captured"], "trained": q["trained"], "dropped": q["dropped_total"], "in_flight": in_flight}
    return q["captured"] == q["trained"] + q["dropped_total"] + in_flight, parts


def _replicas() -> dict:
    """The chat replicas' actor handles by replica id (the end of the actor's name; the x-hsd-replica header)."""
    import ray

    return {a["name"].rsplit("#", 1)[-1]: ray.get_actor(a["name"], namespace=a["namespace"])
            for a in ray.util.list_named_actors(all_namespaces=True)
            if "SERVE_REPLICA" in a["name"] and "ChatService" in a["name"]}


def _train_worker_pid() -> int | None:
    """The pid of this cluster's Ray Train worker, from the GCS actor table (the state API would need the dashboard)."""
    from ray._private.state import actors

    alive = [a for a in actors(actor_state_name="ALIVE").values() if a["ActorClassName"] == "RayTrainWorker"]
    return alive[0]["Pid"] if alive else None


class Nodes:
    """The two-node cluster: the worker node can be removed and replaced."""

    def __init__(self, cluster, worker, worker_args: dict):
        self.cluster, self.worker, self.worker_args = cluster, worker, worker_args

    def replace_worker(self, down_s: float = 5.0) -> str:
        dead = self.worker.node_id
        self.cluster.remove_node(self.worker)  # every process of the node: raylet, teacher, Train worker
        time.sleep(down_s)
        self.worker = self.cluster.add_node(**self.worker_args)
        return f"worker node {dead[:8]} removed, {self.worker.node_id[:8]} joined {down_s:.0f} s later"


def kill(loop, what: str, nodes: Nodes) -> str:
    """Kill one actor kind of the running loop; what was killed, in words."""
    import ray

    handles = {"ledger": lambda: loop.ledger, "queue": lambda: loop.queue.handle,
               "registry": lambda: loop.registry.handle, "control": lambda: loop.control,
               "teacher": lambda: loop.teachers[0]}
    if what in handles:
        ray.kill(handles[what](), no_restart=False)
        return f"ray.kill({what}, no_restart=False)"
    if what == "replica":
        replicas = list(_replicas().values())
        ray.kill(replicas[0], no_restart=True)
        return f"ray.kill(one of {len(replicas)} chat replicas, no_restart=True)"
    if what == "node":
        return nodes.replace_worker()
    if what == "train_worker":
        pid = _train_worker_pid()
        if pid is None:
            return "no Train worker alive"
        os.kill(pid, signal.SIGKILL)
        return f"SIGKILL Train worker pid {pid}"
    raise ValueError(f"unknown kill {what!r}; known: {', '.join(KILLS)}")


def recover(loop, traffic: Traffic, since: float, timeout_s: float, start: int) -> dict:
    """Wait for two more turns trained than `start` (the count just before the kill) and a probe answered."""
    deadline = since + timeout_s
    while time.time() < deadline:
        trained = _trained(loop)
        if trained is not None and trained >= start + 2 and _probe(traffic) is not None:
            return {"recovered": True, "recovery_s": round(time.time() - since, 1)}
        time.sleep(1.0)
    return {"recovered": False, "recovery_s": None}


def _trained(loop) -> int | None:
    try:
        return loop.queue.stats()["trained"]
    except Exception:  # noqa: BLE001 - the queue may be restarting
        return None


def _probe(traffic: Traffic) -> str | None:
    try:
        r = traffic.client.chat.completions.create(model="hsd-policy", messages=[{"role": "user", "content": "Hi."}],
                                                   user="chaos-probe", max_tokens=2, temperature=0)
        return r.system_fingerprint
    except Exception:  # noqa: BLE001 - not answered yet
        return None


def kill_mid_stream(traffic: Traffic, streams_n: int = 4, max_tokens: int = 1024) -> tuple[str, list[Stream], str]:
    """Open `streams_n` long streamed replies; once each has sent a chunk, kill the replica serving most of them."""
    import ray

    streams = [Stream(traffic.client, i, max_tokens) for i in range(streams_n)]
    for st in streams:
        st.start()
    for st in streams:
        st.first_chunk.wait(timeout=120)
    serving = [st.replica for st in streams if st.is_alive() and st.replica]
    if not serving:
        return "no stream was still streaming when the kill came", streams, ""
    victim = max(set(serving), key=serving.count)
    ray.kill(_replicas()[victim], no_restart=True)
    return (f"ray.kill(replica {victim}, no_restart=True) while {serving.count(victim)} of its streams and "
            f"{len(serving) - serving.count(victim)} of the other's were open"), streams, victim


def _stream_row(streams: list[Stream], victim: str) -> dict:
    """How the streams ended. A stream ends complete (a finish_reason, sent after the last token) or cut with an
    error the client sees; one that just stops, with neither, is a silent truncation: the client would take a cut
    reply for a whole one. The killed replica's streams may be cut or may have been sent whole before the kill landed
    (the hf engine sends a reply it already generated); the other replica's streams must finish."""
    for st in streams:
        st.join(timeout=300)
    outcomes = [st.outcome() for st in streams]
    killed = [o for o in outcomes if o["replica"] == victim]
    return {"streams": outcomes,
            "killed_replica_streams": {"on_killed_replica": len(killed),
                                       "cut": sum(bool(o["error"]) and not o["finish_reason"] for o in killed),
                                       "completed": sum(bool(o["finish_reason"]) for o in killed)},
            "silently_truncated": sum(not o["error"] and not o["finish_reason"] for o in outcomes),
            "other_streams_finished": all(o["finish_reason"] and not o["error"]
                                          for o in outcomes if o["replica"] != victim)}


def run_kill(loop, traffic: Traffic, what: str, timeout_s: float, nodes: Nodes) -> dict:
    before = loop.queue.stats()["trained"]  # read before the kill: a restarting queue cannot answer
    t_kill = time.time()
    streams, victim = [], None
    if what == "replica_stream":
        how, streams, victim = kill_mid_stream(traffic)
    else:
        how = kill(loop, what, nodes)
    row = {"kill": what, "how": how, **recover(loop, traffic, t_kill, timeout_s, before)}
    if streams:
        row.update(_stream_row(streams, victim))
    time.sleep(10.0)  # traffic after recovery belongs to this kill's window too
    row["chat"] = traffic.window(t_kill, time.time())
    row["availability"] = row["chat"]["answered"] / max(1, row["chat"]["sent"])
    ok, row["accounting"] = accounting(loop.queue.stats())
    row["accounting_exact"] = ok
    row["served"] = _probe(traffic)
    row["registry_latest"] = loop.registry.latest_version()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--engine", default="hf", choices=("hf", "vllm"), help="the chat replicas' engine")
    p.add_argument("--kills", default=",".join(KILLS))
    p.add_argument("--recovery-timeout", type=float, default=240.0)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    from hsd_ray.loop.job import running_loop
    from hsd_ray.loop.runtime import local_two_nodes
    from hsd_ray.models import resolve_model

    out_dir = Path(args.out)
    rows, t0 = [], time.time()
    # the loop's own output (checkpoints, turn log, final weights) is scratch: only the report is kept
    cfg = chaos_config(str(resolve_model(args.model)), Path(tempfile.mkdtemp(prefix="hsd-chaos-")), args.engine)
    with local_two_nodes() as (cluster, worker, worker_args), running_loop(cfg) as loop:
        nodes = Nodes(cluster, worker, worker_args)
        traffic = Traffic(loop.base_url)
        traffic.start()
        warm = recover(loop, traffic, time.time(), args.recovery_timeout, loop.queue.stats()["trained"])
        print(f"warm-up: {warm}", flush=True)
        for what in [k for k in args.kills.split(",") if k]:
            row = run_kill(loop, traffic, what, args.recovery_timeout, nodes)
            rows.append(row)
            print(json.dumps(row), flush=True)
        traffic.stopped.set()
        traffic.join(timeout=120)
        final = loop.stats()
    shutil.rmtree(cfg.job.output_dir, ignore_errors=True)
    _report(rows, final, args, out_dir, time.time() - t0)
    return 0 if all(r["recovered"] and r["accounting_exact"] and not r.get("silently_truncated")
                    and r.get("other_streams_finished", True) for r in rows) else 1


def _report(rows: list[dict], final: dict, args, out_dir: Path, wall_s: float) -> None:
    print(f"\n{'kill':<13} {'recovered':>9} {'recovery':>9} {'chat answered':>15} {'accounting':>11}  served / latest")
    for r in rows:
        chat = r["chat"]
        print(f"{r['kill']:<13} {str(r['recovered']):>9} {str(r['recovery_s']) + ' s':>9} "
              f"{chat['answered']:>5}/{chat['sent']:<4} {100 * r['availability']:>4.0f}% "
              f"{'exact' if r['accounting_exact'] else 'OFF':>11}  {r['served']} / v{r['registry_latest']}")
        if "streams" in r:
            k = r["killed_replica_streams"]
            print(f"{'':<13} streams on the killed replica: {k['on_killed_replica']}, {k['cut']} cut with an error, "
                  f"{k['completed']} sent whole; silently truncated {r['silently_truncated']}; the other replica's "
                  f"finished: {r['other_streams_finished']}. " + "; ".join(
                      f"{o['chunks']} chunks {o['finish_reason'] or o['error'] or 'ended, no finish_reason'}"
                      for o in r["streams"]))
    suffix = "-vllm" if args.engine == "vllm" else ""
    path = out_dir / f"chaos-{Path(args.model).name}{suffix}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": "python -m bench.chaos " + " ".join(sys.argv[1:]), "kills": rows,
                                "final_stats": final, "wall_s": wall_s, "cpus": os.cpu_count()},
                               indent=1, default=str) + "\n")
    print(f"\n{path} ({wall_s:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())

"""The loop seen the way Ray users watch it: the Ray dashboard (actor and job views, `ray job submit`) and a real
Prometheus server scraping what Ray exports, with the scrape config Ray itself writes.

The loop runs in a driver subprocess (its own embedded Ray with the dashboard, token authentication on): it chats a
few turns over HTTP, trains two steps, writes its own counts and then holds the loop up until the test is done, so
the metrics are still exported while Prometheus is queried.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, ray_job_submit

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
LOOP_ACTORS = {"hsd-turn-queue", "hsd-version-registry", "hsd-learner-control", "hsd-reply-ledger", "hsd-teacher-0"}


def drive(model_dir: str, out_dir: str) -> None:
    """The driver subprocess: the loop on an embedded Ray with the dashboard; held up until `<out_dir>/stop` exists."""
    from openai import OpenAI

    from hsd_ray.config import Config
    from hsd_ray.loop.job import running_loop
    from hsd_ray.loop.runtime import dashboard_url, local_ray

    out = Path(out_dir)
    overrides = {"model": model_dir, "engine.kind": "hf", "serve.port": free_port(), "serve.max_tokens": 8,
                 "learner.batch_turns": 2, "learner.warmup_steps": 0, "learner.cpus_per_worker": 1,
                 "learner.checkpoint_every_steps": 10, "broadcast.every_steps": 1, "job.max_steps": 2,
                 "job.output_dir": str(out / "run"), "teacher.idle_sleep_s": 0.05}
    cfg = Config.load(overrides=[f"{k}={v}" for k, v in overrides.items()])
    with local_ray(dashboard=True, quiet=True) as temp, running_loop(cfg, learner=False) as loop:
        learner = loop.start_learner()
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=120)
        for i in range(4):
            question = [{"role": "user", "content": f"Question number {i}?"}]
            reply = client.chat.completions.create(model="hsd-policy", messages=question, user=f"u{i}")
            followup = [*question, {"role": "assistant", "content": reply.choices[0].message.content},
                        {"role": "user", "content": "No, that is wrong. Be brief."}]
            client.chat.completions.create(model="hsd-policy", messages=followup, user=f"u{i}")
        learner.join(timeout=300)
        import ray

        stats = loop.stats() if learner.error is None else {"error": repr(learner.error)}
        stats["teachers"] = ray.get([t.stats.remote() for t in loop.teachers])
        ready = {"stats": stats, "dashboard": dashboard_url(), "temp": temp, "chat": loop.base_url,
                 "node_ip": ray.util.get_node_ip_address()}
        (out / "ready.json").write_text(json.dumps(ready, default=str))
        deadline = time.time() + 600
        while not (out / "stop").exists() and time.time() < deadline:
            time.sleep(0.5)


@pytest.fixture(scope="module")
def observed_loop(tiny_model_dir):
    """(ready.json of the driver, Ray's auth token); the driver is stopped afterwards."""
    out = Path(tempfile.mkdtemp(prefix="hsdobs-", dir="/tmp"))
    env = dict(os.environ, RAY_AUTH_MODE="token", PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    env.pop("RAY_ADDRESS", None)
    code = f"from tests.integration.test_observability import drive; drive({str(tiny_model_dir)!r}, {str(out)!r})"
    log = (out / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.time() + 420
        while not (out / "ready.json").exists():
            assert driver.poll() is None and time.time() < deadline, _tail(out / "driver.log")
            time.sleep(1)
        ready = json.loads((out / "ready.json").read_text())
        assert "error" not in ready["stats"], ready
        token = subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token"], env=env, check=True,
                               capture_output=True, text=True, timeout=60).stdout.strip().splitlines()[-1]
        yield ready, token, env
    finally:
        (out / "stop").touch()
        try:
            driver.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(driver.pid, signal.SIGTERM)
            driver.wait(timeout=60)
        log.close()
        shutil.rmtree(out, ignore_errors=True)


def test_dashboard_lists_the_loops_actors_and_its_job(observed_loop):
    ready, token, _ = observed_loop
    url = ready["dashboard"]
    assert url and url.startswith("http://127.0.0.1:"), ready
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{url}/api/v0/actors", timeout=30).status_code in (401, 403)  # token authentication is on
    actors = httpx.get(f"{url}/api/v0/actors", params={"limit": 1000}, headers=auth, timeout=60).json()
    rows = actors["data"]["result"]["result"]
    alive = {a["name"]: a for a in rows if a["state"] == "ALIVE" and a.get("name")}
    assert LOOP_ACTORS <= set(alive), sorted(alive)
    assert any(a["class_name"].endswith("ChatService") and a["state"] == "ALIVE" for a in rows), "no chat replica"
    jobs = httpx.get(f"{url}/api/jobs/", headers=auth, timeout=60).json()
    loop_job = alive["hsd-turn-queue"]["job_id"]
    assert any(j.get("job_id") == loop_job and j["status"] == "RUNNING" for j in jobs), jobs


def test_chat_and_dashboard_listen_on_localhost_only_by_default(observed_loop):
    """serve.host and ray.dashboard_host default to 127.0.0.1: not reachable on the machine's other address."""
    ready, _, _ = observed_loop
    if ready["node_ip"].startswith("127."):
        pytest.skip("this machine has no address besides loopback to try")
    for url in (ready["chat"].removesuffix("/v1") + "/health", ready["dashboard"]):
        assert httpx.get(url, timeout=30).status_code in (200, 401, 403), url  # up on localhost
        port = url.split(":")[2].split("/")[0]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{ready['node_ip']}:{port}/", timeout=10)


def test_ray_job_submit_against_the_embedded_dashboard(observed_loop):
    """A submitted job runs on the loop's cluster and sees its named actors."""
    ready, token, env = observed_loop
    agent_log = Path(ready["temp"]) / "session_latest" / "logs" / "dashboard_agent.log"
    if "Failed to start HTTP server" in (agent_log.read_text() if agent_log.exists() else ""):
        # An embedded ray.init cannot move the dashboard agent off its fixed port 52365 (test_ray_job.py covers
        # `ray start --head` with every port chosen); on a host shared with another Ray that port may be taken.
        pytest.skip("the dashboard agent's port 52365 is held by another Ray on this host: no job agent to submit to")
    probe = "import ray; ray.init(); print('named', sorted(a['name'] for a in ray.util.list_named_actors(True)))"
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ready["dashboard"], "--",
           sys.executable, "-c", probe]  # the venv's python: a bare `python` may not have ray
    returncode, text = ray_job_submit(cmd, env, agent_wait_s=60, timeout_s=300)
    assert returncode == 0 and "succeeded" in text.lower(), text[-3000:]
    assert "'hsd-turn-queue'" in text, text[-3000:]


def test_prometheus_scrapes_the_funnel_with_rays_own_scrape_config(observed_loop, tmp_path):
    ready, _, _ = observed_loop
    prometheus = _prometheus_binary()
    config = Path(ready["temp"]) / "session_latest" / "metrics" / "prometheus" / "prometheus.yml"
    assert config.is_file(), f"Ray wrote no scrape config at {config}"
    port = free_port()
    server = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                              stderr=(tmp_path / "prometheus.log").open("w"))
    try:
        stats = ready["stats"]
        want = {"ray_hsd_turns_captured_total": stats["capture"]["captured"],
                "ray_hsd_replies_recorded_total": stats["capture"]["recorded"],
                "ray_hsd_gate_decisions_total": sum(stats["queue"]["gate"].values()),
                "ray_hsd_teacher_turns_scored_total": sum(t["turns"] for t in stats["teachers"]),
                "ray_hsd_learner_turns_total": stats["queue"]["trained"],
                "ray_hsd_learner_steps_total": stats["learner"]["step"]}
        assert want["ray_hsd_turns_captured_total"] == 4 and want["ray_hsd_learner_steps_total"] == 2, stats
        _wait_until_ready(port, server, tmp_path / "prometheus.log")
        got: dict = {}
        deadline = time.time() + 120  # Ray's config scrapes every 10 s; Ray exports a new value within ~10 s
        while time.time() < deadline:
            got = {name: _query(port, f"sum({name})") for name in want}
            if got == want:
                break
            time.sleep(2)
        assert got == want, (got, want, (tmp_path / "prometheus.log").read_text()[-2000:])
        _dashboard_queries_answer(port)
    finally:
        server.terminate()
        server.wait(timeout=60)


def _dashboard_queries_answer(port: int) -> None:
    """Every Grafana panel query whose metrics this run produced returns data (names, labels and the SessionName
    filter are what Ray really exports); the funnel's are among them."""
    from tests.unit.test_grafana_dashboard import expand, metric_names, panels

    emitted = {r["metric"]["__name__"] for r in _series(port, 'group by (__name__) ({__name__=~"ray_hsd_.+"})')}
    funnel = {"ray_hsd_replies_recorded_total", "ray_hsd_turns_captured_total", "ray_hsd_gate_decisions_total",
              "ray_hsd_teacher_turns_scored_total", "ray_hsd_learner_turns_total", "ray_hsd_chat_latency_s_bucket",
              "ray_hsd_queue_depth", "ray_hsd_replica_policy_version", "ray_hsd_staleness_versions_bucket"}
    assert funnel <= emitted, sorted(funnel - emitted)
    queries = [(p["title"], expand(t["expr"])) for p in panels() for t in p["targets"]
               if metric_names(t["expr"]) <= emitted]
    # Over the last 10 minutes, as a Grafana panel asks (query_range): the learner's gauges leave the export when
    # its Train worker exits after job.max_steps, so an instant query may already find them stale.
    deadline = time.time() + 60  # a series first scraped a moment ago has one sample: rate() needs two
    while True:
        empty = [(title, q) for title, q in queries if not _series(port, q, range_s=600)]
        if not empty or time.time() > deadline:
            break
        time.sleep(5)
    assert not empty, empty
    assert len(queries) >= 15, len(queries)


def _series(port: int, promql: str, range_s: float = 0) -> list[dict]:
    """The query's result now, or over the last `range_s` seconds at a 5 s step (a panel's range query)."""
    if range_s:
        now = time.time()
        params = {"query": promql, "start": now - range_s, "end": now, "step": 5}
        body = httpx.get(f"http://127.0.0.1:{port}/api/v1/query_range", params=params, timeout=10).json()
    else:
        body = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def _prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:  # the project's own set-up (`make prometheus`): Debian's package, where apt and root allow
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "install_prometheus.sh")], capture_output=True, text=True,
                              timeout=600)
        found = shutil.which("prometheus")
        if found is None:
            pytest.skip(f"no Prometheus server and scripts/install_prometheus.sh could not install one: "
                        f"{proc.stderr.strip()[-300:]}")
    return found


def _wait_until_ready(port: int, server: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    """Prometheus answers 503 'Service Unavailable' until its TSDB is open; a loaded CI host takes seconds."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert server.poll() is None, f"prometheus exited: {_tail(log)}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prometheus not ready after {timeout_s} s: {_tail(log)}")


def _query(port: int, promql: str) -> float | None:
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql}, timeout=10).json()
    except (httpx.HTTPError, ValueError):  # ValueError: a non-JSON answer (e.g. a 503 page) — ask again
        return None
    result = body.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text()[-n:] if path.exists() else "(no log)"

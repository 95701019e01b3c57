"""The admin API: versions and their gate numbers, rollback of serving, pause/resume of learning, behind a key.

A Ray Serve application of its own ("hsd-admin", route prefix /admin, beside the chat app on the same HTTP port), so
the chat service stays unauthenticated and unchanged. Started by loop/job.py `start_loop` with the chat service.

    GET  /admin/versions          every published version: state (accepted = served once, rejected, superseded,
                                  candidate), `current` (served now), gate numbers and reason
    POST /admin/rollback          {"version": N}: serve an earlier accepted version still held
                                  (broadcast.keep_versions); replicas and teachers switch on their next poll, the
                                  learner restarts from it
    POST /admin/pause, /resume    stop / restart optimizer steps (turns keep queueing)
    GET  /admin/learner           the learner's progress and whether it is paused
    DELETE /admin/users/{user}    delete a user's data: opted out of capture, waiting replies dropped, logged turns
                                  deleted (a tombstone names the user by hash), queued turns never trained
    POST /admin/users/{user}/opt-out, /opt-in   stop / resume capturing the user's turns
    GET  /admin/users/{user}/versions   the versions of the user's adapter (personalization.mode=per_user), as above
    POST /admin/users/{user}/rollback   {"version": N}: serve an earlier accepted version of the user's adapter;
                                  replicas switch on their next check, the per-user learner restarts the adapter from it

Every request needs `Authorization: Bearer <key>`; the key comes from `admin.key` or env HSD_RAY_ADMIN_KEY (read by
the driver). A missing or wrong key — or no key configured, which disables the API — gets 401 with an OpenAI-style
error body. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
import os

from fastapi import FastAPI, Request
from ray import serve

from hsd_ray.core.weights import BASE_ADAPTER, user_adapter_id
from hsd_ray.loop import openai_api as oa

ADMIN_APP_NAME = "hsd-admin"
ADMIN_KEY_ENV = "HSD_RAY_ADMIN_KEY"

admin_api = FastAPI(title="hsd-ray admin", docs_url=None, redoc_url=None, openapi_url=None)
oa.install_error_handlers(admin_api)
_STATE: dict = {"key": None, "backend": None}  # set by `configure` in the replica (or a test)


def configure(admin_key: str | None, backend) -> None:
    """Set the key and backend the routes use. Through the imported module: Serve may hand the routes and the
    deployment to the replica as by-value copies, whose globals are not this module's."""
    import hsd_ray.loop.admin as module

    module._STATE.update(key=admin_key, backend=backend)


def resolve_admin_key(configured: str | None) -> str | None:
    """The admin key: the config's, else the environment's; None (API disabled) when neither is set."""
    return configured or os.environ.get(ADMIN_KEY_ENV) or None


def check_key(expected: str | None, authorization: str | None) -> None:
    """Raise a 401 APIError unless `authorization` is "Bearer <expected>"."""
    if not expected:
        raise oa.APIError(f"the admin API is disabled: set admin.key or {ADMIN_KEY_ENV}", status_code=401,
                          type="authentication_error", code="admin_disabled")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise oa.APIError("missing or invalid admin key (Authorization: Bearer <admin key>)", status_code=401,
                          type="authentication_error", code="invalid_api_key")


class RayAdminBackend:
    """What the routes call: the version registry and the learner control actor, found by name."""

    async def versions(self, adapter_id: str = BASE_ADAPTER) -> list[dict]:
        return await _registry().versions.remote(adapter_id)

    async def rollback(self, version: int, adapter_id: str = BASE_ADAPTER) -> dict:
        return await _registry().rollback.remote(version, adapter_id)

    async def set_paused(self, paused: bool) -> bool:
        return await _control().set_paused.remote(paused)

    async def learner(self) -> dict:
        control = _control()
        return {"paused": await control.paused.remote(), "progress": await control.get_progress.remote()}

    async def forget_user(self, user_id: str) -> dict:
        from hsd_ray.loop.capture import forget_user_on_loop

        return await forget_user_on_loop(user_id)

    async def set_opt_out(self, user_id: str, opted_out: bool) -> bool:
        from hsd_ray.loop.capture import set_opt_out_on_loop

        return await set_opt_out_on_loop(user_id, opted_out)


def _registry():
    import ray

    from hsd_ray.loop import NAMESPACE
    from hsd_ray.loop.broadcast import REGISTRY_ACTOR_NAME

    return ray.get_actor(REGISTRY_ACTOR_NAME, namespace=NAMESPACE)


def _control():
    import ray

    from hsd_ray.loop import NAMESPACE
    from hsd_ray.loop.learner import CONTROL_ACTOR_NAME

    return ray.get_actor(CONTROL_ACTOR_NAME, namespace=NAMESPACE)


def _authorized(request: Request):
    import hsd_ray.loop.admin as module

    check_key(module._STATE["key"], request.headers.get("authorization"))
    return module._STATE["backend"]


@admin_api.get("/versions")
async def versions(request: Request):
    return {"object": "list", "data": await _authorized(request).versions()}


@admin_api.post("/rollback")
async def rollback(request: Request):
    return await _rollback(request, BASE_ADAPTER)


@admin_api.get("/users/{user_id}/versions")
async def user_versions(user_id: str, request: Request):
    adapter = user_adapter_id(user_id)
    return {"object": "list", "adapter": adapter, "data": await _authorized(request).versions(adapter)}


@admin_api.post("/users/{user_id}/rollback")
async def user_rollback(user_id: str, request: Request):
    adapter = user_adapter_id(user_id)
    return {"user": user_id, "adapter": adapter, **await _rollback(request, adapter)}


async def _rollback(request: Request, adapter_id: str) -> dict:
    backend = _authorized(request)
    try:
        version = int((await request.json())["version"])
    except (ValueError, KeyError, TypeError):
        raise oa.APIError("body must be {\"version\": <accepted version number>}", param="version") from None
    result = await backend.rollback(version, adapter_id)
    if not result.get("ok"):
        raise oa.APIError(result.get("error", "rollback refused"), param="version", code="version_not_available")
    return result


@admin_api.post("/pause")
async def pause(request: Request):
    return {"paused": await _authorized(request).set_paused(True)}


@admin_api.post("/resume")
async def resume(request: Request):
    return {"paused": await _authorized(request).set_paused(False)}


@admin_api.get("/learner")
async def learner(request: Request):
    return await _authorized(request).learner()


@admin_api.delete("/users/{user_id}")
async def delete_user(user_id: str, request: Request):
    return {"user": user_id, "deleted": True, **await _authorized(request).forget_user(user_id)}


@admin_api.post("/users/{user_id}/opt-out")
async def opt_out(user_id: str, request: Request):
    return {"user": user_id, "opted_out": await _authorized(request).set_opt_out(user_id, True)}


@admin_api.post("/users/{user_id}/opt-in")
async def opt_in(user_id: str, request: Request):
    return {"user": user_id, "opted_out": await _authorized(request).set_opt_out(user_id, False)}


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(admin_api)
class AdminService:
    """The admin app's one replica: the routes above, with the key and the Ray backend."""

    def __init__(self, admin_key: str | None):
        configure(admin_key, RayAdminBackend())


def run_admin(configured_key: str | None) -> None:
    """Deploy the admin app at /admin (Serve must already be started by the chat service)."""
    serve.run(AdminService.bind(resolve_admin_key(configured_key)), name=ADMIN_APP_NAME, route_prefix="/admin")

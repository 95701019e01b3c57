"""Ray glue of the online loop, in data-flow order:

    serve (chat replicas) → capture (ledger of served replies) → queue (object-store refs)
        → teacher (hindsight scoring actors) → learner (Ray Train) → broadcast (versioned weights) → serve …

Each module is thin: the algorithm lives in hsd_ray.core and the engines in hsd_ray.engines. `job.py` wires it up.
"""

NAMESPACE = "hsd"  # every named actor of the loop lives here, so Serve replicas (another namespace) can find them

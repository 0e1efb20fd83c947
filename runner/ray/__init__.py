"""``python -m runner queue ... --ray``: the prompt sampler's items on Ray workers.

queue.py: the driver (plans from the central dataset, stores what the workers return);
worker.py: one worker, a ComfyUI on its node (a Ray actor); cluster.py: start or join Ray and leave
nothing running; watchdog.py: the process that outlives a killed driver (run by path).
No module here imports ``ray`` at import time: only ``cluster.import_ray`` does, with --ray.
"""

"""matplotlib backend for jailed code: Agg rendering, and plt.show() saves into /mnt/data.

Jailed code has no display, and a chart that is only "shown" would never reach the user, so
show() writes every figure not yet saved to /mnt/data/plot_<n>.png (the next free n).
"""

import os

from matplotlib.backends.backend_agg import FigureCanvasAgg, _BackendAgg  # noqa: F401

FigureCanvas = FigureCanvasAgg
OUTPUT_DIR = "/mnt/data"


def _next_free_path():
    n = 1
    while True:
        path = os.path.join(OUTPUT_DIR, f"plot_{n}.png")
        if not os.path.lexists(path):
            return path
        n += 1


def show(*args, **kwargs):
    import matplotlib.pyplot as plt

    for num in plt.get_fignums():
        fig = plt.figure(num)
        if getattr(fig, "_sandboxd_saved", False) and not fig.stale:
            continue
        path = _next_free_path()
        fig.savefig(path, format="png")
        fig._sandboxd_saved = True
        print(f"[figure saved to {path}]")

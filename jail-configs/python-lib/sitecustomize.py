"""Runs at start-up of every jailed Python (it is on PYTHONPATH).

matplotlib needs a writable config directory, and rebuilding its font cache costs about a
quarter of a second on every run. The cache built at install time (inside a jail, so its paths
are the jail's) is bound read-only; each run gets a private writable copy on its own /tmp.
"""

import os


def _seed_matplotlib_cache():
    src_dir = "/opt/sandboxd/mplconfig"
    dst_dir = os.environ.get("MPLCONFIGDIR")
    if not dst_dir or not os.path.isdir(src_dir):
        return
    try:
        os.makedirs(dst_dir, exist_ok=True)
        for name in os.listdir(src_dir):
            if name.startswith("fontlist-") and name.endswith(".json"):
                dst = os.path.join(dst_dir, name)
                if not os.path.exists(dst):
                    with open(os.path.join(src_dir, name), "rb") as s, open(dst, "wb") as d:
                        d.write(s.read())
    except OSError:
        pass  # matplotlib rebuilds the cache itself; slower, never wrong


_seed_matplotlib_cache()
del _seed_matplotlib_cache

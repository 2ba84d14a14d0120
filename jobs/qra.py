"""Ray job entrypoint for `step-ray qra`: the same code as the CLI, for `ray job submit`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/qra.py --help

Inside a Ray job, RAY_ADDRESS is set, so the steps join the cluster instead of starting a local Ray.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir holds step_ray/

from step_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["qra", *sys.argv[1:]]))

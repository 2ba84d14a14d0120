"""Ray job entrypoint for `step-ray ablate` (same arguments; `--help` lists them):

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/ablate.py --config configs/demo.yaml

Inside a Ray job RAY_ADDRESS is set, so the step joins the cluster instead of starting a local Ray.
"""

from _entry import run

if __name__ == "__main__":
    run("ablate")

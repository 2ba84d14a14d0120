"""Ray job entrypoint for `step-ray qra-check` (same arguments): the share of QRA samples whose answer holds on
the ground-truth graphs.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/qra_check.py --qra out/qra --graphs data/synth/gt --output out/qra/check.json
"""

from _entry import run

if __name__ == "__main__":
    run("qra-check")

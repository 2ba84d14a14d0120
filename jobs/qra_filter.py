"""Ray job entrypoint for `step-ray qra-filter` (same arguments; `--help` lists them). On a GPU cluster give the
filter's actors GPUs with `qra.filter.pool.num_gpus=1`:

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/qra_filter.py --config configs/cluster_gpu.yaml --input out/qra --output out/qra_filtered \
        qra.filter.pool.num_gpus=1

Inside a Ray job RAY_ADDRESS is set, so the step joins the cluster instead of starting a local Ray.
"""

from _entry import run

if __name__ == "__main__":
    run("qra-filter")

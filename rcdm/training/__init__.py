"""Training, in EDM2's three rooms: the command line (`rcdm.cli.train`, `rcdm.train_config`), the loops, and the
runtime every loop shares.

    runtime.py   Accelerator setup, crash-safe checkpoints, signals and cross-process triggers, the LR schedule,
                 the loss window, and `run_loop`: the one loop skeleton of every trainer here
    data.py      the denoiser's paired dataset and the global-batch plan
    setup.py     the denoiser, its objective, optimizer, EMA and the cache's encoder
    loop.py      the denoiser's loop: `train` (reads top to bottom: train_step, periodic work, export)
    samples.py   the sample grids and held-out scores a run logs
    export.py    the EMA pipeline, its `save_pretrained` export and model card
    prior.py     the representation prior's trainer (same runtime, same loop)

The SimCLR recipe (`rcdm.ssl`) runs on the same runtime. Nothing here imports the command line.
"""

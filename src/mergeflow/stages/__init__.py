"""The pipeline's stages, one module per stage group: :mod:`.data` (fetch, prepare, exemplars),
:mod:`.models` (import, base, pretrain, heads, finetune), :mod:`.features`, :mod:`.merge` and :mod:`.evaluate`.

Each stage reads its inputs from the layout in :mod:`mergeflow.paths`, does one job and writes its outputs
atomically. The CLI imports only the group a command runs, and :mod:`mergeflow.dag` lists the modules a
stage imports as its code dependencies: a change to one group reruns that group's stages only.
"""

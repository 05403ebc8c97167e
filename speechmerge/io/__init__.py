"""Everything that reads or writes files of this project's outputs (nothing else does by hand).

* :mod:`speechmerge.io.atomic` -- the one atomic-output helper: temp siblings renamed into
  place, manifests, the ``--out`` guard, SIGTERM clean-up. Standard library only.
* :mod:`speechmerge.io.weights` -- safetensors weight files read and written one tensor at a
  time; a model dir's weights, ``model.safetensors`` or a sharded checkpoint.
* :mod:`speechmerge.io.shards` -- Hugging Face's sharded layout (sizes, the split, the index).
  Standard library only.
* :mod:`speechmerge.io.memory` -- the streaming merge's memory tuning, an explicit opt-in.

The package itself imports nothing, so ``speechmerge.io.atomic`` does not pull in torch.
"""

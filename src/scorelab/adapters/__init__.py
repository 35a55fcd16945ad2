"""Published networks as scorelab models: every sampler, guidance method, controllable task,
likelihood and metric then applies to them unchanged.

* ``diffusers``: a diffusers network (``UNet2DModel``, ``UNet2DConditionModel``,
  ``DiTTransformer2DModel``) and the scheduler config next to it -> a ``ScoreModel`` whose
  backbone is the network, whose head is the scheduler's ``prediction_type`` and whose path
  is the scheduler's discrete schedule (``scorelab.paths.discrete``).

Imports: torch and scorelab's math packages; diffusers only inside the functions that load
a network (``pip install 'scorelab[diffusers]'``). Errors a user can fix are
``AdapterUnavailable`` (a ``ScorelabError``: one line on the command line).
"""

from scorelab.adapters.diffusers import (AdapterUnavailable, DiffusersNetwork, PretrainedModel,
                                         load_diffusers, score_model_from_diffusers)

__all__ = ["AdapterUnavailable", "DiffusersNetwork", "PretrainedModel", "load_diffusers",
           "score_model_from_diffusers"]

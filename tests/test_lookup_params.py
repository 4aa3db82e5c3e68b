"""One validator for the lookup's parameters (runtime.lookup.spec.LookupParams): every command and server
that takes tau, memory or top-k refuses a bad value with the same sentence."""

import pytest

from coordgan.evaluation.run import EvalOptions
from export.lookup_onnx import lookup_model
from runtime.errors import CoordGANError
from runtime.lookup.spec import LookupParams
from runtime.propagation.sequence import PropagateOptions
from triton_models.models import video as video_model
from triton_models.repository import BuildOptions

CALLERS = {
    "propagate": lambda **kw: PropagateOptions(**kw).validate(),
    "triton build": lambda **kw: BuildOptions(**kw).validate(),
    "triton video model": lambda **kw: video_model.config(**kw),
    "eval-propagation": lambda tau=0.01, **kw: EvalOptions("synthetic-faces", tau=tau).validate(),
    "export lookup": lambda tau=0.01, topk=None, **kw: lookup_model(8, tau=tau, mode="topk" if topk is not None
                                                                     else "soft", k=topk or 0),
}
TAKES = {"propagate": {"tau", "memory", "topk"}, "triton build": {"tau", "memory", "topk"},
         "triton video model": {"tau", "memory", "topk"}, "eval-propagation": {"tau"}, "export lookup": {"tau", "topk"}}
BAD = {"tau": (0.0, "tau must be a finite number > 0, got 0.0."),
       "memory": (-1, "memory must be a whole number of frames, 0 or more, got -1."),
       "topk": (0, "The top-k count (--topk, --k) must be a positive integer, got 0.")}


@pytest.mark.parametrize("caller, option", [(c, o) for c in CALLERS for o in sorted(TAKES[c])])
def test_every_caller_refuses_with_the_same_sentence(caller, option):
    value, sentence = BAD[option]
    with pytest.raises(CoordGANError) as refused:
        CALLERS[caller](**{option: value})
    assert str(refused.value) == sentence


def test_params_carry_the_lookup_arguments():
    assert LookupParams.with_topk(memory=2, topk=None).args(100) == {"tau": 0.01, "mode": "soft", "k": None}
    params = LookupParams.with_topk(memory=2, tau=0.02, topk=500)
    assert params.topk == 500 and params.args(100) == {"tau": 0.02, "mode": "topk", "k": 100}  # k capped at M
    with pytest.raises(CoordGANError, match="only used with mode topk"):
        LookupParams(mode="soft", k=3)
    with pytest.raises(CoordGANError, match="mode must be one of"):
        LookupParams(mode="nearest")

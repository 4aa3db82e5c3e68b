"""coordgan_corr_lookup on the python backend: runtime.lookup (the fused kernel on a GPU instance,
the sparse numpy path on a CPU one). ONNX Runtime has no kernel for coordgan::CorrLookup, so this
is the lookup of every repository but a TensorRT one with a lookup plan.

    query (N, 2, Hq, Wq), ref_maps (N, R, 2, Hk, Wk), ref_probs (N, R, C, Hk, Wk)
        -> probs (N, C, Hq, Wq) float32, labels (N, Hq, Wq) int32
Parameters: tau, mode (soft | hard | topk), k (topk only), device (cpu | cuda | auto).
"""

from __future__ import annotations

from runtime.lookup import impl_for_device, lookup
from triton_models.models.base import BatchedModel, Feeds


class TritonPythonModel(BatchedModel):
    input_names = ("query", "ref_maps", "ref_probs")

    def setup(self) -> None:
        self.tau = float(self.parameters.get("tau", "0.01"))
        self.mode = self.parameters.get("mode", "soft")
        self.k = int(self.parameters.get("k", "0")) or None
        self.impl = impl_for_device(self.parameters.get("device", "cpu"))

    def run(self, feeds: Feeds) -> Feeds:
        probs, labels = lookup(feeds["query"], feeds["ref_maps"], feeds["ref_probs"], tau=self.tau,
                               mode=self.mode, k=self.k, impl=self.impl)
        return {"probs": probs, "labels": labels}

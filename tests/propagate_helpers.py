"""Shared by the propagation tests: a hand-built ONNX "encoder" whose maps we control, frames and masks for it.

The encoder outputs the canonical grid moved by a shift that the frame itself encodes (its mean red
value: 16 per grid pixel). A frame whose red is 0 gets the identity map; frame t with red 16 t gets a
map shifted by t pixels.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.io.masks import read_mask
from runtime.propagation.observer import CallbackObserver

G = 32  # the fake model's grid


def shift_encoder(path, direction=(1, 0), extent=1.0):
    """image (N, 3, G, G) in [-1, 1] -> corr_map = clip(grid - shift * direction), shift = red / 16 grid px;
    the grid spans [-extent, extent] (a small extent: collapsed maps)."""
    g = np.linspace(-extent, extent, G, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g, indexing="xy"))[None]  # channel 0 = x along width
    step = (np.array(direction, np.float32) * 2 * extent / (G - 1)).reshape(1, 2, 1, 1)
    consts = {"grid": grid, "step": step, "s0": np.array([0]), "s1": np.array([1]), "ax": np.array([1]),
              "scale": np.array(127.5 / 16, np.float32), "one": np.array(1.0, np.float32),
              "lo": np.array(-1.0, np.float32), "hi": np.array(1.0, np.float32)}
    nodes = [helper.make_node("Slice", ["image", "s0", "s1", "ax"], ["red"]),
             helper.make_node("ReduceMean", ["red"], ["mean"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Add", ["mean", "one"], ["m1"]),
             helper.make_node("Mul", ["m1", "scale"], ["shift"]),  # (red / 255 * 2) * 127.5 / 16
             helper.make_node("Mul", ["shift", "step"], ["offset"]),
             helper.make_node("Sub", ["grid", "offset"], ["raw"]),
             helper.make_node("Clip", ["raw", "lo", "hi"], ["corr_map"])]
    graph = helper.make_graph(
        nodes, "shift", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, G, G])],
        [helper.make_tensor_value_info("corr_map", TensorProto.FLOAT, ["batch", 2, G, G])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def frames_with_red(reds, size):
    frames = np.full((len(reds), size, size, 3), 90, np.uint8)
    frames[..., 0] = np.asarray(reds, np.uint8)[:, None, None]
    return frames


def objects(size, block=1):
    """Three objects with sparse ids (3, 7, 200) on background 0, in blocks of `block` pixels."""
    m = np.zeros((G, G), np.uint8)
    m[6:14, 5:11] = 3
    m[16:22, 8:20] = 7
    m[24:28, 3:6] = 200
    return np.kron(m, np.ones((block, block), np.uint8)) if block > 1 else m


PALETTE = bytes((i * 37) % 256 for i in range(768))  # not the DAVIS one: it must survive


def read_outputs(out, n):
    got = [read_mask(out / f"{t:05d}.png") for t in range(n)]
    return np.stack([g[0] for g in got]), got[0][1]


def interrupt_after(k):
    """An observer that stops the run (as Ctrl-C does) once k frames have their masks."""
    def hook(done, total):
        if done >= k:
            raise KeyboardInterrupt
    return CallbackObserver(on_frame=hook)

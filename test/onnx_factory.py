"""Small real ONNX graphs with a backbone's I/O shapes, for the artifact, engine-cache and TensorRT-build tests."""
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper


def patch_conv_onnx(path, channels=128, batch="N", in_name="input", out_name="output", extra_output=False):
    """A backbone-shaped graph: (batch,3,512,512) -> Conv k16 s16 -> (batch,channels,32,32)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.05, (channels, 3, 16, 16)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", [in_name, "w"], [out_name], kernel_shape=[16, 16], strides=[16, 16])]
    outputs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, channels, 32, 32])]
    if extra_output:
        nodes.append(helper.make_node("Relu", [out_name], ["cls"]))
        outputs.append(helper.make_tensor_value_info("cls", TensorProto.FLOAT, [batch, channels, 32, 32]))
    graph = helper.make_graph(
        nodes, "backbone", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [batch, 3, 512, 512])], outputs, [w]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path, torch.from_numpy(numpy_helper.to_array(w).copy())

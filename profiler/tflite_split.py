"""Split one TFLite model that holds several independent blocks into one model per block.

litert-torch's conversion cost is mostly per call (``torch.export`` and its decompositions,
run several times per call, and the lowering set-up), so converting N blocks as one module
that takes N inputs and returns N outputs costs far less than N conversions (issue 11).
This module cuts such a model apart: for each output, the operators it depends on, the
tensors they touch and the constant buffers behind them become a model of their own, with
the signature a single conversion writes (``serving_default``, input ``args_0``, output
``output_0``).  Operators keep their order, so each part is the graph a conversion of the
block alone gives (``tests/test_export.py`` checks operator lists and outputs against it).

A model whose parts share an operator, or whose part reads a graph input other than its
own, cannot be split: ``SplitError``, and the caller converts those blocks one by one.
"""

from __future__ import annotations

import copy


class SplitError(ValueError):
    """The combined model is not a set of independent blocks, one input and output each."""


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _constant(model, tensor) -> bool:
    data = model.buffers[int(tensor.buffer)].data if int(tensor.buffer) < len(model.buffers) else None
    return data is not None and len(data) > 0


def split_model(buf: bytes, n: int) -> list[bytes]:
    """The ``n`` parts of a combined model whose signature has inputs ``args_0..n-1`` and
    outputs ``output_0..n-1`` (part ``i``: ``args_i`` to ``output_i``), as flatbuffers."""
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(buf), 0)
    if len(model.subgraphs or []) != 1 or len(model.signatureDefs or []) != 1:
        raise SplitError(f"expected one subgraph and one signature, got {len(model.subgraphs or [])} "
                         f"and {len(model.signatureDefs or [])}")
    sg = model.subgraphs[0]
    sig = model.signatureDefs[0]
    ins = {t.name.decode(): int(t.tensorIndex) for t in sig.inputs}
    outs = {t.name.decode(): int(t.tensorIndex) for t in sig.outputs}
    want_in = {f"args_{i}" for i in range(n)}
    want_out = {f"output_{i}" for i in range(n)}
    if set(ins) != want_in or set(outs) != want_out:
        raise SplitError(f"signature {sorted(ins)} -> {sorted(outs)} is not args_0..{n - 1} -> output_0..{n - 1}")
    if model.externalBuffers or model.externalBufferGroups:
        raise SplitError("external buffers are not supported")

    graph_inputs = {int(t) for t in sg.inputs}
    producer: dict[int, int] = {}
    for i, op in enumerate(sg.operators or []):
        for t in op.outputs if op.outputs is not None else []:
            producer[int(t)] = i
    owner: dict[int, int] = {}
    parts = []
    for k in range(n):
        out_t, in_t = outs[f"output_{k}"], ins[f"args_{k}"]
        ops: set[int] = set()
        stack = [out_t]
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t < 0 or t in seen:
                continue
            seen.add(t)
            if t in producer:
                i = producer[t]
                if i not in ops:
                    ops.add(i)
                    stack.extend(int(x) for x in sg.operators[i].inputs)
            elif t != in_t and (t in graph_inputs or not _constant(model, sg.tensors[t])):
                # no producer and no constant data: a graph input, and not this part's
                other = [name for name, idx in ins.items() if idx == t]
                raise SplitError(f"output_{k} reads {other or [f'tensor {t}']}, not args_{k}")
        for i in ops:
            if owner.setdefault(i, k) != k:
                raise SplitError(f"operator {i} is shared by output_{owner[i]} and output_{k}")
        parts.append((sorted(ops), in_t, out_t))
    if len(owner) != len(sg.operators or []):
        raise SplitError(f"{len(sg.operators) - len(owner)} operators feed no output")

    result = []
    for op_ids, in_t, out_t in parts:
        tensors: list[int] = [in_t]
        for i in op_ids:
            op = sg.operators[i]
            for t in [*op.inputs, *op.outputs, *(op.intermediates if op.intermediates is not None else [])]:
                t = int(t)
                if t >= 0 and t not in tensors:
                    tensors.append(t)
        t_map = {old: new for new, old in enumerate(tensors)}
        b_map: dict[int, int] = {0: 0}
        buffers = [schema.BufferT()]
        opcodes: list = []
        c_map: dict[int, int] = {}

        def buffer(old: int) -> int:
            if old not in b_map:
                b_map[old] = len(buffers)
                buffers.append(model.buffers[old])
            return b_map[old]

        new_tensors = []
        for old in tensors:
            t = copy.copy(sg.tensors[old])
            t.buffer = buffer(int(t.buffer))
            new_tensors.append(t)
        new_tensors[0].name = b"serving_default_args_0"
        new_ops = []
        for i in op_ids:
            op = copy.copy(sg.operators[i])
            c = int(op.opcodeIndex)
            if c not in c_map:
                c_map[c] = len(opcodes)
                opcodes.append(model.operatorCodes[c])
            op.opcodeIndex = c_map[c]
            op.inputs = [t_map[int(t)] if int(t) >= 0 else -1 for t in op.inputs]
            op.outputs = [t_map[int(t)] for t in op.outputs]
            if op.intermediates is not None:
                op.intermediates = [t_map[int(t)] for t in op.intermediates]
            new_ops.append(op)
        part_sg = schema.SubGraphT()
        part_sg.tensors, part_sg.operators = new_tensors, new_ops
        part_sg.inputs, part_sg.outputs = [0], [t_map[out_t]]
        part_sg.name = sg.name
        metadata = []
        for md in model.metadata or []:
            m = copy.copy(md)
            m.buffer = buffer(int(md.buffer))
            metadata.append(m)
        sig_in, sig_out = schema.TensorMapT(), schema.TensorMapT()
        sig_in.name, sig_in.tensorIndex = b"args_0", 0
        sig_out.name, sig_out.tensorIndex = b"output_0", t_map[out_t]
        part_sig = schema.SignatureDefT()
        part_sig.inputs, part_sig.outputs = [sig_in], [sig_out]
        part_sig.signatureKey, part_sig.subgraphIndex = sig.signatureKey, 0
        part = schema.ModelT()
        part.version, part.description = model.version, model.description
        part.operatorCodes, part.subgraphs, part.buffers = opcodes, [part_sg], buffers
        part.metadata, part.signatureDefs = metadata, [part_sig]
        builder = flatbuffers.Builder(1024)
        builder.Finish(part.Pack(builder), file_identifier=b"TFL3")
        result.append(bytes(builder.Output()))
    return result


def operator_names(buf: bytes) -> list[str]:
    """The builtin operator of each operator of the model's first subgraph, in order."""
    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(bytearray(buf), 0)
    out = []
    for op in model.subgraphs[0].operators or []:
        code = model.operatorCodes[int(op.opcodeIndex)]
        out.append(names.get(max(int(code.builtinCode), int(code.deprecatedBuiltinCode)), str(code.builtinCode)))
    return out


__all__ = ["SplitError", "operator_names", "split_model"]

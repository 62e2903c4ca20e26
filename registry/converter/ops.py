"""Which ops an uploaded graph may contain.

TensorFlow's own SECURITY.md says to treat a supplied GraphDef as arbitrary
code: ops like ``ReadFile``, ``WriteFile`` or ``PyFunc`` run with the rights of
the process that executes the graph.  The scan below classifies every op name
without importing TensorFlow: known-dangerous ops get a category, ops fit for
inference are on an allowlist, and anything else is flagged as unknown.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

READS_FILES = "reads_files"
WRITES_FILES = "writes_files"
NETWORK = "network"
CALLS_PYTHON = "calls_python"
NOT_ALLOWLISTED = "not_allowlisted"
CATEGORIES = (READS_FILES, WRITES_FILES, NETWORK, CALLS_PYTHON, NOT_ALLOWLISTED)  # a flag's category

_DANGER_EXACT: dict[str, str] = {
    "ReadFile": READS_FILES,
    "MatchingFiles": READS_FILES,
    "ImmutableConst": READS_FILES,
    "LoadAndRemapMatrix": READS_FILES,
    "InitializeTableFromTextFile": READS_FILES,
    "InitializeTableFromTextFileV2": READS_FILES,
    "DecodeProtoV2": READS_FILES,
    "ShardedFilename": READS_FILES,
    "ShardedFilespec": READS_FILES,
    "WriteFile": WRITES_FILES,
    "DistributedSave": WRITES_FILES,
    "PyFunc": CALLS_PYTHON,
    "PyFuncStateless": CALLS_PYTHON,
    "EagerPyFunc": CALLS_PYTHON,
    "Rpc": NETWORK,
    "TryRpc": NETWORK,
    "Send": NETWORK,
    "Recv": NETWORK,
    "_Send": NETWORK,
    "_Recv": NETWORK,
    "_HostSend": NETWORK,
    "_HostRecv": NETWORK,
    "FileSystemSetConfiguration": NETWORK,
    "GcsConfigureCredentials": NETWORK,
    "GcsConfigureBlockCache": NETWORK,
}

_DANGER_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(Save|Restore)"), READS_FILES),  # Save* also writes; see below
    (re.compile(r"Reader(V2)?$|^Reader"), READS_FILES),
    (re.compile(r"Dataset|Iterator"), READS_FILES),
    (re.compile(r"Summary|SummaryWriter"), WRITES_FILES),
    (re.compile(r"^Collective|^DataService|^RegisterDataset|BigQuery|Bigtable"), NETWORK),
    (re.compile(r"^(Infeed|Outfeed)"), NETWORK),
]

# Ops fit for running a frozen inference graph: arithmetic, neural-network
# layers, shape manipulation, images, strings and control flow.
INFERENCE_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add AddN AddV2 All Any ApproximateEqual ArgMax ArgMin Asin Asinh Atan Atan2 Atanh
    AvgPool AvgPool3D BatchMatMul BatchMatMulV2 BatchMatMulV3 BatchNormWithGlobalNormalization
    BatchToSpace BatchToSpaceND BiasAdd BiasAddV1 Bitcast BitwiseAnd BitwiseOr BitwiseXor
    BroadcastArgs BroadcastGradientArgs BroadcastTo Bucketize Cast Ceil CheckNumerics CheckNumericsV2
    ClipByValue Complex ComplexAbs Concat ConcatOffset ConcatV2 Const ConjugateTranspose Conj
    Conv2D Conv2DBackpropInput Conv3D Conv3DBackpropInputV2 Cos Cosh CropAndResize Cumprod Cumsum
    DecodeBmp DecodeGif DecodeImage DecodeJpeg DecodePng DecodeRaw DecodeBase64 DepthToSpace
    DepthwiseConv2dNative DepthwiseConv2dNativeBackpropInput Dequantize Diag DiagPart Digamma
    Dilation2D Div DivNoNan DynamicPartition DynamicStitch Einsum Elu Empty EncodeJpeg EncodePng
    EnsureShape Enter Equal Erf Erfc Exit Exp ExpandDims Expm1 ExtractImagePatches Fill Floor FloorDiv
    FloorMod FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 FusedPadConv2D FusedResizeAndPadConv2D
    Gather GatherNd GatherV2 Gelu Greater GreaterEqual GuaranteeConst HashTableV2 Identity IdentityN
    If Imag InTopK InTopKV2 InvertPermutation IsFinite IsInf IsNan L2Loss LRN LeakyRelu LeftShift Less
    LessEqual Lgamma LinSpace ListDiff Log Log1p LogSoftmax LogicalAnd LogicalNot LogicalOr
    LookupTableFindV2 LookupTableSizeV2 LoopCond MatMul MatrixBandPart MatrixDiag MatrixDiagPart
    MatrixDiagPartV3 MatrixDiagV3 MatrixSetDiag MatrixSetDiagV3 Max MaxPool MaxPool3D MaxPoolV2
    MaxPoolWithArgmax Maximum Mean Merge Min Minimum MirrorPad Mod Mul MulNoNan Multinomial Neg
    NextIteration NoOp NonMaxSuppression NonMaxSuppressionV2 NonMaxSuppressionV3 NonMaxSuppressionV4
    NonMaxSuppressionV5 NotEqual OneHot OnesLike Pack Pad PadV2 ParallelConcat PartitionedCall
    Placeholder PlaceholderV2 PlaceholderWithDefault Pow PreventGradient Prod QuantizeV2
    QuantizedConv2D QuantizedMatMul RFFT IRFFT FFT IFFT RandomStandardNormal RandomUniform
    RandomUniformInt Range Rank ReadVariableOp Real RealDiv Reciprocal Relu Relu6 Reshape
    ResizeArea ResizeBicubic ResizeBilinear ResizeNearestNeighbor Reverse ReverseSequence ReverseV2
    RightShift Rint Round Rsqrt ScatterNd Select SelectV2 Selu Shape ShapeN Sigmoid Sign Sin Sinh Size
    Slice Snapshot Softmax Softplus Softsign SpaceToBatch SpaceToBatchND SpaceToDepth SparseToDense
    Split SplitV Sqrt Square SquaredDifference Squeeze StatefulPartitionedCall StatelessIf
    StatelessRandomNormal StatelessRandomUniform StatelessWhile StopGradient StridedSlice
    StringJoin StringSplit StringSplitV2 StringToHashBucketFast StringToNumber Sub Substr Sum Switch
    Tan Tanh TensorListFromTensor TensorListGetItem TensorListReserve TensorListSetItem
    TensorListStack TensorListLength TensorListElementShape TensorScatterUpdate Tile TopK TopKV2
    Transpose TruncateDiv TruncateMod TruncatedNormal Unique Unpack UnsortedSegmentMax
    UnsortedSegmentMin UnsortedSegmentSum Where While Xdivy Xlogy ZerosLike
    SegmentSum SegmentMean SegmentMax SegmentMin SparseSegmentMean SparseSegmentSum
    SparseSegmentSqrtN ResourceGather VarHandleOp VariableV2 Variable VarIsInitializedOp
    _Arg _Retval _FusedConv2D _FusedMatMul _FusedBatchNormEx
    AsString StringFormat StringLength StringLower StringUpper StaticRegexReplace RegexReplace ReduceJoin
    StringStrip LookupTableFind Softmax Sort
    ParseExample ParseExampleV2 ParseSingleExample ParseSequenceExample ParseSequenceExampleV2
    ParseSingleSequenceExample ParseTensor SerializeTensor DecodeCSV DecodeCompressed DecodeJSONExample
    StringToHashBucket StringToHashBucketStrong HashTable MutableHashTableV2 MutableDenseHashTableV2
    InitializeTableV2 LookupTableImportV2 LookupTableExportV2 LookupTableInsertV2
    SparseFillEmptyRows SparseReshape SparseSegmentSumWithNumSegments SparseSegmentMeanWithNumSegments
    SparseSegmentSqrtNWithNumSegments SparseTensorDenseMatMul SparseTensorDenseAdd SparseReduceSum
    SparseReduceMax SparseConcat SparseSlice SparseCross SparseCrossV2 SparseCrossHashed SparseAdd
    SparseToSparseSetOperation SparseReorder SparseSoftmax SparseDenseCwiseMul SparseDenseCwiseAdd
    Assert UnicodeDecode UnicodeDecodeWithOffsets UnicodeEncode UnicodeTranscode UnicodeScript
    StringNGrams RaggedTensorToTensor RaggedTensorToSparse RaggedTensorFromVariant RaggedGather
    RaggedRange RaggedTensorToVariant EmptyTensorList
    """.split()
)
# tf.Example parsing and the string, sparse and lookup ops feature columns run on their inputs: they
# read only the tensors they are given.  A table filled from a file (InitializeTableFromTextFile*) is
# still flagged above.


def classify(op: str) -> str | None:
    """The danger category of ``op``, ``not_allowlisted`` or None when fine."""
    if op in _DANGER_EXACT:
        return _DANGER_EXACT[op]
    if op.startswith("Save") or op in ("MergeV2Checkpoints",):
        return WRITES_FILES
    if op in INFERENCE_OPS:
        return None
    for pattern, category in _DANGER_PATTERNS:
        if pattern.search(op):
            return category
    return NOT_ALLOWLISTED


def scan(op_names: Iterable[tuple[str, str]]) -> dict:
    """Histogram and flags for ``(node_name, op)`` pairs.

    The returned dict is JSON-ready: ``{"op_histogram": {op: count},
    "flags": [{"op", "category", "count", "nodes"}], "flagged": bool}``.
    """
    histogram: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for node, op in op_names:
        histogram[op] += 1
        if classify(op) is not None:
            names = examples.setdefault(op, [])
            if len(names) < 5:
                names.append(node)
    flags = [
        {"op": op, "category": classify(op), "count": histogram[op], "nodes": nodes}
        for op, nodes in sorted(examples.items())
    ]
    return {
        "op_histogram": dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        "flags": flags,
        "flagged": bool(flags),
    }

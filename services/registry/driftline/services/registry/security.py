"""What the registry refuses: unauthenticated writes, unsafe names, and uploads that are not
plain, self-contained, standard-domain ONNX.

Every check raises a ``driftline.kit.errors`` subclass, so the gRPC status follows from the
error: UNAUTHENTICATED, INVALID_ARGUMENT or RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import hmac
import io
import pickletools
import re
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import onnx
from google.protobuf.message import DecodeError

from driftline.kit.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from driftline.services.registry.domain import Signature, TensorSpec

# --- Who may write ------------------------------------------------------------------------------

ACTOR_RULE = "1-64 ASCII letters, digits, '_', '.', '@', '+' or '-', starting with a letter or digit"
ACTOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}", re.ASCII)


def validate_token_names(names: Iterable[str]) -> None:
    """Token names are plain actor names. An actor is recorded as ``token`` or
    ``token:declared``, and a lock binds to the part before the ':' (``principal``): a token
    named ``team:ops`` would share locks with one named ``team:ml``."""
    bad = [name for name in names if not ACTOR_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"token names must be short plain names ({ACTOR_RULE}): {bad}")


class TokenAuthenticator:
    """Maps a presented bearer token to the actor it belongs to."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        validate_token_names(tokens)
        self._tokens = {actor: secret.encode() for actor, secret in tokens.items() if secret}

    def authenticate(self, presented: str | None, declared_actor: str | None = None) -> str:
        """The actor for a token; ``declared_actor`` (a client's own name for itself) is
        recorded after the token's name, never instead of it."""
        if not self._tokens:
            raise Unauthenticated("the registry has no write token configured; writes are disabled")
        if not presented:
            raise Unauthenticated("missing bearer token (authorization: Bearer <token>)")
        candidate = presented.encode()
        actor = None
        # Compare with every token so the time taken does not tell which one nearly matched.
        for name, secret in self._tokens.items():
            if hmac.compare_digest(candidate, secret):
                actor = name
        if actor is None:
            raise Unauthenticated("invalid bearer token")
        if declared_actor:
            if not ACTOR_NAME.fullmatch(declared_actor):
                raise InvalidArgument("x-driftline-actor must be a short plain name")
            return f"{actor}:{declared_actor}"
        return actor


def principal(actor: str) -> str:
    """Whose token made a change: the token's name, without the name a client declared for
    itself (``token:declared``), which anyone holding the token may choose."""
    return actor.split(":", 1)[0]


# --- Names --------------------------------------------------------------------------------------

NAME_RULE = "1-128 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit, no '..'"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:")


def validate_name(value: str, kind: str = "model name") -> str:
    """Accept a name that can never address anything outside its own record or directory.

    The specific checks come first so the error says what was wrong; the allow-list regex is
    the real guard (fullmatch, ASCII-only).
    """
    if not value:
        raise InvalidArgument(f"{kind} is empty", code="invalid_name")
    if "\x00" in value:
        raise InvalidArgument(f"{kind} contains a NUL byte", code="invalid_name")
    if not value.isascii() or unicodedata.normalize("NFKC", value) != value:
        raise InvalidArgument(f"{kind} {value!r} contains non-ASCII characters", code="invalid_name")
    if "%" in value:
        raise InvalidArgument(f"{kind} {value!r} contains percent-encoding", code="invalid_name")
    if value.startswith(("/", "\\", "~")) or _WINDOWS_DRIVE.match(value):
        raise InvalidArgument(f"{kind} {value!r} is an absolute path", code="invalid_name")
    if ".." in value:
        raise InvalidArgument(f"{kind} {value!r} contains '..'", code="invalid_name")
    if "/" in value or "\\" in value:
        raise InvalidArgument(f"{kind} {value!r} contains a path separator", code="invalid_name")
    if not _NAME.fullmatch(value):
        raise InvalidArgument(f"{kind} {value!r} is not valid: {NAME_RULE}", code="invalid_name")
    return value


def validate_owner(value: str, kind: str = "lock owner") -> str:
    if not value or not ACTOR_NAME.fullmatch(value):
        raise InvalidArgument(
            f"{kind} must be 1-64 ASCII letters, digits or '_.@+-', starting with a letter or digit"
        )
    return value


# --- Uploads ------------------------------------------------------------------------------------

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})

# ONNX element types -> KServe v2 datatype names.
_DATATYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}

# Serialisation formats that execute code when loaded, or hide one inside a container.
_MAGIC = (
    (b"\x93NUMPY", "a NumPy array file"),
    (b"\x1f\x8b", "a gzip stream (compressed joblib/pickle dumps look like this)"),
    (b"\xfd7zXZ\x00", "an xz stream (compressed joblib/pickle dumps look like this)"),
    (b"\x04\x22\x4d\x18", "an lz4 frame (compressed joblib/pickle dumps look like this)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras models look like this)"),
)
_BZIP2 = re.compile(rb"BZh[1-9]1AY&SY")
_ZLIB = re.compile(rb"\x78[\x01\x5e\x9c\xda]")


@dataclass(frozen=True)
class OnnxSummary:
    """What validation learnt about an accepted model."""

    signature: Signature
    opsets: Mapping[str, int]
    ir_version: int


class OnnxValidator:
    """Accepts only self-contained ONNX models within a size limit that use standard domains."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def validate(self, data: bytes) -> OnnxSummary:
        if not data:
            raise InvalidArgument("artifact is empty", code="empty_artifact")
        if len(data) > self.max_bytes:
            raise ResourceExhausted(
                f"artifact is {len(data)} bytes; the limit is {self.max_bytes}", code="artifact_too_large"
            )
        unsafe = sniff_unsafe_format(data)
        if unsafe is not None:
            raise InvalidArgument(f"artifact is {unsafe}; only ONNX is accepted", code="unsafe_format")
        model = _parse(data)
        _reject_external_data(model)
        _reject_custom_domains(model)
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as err:
            raise InvalidArgument(f"artifact fails onnx.checker: {err}", code="invalid_onnx") from err
        return OnnxSummary(
            signature=Signature(
                inputs=_specs(model.graph.input, {i.name for i in model.graph.initializer}),
                outputs=_specs(model.graph.output, set()),
            ),
            opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
            ir_version=model.ir_version,
        )


def sniff_unsafe_format(data: bytes) -> str | None:
    """A description of the code-executing or container format ``data`` is in, or None."""
    if data[:2] in (b"PK",):
        return _describe_zip(data)
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return "a pickle (protocol 2+; joblib and torch.save output)"
    for magic, what in _MAGIC:
        if data.startswith(magic):
            return what
    if _BZIP2.match(data):
        return "a bzip2 stream (compressed joblib/pickle dumps look like this)"
    if _ZLIB.match(data):
        return "a zlib stream (compressed joblib dumps look like this)"
    if _is_old_pickle(data):
        return "a pickle (protocol 0/1)"
    return None


def _describe_zip(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return "a zip archive"
    if any(n.endswith((".pkl", ".pickle")) or n.rsplit("/", 1)[-1] == "data.pkl" for n in names):
        return "a zip archive holding a pickle (the torch.save format)"
    return "a zip archive"


def _is_old_pickle(data: bytes) -> bool:
    """Disassemble (never execute) the start of ``data``: a pickle parses up to STOP."""
    try:
        for opcode, _arg, _pos in pickletools.genops(io.BytesIO(data[: 64 * 1024])):
            if opcode.name == "STOP":
                return True
    except Exception:  # noqa: BLE001 - any parse failure means "not a pickle"
        return False
    return False


def _parse(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as err:
        raise InvalidArgument(f"artifact is not a valid ONNX model: {err}", code="corrupt_artifact") from err
    if not model.HasField("graph") or model.ir_version <= 0:
        raise InvalidArgument(
            "artifact is not a valid ONNX model: no graph or IR version", code="corrupt_artifact"
        )
    return model


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and, recursively, every subgraph of its nodes (If, Loop, Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _all_graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    yield from _graphs(model.graph)
    for info in model.training_info:
        yield from _graphs(info.initialization)
        yield from _graphs(info.algorithm)


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _all_graphs(model):
        yield from graph.node
    for function in model.functions:
        for node in function.node:
            yield node
            for attr in node.attribute:
                if attr.HasField("g"):
                    for graph in _graphs(attr.g):
                        yield from graph.node
                for sub in attr.graphs:
                    for graph in _graphs(sub):
                        yield from graph.node


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for graph in _all_graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
    for node in _all_nodes(model):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices


def _reject_external_data(model: onnx.ModelProto) -> None:
    for tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            raise InvalidArgument(
                f"tensor {tensor.name!r} references external data {location!r}; artifacts must be "
                "self-contained",
                code="external_data",
            )


def _reject_custom_domains(model: onnx.ModelProto) -> None:
    for opset in model.opset_import:
        if opset.domain not in ALLOWED_DOMAINS:
            raise InvalidArgument(
                f"opset domain {opset.domain!r} is a custom-op domain; only the standard ai.onnx "
                "and ai.onnx.ml domains are allowed",
                code="custom_op",
            )
    for function in model.functions:
        raise InvalidArgument(
            f"model-local function {function.domain}.{function.name} is a custom op; not allowed",
            code="custom_op",
        )
    for node in _all_nodes(model):
        if node.domain not in ALLOWED_DOMAINS:
            raise InvalidArgument(
                f"node {node.name or node.op_type!r} uses custom-op domain {node.domain!r}; not allowed",
                code="custom_op",
            )


def _specs(values: Iterable[onnx.ValueInfoProto], skip: set[str]) -> tuple[TensorSpec, ...]:
    specs = []
    for value in values:
        if value.name in skip:
            continue
        kind = value.type.WhichOneof("value")
        if kind == "tensor_type":
            tensor = value.type.tensor_type
            datatype = _DATATYPES.get(tensor.elem_type) or onnx.TensorProto.DataType.Name(tensor.elem_type)
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
            specs.append(TensorSpec(value.name, datatype, shape))
        else:
            specs.append(TensorSpec(value.name, onnx.helper.printable_type(value.type), ()))
    return tuple(specs)

"""Names, tokens and uploads the registry refuses, and the ones it accepts."""

from __future__ import annotations

import re

import pytest

from driftline.kit.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from driftline.services.registry import testing
from driftline.services.registry.security import (
    OnnxValidator,
    TokenAuthenticator,
    sniff_unsafe_format,
    validate_name,
)


@pytest.mark.parametrize("name", ["fraud", "fraud-v2", "Fraud_2024.q1", "a", "x" * 128])
def test_plain_names_are_accepted(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("../etc", "'..'"),
        ("..", "'..'"),
        ("a/../../b", "'..'"),
        ("a..b", "'..'"),
        ("/etc/passwd", "absolute path"),
        ("\\\\server\\share", "absolute path"),
        ("C:evil", "absolute path"),
        ("~root", "absolute path"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("%2e%2e", "percent-encoding"),
        ("..%2fetc", "percent-encoding"),
        ("%252e%252e", "percent-encoding"),
        ("a\x00b", "NUL"),
        ("\uff0e\uff0e", "non-ASCII"),  # fullwidth dots: NFKC turns them into ".."
        ("a\u2215b", "non-ASCII"),  # division slash, looks like "/"
        ("caf\u00e9", "non-ASCII"),
        (".hidden", "not valid"),
        ("-flag", "not valid"),
        ("name\n", "not valid"),
        ("x" * 129, "not valid"),
        ("a b", "not valid"),
    ],
)
def test_unsafe_names_are_rejected_with_the_reason(name, why):
    with pytest.raises(InvalidArgument, match=re.escape(why)):
        validate_name(name)


def test_token_maps_to_its_actor_and_a_declared_actor_is_appended():
    auth = TokenAuthenticator({"default": "s3cret", "trainer": "t0ken"})
    assert auth.authenticate("s3cret") == "default"
    assert auth.authenticate("t0ken", "nightly") == "trainer:nightly"


@pytest.mark.parametrize("presented", [None, "", "wrong", "s3cre", "s3cret "])
def test_missing_or_wrong_token_is_unauthenticated(presented):
    with pytest.raises(Unauthenticated):
        TokenAuthenticator({"default": "s3cret"}).authenticate(presented)


def test_without_configured_tokens_every_write_is_unauthenticated():
    with pytest.raises(Unauthenticated, match="no write token"):
        TokenAuthenticator({}).authenticate("anything")


def test_declared_actor_must_be_a_plain_name():
    with pytest.raises(InvalidArgument):
        TokenAuthenticator({"default": "s3cret"}).authenticate("s3cret", "../../x")


def test_valid_onnx_is_accepted_and_its_signature_read():
    summary = OnnxValidator(1_000_000).validate(testing.tiny_model())
    (features,) = summary.signature.inputs
    (score,) = summary.signature.outputs
    assert (features.name, features.datatype, features.shape) == ("features", "FP32", (-1, 3))
    assert (score.name, score.datatype, score.shape) == ("score", "FP32", (-1, 1))
    assert summary.opsets == {"ai.onnx": 17}


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", InvalidArgument, "empty"),
        (testing.pickle_bytes(4), InvalidArgument, "pickle"),
        (testing.pickle_bytes(2), InvalidArgument, "pickle"),
        (testing.pickle_bytes(0), InvalidArgument, "pickle"),
        (testing.pickle_bytes(1), InvalidArgument, "pickle"),
        (testing.torch_zip_bytes(), InvalidArgument, "torch.save"),
        (testing.joblib_bytes(), InvalidArgument, "joblib"),
        (b"PK\x03\x04not really a zip", InvalidArgument, "zip archive"),
        (b"\x93NUMPY\x01\x00", InvalidArgument, "NumPy"),
        (testing.external_data_model(), InvalidArgument, "external data"),
        (testing.custom_op_model(), InvalidArgument, "com.example.evil"),
        (testing.corrupt_bytes(), InvalidArgument, "not a valid ONNX model"),
        (b"\x08\x08" + b"\xff" * 40, InvalidArgument, "not a valid ONNX model"),
        (b"just some text, not a model", InvalidArgument, "ONNX"),
    ],
    ids=[
        "empty",
        "pickle-4",
        "pickle-2",
        "pickle-0",
        "pickle-1",
        "torch-zip",
        "joblib",
        "zip",
        "numpy",
        "external-data",
        "custom-op",
        "truncated",
        "garbage",
        "text",
    ],
)
def test_unsafe_or_broken_uploads_are_rejected(data, error, message):
    with pytest.raises(error, match=message):
        OnnxValidator(1_000_000).validate(data)


def test_oversized_upload_is_resource_exhausted():
    data = testing.large_model(2_000)
    with pytest.raises(ResourceExhausted, match="limit"):
        OnnxValidator(len(data) - 1).validate(data)
    assert OnnxValidator(len(data)).validate(data).signature.inputs[0].name == "x"


def test_custom_op_is_rejected_even_without_an_opset_import():
    import onnx

    model = onnx.load_from_string(testing.tiny_model())
    model.graph.node[0].domain = "com.microsoft"
    with pytest.raises(InvalidArgument, match=re.escape("custom-op domain 'com.microsoft'")):
        OnnxValidator(1_000_000).validate(model.SerializeToString())


def test_external_data_hidden_in_a_subgraph_is_rejected():
    import onnx
    from onnx import TensorProto, helper

    inner = onnx.load_from_string(testing.external_data_model())
    then_branch = helper.make_graph(
        list(inner.graph.node), "then", [], list(inner.graph.output), list(inner.graph.initializer)
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["score"])], "else", [], list(inner.graph.output)
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["score"], then_branch=then_branch, else_branch=else_branch)],
        "outer",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 3]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(InvalidArgument, match="external data"):
        OnnxValidator(1_000_000).validate(model.SerializeToString())


def test_onnx_is_not_mistaken_for_an_unsafe_format():
    assert sniff_unsafe_format(testing.tiny_model()) is None
    assert sniff_unsafe_format(testing.large_model(10)) is None


@pytest.mark.parametrize("name", ["team:ops", "", "a b", "../x"])
def test_token_names_are_plain_actor_names(name):
    # A ':' would make two tokens one principal: `team:ops` and `team:ml` would share locks.
    with pytest.raises(ValueError, match="token names"):
        TokenAuthenticator({name: "s3cret"})


def test_settings_refuse_a_token_name_with_a_colon():
    from pydantic import SecretStr, ValidationError

    from driftline.services.registry.config import Settings

    with pytest.raises(ValidationError, match="token names"):
        Settings(tokens={"team:ops": SecretStr("a"), "ml": SecretStr("b")})

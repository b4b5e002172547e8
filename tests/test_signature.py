import numpy as np
import pytest

from modelport import InputLimits, InvalidInputError, Signature, TensorSpec, validate_inputs

SIG = Signature(
    inputs=(TensorSpec("x", "float32", (-1, 3)), TensorSpec("ids", "int64", (-1,))),
    outputs=(TensorSpec("y", "float32", (-1,)),),
)
ONE = Signature((TensorSpec("x", "uint8", (-1, 2, 2)),), (TensorSpec("y", "string", (-1,)),))


def good() -> dict[str, object]:
    return {"x": np.ones((2, 3)), "ids": [1, 2]}


def test_valid_inputs_are_cast_to_the_signature_dtypes() -> None:
    out = validate_inputs(SIG, good())
    assert out["x"].dtype == np.float32
    assert out["ids"].dtype == np.int64
    assert out["x"].shape == (2, 3)


def test_a_single_array_is_accepted_for_a_single_input_model() -> None:
    out = validate_inputs(ONE, [[[0, 255], [3, 4]]])
    assert out["x"].dtype == np.uint8


def test_signature_round_trips_through_dict() -> None:
    assert Signature.from_dict(SIG.to_dict()) == SIG
    assert SIG.inputs[0].datatype == "FP32"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": np.ones((2, 3))}, "missing input 'ids'"),
        ({**good(), "z": [1]}, "unknown input 'z'"),
        ({**good(), "x": np.ones(3)}, "input 'x': expected rank 2 with shape [?, 3], got rank 1"),
        ({**good(), "x": np.ones((2, 4))}, "input 'x': expected shape [?, 3], got [2, 4]"),
        ({**good(), "ids": [1.5, 2.0]}, "input 'ids': expected dtype int64, got float64"),
        ({**good(), "x": [["a", "b", "c"]]}, "input 'x': expected dtype float32, got text"),
        ({**good(), "x": [[1, 2, 3], [4]]}, "input 'x'"),
    ],
)
def test_bad_inputs_name_the_input_and_the_expectation(inputs: object, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_inputs(SIG, inputs)
    assert message in str(info.value)


def test_integers_out_of_range_are_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"expected uint8 values in \[0, 255\]"):
        validate_inputs(ONE, [[[0, 256], [3, 4]]])


def test_multi_input_model_needs_a_dict() -> None:
    with pytest.raises(InvalidInputError, match="pass a dict"):
        validate_inputs(SIG, np.ones((2, 3)))


def test_element_limit_is_checked() -> None:
    with pytest.raises(InvalidInputError, match="over the limit of 6"):
        validate_inputs(SIG, {"x": np.ones((3, 3)), "ids": [1, 2, 3]}, InputLimits(max_elements=6))


def test_error_carries_the_input_name() -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_inputs(SIG, {**good(), "x": np.ones((2, 4))})
    assert info.value.input_name == "x"
